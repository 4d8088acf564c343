"""MLflow tracking of a project rendered with mlflow=yes (and sweeps), through real processes on
real digits, against one real `mlflow server` (SQLite behind it) that a module fixture starts on
the loopback address: kill -9 during a run, then the resume; 2 DDP processes through launch.py;
a sweep of 2 trials; the server stopped during a run and started again. Each time the MLflow
history of the run equals its metrics.csv, one value per epoch.

Kept short: 300 real training digits (240 trained, 60 validated), batch 64, 1-4 epochs."""

import contextlib
import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import render_into, run_python
from mnist_sample import write_mnist_raw
from test_preemption import Job, launch_command, train_command

mlflow_tracking = pytest.importorskip("mlflow.tracking")

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("mlflow")]

NAME = "Mnist_LeNet"
SERVER_START_S = 120  # an import of mlflow, then uvicorn's: seconds, more on a busy machine


class Server:
    """`mlflow server` on 127.0.0.1 with a SQLite store in `folder`, in a session of its own."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        with socket.socket() as probe:  # a free port, kept across a restart
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        """Start it and wait until it answers; returns "" or why it did not start."""
        command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                   f"sqlite:///{self.folder / 'mlflow.db'}", "--artifacts-destination", str(self.folder / "artifacts"),
                   "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]  # fmt: skip
        log = (self.folder / "server.log").open("ab")
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job runner processes
        self.process = subprocess.Popen(command, stdout=log, stderr=log, env=env, start_new_session=True)
        deadline = time.monotonic() + SERVER_START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return f"mlflow server exited with {self.process.returncode}: {self.log_tail()}"
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2):
                    return ""
            except OSError:
                time.sleep(0.2)
        self.stop()
        return f"mlflow server did not answer within {SERVER_START_S} s: {self.log_tail()}"

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def log_tail(self) -> str:
        return (self.folder / "server.log").read_text(errors="replace")[-1500:]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("mlflow-server"))
    problem = server.start()
    if problem:
        pytest.skip(f"cannot start an MLflow server here: {problem}")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return render_into(tmp_path_factory.mktemp("mlflow-project"), {"mlflow": "yes", "sweeps": "yes"})


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """300 real training digits (30 per class) in torchvision's layout."""
    return write_mnist_raw(tmp_path_factory.mktemp("digits"), n_test_per_class=470)


def write_config(project: Path, digits: Path, root: Path, server: Server, epochs: int) -> Path:
    config = json.loads((project / "config.json").read_text())
    config["n_gpu"] = 0
    config["data_loader"]["args"].update(data_dir=str(digits), batch_size=64, validation_split=0.2)
    config["trainer"].update(epochs=epochs, save_dir=str(root / "saved"), verbosity=1)
    config["trainer"]["mlflow"]["tracking_uri"] = server.url
    path = root / "config.json"
    path.write_text(json.dumps(config, indent=4))
    return path


def mlflow_run_id(folder: Path) -> str:
    return json.loads((folder / "mlflow_run.json").read_text())["run_id"]


def assert_mirrors_metrics_csv(server: Server, folder: Path) -> None:
    """The folder's MLflow run holds every value of its metrics.csv at step = epoch, and
    nothing else; it is the only MLflow run of the folder."""
    client = mlflow_tracking.MlflowClient(server.url)
    run = client.get_run(mlflow_run_id(folder))
    with (folder / "metrics.csv").open(newline="") as file:
        rows = list(csv.DictReader(file))
    expected = {key: [(int(row["epoch"]), float(row[key])) for row in rows] for key in rows[0] if key != "epoch"}
    history = {
        key: sorted((metric.step, metric.value) for metric in client.get_metric_history(run.info.run_id, key))
        for key in run.data.metrics
    }
    assert history == expected
    assert len(client.search_runs([run.info.experiment_id], f"tags.run_dir = '{folder}'")) == 1
    assert run.info.status == "FINISHED"


@contextlib.contextmanager
def held(job: Job) -> Iterator[None]:
    """The job's processes stopped (SIGSTOP) for the block, then continued."""
    job.signal_group(signal.SIGSTOP)
    try:
        yield
    finally:
        job.signal_group(signal.SIGCONT)


def test_kill_9_then_the_same_command_resumes_into_the_same_mlflow_run(
    project: Path, digits: Path, server: Server, tmp_path: Path
) -> None:
    config = write_config(project, digits, tmp_path, server, epochs=3)
    command = train_command("-c", str(config), "--run-id", "k9", "--resume-or-start")
    job = Job(project, command)
    job.wait_for("epoch 1: ")  # the row is written, its save and its send follow: kill somewhere there
    job.signal_group(signal.SIGKILL)
    assert job.finish() == -signal.SIGKILL
    resumed = run_python(project, *command[1:])
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    folder = tmp_path / "saved" / NAME / "k9"
    assert [line.split(",")[0] for line in (folder / "metrics.csv").read_text().splitlines()[1:]] == ["1", "2", "3"]
    assert_mirrors_metrics_csv(server, folder)


def test_ddp_rank_0_alone_tracks_the_run(project: Path, digits: Path, server: Server, tmp_path: Path) -> None:
    config = write_config(project, digits, tmp_path, server, epochs=2)
    job = Job(project, launch_command("-c", str(config), "--run-id", "ddp"))
    assert job.finish() == 0, job.text()[-3000:]
    assert_mirrors_metrics_csv(server, tmp_path / "saved" / NAME / "ddp")


def test_each_trial_of_a_sweep_is_an_mlflow_run_tagged_with_its_study_and_number(
    project: Path, digits: Path, server: Server, tmp_path: Path
) -> None:
    config = write_config(project, digits, tmp_path, server, epochs=2)
    space = {"optimizer.args.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}}
    sweep: dict[str, Any] = {"study": "s", "space": space, "sampler": {"type": "RandomSampler", "args": {}}}
    (tmp_path / "sweep.json").write_text(json.dumps(sweep))
    swept = run_python(project, "sweep.py", "-c", str(config), "-s", str(tmp_path / "sweep.json"), "--trials", "2")
    assert swept.returncode == 0, swept.stdout[-2000:] + swept.stderr[-2000:]
    client = mlflow_tracking.MlflowClient(server.url)
    trials = {}
    for number in (0, 1):
        folder = tmp_path / "saved" / NAME / "s" / f"trial-{number:04d}"
        assert_mirrors_metrics_csv(server, folder)
        trials[number] = client.get_run(mlflow_run_id(folder)).data.tags
    assert {(tags["sweep.study"], tags["sweep.trial"]) for tags in trials.values()} == {("s", "0"), ("s", "1")}


def test_a_server_that_goes_away_during_a_run_costs_one_warning_and_gets_every_epoch(
    project: Path, digits: Path, server: Server, tmp_path: Path
) -> None:
    """Stopped once epoch 1 reached it, while the run is held (SIGSTOP), so that epoch 2's end
    finds it away (one warning); held again while the server starts again, so that epochs 3
    and 4 end with it back."""
    config = write_config(project, digits, tmp_path, server, epochs=4)
    job = Job(project, train_command("-c", str(config), "--run-id", "away"))
    folder = tmp_path / "saved" / NAME / "away"
    job.wait_for("epoch 1: ")
    client = mlflow_tracking.MlflowClient(server.url)
    deadline = time.monotonic() + 60
    while not (folder / "mlflow_run.json").exists() or not client.get_metric_history(mlflow_run_id(folder), "loss"):
        assert time.monotonic() < deadline, "epoch 1 never reached the server"
        time.sleep(0.05)
    with held(job):
        server.stop()
    job.wait_for("does not answer")
    with held(job):
        problem = server.start()
    assert problem == "", problem
    assert job.finish() == 0, job.text()[-3000:]
    output = job.text()
    assert output.count("does not answer") == 1 and output.count("answers again") == 1, output[-3000:]
    assert "View run" not in output  # MLflow's own links stay out: the log names the run
    assert_mirrors_metrics_csv(server, folder)
