"""DDP through torchrun on the CPU (gloo), on the real-digit sample: two processes train,
write one run directory, resume, and their checkpoint evaluates in a single process; two
"nodes" on loopback meet through c10d rendezvous; 2 x batch 64 takes as many optimizer steps
per epoch as 1 x batch 128. (Signals under torchrun: tests/test_preemption.py.)"""

import os
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


def torchrun(project: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """One node's torchrun on a free port (its default, 29500, may be held by a test running beside)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
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
