"""convert_checkpoint.py: a victoresque/pytorch-template checkpoint becomes one that test.py
evaluates and train.py fine-tunes from, and only with --trust-pickle."""

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import victoresque_checkpoint

import convert_checkpoint
import test as test_script
import train
from engine.checkpoint import load_checkpoint

ConfigFactory = Callable[..., dict[str, Any]]
# Keys this project added to victoresque's config.json; a victoresque config has none of them.
OUR_TRAINER_KEYS = ("seed", "precision", "clip_grad_norm", "keep_last", "accumulate_grad_batches")


@pytest.fixture
def trained(make_config: ConfigFactory, tmp_path: Path) -> Path:
    """latest.pth of a one-epoch run, and config.json beside the test's files."""
    config = make_config(trainer__epochs=1)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert train.main(["-c", str(tmp_path / "config.json"), "--run-id", "source"]) == 0
    return tmp_path / "saved" / "Mnist_LeNet" / "source" / "latest.pth"


def victoresque_file(trained: Path, path: Path, **changes: Any) -> Path:
    """The trained weights saved as victoresque would have saved them; `changes` edit its config."""
    checkpoint = torch.load(trained, weights_only=True)
    config = json.loads(json.dumps(checkpoint["config"]))
    for key in OUR_TRAINER_KEYS:
        config["trainer"].pop(key, None)
    config["trainer"].update(changes)
    torch.save(victoresque_checkpoint(checkpoint["state_dict"], config), path)
    return path


def run(script: Any, args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = script.main(args)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_conversion_refuses_to_unpickle_without_trust_pickle(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    old = victoresque_file(trained, tmp_path / "old.pth")
    capsys.readouterr()
    status, out, err = run(convert_checkpoint, [str(old), str(tmp_path / "new.pth")], capsys)
    assert status == 2 and out == ""
    assert err == (f"error: checkpoint '{old}': holds pickled Python objects, and unpickling runs code stored in "
                   "the file; if you trust where it came from, run again with --trust-pickle\n")
    assert not (tmp_path / "new.pth").exists()


def test_converted_checkpoint_evaluates_fine_tunes_and_is_not_resumed(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    old, new = victoresque_file(trained, tmp_path / "old.pth"), tmp_path / "new.pth"
    capsys.readouterr()
    status, out, err = run(convert_checkpoint, [str(old), str(new), "--trust-pickle"], capsys)
    assert status == 0 and err == ""
    assert out.startswith(f"wrote {new}: MnistModel weights of epoch 3")

    converted = load_checkpoint(new)  # weights only: plain data
    assert converted["arch"] == "MnistModel" and converted["epoch"] == 3 and converted["monitor_best"] == 0.1
    assert not any(key.startswith("module.") for key in converted["state_dict"])
    assert converted["config"]["trainer"]["precision"] == "fp32"  # this project's defaults filled in
    original = torch.load(trained, weights_only=True)["state_dict"]
    assert all(torch.equal(original[key], converted["state_dict"][key]) for key in original)

    expected, actual = run(test_script, ["-r", str(trained)], capsys), run(test_script, ["-r", str(new)], capsys)
    assert actual[0] == expected[0] == 0 and actual[1] == expected[1]  # the same weights score the same
    tune = ["-c", str(tmp_path / "config.json"), "-r", str(new), "--fine-tune", "--run-id", "tuned"]
    status, _, err = run(train, tune, capsys)
    assert status == 0, err
    assert (tmp_path / "saved" / "Mnist_LeNet" / "tuned" / "latest.pth").is_file()
    status, _, err = run(train, ["-r", str(new), "-o", "trainer.epochs=5"], capsys)
    assert status == 2
    assert err == (f"error: checkpoint '{new}': holds weights only (no optimizer state), so it cannot be resumed; "
                   f"fine-tune from it with --fine-tune -r {new}\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "new.pth", "old.pth", "saved"]


def test_a_config_this_schema_refuses_is_kept_with_a_warning(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    old = victoresque_file(trained, tmp_path / "old.pth", log_step=10)  # a key of a victoresque fork
    new = tmp_path / "new.pth"
    capsys.readouterr()
    status, _, err = run(convert_checkpoint, [str(old), str(new), "--trust-pickle"], capsys)
    assert status == 0
    assert err.startswith("warning: the converted config does not pass this project's schema "
                          "(config: unknown key 'trainer.log_step'") and err.count("\n") == 1
    assert load_checkpoint(new)["config"]["trainer"]["log_step"] == 10
    status, _, err = run(test_script, ["-r", str(new)], capsys)
    assert status == 2 and "unknown key 'trainer.log_step'" in err
    assert run(test_script, ["-c", str(tmp_path / "config.json"), "-r", str(new)], capsys)[0] == 0


def test_conversion_never_overwrites_and_takes_arch_from_the_config_under_data_parallel(
    trained: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    old = victoresque_file(trained, tmp_path / "old.pth")
    checkpoint = torch.load(old, weights_only=False)
    torch.save({**checkpoint, "arch": "DataParallel"}, old)  # victoresque's arch with n_gpu > 1
    taken = tmp_path / "taken.pth"
    taken.write_bytes(b"keep me")
    status, _, err = run(convert_checkpoint, [str(old), str(taken), "--trust-pickle"], capsys)
    assert status == 2 and err == f"error: output '{taken}': already exists; choose a new file name\n"
    assert taken.read_bytes() == b"keep me"
    assert run(convert_checkpoint, [str(old), str(tmp_path / "new.pth"), "--trust-pickle"], capsys)[0] == 0
    assert load_checkpoint(tmp_path / "new.pth")["arch"] == "MnistModel"
