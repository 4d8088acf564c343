"""launch.py ends as a single `python train.py` does, so that a job script can act on its status:
0 finished (also when the signal came after the last optimizer step), 2 bad input, 3 diverged,
143 stopped and saved, each with one line and no traceback of torchrun's; a crash keeps
torchrun's report and status 1. Every node of a multi-node run ends with the outcome. (Stops
that resume bitwise under launch.py: tests/test_preemption.py.)"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import Render
from test_ddp import loopback_nodes
from test_preemption import NAME, Job, launch_command, ranks_of, write_config

pytestmark = pytest.mark.slow

TORCHRUN_NOISE = ("Traceback", "ChildFailedError", "SignalException", "torch/distributed")


def assert_one_line(job: Job, status: int, expected: int, line: str) -> None:
    """Exit `expected`, `line` the whole of stderr apart from progress bars, no torchrun report."""
    err = "".join(job.err)
    assert status == expected, job.text()[-3000:]
    lines = [text for text in err.replace("\r", "\n").splitlines() if text.strip() and "it/s]" not in text]
    assert len(lines) == 1 and lines[0].startswith(line), err[-3000:]
    assert not any(noise in job.text() for noise in TORCHRUN_NOISE), job.text()[-3000:]


def one_epoch_config(project: Path, data_dir: Path, save_dir: Path) -> Path:
    """test_preemption's config (real digits, batch 16, half held out, CPU), for one epoch."""
    path = write_config(project, data_dir, save_dir, save_dir / "config.json")
    config = json.loads(path.read_text())
    config["trainer"]["epochs"] = 1
    path.write_text(json.dumps(config))
    return path


def test_a_config_error_is_one_line_and_status_2(default_project: Path) -> None:
    job = Job(default_project, launch_command("-c", "config.json", "-o", "trainer.epochs=x"))
    assert_one_line(job, job.finish(), 2, "error: config: 'trainer.epochs' must be an integer, got 'x'")


def test_a_dry_run_reports_once(default_project: Path, mnist_sample_dir: Path) -> None:
    data = f"data_loader.args.data_dir={mnist_sample_dir}"
    job = Job(default_project, launch_command("-c", "config.json", "-o", data, "-o", "n_gpu=0", "--dry-run"))
    assert job.finish() == 0, job.text()[-3000:]
    assert job.text().count("dry run passed on cpu: one training and one validation batch") == 1, job.text()
    assert job.text().count('"name": "Mnist_LeNet"') == 1


def test_divergence_is_one_line_and_status_3(default_project: Path, mnist_sample_dir: Path, tmp_path: Path) -> None:
    config = one_epoch_config(default_project, mnist_sample_dir, tmp_path)
    sgd = json.dumps({"type": "SGD", "args": {"lr": 1e10}})
    job = Job(default_project, launch_command("-c", str(config), "-o", f"optimizer={sgd}"))
    assert_one_line(job, job.finish(), 3, "error: training diverged: the loss is NaN or infinite in epoch 1")
    assert not (tmp_path / NAME).exists() or not list((tmp_path / NAME).rglob("*.pth"))


CRASHING_MODEL = '''

class CrashingModel(MnistModel):
    """Fails in training (the fit check, in eval mode, passes): a bug in user code."""

    def forward(self, x):
        if self.training:
            raise RuntimeError("a bug in forward")
        return super().forward(x)
'''


def test_a_crash_keeps_torchrun_report_and_status_1(render: Render, mnist_sample_dir: Path, tmp_path: Path) -> None:
    project = render()
    with (project / "model" / "model.py").open("a") as file:
        file.write(CRASHING_MODEL)
    config = one_epoch_config(project, mnist_sample_dir, tmp_path)
    job = Job(project, launch_command("-c", str(config), "-o", "arch.type=CrashingModel"))
    assert job.finish() == 1
    err = "".join(job.err)
    assert "RuntimeError: a bug in forward" in err and "ChildFailedError" in err and "train.py FAILED" in err


SLOW_VALIDATION_METRIC = '''

def slow_in_validation(output, target):
    """Accuracy that takes a tenth of a second per batch in validation (no gradients there)."""
    import time

    if not output.requires_grad:
        time.sleep(0.1)
    return accuracy(output, target)
'''


def test_a_signal_after_the_last_step_finishes_with_status_0(
    render: Render, mnist_sample_dir: Path, tmp_path: Path
) -> None:
    """A SIGTERM in the last epoch's validation, which DDP does not stop: the run finishes, and a
    requeued job sees a finished run (torchrun itself used to end with 1 and a traceback)."""
    project = render()
    with (project / "model" / "metric.py").open("a") as file:
        file.write(SLOW_VALIDATION_METRIC)
    config = one_epoch_config(project, mnist_sample_dir, tmp_path)
    settings = json.loads(config.read_text())
    settings["metrics"] = ["slow_in_validation"]
    settings["data_loader"]["args"]["batch_size"] = 64  # 16 validation batches a rank: 1.6 s
    config.write_text(json.dumps(settings))
    job = Job(project, launch_command("-c", str(config), "--run-id", "done"))
    job.wait_for("epoch 1/1 valid")
    job.signal_group(signal.SIGTERM)
    status = job.finish()
    assert status == 0, job.text()[-3000:]
    assert not any(noise in job.text() for noise in TORCHRUN_NOISE), job.text()[-3000:]
    run_dir = tmp_path / NAME / "done"
    saved = torch.load(run_dir / "latest.pth", map_location="cpu", weights_only=True)
    assert (saved["epoch"], saved["batches_done"]) == (1, 0)
    assert len((run_dir / "metrics.csv").read_text().splitlines()) == 2
    requeued = subprocess.run(
        [sys.executable, "train.py", "-r", str(run_dir / "latest.pth")],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "the run already reached epoch 1 of trainer.epochs 1" in requeued.stderr, requeued.stderr


def test_every_node_ends_with_the_outcome(default_project: Path, mnist_sample_dir: Path, tmp_path: Path) -> None:
    """Two nodes on loopback (c10d rendezvous, one process each): a SIGTERM to the launcher of the
    node without rank 0 stops both processes, which agree on it, and both launchers end with 143
    and the line that resumes the run."""
    config = write_config(default_project, mnist_sample_dir, tmp_path, tmp_path / "config.json")
    rendezvous = loopback_nodes()
    command = [sys.executable, "launch.py", *rendezvous, "train.py", "-c", str(config), "--run-id", "nodes"]
    nodes = [Job(default_project, command) for _ in range(2)]
    main_node = first_to_print(nodes, "epoch 2/2 train")  # rank 0 alone shows progress
    other = nodes[1 - nodes.index(main_node)]
    other.signal_group(signal.SIGTERM)  # at once: the ranks agree on it within a quarter of a second
    resume = f"python launch.py {' '.join(rendezvous)} train.py -r {tmp_path / NAME / 'nodes' / 'latest.pth'}"
    for node in nodes:  # the node that hosts the rendezvous store may end first, and take it away
        assert node.finish() == 143, node.text()[-3000:]
        assert "".join(node.err).strip().splitlines()[-1] == f"interrupted by signal 15; resume with: {resume}"
        for noise in ("Traceback", "SignalException", "exit barrier", "keep-alive", "frame #", "TCPStore"):
            assert noise not in node.text(), node.text()[-3000:]


def first_to_print(jobs: list[Job], text: str, timeout: float = 300) -> Job:
    deadline = time.monotonic() + timeout
    while True:
        for job in jobs:
            if text in job.text():
                return job
            assert job.process.poll() is None, job.text()[-3000:]
        assert time.monotonic() < deadline, f"no {text!r} after {timeout} s"
        time.sleep(0.02)


def handles_sigterm(pid: int) -> bool:
    """Whether process `pid` has a handler for SIGTERM (its SigCgt mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & 1 << (signal.SIGTERM - 1))


def test_a_signal_to_one_process_during_its_start_up_stops_every_process(
    default_project: Path, mnist_sample_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM to rank 1 alone while it still imports torch (as SLURM may signal the processes one by
    one, a moment apart): rank 1 keeps it until the processes have met, then all stop. A rank that
    ended at once left rank 0 waiting for it in the process group's start-up for half an hour."""
    config = one_epoch_config(default_project, mnist_sample_dir, tmp_path)
    job = Job(default_project, launch_command("-c", str(config), "--run-id", "early"))
    deadline = time.monotonic() + 120
    while len(ranks := ranks_of(job.process.pid)) < 2:
        assert job.process.poll() is None and time.monotonic() < deadline, job.text()[-3000:]
        time.sleep(0.01)
    rank_1 = max(ranks)  # the second process started
    while not handles_sigterm(rank_1):  # until Python runs the script: its first import takes the signals over
        assert time.monotonic() < deadline, job.text()[-3000:]
        time.sleep(0.005)
    os.kill(rank_1, signal.SIGTERM)  # while it imports torch, before the processes meet
    status = job.process.wait(timeout=120)  # not the process group's 30-minute start-up timeout
    job.finish()
    assert_one_line(job, status, 143, "interrupted by signal 15 before training started; nothing was saved")
    assert not list(tmp_path.rglob("*.pth"))


def test_processes_of_a_killed_launcher_save_and_stop(
    default_project: Path, mnist_sample_dir: Path, tmp_path: Path
) -> None:
    """kill -9 to launch.py's process group does not reach the training processes (torchrun starts
    each in a session of its own): they stop when the launcher dies, saving their position, and
    the job's command then resumes the run instead of finding it in use by orphans."""
    config = write_config(default_project, mnist_sample_dir, tmp_path, tmp_path / "config.json")
    command = launch_command("-c", str(config), "--run-id", "orphans", "--resume-or-start", "-o", "trainer.epochs=50")
    job = Job(default_project, command)
    job.wait_for("epoch 2/50 train")
    ranks = ranks_of(job.process.pid)
    job.signal_group(signal.SIGKILL)
    job.finish()
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{rank}").exists() for rank in ranks):
        assert time.monotonic() < deadline, "the training processes outlived their launcher"
        time.sleep(0.1)
    saved = torch.load(tmp_path / NAME / "orphans" / "latest.pth", map_location="cpu", weights_only=True)
    assert saved["epoch"] >= 1 and "Stopped by SIGTERM" in (tmp_path / NAME / "orphans" / "train.log").read_text()
    resumed = Job(default_project, launch_command(*command[command.index("-c") :], "-o", "trainer.epochs=3"))
    assert resumed.finish() == 0, resumed.text()[-3000:]
    assert "Resuming from" in resumed.text()
