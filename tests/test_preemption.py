"""Preemption as schedulers and terminals deliver it: SIGTERM or SIGINT to the whole process
group (DataLoader workers included), to each torchrun rank's own group, repeated, or only to a
SLURM batch script that passes it on. Every case must save latest.pth at its position, exit
128 + the signal with one hint line and no traceback, and resume to weights, optimizer state
and metrics.csv bitwise equal to one uninterrupted reference run."""

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy
import pytest
import torch

from conftest import Render
from photo_sample import write_photo_folders

pytestmark = pytest.mark.slow

NAME = "Mnist_LeNet"
# How long after epoch 2's progress bar appears the signal is sent: the bar is drawn before the
# epoch's first batch, so a short pause lands the signal early in the epoch (the trainer stops at
# the next optimizer step) on a fast idle machine and on a busy one alike; half a second once
# outlasted a whole epoch (125 batches of 16) on an idle machine.
INTO_THE_EPOCH_S = 0.05


@pytest.fixture(scope="module")
def project(default_project: Path) -> Path:
    return default_project  # shared by the modules that run the default project


def write_config(project: Path, data_dir: Path, save_dir: Path, path: Path, **trainer: Any) -> Path:
    """The project's config on the real digits: 2 epochs at batch 16, half the 4,000 training
    images held out so that validation lasts long enough to be interrupted, on the CPU."""
    config = json.loads((project / "config.json").read_text())
    config["n_gpu"] = 0
    config["data_loader"]["args"].update(data_dir=str(data_dir), batch_size=16, validation_split=0.5)
    config["trainer"].update(epochs=2, save_dir=str(save_dir), verbosity=1, **trainer)
    path.write_text(json.dumps(config, indent=4))
    return path


class Job:
    """A command in a session of its own (so that it can be signalled as a process group),
    with its stdout and stderr collected as they come."""

    def __init__(self, project: Path, command: list[str], env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            command,
            cwd=project,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
            start_new_session=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [
            threading.Thread(target=self._read, args=(stream, into), daemon=True)
            for stream, into in ((self.process.stdout, self.out), (self.process.stderr, self.err))
        ]
        for reader in self.readers:
            reader.start()

    @staticmethod
    def _read(stream: Any, into: list[str]) -> None:
        for chunk in iter(lambda: stream.read1(4096), b""):  # progress bars end lines with \r
            into.append(chunk.decode(errors="replace"))

    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)

    def wait_for(self, text: str, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.text():
            assert self.process.poll() is None, f"ended before {text!r}:\n{self.text()[-3000:]}"
            assert time.monotonic() < deadline, f"no {text!r} after {timeout} s"
            time.sleep(0.02)

    def finish(self, timeout: float = 300) -> int:
        status = self.process.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=10)
        return status

    def signal_group(self, number: int) -> None:
        os.killpg(self.process.pid, number)


def train_command(*args: str) -> list[str]:
    return [sys.executable, "train.py", *args]


def launch_command(*args: str) -> list[str]:
    return [sys.executable, "launch.py", "--standalone", "--nproc_per_node=2", "train.py", *args]


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_bitwise(reference: Path, resumed: Path) -> None:
    """Weights, optimizer state and metrics.csv of two finished runs are equal."""
    expected, actual = load(reference / "latest.pth"), load(resumed / "latest.pth")
    for key, tensor in expected["state_dict"].items():
        assert torch.equal(tensor, actual["state_dict"][key]), key
    for index, state in expected["optimizer"]["state"].items():
        for key, tensor in state.items():
            assert torch.equal(tensor, actual["optimizer"]["state"][index][key]), (index, key)
    assert (resumed / "metrics.csv").read_text() == (reference / "metrics.csv").read_text()


def assert_clean_stop(job: Job, status: int, number: int, run_dir: Path) -> dict[str, Any]:
    """Exit 128 + signal, the resume hint once, no traceback (under launch.py, none of torchrun's
    either), and latest.pth inside epoch 2."""
    output = job.text()
    assert status == 128 + number, output[-3000:]
    assert output.count(f"interrupted by signal {number}; resume with: python ") == 1, output[-3000:]
    assert f"-r {run_dir / 'latest.pth'}" in output
    assert "Traceback" not in output and "SignalException" not in output, output[-3000:]
    assert "DataLoader worker" not in output, output[-3000:]
    saved = load(run_dir / "latest.pth")
    assert saved["epoch"] == 1 and saved["batches_done"] > 0, (saved["epoch"], saved["batches_done"])
    return saved


def straight_run(project: Path, data_dir: Path, save_dir: Path, command: Callable[..., list[str]]) -> Path:
    """The uninterrupted reference run that the stopped and resumed runs are compared with."""
    config = write_config(project, data_dir, save_dir, save_dir / "config.json")
    job = Job(project, command("-c", str(config), "--run-id", "straight"))
    assert job.finish() == 0, job.text()[-3000:]
    return save_dir / NAME / "straight"


@pytest.fixture(scope="module")
def single_reference(project: Path, mnist_sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return straight_run(project, mnist_sample_dir, tmp_path_factory.mktemp("single"), train_command)


# With pytest-xdist, the tests of one shared reference run share one worker: it is trained once.
@pytest.mark.xdist_group("preemption-single-reference")
@pytest.mark.parametrize(
    ("number", "workers", "moment"),
    [
        (signal.SIGTERM, 0, "train"),
        (signal.SIGTERM, 2, "train"),
        (signal.SIGINT, 2, "train"),
        (signal.SIGTERM, 2, "valid"),
    ],
    ids=["SIGTERM-0-workers", "SIGTERM-2-workers", "SIGINT-2-workers", "SIGTERM-2-workers-in-validation"],
)
def test_a_signal_to_the_whole_group_stops_cleanly_and_resumes_exactly(
    project: Path,
    mnist_sample_dir: Path,
    tmp_path: Path,
    single_reference: Path,
    number: int,
    workers: int,
    moment: str,
) -> None:
    config = write_config(project, mnist_sample_dir, tmp_path, tmp_path / "config.json")
    job = Job(
        project,
        train_command("-c", str(config), "--run-id", "stopped", "-o", f"data_loader.args.num_workers={workers}"),
    )
    job.wait_for(f"epoch 2/2 {moment}")
    if moment == "train":
        time.sleep(INTO_THE_EPOCH_S)
    job.signal_group(number)  # the training process and every worker process
    saved = assert_clean_stop(job, job.finish(), number, tmp_path / NAME / "stopped")
    if moment == "valid":
        assert (saved["epoch"], saved["batches_done"]) == (1, 125)  # all of epoch 2 trained, validation not done
    resumed = Job(project, train_command("-r", str(tmp_path / NAME / "stopped" / "latest.pth")))
    assert resumed.finish() == 0, resumed.text()[-3000:]
    assert_bitwise(single_reference, tmp_path / NAME / "stopped")


def test_a_second_sigint_exits_at_once(project: Path, mnist_sample_dir: Path, tmp_path: Path) -> None:
    config = write_config(project, mnist_sample_dir, tmp_path, tmp_path / "config.json")
    job = Job(project, train_command("-c", str(config), "--run-id", "twice", "-o", "data_loader.args.num_workers=2"))
    job.wait_for("epoch 2/2 train")
    job.signal_group(signal.SIGINT)
    job.signal_group(signal.SIGINT)  # a user's double Ctrl-C
    started = time.monotonic()
    assert job.finish() == 130
    assert time.monotonic() - started < 10
    assert "Traceback" not in "".join(job.err)
    for path in (tmp_path / NAME / "twice").glob("*.pth"):
        assert load(path)["format_version"] >= 1  # whatever was written is whole


@pytest.fixture(scope="module")
def ddp_reference(project: Path, mnist_sample_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return straight_run(project, mnist_sample_dir, tmp_path_factory.mktemp("ddp"), launch_command)


def ranks_of(launcher: int) -> list[int]:
    """The training processes of `launcher`: its children (it runs torchrun's launcher itself)."""
    ranks = []
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(entry.read_text().rpartition(")")[2].split()[1]) == launcher:
                ranks.append(int(entry.parent.name))
        except (OSError, ValueError):
            continue
    return ranks


@pytest.mark.xdist_group("preemption-ddp-reference")
@pytest.mark.parametrize("target", ["job group, 2 workers", "each rank's group, twice"])
def test_torchrun_stops_on_a_signal_to_any_group_and_resumes_exactly(
    project: Path,
    mnist_sample_dir: Path,
    tmp_path: Path,
    ddp_reference: Path,
    target: str,
) -> None:
    workers = 2 if "2 workers" in target else 0
    config = write_config(project, mnist_sample_dir, tmp_path, tmp_path / "config.json")
    job = Job(
        project,
        launch_command("-c", str(config), "--run-id", "stopped", "-o", f"data_loader.args.num_workers={workers}"),
    )
    job.wait_for("epoch 2/2 train")
    time.sleep(INTO_THE_EPOCH_S)
    if target.startswith("job group"):
        job.signal_group(signal.SIGTERM)  # the launcher alone: the ranks are in sessions of their own
    else:
        ranks = ranks_of(job.process.pid)
        assert len(ranks) == 2 and all(os.getpgid(rank) == rank for rank in ranks), ranks  # groups of their own
        for _ in range(2):  # SLURM signals every process, and torchrun may forward it again
            for rank in ranks:
                os.killpg(rank, signal.SIGTERM)
    run_dir = tmp_path / NAME / "stopped"
    assert_clean_stop(job, job.finish(), signal.SIGTERM, run_dir)
    assert (run_dir / "train.log").read_text().count("Stopped by SIGTERM") == 1
    resumed = Job(project, launch_command("-r", str(run_dir / "latest.pth")))
    assert resumed.finish() == 0, resumed.text()[-3000:]
    assert_bitwise(ddp_reference, run_dir)


@pytest.mark.xdist_group("preemption-ddp-reference")
def test_the_slurm_recipe_passes_the_signal_on_ends_143_and_resumes_when_requeued(
    project: Path,
    mnist_sample_dir: Path,
    tmp_path: Path,
    ddp_reference: Path,
) -> None:
    """The recipe runs one command on every start of the job; it finds the run where the
    script's own `-o` options put it (not where the config file alone would), and once the run
    has finished, a third start of the job ends at once, with status 0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"  # a stand-in: runs the step's command on this machine
    srun.write_text('#!/bin/sh\nexec "$@"\n')
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    config = write_config(project, mnist_sample_dir, tmp_path / "not-here", tmp_path / "config.json")
    env = {
        "PATH": f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_SUBMIT_DIR": str(project),
        "NPROC": "2",
        "CONFIG": str(config),
    }
    sbatch = ["bash", "slurm/train.sbatch", "-o", f"trainer.save_dir={tmp_path / 'runs'}", "-o", "name=Requeued"]
    job = Job(project, sbatch, env=env)
    job.wait_for("epoch 2/2 train")
    time.sleep(INTO_THE_EPOCH_S)
    os.kill(job.process.pid, signal.SIGTERM)  # --signal=B:TERM: the batch shell alone gets it
    run_dir = tmp_path / "runs" / "Requeued" / "job4242"
    status = job.finish()
    assert status == 143, job.text()[-3000:]
    saved = load(run_dir / "latest.pth")
    assert saved["epoch"] == 1 and saved["batches_done"] > 0

    requeued = Job(project, sbatch, env=env)  # the same job, run again
    assert requeued.finish() == 0, requeued.text()[-3000:]
    assert "Resuming from" in requeued.text()
    assert_bitwise(ddp_reference, run_dir)

    finished = {path: path.stat().st_mtime_ns for path in run_dir.iterdir()}
    again = Job(project, sbatch, env=env)  # requeued once more after the run finished
    assert again.finish() == 0, again.text()[-3000:]
    assert f"run directory '{run_dir}' has finished: it reached epoch 2 of trainer.epochs 2; nothing to do" in (
        again.text()
    )
    assert {path: path.stat().st_mtime_ns for path in run_dir.iterdir()} == finished
    assert not (tmp_path / "not-here").exists()


def test_own_images_stop_cleanly_on_a_group_sigterm_and_resume_exactly(
    render: Render, png_digits: Path, tmp_path: Path
) -> None:
    """The image_folder example decodes the PNGs once into cache/ and shifts whole batches by
    draws of (seed, epoch, batch): a SIGTERM to the whole group mid-epoch resumes bitwise equal
    to a straight run, both from the cache (no workers) and streamed with `cache_dir` null,
    whose 2 worker processes decode every image (they used to be killed under the training
    process: exit 1, a traceback, no latest.pth)."""
    project = render(dataset="image_folder")
    images = png_digits  # 100 training and 30 validation images per class
    args = [
        "-o",
        f"data_loader.args.data_dir={images}",
        "-o",
        f"trainer.save_dir={tmp_path}",
        "-o",
        "n_gpu=0",
        "-o",
        "trainer.epochs=2",
        "-o",
        "trainer.verbosity=1",
        "--bs",
        "16",
    ]
    straight = Job(project, train_command("-c", "config.json", "--run-id", "straight", *args))
    assert straight.finish() == 0, straight.text()[-3000:]
    assert len(list((project / "cache").glob("images-*.npy"))) == 2  # train/ and val/, decoded once
    streamed = ["-o", "data_loader.args.cache_dir=null", "-o", "data_loader.args.num_workers=2"]
    for run_id, options in (("cached", []), ("streamed", streamed)):
        job = Job(project, train_command("-c", "config.json", "--run-id", run_id, *args, *options))
        job.wait_for("epoch 2/2 train")
        time.sleep(INTO_THE_EPOCH_S)
        job.signal_group(signal.SIGTERM)
        run_dir = tmp_path / "ImageFolder_CNN" / run_id
        assert_clean_stop(job, job.finish(), signal.SIGTERM, run_dir)
        resumed = Job(project, train_command("-r", str(run_dir / "latest.pth")))
        assert resumed.finish() == 0, resumed.text()[-3000:]
        assert_bitwise(tmp_path / "ImageFolder_CNN" / "straight", run_dir)


# train.py with the image cache's memory budget forced to 0, so that every folder's cache is a
# file read through a memory map (as a folder larger than memory is)
MEMORY_MAPPED_TRAIN = (
    "import runpy, sys; import data_loader.image_files as image_files; image_files.CACHE_MEMORY_FRACTION = 0.0; "
    "sys.argv = ['train.py', *sys.argv[1:]]; runpy.run_path('train.py', run_name='__main__')"
)


def test_photos_from_a_memory_mapped_cache_stop_on_a_group_sigterm_and_resume_exactly(
    render: Render, tmp_path: Path
) -> None:
    """JPEG photos of mixed sizes and aspect ratios, `preprocessing` "photo" (random resized
    crops and flips of whole batches, drawn from (seed, epoch, batch)), the cache memory-mapped:
    a SIGTERM to the whole group mid-epoch resumes bitwise equal to a straight run."""
    project = render(dataset="image_folder")
    photos = write_photo_folders(tmp_path / "photos", n_train_per_class=48, n_val_per_class=4)
    args = ["-o", f"data_loader.args.data_dir={photos}", "-o", f"trainer.save_dir={tmp_path}", "-o", "n_gpu=0"]
    args += ["-o", "trainer.epochs=2", "-o", "trainer.verbosity=1", "--bs", "16"]
    args += ["-o", "data_loader.args.preprocessing=photo", "-o", "data_loader.args.image_size=48"]
    args += ["-o", "data_loader.args.hflip=true"]

    def train(*more: str) -> Job:
        return Job(project, [sys.executable, "-c", MEMORY_MAPPED_TRAIN, *more])

    straight = train("-c", "config.json", "--run-id", "straight", *args)
    assert straight.finish() == 0, straight.text()[-3000:]
    cached = list((project / "cache").glob("images-*.npy"))
    assert len(cached) == 2 and {tuple(numpy.load(file, mmap_mode="r").shape) for file in cached} == {
        (480, 3, 55, 55),
        (40, 3, 55, 55),
    }  # the 55-pixel squares (48 / 0.875) that crops are cut from
    job = train("-c", "config.json", "--run-id", "stopped", *args)
    job.wait_for("epoch 2/2 train")
    time.sleep(INTO_THE_EPOCH_S)
    job.signal_group(signal.SIGTERM)
    run_dir = tmp_path / "ImageFolder_CNN" / "stopped"
    assert_clean_stop(job, job.finish(), signal.SIGTERM, run_dir)
    resumed = train("-r", str(run_dir / "latest.pth"))
    assert resumed.finish() == 0, resumed.text()[-3000:]
    assert_bitwise(tmp_path / "ImageFolder_CNN" / "straight", run_dir)
    assert sorted(path.name for path in (project / "cache").iterdir()) == sorted(path.name for path in cached)
