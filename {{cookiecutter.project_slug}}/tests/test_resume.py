"""Interruption and exact resume, in-process: a signal in the middle of an epoch (or of its
validation) saves latest.pth at that batch, and resuming from it ends bitwise where an
uninterrupted run ends; keep_last; `-r latest`."""

import csv
import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import train
from parse_config import ConfigParser
from trainer import Trainer
from utils.errors import TrainingInterrupted

ConfigFactory = Callable[..., dict[str, Any]]


def run_dir(tmp_path: Path, run_id: str) -> Path:
    return tmp_path / "saved" / "Mnist_LeNet" / run_id


def final_state(path: Path) -> dict[str, Any]:
    return torch.load(path / "latest.pth", weights_only=True)


def assert_same_tensors(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[key], actual[key]) for key in expected)


def metrics_rows(path: Path) -> list[dict[str, str]]:
    with (path / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def signal_after(monkeypatch: pytest.MonkeyPatch, method: str, calls: int, number: int = signal.SIGTERM) -> None:
    """Deliver `number` to this process right after the `calls`-th call of Trainer.`method`
    (`train_step` or `valid_step`), as a scheduler's SIGTERM would arrive mid-epoch."""
    original = getattr(Trainer, method)
    count = 0

    def wrapped(self: Trainer, *args: Any) -> Any:
        nonlocal count
        result = original(self, *args)
        count += 1
        if count == calls:
            signal.raise_signal(number)
        return result

    monkeypatch.setattr(Trainer, method, wrapped)


@pytest.mark.parametrize(
    ("method", "calls", "num_workers", "batches_done", "gpu", "per_step"),
    [
        ("train_step", 17, 0, 5, False, False),  # 12 batches per epoch: stops in epoch 2 after 5 of them
        ("train_step", 17, 2, 5, False, False),  # the same with two worker processes
        ("valid_step", 3, 0, 12, False, False),  # stops in epoch 2's validation: its training is done
        # a scheduler stepped every optimizer step: the row's lr is still the one epoch 2 began with
        ("train_step", 17, 0, 5, False, True),
        # on a GPU, with trainer.deterministic (and the data kept on the GPU)
        pytest.param("train_step", 17, 0, 5, True, False, id="cuda-deterministic",
                     marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")),
    ],
)
def test_a_signal_mid_epoch_saves_the_position_and_the_resume_is_bitwise(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    method: str, calls: int, num_workers: int, batches_done: int, gpu: bool, per_step: bool,
) -> None:
    config = make_config(trainer__epochs=3, n_gpu=int(gpu), trainer__deterministic=gpu)
    config["data_loader"]["args"]["num_workers"] = num_workers
    if per_step:
        config["lr_scheduler"] = {"type": "StepLR", "args": {"step_size": 2, "gamma": 0.5}, "interval": "step"}
    train.train(ConfigParser(json.loads(json.dumps(config)), run_id="straight"))

    with monkeypatch.context() as patch:
        signal_after(patch, method, calls)
        with pytest.raises(TrainingInterrupted) as stopped:
            train.train(ConfigParser(json.loads(json.dumps(config)), run_id="stopped"))
    assert stopped.value.signal_number == signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is removed again
    stopped_dir = run_dir(tmp_path, "stopped")
    checkpoint = final_state(stopped_dir)
    assert (checkpoint["epoch"], checkpoint["batches_done"]) == (1, batches_done)
    assert [row["epoch"] for row in metrics_rows(stopped_dir)] == ["1"]

    assert train.main(["-r", str(stopped_dir / "latest.pth")]) == 0
    log = (stopped_dir / "train.log").read_text()
    assert "Stopped by SIGTERM in epoch 2" in log
    assert f"at epoch 2 with {batches_done} of its batches already trained" in log
    straight_dir = run_dir(tmp_path, "straight")
    expected, actual = final_state(straight_dir), final_state(stopped_dir)
    assert_same_tensors(expected["state_dict"], actual["state_dict"])
    assert expected["optimizer"]["state"].keys() == actual["optimizer"]["state"].keys()
    for key, value in expected["optimizer"]["state"].items():
        assert_same_tensors(value, actual["optimizer"]["state"][key])
    assert torch.equal(expected["rng"]["torch"], actual["rng"]["torch"])
    assert metrics_rows(stopped_dir) == metrics_rows(straight_dir)  # epoch 2's row too, every digit


@pytest.mark.parametrize(("method", "calls", "batches_done"), [("train_step", 17, 4), ("valid_step", 3, 12)])
def test_a_step_that_fails_because_the_signal_reached_a_helper_process_is_a_stop(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    method: str, calls: int, batches_done: int,
) -> None:
    """A signal to the process group also kills what a step runs (the C++ compiler of
    trainer.compile): the step fails, and that is the stop, at the position before that batch."""
    config = make_config(trainer__epochs=3)
    train.train(ConfigParser(json.loads(json.dumps(config)), run_id="straight"))
    original, count = getattr(Trainer, method), 0

    def killed_helper(self: Trainer, *args: Any) -> Any:
        nonlocal count
        count += 1
        if count == calls:
            signal.raise_signal(signal.SIGTERM)
            raise RuntimeError("C++ compile error: cc1plus was killed by SIGTERM")
        return original(self, *args)

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, method, killed_helper)
        with pytest.raises(TrainingInterrupted):
            train.train(ConfigParser(json.loads(json.dumps(config)), run_id="stopped"))
    stopped_dir = run_dir(tmp_path, "stopped")
    assert (final_state(stopped_dir)["epoch"], final_state(stopped_dir)["batches_done"]) == (1, batches_done)
    assert "A step failed while stopping (RuntimeError: C++ compile error" in (stopped_dir / "train.log").read_text()
    assert train.main(["-r", str(stopped_dir / "latest.pth")]) == 0
    straight_dir = run_dir(tmp_path, "straight")
    assert_same_tensors(final_state(straight_dir)["state_dict"], final_state(stopped_dir)["state_dict"])
    assert metrics_rows(stopped_dir) == metrics_rows(straight_dir)


def test_a_mid_epoch_checkpoint_beyond_the_new_last_epoch_is_refused(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    with monkeypatch.context() as patch:
        signal_after(patch, "train_step", 17)  # epoch 2, batch 5
        with pytest.raises(TrainingInterrupted):
            train.train(ConfigParser(make_config(trainer__epochs=3), run_id="s"))
    folder = run_dir(tmp_path, "s")
    before = {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()}
    assert train.main(["-r", str(folder / "latest.pth"), "-o", "trainer.epochs=1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "stopped inside epoch 2, after trainer.epochs 1" in err
    assert {path.name: path.read_bytes() for path in folder.iterdir() if path.is_file()} == before


def test_sigint_exits_with_130_and_a_resume_hint(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(make_config(trainer__epochs=2)))
    signal_after(monkeypatch, "train_step", 3, signal.SIGINT)
    assert train.main(["-c", str(tmp_path / "config.json"), "--run-id", "x"]) == 130
    latest = run_dir(tmp_path, "x") / "latest.pth"
    assert f"resume with: python train.py -r {latest}" in capsys.readouterr().err
    assert final_state(latest.parent)["batches_done"] == 3


def test_keep_last_keeps_the_newest_periodic_checkpoints_and_always_best_and_latest(
    make_config: ConfigFactory, tmp_path: Path,
) -> None:
    # 'max loss' improves only in epoch 1 (the loss falls), so model_best.pth is epoch 1's
    train.train(ConfigParser(make_config(trainer__epochs=4, trainer__keep_last=2, trainer__monitor="max loss",
                                         trainer__early_stop=0), run_id="k"))
    names = sorted(path.name for path in run_dir(tmp_path, "k").glob("*.pth"))
    assert names == ["checkpoint-epoch3.pth", "checkpoint-epoch4.pth", "latest.pth", "model_best.pth"]
    assert torch.load(run_dir(tmp_path, "k") / "model_best.pth", weights_only=True)["epoch"] == 1


def test_resume_latest_picks_the_newest_run_of_the_config(make_config: ConfigFactory, tmp_path: Path) -> None:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(make_config(trainer__epochs=1)))
    assert train.main(["-c", str(config_file), "--run-id", "older"]) == 0
    assert train.main(["-c", str(config_file), "--run-id", "newer"]) == 0
    older_before = (run_dir(tmp_path, "older") / "latest.pth").read_bytes()
    assert train.main(["-r", "latest", "-c", str(config_file), "-o", "trainer.epochs=2"]) == 0
    assert [row["epoch"] for row in metrics_rows(run_dir(tmp_path, "newer"))] == ["1", "2"]
    assert (run_dir(tmp_path, "older") / "latest.pth").read_bytes() == older_before


def test_stray_temp_files_of_a_killed_writer_are_removed(make_config: ConfigFactory, tmp_path: Path) -> None:
    train.train(ConfigParser(make_config(trainer__epochs=1), run_id="t"))
    stray = run_dir(tmp_path, "t") / ".latest.pth.abc123.tmp"
    stray.write_bytes(b"half a checkpoint")
    assert train.main(["-r", str(run_dir(tmp_path, "t") / "latest.pth"), "-o", "trainer.epochs=2"]) == 0
    assert not stray.exists()


def files(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.rglob("*") if path.is_file()}


def test_resume_or_start_starts_resumes_and_then_ends_at_once_wherever_the_overrides_put_the_run(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """The one command of a job script, run on its first start and on every requeue."""
    (tmp_path / "config.json").write_text(json.dumps(make_config(trainer__save_dir=str(tmp_path / "not-here"))))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    job = ["-c", "config.json", "--run-id", "job7", "--resume-or-start", "-o", "trainer.save_dir=~/runs",
           "-o", "name=Requeued"]
    folder = tmp_path / "home" / "runs" / "Requeued" / "job7"
    with monkeypatch.context() as patch:
        signal_after(patch, "train_step", 17)  # preempted in epoch 2
        assert train.main(job) == 143
    assert train.main(job) == 0  # requeued: resumed exactly where it stopped
    assert "Resuming from" in (folder / "train.log").read_text()
    assert [row["epoch"] for row in metrics_rows(folder)] == ["1", "2"]
    before = files(tmp_path)
    capsys.readouterr()
    assert train.main(job) == 0  # requeued once more: finished, nothing to do
    assert capsys.readouterr().out == (f"run directory '{folder}' has finished: it reached epoch 2 of trainer.epochs "
                                       "2; nothing to do\n")
    assert files(tmp_path) == before
    assert not (tmp_path / "not-here").exists()
    assert train.main([*job, "--bs", "16"]) == 0  # a job script whose config changed since: said
    assert capsys.readouterr().out == (
        f"run directory '{folder}' has finished: it reached epoch 2 of trainer.epochs 2; nothing to do (this config "
        "could not have continued it: resuming cannot change 'data_loader.args.batch_size' (32 -> 16))\n")
    assert files(tmp_path) == before


def test_resume_or_start_ends_at_once_after_an_early_stop(
    make_config: ConfigFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    # 'max loss' improves only in epoch 1 (the loss falls): early_stop 1 ends the run after epoch 2
    config = make_config(trainer__epochs=5, trainer__monitor="max loss", trainer__early_stop=1)
    (tmp_path / "config.json").write_text(json.dumps(config))
    job = ["-c", str(tmp_path / "config.json"), "--run-id", "early", "--resume-or-start"]
    assert train.main(job) == 0
    folder = run_dir(tmp_path, "early")
    before = files(folder)
    capsys.readouterr()
    assert train.main(job) == 0
    assert "has finished: it stopped early after epoch 2: trainer.early_stop is 1 and 'loss' last improved in " \
           "epoch 1; nothing to do" in capsys.readouterr().out
    assert files(folder) == before
    # -r on it, even with more epochs, is one line: another epoch would only end it again (it used
    # to train one more epoch on every call)
    assert train.main(["-r", str(folder / "latest.pth"), "-o", "trainer.epochs=6"]) == 2
    assert capsys.readouterr().err == (
        f"error: checkpoint '{folder / 'latest.pth'}': the run has finished: it stopped early after epoch 2: "
        "trainer.early_stop is 1 and 'loss' last improved in epoch 1; to train longer, resume with "
        "-o trainer.early_stop=N, N above 1 (or 0: no early stopping)\n")
    assert files(folder) == before
    assert train.main(["-r", str(folder / "latest.pth"), "-o", "trainer.early_stop=0"]) == 0
    assert [row["epoch"] for row in metrics_rows(folder)] == ["1", "2", "3", "4", "5"]


def test_resume_or_start_starts_again_in_a_folder_without_a_checkpoint(
    make_config: ConfigFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(trainer__epochs=1)
    (tmp_path / "config.json").write_text(json.dumps(config))
    killed = ConfigParser(config, run_id="job8")  # a first start killed before its first epoch ended
    killed.make_run_dir()
    killed.release_run_dir()
    job = ["-c", str(tmp_path / "config.json"), "--run-id", "job8", "--resume-or-start"]
    assert train.main(job) == 0
    folder = run_dir(tmp_path, "job8")
    assert len(json.loads((folder / "run_info.json").read_text())) == 2  # both starts are on record
    assert [row["epoch"] for row in metrics_rows(folder)] == ["1"]

    (folder / "latest.pth").unlink()  # checkpoints, but no latest.pth to resume: not started over them
    capsys.readouterr()
    assert train.main(job) == 2
    assert capsys.readouterr().err == (f"error: run directory '{folder}' holds checkpoint-epoch1.pth, model_best.pth "
                                       "but no latest.pth; resume from one of them with -r, or move the folder away "
                                       "to start the run again\n")


def test_seeds_train_one_run_per_seed_and_the_same_command_carries_on_after_a_stop(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """`--seeds 1,2,3 --run-id lr`: runs lr-seed1, lr-seed2, lr-seed3; stopped in the second, the
    same command resumes it exactly, trains the third and leaves the first as it was."""
    (tmp_path / "config.json").write_text(json.dumps(make_config(trainer__epochs=2)))
    command = ["-c", str(tmp_path / "config.json"), "--seeds", "1,2,3", "--run-id", "lr"]
    with monkeypatch.context() as patch:
        signal_after(patch, "train_step", 24 + 17)  # seed 1's 2 epochs of 12 batches, then 17 of seed 2's
        assert train.main(command) == 143
    assert "in run lr-seed2; run the same command with --run-id lr" in capsys.readouterr().err
    first = files(run_dir(tmp_path, "lr-seed1"))
    assert train.main(command) == 0
    assert files(run_dir(tmp_path, "lr-seed1")) == first
    for seed in (1, 2, 3):
        folder = run_dir(tmp_path, f"lr-seed{seed}")
        assert json.loads((folder / "config.json").read_text())["trainer"]["seed"] == seed
        assert [row["epoch"] for row in metrics_rows(folder)] == ["1", "2"]
    assert "Resuming from" in (run_dir(tmp_path, "lr-seed2") / "train.log").read_text()
    straight = ConfigParser(make_config(trainer__epochs=2, trainer__seed=2), run_id="straight")
    train.train(straight)
    assert metrics_rows(run_dir(tmp_path, "lr-seed2")) == metrics_rows(run_dir(tmp_path, "straight"))


@pytest.mark.parametrize(("extra", "message"), [
    (["--seeds", "1,1"], "error: argument --seeds: '1,1' names a seed twice (see"),
    (["--seeds", "1,x"], "error: argument --seeds: '1,x' is not a list of whole numbers, e.g. 1,2,3 (see"),
    (["--seeds", "1,2", "--dry-run"], "error: --seeds trains the config (-c) once per seed; leave out --dry-run\n"),
    (["--seeds", "1,2", "--resume-or-start"], "error: --seeds trains the config (-c) once per seed; leave out "
                                              "--resume-or-start\n"),
])
def test_bad_seeds_are_one_line_and_train_nothing(
    make_config: ConfigFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str,
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(make_config()))
    try:
        status = train.main(["-c", str(tmp_path / "config.json"), *extra])
    except SystemExit as exc:  # argparse's own refusals
        status = exc.code
    assert status == 2
    assert capsys.readouterr().err.startswith(message)
    assert not (tmp_path / "saved").exists()


def test_the_resume_hint_names_the_same_absolute_checkpoint_after_every_stop(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(make_config(trainer__epochs=2, trainer__save_dir="saved")))
    monkeypatch.chdir(tmp_path)  # a save_dir relative to the working folder
    hints = []
    for command in (["-c", "config.json", "--run-id", "hint"], ["-r", "saved/Mnist_LeNet/hint/latest.pth"]):
        with monkeypatch.context() as patch:
            signal_after(patch, "train_step", 3)
            assert train.main(command) == 143
        hints.append(capsys.readouterr().err)
    latest = tmp_path.resolve() / "saved" / "Mnist_LeNet" / "hint" / "latest.pth"
    assert hints == [f"interrupted by signal 15; resume with: python train.py -r {latest}\n"] * 2
