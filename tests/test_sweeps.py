"""sweep.py of the default project on real digits, through real processes: a 3-trial study over
the learning rate and the batch size, then a pruned trial; two processes sharing one study on
SQLite and on a PostgreSQL server started here on the loopback address; SIGTERM or kill -9 during
a trial, then the same command resuming that trial from its checkpoint and completing the study;
torchrun ranks running the trials together, and all stopping on rank 0's storage error.

Kept small: 800 training and 200 validation digits, 1-3 epochs, a few trials."""

import csv
import json
import math
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest

from mnist_sample import write_mnist_raw

pytestmark = pytest.mark.slow

NAME = "Mnist_LeNet"
SPACE = {
    "optimizer.args.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
    "data_loader.args.batch_size": {"type": "categorical", "choices": [32, 64]},
}
RANDOM = {"type": "RandomSampler", "args": {}}


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1,000 real training digits (100 per class) in torchvision's layout; the rest is the test split."""
    return write_mnist_raw(tmp_path_factory.mktemp("digits"), n_test_per_class=400)


def workspace(default_project: Path, digits: Path, root: Path, epochs: int, **sweep: Any) -> Path:
    """config.json (the project's, on the CPU and the small digit set, runs under `root`) and
    sweep.json (`sweep` over SPACE) in `root`; returns the study's folder."""
    config = json.loads((default_project / "config.json").read_text())
    config["n_gpu"] = 0
    config["data_loader"]["args"].update(data_dir=str(digits), validation_split=0.2)
    config["trainer"].update(epochs=epochs, save_dir=str(root / "saved"), verbosity=0)
    (root / "config.json").write_text(json.dumps(config, indent=4))
    (root / "sweep.json").write_text(json.dumps({"study": "s", "space": SPACE, **sweep}, indent=4))
    return root / "saved" / NAME / "s"


def start(project: Path, root: Path, *args: str) -> subprocess.Popen[str]:
    """sweep.py in the project, on root's config.json and sweep.json, in a session of its own."""
    command = [sys.executable, "sweep.py", "-c", str(root / "config.json"), "-s", str(root / "sweep.json"), *args]
    return subprocess.Popen(
        command,
        cwd=project,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        start_new_session=True,
    )


def finish(process: subprocess.Popen[str], status: int = 0) -> str:
    out, err = process.communicate(timeout=600)
    assert process.returncode == status, out[-2000:] + err[-3000:]
    return out


def load(folder: Path, storage: str | None = None) -> optuna.Study:
    return optuna.load_study(study_name="s", storage=storage or f"sqlite:///{folder / 'study.db'}")


def column(run_dir: Path, name: str) -> list[float]:
    with (run_dir / "metrics.csv").open(newline="") as file:
        return [float(row[name]) for row in csv.DictReader(file)]


def test_three_trials_then_a_pruned_one(default_project: Path, digits: Path, tmp_path: Path) -> None:
    folder = workspace(
        default_project,
        digits,
        tmp_path,
        epochs=2,
        sampler={"type": "TPESampler", "args": {"seed": 0}},
        pruner={"type": "NopPruner"},
    )
    out = finish(start(default_project, tmp_path, "--trials", "3"))
    study = load(folder)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE"] * 3
    runs = sorted(path.name for path in folder.iterdir() if path.is_dir())
    assert runs == ["trial-0000", "trial-0001", "trial-0002"]
    best = study.best_trial
    run_dir = Path(best.user_attrs["run_dir"])
    assert math.isclose(best.value, min(column(run_dir, "val_loss")), rel_tol=1e-6)  # what model_best.pth holds
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["best_value"] == best.value and summary["best_params"] == best.params
    assert Path(summary["best_checkpoint"]) == run_dir / "model_best.pth"
    assert (run_dir / "model_best.pth").is_file()
    assert f"best run: {run_dir}" in out

    # The same command with a fourth trial and a pruner that prunes any value after the first epoch
    (tmp_path / "sweep.json").write_text(
        json.dumps({"study": "s", "space": SPACE, "pruner": {"type": "ThresholdPruner", "args": {"upper": 0.0}}})
    )
    finish(start(default_project, tmp_path, "--trials", "4", "-o", "trainer.epochs=3"))
    pruned = load(folder).trials[3]
    assert pruned.state.name == "PRUNED" and list(pruned.intermediate_values) == [1]
    assert len(column(Path(pruned.user_attrs["run_dir"]), "val_loss")) == 1  # stopped after 1 of 3 epochs


def pg_binaries() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else shutil.which("pg_ctl") and Path(shutil.which("pg_ctl")).parent


@pytest.fixture
def postgres() -> Iterator[str]:
    """A PostgreSQL server of its own on 127.0.0.1 (as an unprivileged user when run as root,
    which PostgreSQL refuses to be); its URL. Skipped without PostgreSQL or its Python driver."""
    pytest.importorskip("psycopg2", reason="the PostgreSQL driver psycopg2 is not installed")
    binaries = pg_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found")
    root = Path(tempfile.mkdtemp(prefix="sweep-pg-"))  # not under pytest's root-only folders
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("nobody")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "nobody", "--"]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data = root / "data"
    run = [*as_user, str(binaries / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]
    subprocess.run(run, check=True, capture_output=True, timeout=120)
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(
            [*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=120,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_two_processes_share_one_study(
    default_project: Path, digits: Path, tmp_path: Path, database: str, request: pytest.FixtureRequest
) -> None:
    storage = request.getfixturevalue("postgres") if database == "postgresql" else None
    folder = workspace(default_project, digits, tmp_path, epochs=1, sampler=RANDOM)
    args = ["--trials", "4", *(["--storage", storage] if storage else [])]
    processes = [start(default_project, tmp_path, *args) for _ in range(2)]
    outputs = [finish(process) for process in processes]
    study = load(folder, storage)
    finished = [trial for trial in study.trials if trial.state.name == "COMPLETE"]
    assert 4 <= len(finished) <= 6 and len(finished) == len(study.trials)  # each process may add one past 4
    run_dirs = [trial.user_attrs["run_dir"] for trial in finished]
    assert len(set(run_dirs)) == len(run_dirs) and all(len(column(Path(d), "val_loss")) == 1 for d in run_dirs)
    ran = [{line.split()[1] for line in out.splitlines() if line.startswith("trial ")} for out in outputs]
    assert ran[0] and ran[1] and not ran[0] & ran[1]  # both took trials, none twice
    assert ran[0] | ran[1] == {str(trial.number) for trial in finished}


def test_sigterm_during_a_trial_then_the_same_command_resumes_it(
    default_project: Path,
    digits: Path,
    tmp_path: Path,
) -> None:
    folder = workspace(
        default_project, digits, tmp_path, epochs=3, sampler={"type": "RandomSampler", "args": {"seed": 0}}
    )
    process = start(default_project, tmp_path, "--trials", "2")
    first = folder / "trial-0000"
    deadline = time.monotonic() + 300
    while not (first / "checkpoint-epoch1.pth").is_file():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGTERM)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1].startswith("interrupted by signal 15; the trial resumes from ")
    assert "Traceback" not in err
    stopped = load(folder).trials
    assert [trial.state.name for trial in stopped] == ["FAIL", "WAITING"]
    assert stopped[0].user_attrs["resume_from"] == str((first / "latest.pth").resolve())
    epoch1 = (first / "metrics.csv").read_text().splitlines()[:2]

    finish(start(default_project, tmp_path, "--trials", "2"))
    study = load(folder)
    assert [trial.state.name for trial in study.trials] == ["FAIL", "COMPLETE", "COMPLETE"]
    retry = study.trials[1]
    assert retry.params == stopped[0].params and retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs["run_dir"] == str(first.resolve())  # the same run, continued in place
    assert (first / "metrics.csv").read_text().splitlines()[:2] == epoch1
    assert len(column(first, "val_loss")) == 3 and "Resuming from" in (first / "train.log").read_text()
    assert math.isclose(retry.value, min(column(first, "val_loss")), rel_tol=1e-6)
    assert sorted(retry.intermediate_values) == [1, 2, 3]  # the epochs before the stop reported again


def test_kill_9_during_a_trial_then_the_same_command_resumes_it_after_the_heartbeat_grace(
    default_project: Path,
    digits: Path,
    tmp_path: Path,
) -> None:
    folder = workspace(
        default_project,
        digits,
        tmp_path,
        epochs=2,
        heartbeat_interval=1,
        sampler={"type": "RandomSampler", "args": {"seed": 0}},
    )
    process = start(default_project, tmp_path, "--trials", "1")
    first = folder / "trial-0000"
    deadline = time.monotonic() + 300
    while not ((first / "latest.pth").is_file() and len(lines(first / "metrics.csv")) == 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the process and any workers: nothing is told, nothing saved
    process.communicate(timeout=60)
    assert [trial.state.name for trial in load(folder).trials] == ["RUNNING"]  # as the dead process left it
    epoch1 = lines(first / "metrics.csv")
    time.sleep(2.2)  # its heartbeat is stale after twice heartbeat_interval

    finish(start(default_project, tmp_path, "--trials", "1"))
    study = load(folder)
    assert [trial.state.name for trial in study.trials] == ["FAIL", "COMPLETE"]
    dead, retry = study.trials
    assert retry.params == dead.params and retry.user_attrs["retry_of"] == 0
    assert retry.user_attrs["resume_from"] == str((first / "latest.pth").resolve())
    assert retry.user_attrs["run_dir"] == str(first.resolve())  # the same run, continued in place
    assert [path.name for path in folder.iterdir() if path.is_dir()] == ["trial-0000"]
    assert lines(first / "metrics.csv")[:2] == epoch1 and len(column(first, "val_loss")) == 2
    assert "Resuming from" in (first / "train.log").read_text()
    assert sorted(retry.intermediate_values) == [1, 2]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.is_file() else []


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def torchrun_sweep(project: Path, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [*TORCHRUN, "sweep.py", "-c", str(root / "config.json"), "-s", str(root / "sweep.json"), *args]
    return subprocess.run(
        command, cwd=project, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )


def test_torchrun_ranks_run_each_trial_together_and_rank_0_alone_talks_to_the_study(
    default_project: Path,
    digits: Path,
    tmp_path: Path,
) -> None:
    folder = workspace(default_project, digits, tmp_path, epochs=1, sampler=RANDOM)
    result = torchrun_sweep(default_project, tmp_path, "--trials", "2")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    study = load(folder)
    assert [trial.state.name for trial in study.trials] == ["COMPLETE"] * 2
    runs = sorted(path for path in folder.iterdir() if path.is_dir())
    assert [run.name for run in runs] == ["trial-0000", "trial-0001"]
    for trial, run in zip(study.trials, runs, strict=True):
        assert trial.user_attrs["run_dir"] == str(run.resolve())
        assert len(column(run, "val_loss")) == 1 and len(json.loads((run / "run_info.json").read_text())) == 1
        assert len(list(run.glob("events.out.tfevents.*"))) == 1  # written by rank 0 alone
    assert result.stdout.count("trial 0 finished") == 1 and result.stdout.count("study s ") == 1

    # A storage that rank 0 cannot open: every rank stops with its status, the line printed once
    failed = torchrun_sweep(default_project, tmp_path, "--trials", "3", "--storage", "postgresq://u@localhost/db")
    line = "error: --storage 'postgresq://u@localhost/db': cannot open it"
    assert failed.returncode != 0 and failed.stderr.count(line) == 1, failed.stderr[-3000:]
    # rank 0 exits 2; rank 1, told by rank 0, exits 2 too unless torchrun stops it first (a race)
    assert "exitcode  : 2" in failed.stderr
