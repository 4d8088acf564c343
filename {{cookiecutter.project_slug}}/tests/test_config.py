"""Config validation, overrides, object lookups and the command line's answers to mistakes."""

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import config_schema
import model.model as module_arch
import train
from parse_config import ConfigParser, apply_override, lookup
from utils.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_filled_in(make_config: Callable[..., dict[str, Any]]) -> None:
    config = make_config()
    del config["trainer"]["precision"], config["lr_scheduler"]
    resolved = config_schema.validate(config)
    assert resolved["trainer"]["precision"] == "fp32"
    assert resolved["lr_scheduler"] is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("trainer.epoch=3", "unknown key 'trainer.epoch'; did you mean 'trainer.epochs'?"),
        ("optimiser={}", "unknown key 'optimiser'; did you mean 'optimizer'?"),
        ("trainer.epochs=0", "'trainer.epochs' must be >= 1, got 0"),
        ("trainer.epochs=two", "'trainer.epochs' must be an integer, got 'two'"),
        ("trainer.tensorboard=1", "'trainer.tensorboard' must be true or false, got 1"),
        ("n_gpu=true", "'n_gpu' must be an integer, got True"),
        ("trainer.monitor=lowest val_loss", "'trainer.monitor' must be 'off' or '<min|max> <metric>'"),
        ("trainer.precision=fp8", "'trainer.precision' must be one of 'fp32', 'bf16', 'fp16'"),
        ("metrics=[1]", "'metrics' must be a list of names"),
    ],
)
def test_bad_values_name_the_key(make_config: Callable[..., dict[str, Any]], change: str, message: str) -> None:
    config = make_config()
    apply_override(config, change)
    with pytest.raises(InputError, match=re.escape(message)):
        config_schema.validate(config)


def test_a_missing_required_key_is_named(make_config: Callable[..., dict[str, Any]]) -> None:
    config = make_config()
    del config["arch"]
    with pytest.raises(InputError, match="missing required key 'arch'"):
        config_schema.validate(config)


def test_overrides_parse_json_and_fall_back_to_strings() -> None:
    config: dict[str, Any] = {"a": {"b": 1}}
    apply_override(config, "a.b=2.5")
    apply_override(config, "a.c=hello")
    apply_override(config, "d.e=[1, 2]")
    assert config == {"a": {"b": 2.5, "c": "hello"}, "d": {"e": [1, 2]}}
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        apply_override(config, "a.b")
    with pytest.raises(InputError, match="'a.b' is not an object"):
        apply_override(config, "a.b.c=1")


def test_lookups_stay_inside_their_module_and_list_valid_names() -> None:
    assert lookup(module_arch, "MnistModel", "arch.type", torch.nn.Module) is module_arch.MnistModel
    for name in ("os", "__builtins__", "BaseModel.__init__", "F"):
        with pytest.raises(InputError, match="not one of model.model: .*MnistModel"):
            lookup(module_arch, name, "arch.type", torch.nn.Module)


def test_class_arguments_that_do_not_fit_are_named(make_config: Callable[..., dict[str, Any]]) -> None:
    config = make_config()
    config["optimizer"]["args"]["lrr"] = 0.1
    parser = ConfigParser(config)
    with pytest.raises(InputError, match="'optimizer.args' do not fit Adam: .*'lrr'"):
        parser.init_obj("optimizer", torch.optim, torch.optim.Optimizer, [torch.zeros(1, requires_grad=True)])


def cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    try:
        status = train.main(args)
    except SystemExit as exit_:  # argparse usage errors
        status = exit_.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-c", "missing.json"], "config 'missing.json': cannot read it"),
        ([], "no config: give a config file with -c or a checkpoint with -r"),
        (["-r", "missing.pth"], "checkpoint 'missing.pth': no such file"),
        (["-c", "config.json", "--bs", "many"], "argument --bs: invalid int value: 'many'"),
        (["-c", "config.json", "-o", "trainer.epochs"], "override 'trainer.epochs': expected KEY=VALUE"),
        (["-c", "config.json", "-o", "arch.type=Nope"], "'arch.type' is 'Nope', not one of model.model: MnistModel"),
        (["-c", "config.json", "-o", "trainer.monitor=min val_acc"], "watches 'val_acc', which is not logged"),
    ],
)
def test_the_command_line_answers_mistakes_with_one_line_and_status_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    mnist_dir: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(PROJECT_ROOT)
    overrides = ["-o", f"data_loader.args.data_dir={mnist_dir}", "-o", f"trainer.save_dir={tmp_path}", "-o", "n_gpu=0"]
    status, err = cli(args + (overrides if "-c" in args else []), capsys)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
    assert message in err
    assert list(tmp_path.iterdir()) == []  # no run directory


def test_bad_json_reports_line_and_column(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_text('{\n  "name": "x",\n  oops\n}')
    status, err = cli(["-c", str(tmp_path / "bad.json")], capsys)
    assert status == 2
    assert "invalid JSON at line 3 column 3" in err


def test_missing_mnist_offline_names_the_files(make_config: Callable[..., dict[str, Any]], tmp_path: Path) -> None:
    config = make_config()
    config["data_loader"]["args"].update(data_dir=str(tmp_path / "nothing"), download=False)
    with pytest.raises(InputError, match=r"MNIST not found in .*nothing.*missing train-images-idx3-ubyte"):
        train.train(ConfigParser(config))
    assert not (tmp_path / "saved").exists()


def test_readme_config_reference_is_the_schema() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    match = re.search(r"<!-- config-reference:start -->\n(.*?)\n<!-- config-reference:end -->", readme, re.S)
    assert match, "README.md lacks the config reference markers"
    assert match.group(1).strip() == config_schema.reference_table()
