"""Exact resume through real processes on the real-digit sample: 2 epochs + resume equals 4
straight epochs; `kill -9` at random moments leaves every .pth loadable and the run resumable;
damaged or foreign checkpoints are refused in one line. (Signals: tests/test_preemption.py.)"""

import random
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import run_python

pytestmark = pytest.mark.slow

KILL_TRIALS = 5


@pytest.fixture(scope="module")
def project(default_project: Path) -> Path:
    return default_project  # shared by the modules that run the default project


def data_args(data_dir: Path, save_dir: Path, *more: str) -> list[str]:
    """Overrides every run here shares: the sample digits, a save_dir of the test, the CPU."""
    return ["-o", f"data_loader.args.data_dir={data_dir}", "-o", f"trainer.save_dir={save_dir}", "-o", "n_gpu=0", *more]


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_bitwise(expected_path: Path, actual_path: Path) -> None:
    """Weights and optimizer state of two checkpoints are equal tensor by tensor."""
    expected, actual = load(expected_path), load(actual_path)
    assert expected["state_dict"].keys() == actual["state_dict"].keys()
    for key, tensor in expected["state_dict"].items():
        assert torch.equal(tensor, actual["state_dict"][key]), key
    for index, state in expected["optimizer"]["state"].items():
        for key, tensor in state.items():
            assert torch.equal(tensor, actual["optimizer"]["state"][index][key]), (index, key)


def epoch_seconds(run_dir: Path) -> float:
    """How long epoch 2 of a finished run took, from the timestamps of its train.log."""
    stamps = {}
    for line in (run_dir / "train.log").read_text().splitlines():
        for epoch in (1, 2):
            if f": epoch {epoch}: " in line:
                stamps[epoch] = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
    return (stamps[2] - stamps[1]).total_seconds()


def epochs_in_csv(run_dir: Path) -> list[str]:
    lines = (run_dir / "metrics.csv").read_text().splitlines()[1:]
    return [line.split(",")[0] for line in lines]


def test_two_epochs_then_resume_to_four_is_bitwise_the_straight_run(
    project: Path, mnist_sample_dir: Path, tmp_path: Path
) -> None:
    common = data_args(mnist_sample_dir, tmp_path)  # the default config otherwise: batch 128, dropout, StepLR
    started = time.perf_counter()
    straight = run_python(
        project, "train.py", "-c", "config.json", "--run-id", "straight", "-o", "trainer.epochs=4", *common
    )
    assert straight.returncode == 0, straight.stderr[-2000:]
    first = run_python(project, "train.py", "-c", "config.json", "--run-id", "split", "-o", "trainer.epochs=2", *common)
    assert first.returncode == 0, first.stderr[-2000:]
    split = tmp_path / "Mnist_LeNet" / "split"
    resume_started = time.perf_counter()
    resumed = run_python(project, "train.py", "-r", str(split / "checkpoint-epoch2.pth"), "-o", "trainer.epochs=4")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    print(
        f"resume to epoch 4 took {time.perf_counter() - resume_started:.1f} s; "
        f"the whole test {time.perf_counter() - started:.1f} s"
    )
    assert_bitwise(tmp_path / "Mnist_LeNet" / "straight" / "latest.pth", split / "latest.pth")
    assert (split / "metrics.csv").read_text() == (tmp_path / "Mnist_LeNet" / "straight" / "metrics.csv").read_text()


def start_training(project: Path, *args: str, log: Path) -> subprocess.Popen[str]:
    """train.py in the background, its stderr (progress bars) into `log`, its stdout piped."""
    return subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
    )


def wait_for_line(process: subprocess.Popen[str], text: str) -> float:
    """Read the process's stdout until a line contains `text`; returns when that was."""
    assert process.stdout is not None
    for line in process.stdout:
        if text in line:
            return time.perf_counter()
    raise AssertionError(f"the run ended before printing {text!r}")


def test_kill_9_at_random_moments_leaves_loadable_checkpoints_and_a_resumable_run(
    project: Path, mnist_sample_dir: Path, tmp_path: Path
) -> None:
    common = data_args(mnist_sample_dir, tmp_path, "-o", "trainer.epochs=3", "--bs", "32")
    straight = run_python(project, "train.py", "-c", "config.json", "--run-id", "straight", *common)
    assert straight.returncode == 0, straight.stderr[-2000:]
    epoch = epoch_seconds(tmp_path / "Mnist_LeNet" / "straight")
    rng = random.Random(20261127)
    resume_seconds = []
    for trial in range(KILL_TRIALS):
        run_id = f"killed{trial}"
        process = start_training(
            project, "-c", "config.json", "--run-id", run_id, *common, log=tmp_path / f"{run_id}.log"
        )
        wait_for_line(process, "epoch 1: ")  # latest.pth is written right after this line
        time.sleep(rng.uniform(0.0, 1.9 * epoch))  # somewhere in epochs 2 and 3
        process.kill()  # SIGKILL: no handler, no cleanup
        process.wait(timeout=30)
        run_dir = tmp_path / "Mnist_LeNet" / run_id
        for path in run_dir.glob("*.pth"):
            assert load(path)["format_version"] >= 1, path  # every .pth on disk is whole
        if process.returncode == 0 or load(run_dir / "latest.pth")["epoch"] == 3:
            # The kill landed after the last epoch's save (while the process was closing) or the
            # run had ended: nothing to resume, and what is on disk is the finished run.
            assert epochs_in_csv(run_dir) == ["1", "2", "3"]
            assert_bitwise(tmp_path / "Mnist_LeNet" / "straight" / "latest.pth", run_dir / "latest.pth")
            continue
        began = time.perf_counter()
        resumed = run_python(project, "train.py", "-r", str(run_dir / "latest.pth"))
        resume_seconds.append(time.perf_counter() - began)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        assert epochs_in_csv(run_dir) == ["1", "2", "3"]
        assert_bitwise(tmp_path / "Mnist_LeNet" / "straight" / "latest.pth", run_dir / "latest.pth")
    print(
        f"{KILL_TRIALS} kill -9 trials, {len(resume_seconds)} resumed: "
        + ", ".join(f"{seconds:.1f} s" for seconds in resume_seconds)
    )
    assert resume_seconds, "every kill landed after the run had saved its last epoch"


@pytest.fixture(scope="module")
def good_checkpoint(project: Path, mnist_sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    save_dir = tmp_path_factory.mktemp("saved")
    result = run_python(
        project,
        "train.py",
        "-c",
        "config.json",
        "--run-id",
        "good",
        "-o",
        "trainer.epochs=1",
        *data_args(mnist_sample_dir, save_dir),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return save_dir / "Mnist_LeNet" / "good" / "latest.pth"


@pytest.mark.xdist_group("resume-good-checkpoint")  # with pytest-xdist: one worker trains it once
@pytest.mark.parametrize(
    ("name", "script", "message"),
    [
        ("truncated.pth", "train.py", "not a readable checkpoint"),
        ("truncated.pth", "test.py", "not a readable checkpoint"),
        ("foreign.pth", "train.py", "not a checkpoint of this project (no format_version)"),
        ("other_arch.pth", "train.py", "saved for arch 'ResNet', the config builds 'MnistModel'"),
        ("newer.pth", "test.py", "format_version 99 is newer than this code reads"),
    ],
)
def test_damaged_or_foreign_checkpoints_are_refused_in_one_line(
    project: Path, good_checkpoint: Path, tmp_path: Path, name: str, script: str, message: str
) -> None:
    checkpoint = load(good_checkpoint)
    bad = tmp_path / name
    if name == "truncated.pth":
        bad.write_bytes(good_checkpoint.read_bytes()[:5000])
    elif name == "foreign.pth":
        torch.save({"model": checkpoint["state_dict"]}, bad)
    elif name == "other_arch.pth":
        torch.save({**checkpoint, "arch": "ResNet"}, bad)
    else:
        torch.save({**checkpoint, "format_version": 99}, bad)
    watched = [tmp_path, good_checkpoint.parent]
    before = {path: path.stat().st_mtime_ns for root in watched for path in root.rglob("*")}
    refused = run_python(project, script, "-r", str(bad), "-o", "trainer.epochs=2")
    assert refused.returncode == 2
    assert refused.stderr.startswith(f"error: checkpoint '{bad}': ") and refused.stderr.count("\n") == 1
    assert message in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
    assert {path: path.stat().st_mtime_ns for root in watched for path in root.rglob("*")} == before
