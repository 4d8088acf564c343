"""What a run directory records about how it was made (`run_info.json`), and a run directory
that cannot be written in: one line and exit status 2, with nothing changed."""

import errno
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import train
from engine import run_files
from parse_config import ConfigParser

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ConfigFactory = Callable[..., dict[str, Any]]


def train_cli(project: Path, cwd: Path, *args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """`python <project>/train.py ARGS` in `cwd`, as a user runs it."""
    # The ceiling keeps git from finding a checkout around the temp folder of the test.
    env = dict(os.environ, OMP_NUM_THREADS="1", GIT_CEILING_DIRECTORIES=str(cwd.parent))
    return subprocess.run([*prefix, sys.executable, str(project / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def git(folder: Path, *args: str) -> str:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]
    return subprocess.run(["git", *identity, "-C", str(folder), *args], check=True, capture_output=True,
                          text=True).stdout.strip()


def snapshot(root: Path) -> dict[str, tuple[int, int, int] | None]:
    """Every file's size, modification time and mode, and every folder (whose own modification
    time the write check's create-and-remove does change)."""
    return {str(path): (path.stat().st_size, path.stat().st_mtime_ns, path.stat().st_mode) if path.is_file()
            else None for path in root.rglob("*")}


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_start_and_a_resume_each_record_how_they_were_run(make_config: ConfigFactory, tmp_path: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(PROJECT_ROOT, project, ignore=shutil.ignore_patterns(
        "__pycache__", ".pytest_cache", ".ruff_cache", ".git", "saved", "data"))
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-q", "-m", "the project")
    commit = git(project, "rev-parse", "HEAD")
    work = tmp_path / "work"
    work.mkdir()
    (work / "config.json").write_text(json.dumps(make_config(trainer__epochs=1)))

    started = train_cli(project, work, "-c", "config.json", "--run-id", "recorded")
    assert started.returncode == 0, started.stderr[-3000:]
    run_dir = tmp_path / "saved" / "Mnist_LeNet" / "recorded"
    with (project / "README.md").open("a") as readme:
        readme.write("\nan uncommitted edit\n")
    resumed = train_cli(project, work, "-r", str(run_dir / "latest.pth"), "-o", "trainer.epochs=2")
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    entries = json.loads((run_dir / "run_info.json").read_text())
    assert [entry["argv"] for entry in entries] == [
        [str(project / "train.py"), "-c", "config.json", "--run-id", "recorded"],
        [str(project / "train.py"), "-r", str(run_dir / "latest.pth"), "-o", "trainer.epochs=2"],
    ]
    assert [entry["git"] for entry in entries] == [{"commit": commit, "dirty": False},
                                                   {"commit": commit, "dirty": True}]
    for entry in entries:
        assert entry["cwd"] == str(work)
        assert entry["python"] == platform.python_version()
        assert entry["torch"] == str(torch.__version__)
        assert entry["torchvision"] == importlib.metadata.version("torchvision")
    assert entries[0]["started"] <= entries[1]["started"]
    assert not [path for path in run_dir.iterdir() if path.name.endswith(".tmp")]


def test_outside_a_git_checkout_the_commit_is_null(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path.parent))
    assert run_files.git_state(tmp_path) is None
    monkeypatch.setenv("PATH", str(tmp_path))  # and without git at all
    assert run_files.git_state(tmp_path) is None


def without_write_override(folder: Path) -> tuple[str, ...]:
    """A command prefix under which a folder without write permission really refuses writes.
    Root ignores permissions (CAP_DAC_OVERRIDE), so as root that capability is dropped with
    setpriv; skips where neither makes the permission bite (then the test would prove nothing)."""
    prefix: tuple[str, ...] = ()
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: folder permissions are not enforced")
        caps = "-dac_override,-dac_read_search"
        prefix = ("setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}")
    probe = subprocess.run([*prefix, sys.executable, "-c", f"open({str(folder / 'probe')!r}, 'w')"],
                           capture_output=True)
    if probe.returncode == 0:
        (folder / "probe").unlink()
        pytest.skip("a read-only folder is writable here: permissions are not enforced")
    return prefix


def test_resuming_into_a_read_only_run_directory_is_one_line_and_changes_nothing(
    make_config: ConfigFactory, tmp_path: Path,
) -> None:
    parser = ConfigParser(make_config(trainer__epochs=1), run_id="read-only")
    train.train(parser)
    assert parser.run_dir is not None
    run_dir = parser.run_dir.resolve()
    for path in run_dir.iterdir():  # a read-only copy of a run, as `chmod -R a-w` leaves it
        path.chmod(0o444)
    run_dir.chmod(0o555)
    try:
        prefix = without_write_override(run_dir)
        before = snapshot(tmp_path)
        result = train_cli(PROJECT_ROOT, tmp_path, "-r", str(run_dir / "latest.pth"), "-o", "trainer.epochs=2",
                           prefix=prefix)
        assert snapshot(tmp_path) == before
    finally:
        run_dir.chmod(0o755)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr == (f"error: run directory '{run_dir}': cannot write in it (Permission denied); copy the "
                             "checkpoint into a writable folder and resume from there\n")


def test_a_failed_write_of_the_run_files_is_one_line_and_changes_nothing(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(make_config(trainer__epochs=1)))
    monkeypatch.chdir(tmp_path)
    assert train.main(["-c", "config.json", "--run-id", "first"]) == 0
    run_dir = tmp_path / "saved" / "Mnist_LeNet" / "first"
    before = snapshot(tmp_path)
    capsys.readouterr()

    def disk_full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    assert train.main(["-r", str(run_dir / "latest.pth"), "-o", "trainer.epochs=2"]) == 4  # a full disk's status
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on ") and err.count("\n") == 1
    assert err.endswith(f" writing {run_dir / 'config.json'}; the run can be resumed from {run_dir / 'latest.pth'} "
                        "once there is space\n")
    assert snapshot(tmp_path) == before
    assert train.main(["-c", "config.json", "--run-id", "second"]) == 4  # a new run: its folder is removed again
    assert "config.json; no checkpoint of this run was written\n" in capsys.readouterr().err
    assert not (run_dir.parent / "second").exists()
