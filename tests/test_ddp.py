"""DDP through torchrun on the CPU (gloo), on the real-digit sample: two processes train,
write one run directory, resume, and their checkpoint evaluates in a single process; two
"nodes" on loopback meet through c10d rendezvous; 2 x batch 64 takes as many optimizer steps
per epoch as 1 x batch 128; an epoch stopped on 2 processes and resumed on 1 (and the other way
round) trains each of its samples once. (Signals under torchrun: tests/test_preemption.py.)"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import run_python

pytestmark = pytest.mark.slow

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


@pytest.fixture(scope="module")
def project(default_project: Path) -> Path:
    return default_project  # shared by the modules that run the default project


def common(data_dir: Path, save_dir: Path, *more: str) -> list[str]:
    return [
        "-o",
        f"data_loader.args.data_dir={data_dir}",
        "-o",
        f"trainer.save_dir={save_dir}",
        "-o",
        "trainer.verbosity=1",
        *more,
    ]


def torchrun(
    project: Path, *args: str, timeout: float = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """One node's torchrun on a free port (its default, 29500, may be held by a test running beside)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    command = [*TORCHRUN, f"--master_port={free_port()}", *args]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=timeout, env=env)


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    return [dict(zip(lines[0].split(","), line.split(","), strict=True)) for line in lines[1:]]


def loopback_nodes() -> list[str]:
    """torchrun's options for two "nodes" of one process each on this machine (c10d rendezvous)."""
    return [
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{free_port()}",
        "--rdzv_id=loopback",
    ]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_processes_train_one_run_directory_resume_and_evaluate(
    project: Path, mnist_sample_dir: Path, tmp_path: Path
) -> None:
    # batch 16 on each of the 2 processes: 113 optimizer steps of 32 images an epoch
    started = time.perf_counter()
    args = common(mnist_sample_dir, tmp_path, "-o", "trainer.epochs=2", "--bs", "16")
    result = torchrun(project, "--nproc_per_node=2", "train.py", "-c", "config.json", *args)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dirs = list((tmp_path / "Mnist_LeNet").iterdir())
    assert len(run_dirs) == 1  # both ranks agreed on one run id (the start time of rank 0)
    run_dir = run_dirs[0]
    rows = csv_rows(run_dir)
    assert [row["epoch"] for row in rows] == ["1", "2"] and float(rows[-1]["val_accuracy"]) >= 0.85, rows
    assert result.stdout.count("epoch 2: ") == 1  # only rank 0 logs
    latest = load(run_dir / "latest.pth")
    assert latest["global_step"] == 2 * 113 and len(latest["rng_per_rank"]) == 2
    assert not any(key.startswith("module.") for key in latest["state_dict"])

    resumed = torchrun(
        project, "--nproc_per_node=2", "train.py", "-r", str(run_dir / "latest.pth"), "-o", "trainer.epochs=3"
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [row["epoch"] for row in csv_rows(run_dir)] == ["1", "2", "3"]
    assert list((tmp_path / "Mnist_LeNet").iterdir()) == [run_dir]
    assert load(run_dir / "latest.pth")["global_step"] == 3 * 113

    evaluated = run_python(
        project, "test.py", "-r", str(run_dir / "model_best.pth"), "-o", f"data_loader.args.data_dir={mnist_sample_dir}"
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    accuracy = float(next(line for line in evaluated.stdout.splitlines() if line.startswith("accuracy: ")).split()[1])
    assert accuracy >= 0.85
    print(f"DDP train 2 epochs + resume 1 + evaluate: {time.perf_counter() - started:.1f} s, test accuracy {accuracy}")


def test_two_nodes_on_loopback_take_as_many_steps_as_one_process_with_the_whole_batch(
    project: Path, mnist_sample_dir: Path, tmp_path: Path
) -> None:
    started = time.perf_counter()
    rendezvous = loopback_nodes()
    args = [
        "train.py",
        "-c",
        "config.json",
        "--run-id",
        "nodes",
        *common(mnist_sample_dir, tmp_path, "-o", "trainer.epochs=1", "--bs", "64"),
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    nodes = [
        subprocess.Popen(
            [*TORCHRUN, *rendezvous, *args],
            cwd=project,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(2)
    ]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, err) in zip(nodes, outputs, strict=True):
        assert node.returncode == 0, err[-3000:]
    assert [path.name for path in (tmp_path / "Mnist_LeNet").iterdir()] == ["nodes"]
    ddp_steps = load(tmp_path / "Mnist_LeNet" / "nodes" / "latest.pth")["global_step"]

    single = run_python(
        project,
        "train.py",
        "-c",
        "config.json",
        "--run-id",
        "single",
        *common(mnist_sample_dir, tmp_path, "-o", "trainer.epochs=1", "-o", "n_gpu=0"),
    )
    assert single.returncode == 0, single.stderr[-3000:]  # the default batch, 128
    assert ddp_steps == load(tmp_path / "Mnist_LeNet" / "single" / "latest.pth")["global_step"] == 29  # 3600 / 128
    print(f"two loopback nodes + the single-process run: {time.perf_counter() - started:.1f} s")


# A data loader dropped into a copy of the project: it logs the sample indices of every training
# batch it serves, and rank 0 sends itself SIGTERM when it serves batch STOP_AT_BATCH (the stop
# comes at the next optimizer step every rank agrees on, so a batch or two more may be served
# than trained: the checkpoint's batches_done says how many were).
LOGGED_LOADER = """
import os
import signal
from pathlib import Path

from data_loader.data_loaders import MnistDataLoader
from engine import distributed


class IndexLoggedMnist(MnistDataLoader):
    def __iter__(self):
        order, size = self.batches.epoch_order().tolist(), self.batches.batch_size
        log = Path(f"{os.environ['INDEX_LOG']}.rank{distributed.rank()}")
        stop_at = int(os.environ.get("STOP_AT_BATCH", "-1"))
        for served, batch in enumerate(super().__iter__()):
            number = self.batches.skip + served
            with log.open("a") as file:
                indices = order[served * size : (served + 1) * size]
                file.write(f"{self.batches.epoch} {number} {' '.join(map(str, indices))}\\n")
            if number == stop_at and distributed.rank() == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch
"""

TRAINED = 1000  # training samples: 4,000 digits, 3,000 held out; even, so that 2 processes need no padding


def logged_batches(log: Path, ranks: int, below: int | None = None) -> list[list[int]]:
    """The batches (sample indices) that the ranks of one run were served in epoch 1, those
    numbered `below` or more left out."""
    batches = []
    for rank in range(ranks):
        for line in Path(f"{log}.rank{rank}").read_text().splitlines():
            epoch, number, *indices = map(int, line.split())
            if epoch == 1 and (below is None or number < below):
                batches.append(indices)
    return batches


@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2)], ids=["2-then-1", "1-then-2"])
def test_an_epoch_stopped_and_resumed_on_another_number_of_processes_trains_each_sample_once(
    default_project: Path, mnist_sample_dir: Path, tmp_path: Path, before: int, after: int
) -> None:
    started = time.perf_counter()
    project = shutil.copytree(default_project, tmp_path / "project", ignore=shutil.ignore_patterns("__pycache__"))
    (project / "data_loader" / "index_logged.py").write_text(LOGGED_LOADER)
    config = json.loads((project / "config.json").read_text())
    config["n_gpu"] = 0
    config["data_loader"].update(type="IndexLoggedMnist")
    config["data_loader"]["args"].update(data_dir=str(mnist_sample_dir), batch_size=8, validation_split=3000)
    config["trainer"].update(epochs=1, save_dir=str(tmp_path), verbosity=1, tensorboard=False)
    (tmp_path / "config.json").write_text(json.dumps(config))

    def run(processes: int, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        env = {"INDEX_LOG": str(tmp_path / f"{processes}-processes"), **env}
        if processes > 1:
            return torchrun(project, f"--nproc_per_node={processes}", "train.py", *args, env=env)
        return subprocess.run(
            [sys.executable, "train.py", *args],
            cwd=project,
            capture_output=True,
            text=True,
            timeout=600,
            env=dict(os.environ, OMP_NUM_THREADS="1", **env),
        )

    stopped = run(before, "-c", str(tmp_path / "config.json"), "--run-id", "changed", STOP_AT_BATCH="5")
    run_dir = tmp_path / "Mnist_LeNet" / "changed"
    saved = load(run_dir / "latest.pth")
    assert stopped.returncode != 0 and saved["epoch"] == 0, stopped.stderr[-3000:]
    done = saved["batches_done"]
    assert 5 <= done < 40, done  # inside the epoch: 1000 / 8 / processes batches
    resumed = run(after, "-r", str(run_dir / "latest.pth"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    first = logged_batches(tmp_path / f"{before}-processes", before, below=done)
    rest = logged_batches(tmp_path / f"{after}-processes", after)
    trained = [index for batch in first + rest for index in batch]
    assert len(trained) == len(set(trained)) == TRAINED  # each sample of the epoch once: none twice, none left out
    assert load(run_dir / "latest.pth")["global_step"] == done + len(rest) // after  # one optimizer step a batch
    log = (run_dir / "train.log").read_text()
    assert f"Resumed on {after} process{'es' if after > 1 else ''}; the run had {before}" in log
    assert len(csv_rows(run_dir)) == 1 and saved["world_size"] == before
    print(f"stopped on {before}, resumed on {after}: {time.perf_counter() - started:.1f} s")
