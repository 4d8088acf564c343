"""One owner per run folder, and a full disk: a second process that wants a run folder in use is
refused in one line naming the holder and changes nothing, and takes it over as soon as the
holder is gone (kill -9 included); runs or branches that start at the same moment each get a
folder of their own; a disk that fills up at a save is one line and exit status 4, leaves files
that agree with each other, and the run resumes once there is space."""

import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import PROJECT_ROOT, TENSORBOARD

import train
from logger import setup_logging
from logger.epoch_writer import EpochWriter
from parse_config import ConfigParser
from utils.errors import InputError

ConfigFactory = Callable[..., dict[str, Any]]


def files(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below `folder` with its size and modification time."""
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.rglob("*") if path.is_file()}


def epochs_in(run_dir: Path) -> list[str]:
    with (run_dir / "metrics.csv").open(newline="") as file:
        return [row["epoch"] for row in csv.DictReader(file)]


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def start_train_py(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(PROJECT_ROOT / "train.py"), *args], cwd=cwd, text=True,
                            env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def test_a_second_process_is_refused_while_one_trains_in_the_run_folder_and_takes_over_after_a_kill(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    config = make_config(trainer__epochs=1000, trainer__save_period=1000, trainer__early_stop=0)
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(tmp_path)
    holder = start_train_py(tmp_path, "-c", "config.json", "--run-id", "job")
    run_dir = tmp_path / "saved" / "Mnist_LeNet" / "job"
    job = ["-c", "config.json", "--run-id", "job", "--resume-or-start"]
    try:
        wait_for(run_dir / "latest.pth", holder)
        holder.send_signal(signal.SIGSTOP)  # frozen wherever it is, perhaps mid-save: holds the folder, writes nothing
        reached = load(run_dir / "latest.pth")["epoch"]
        before = files(run_dir)
        capsys.readouterr()
        for command in (["-r", str(run_dir / "latest.pth")], job):  # a resume by hand, a requeued job
            assert train.main([*command, "-o", f"trainer.epochs={reached + 1}"]) == 2
            err = capsys.readouterr().err
            assert err.startswith(f"error: run directory '{run_dir}' is in use by process {holder.pid} on "
                                  f"{socket.gethostname()} since "), err
            assert err.endswith("; one process at a time trains in a run folder: wait for that one to end, or "
                                "stop it\n")
        assert files(run_dir) == before  # not a file written, changed or removed, not even the holder's temp files
    finally:
        holder.kill()  # kill -9: the lock goes with the process
        holder.communicate()
    reached = load(run_dir / "latest.pth")["epoch"]
    assert train.main([*job, "-o", f"trainer.epochs={reached + 1}"]) == 0  # nothing to clean up first
    assert epochs_in(run_dir) == [str(epoch) for epoch in range(1, reached + 2)]
    assert not list(run_dir.glob(".*.tmp"))


def another_process_takes(monkeypatch: pytest.MonkeyPatch, folder: Path) -> None:
    """Make `folder` appear, made by another process, just before this process creates it."""
    mkdir = Path.mkdir

    def first_the_other(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == folder and not folder.exists():
            mkdir(folder, parents=True)
            (folder / "theirs.txt").write_text("the other process's file")
        mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", first_the_other)


def test_runs_that_start_at_the_same_moment_each_get_a_folder(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    parser = ConfigParser(make_config(), run_id="job")
    base = tmp_path / "saved" / "Mnist_LeNet"
    another_process_takes(monkeypatch, base / "job")
    with pytest.raises(InputError, match=f"^run directory '{base / 'job'}' already exists; choose another --run-id$"):
        parser.make_run_dir()  # a name the user chose: theirs
    generated = ConfigParser(make_config())
    another_process_takes(monkeypatch, base / "20300101-120000")
    monkeypatch.setattr("parse_config.datetime", FrozenClock)  # both start in the same second
    assert generated.make_run_dir() == base / "20300101-120000-1"  # a name made from the time: the next free one
    generated.release_run_dir()
    assert sorted(path.name for path in (base / "20300101-120000").iterdir()) == ["theirs.txt"]
    assert sorted(path.name for path in (base / "job").iterdir()) == ["theirs.txt"]


class FrozenClock:
    """`datetime` for parse_config: always 2030-01-01 12:00:00."""

    @staticmethod
    def now() -> "FrozenClock":
        return FrozenClock()

    def strftime(self, pattern: str) -> str:
        return "20300101-120000"


def test_two_branches_from_one_checkpoint_at_the_same_moment_each_get_a_folder(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(trainer__epochs=2)
    train.train(ConfigParser(config, run_id="run"))
    run_dir = tmp_path / "saved" / "Mnist_LeNet" / "run"
    before = files(run_dir)
    another_process_takes(monkeypatch, run_dir.parent / "run-from-epoch1")
    parser = ConfigParser(config, resume_path=run_dir / "checkpoint-epoch1.pth")
    branch = parser.make_run_dir()
    parser.release_run_dir()
    assert branch == run_dir.parent / "run-from-epoch1-2"
    carried, source = (torch.load(path, weights_only=True) for path in (branch / "latest.pth",
                                                                         run_dir / "checkpoint-epoch1.pth"))
    assert carried["run_uid"] == parser.run_uid != source["run_uid"]  # the checkpoint, as the branch's own
    assert carried["epoch"] == 1 and carried["state_dict"].keys() == source["state_dict"].keys()
    assert all(torch.equal(tensor, source["state_dict"][name]) for name, tensor in carried["state_dict"].items())
    assert sorted(path.name for path in (run_dir.parent / "run-from-epoch1").iterdir()) == ["theirs.txt"]
    assert files(run_dir) == before


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 600 KiB tmpfs: one checkpoint of the example (about 370 KB) fits, a second does not."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small file system needs root")
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(folder)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def test_a_disk_full_at_an_epoch_end_is_one_line_status_4_and_the_run_resumes_once_there_is_space(
    make_config: ConfigFactory, tmp_path: Path, small_disk: Path,
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(make_config(trainer__epochs=3, trainer__save_dir=str(small_disk))))
    run_dir = small_disk / "Mnist_LeNet" / "full"
    full = subprocess.run([sys.executable, str(PROJECT_ROOT / "train.py"), "-c", "config.json", "--run-id", "full"],
                          cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 4, full.stderr[-3000:]
    assert full.stderr.startswith(f"error: no space left on {small_disk} (tmpfs) writing {run_dir}/"), full.stderr
    assert full.stderr.endswith(f".pth; the run can be resumed from {run_dir / 'latest.pth'} once there is space\n")
    assert full.stderr.count("\n") == 1  # no traceback of any writer: checkpoint, train.log, TensorBoard
    latest = load(run_dir / "latest.pth")
    assert latest["epoch"] == 1 and epochs_in(run_dir) == ["1"]  # the files agree: epoch 2 was written nowhere
    assert load(run_dir / "model_best.pth")["epoch"] <= latest["epoch"]
    assert not list(run_dir.glob(".*.tmp"))

    subprocess.run(["mount", "-o", "remount,size=4m", str(small_disk)], check=True)  # space, at last
    resumed = subprocess.run([sys.executable, str(PROJECT_ROOT / "train.py"), "-r", str(run_dir / "latest.pth")],
                             cwd=tmp_path, env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True,
                             timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert epochs_in(run_dir) == ["1", "2", "3"] and load(run_dir / "latest.pth")["epoch"] == 3


def test_train_log_and_tensorboard_on_a_full_disk_lose_records_without_a_traceback(
    small_disk: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    setup_logging(1)
    writer = EpochWriter(small_disk, enabled=True, tensorboard=TENSORBOARD)
    try:
        filler = os.open(small_disk / "filler", os.O_WRONLY | os.O_CREAT)
        with pytest.raises(OSError, match="No space left"):
            while True:
                os.write(filler, b"\0" * 65536)
        os.close(filler)
        row = {"epoch": 1, **{f"metric{i}": 0.5 for i in range(100)}}  # more points than the events file's page holds
        writer.write(1, row)  # its log line cannot be written to train.log
        writer.saved(1, row)  # nor TensorBoard's points
        (small_disk / "filler").unlink()
        logging.getLogger("trainer").info("space again")
    finally:
        writer.close()
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err and "Logging error" not in captured.err
    log = (small_disk / "train.log").read_text()
    assert "log records before this one could not be written here (No space left on device)" in log
    assert log.rstrip().endswith("space again")
    if TENSORBOARD:
        assert "TensorBoard: cannot write its events" in captured.out
