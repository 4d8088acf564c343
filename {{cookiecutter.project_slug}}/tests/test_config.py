"""Config validation, overrides and object lookups (the bad-input catalogue is in test_bad_inputs.py)."""

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import config_schema
import model.model as module_arch
import train
from cli import apply_override
from parse_config import ConfigParser, lookup, read_json
from utils.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_filled_in(make_config: Callable[..., dict[str, Any]]) -> None:
    config = make_config()
    del config["trainer"]["precision"], config["lr_scheduler"]
    resolved = config_schema.validate(config)
    assert resolved["trainer"]["precision"] == "fp32"
    assert resolved["lr_scheduler"] is None


def test_listed_args_are_checked_and_others_pass_through_in_order(
    make_config: Callable[..., dict[str, Any]],
) -> None:
    config = make_config()
    config["optimizer"]["args"] = {"amsgrad": True, "lr": 0.01, "betas": [0.8, 0.9]}
    resolved = config_schema.validate(config)
    assert list(resolved["optimizer"]["args"].items()) == [("amsgrad", True), ("lr", 0.01), ("betas", [0.8, 0.9])]
    config["optimizer"]["args"]["lr"] = 0
    with pytest.raises(InputError, match=re.escape("'optimizer.args.lr' must be > 0, got 0")):
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


def test_docs_config_reference_is_the_schema() -> None:
    reference = (PROJECT_ROOT / "docs" / "config.md").read_text()
    match = re.search(r"<!-- config-reference:start -->\n(.*?)\n<!-- config-reference:end -->", reference, re.S)
    assert match, "docs/config.md lacks the config reference markers"
    assert match.group(1).strip() == config_schema.reference_table()


def test_non_finite_numbers_are_refused_anywhere_with_their_dotted_key(
    make_config: Callable[..., dict[str, Any]],
) -> None:
    for dotted, value, spelled in (("trainer.clip_grad_norm", "Infinity", "Infinity"),
                                   ("lr_scheduler.args.gamma", "NaN", "NaN"),
                                   ("arch.args", '{"widths": [1, -Infinity]}', "-Infinity")):
        config = make_config()
        apply_override(config, f"{dotted}={value}")
        key = "arch.args.widths[1]" if dotted == "arch.args" else dotted
        with pytest.raises(InputError, match=re.escape(f"config: '{key}' is {spelled}; numbers must be finite")):
            config_schema.validate(config)


def test_a_key_given_twice_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "twice.json"
    path.write_text('{"name": "a", "trainer": {"epochs": 1, "epochs": 2}}')
    with pytest.raises(InputError, match=re.escape(f"config '{path}': key 'epochs' appears twice in one object")):
        read_json(path)


def test_a_config_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    path = tmp_path / "notepad.json"
    path.write_bytes('\ufeff{"name": "a", "trainer": {"epochs": 1}}'.encode())  # as some Windows editors save
    assert read_json(path) == {"name": "a", "trainer": {"epochs": 1}}


def test_tilde_in_path_keys_is_the_home_folder_for_every_reader(
    make_config: Callable[..., dict[str, Any]], mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    home.mkdir()
    (home / "digits").symlink_to(mnist_dir)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(work)
    config = make_config(trainer__epochs=1, trainer__save_dir="~/runs")
    config["data_loader"]["args"]["data_dir"] = "~/digits"
    parser = ConfigParser(config, run_id="tilde")
    assert parser["trainer"]["save_dir"] == str(home / "runs")
    assert parser["data_loader"]["args"]["data_dir"] == str(home / "digits")
    train.train(parser)
    assert parser.run_dir == home / "runs" / "Mnist_LeNet" / "tilde"
    assert (parser.run_dir / "latest.pth").is_file()
    assert list(work.iterdir()) == []  # no literal `~` folder
    saved = json.loads((parser.run_dir / "config.json").read_text())
    assert saved["trainer"]["save_dir"] == str(home / "runs")
