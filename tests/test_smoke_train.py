"""Real training of a rendered project on the 5,000 real MNIST digits, on CPU and on CUDA:
train, TensorBoard, checkpoints, resume into the same run directory, evaluate, predict."""

import csv
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import run_python

pytestmark = pytest.mark.slow
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU")

RUN_ID = "smoke"
# 3 epochs of the 3,600 training images at batch 128 are only 87 optimizer steps (val_accuracy
# about 0.88); at batch 32 they are 339, which is what 3 short epochs need to pass 0.90.
SMOKE_ARGS = ("--bs", "32", "-o", "trainer.epochs=3", "-o", "trainer.verbosity=1", "--run-id", RUN_ID)


def read_metrics_file(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    return read_metrics_file(run_dir / "metrics.csv")


def smoke_train(project: Path, data_dir: Path, tmp_path: Path, n_gpu: int) -> tuple[Path, Path]:
    common = [
        "-o",
        f"data_loader.args.data_dir={data_dir}",
        "-o",
        f"trainer.save_dir={tmp_path / 'saved'}",
        "-o",
        f"n_gpu={n_gpu}",
    ]
    result = run_python(project, "train.py", "-c", "config.json", *SMOKE_ARGS, *common)
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = tmp_path / "saved" / "Mnist_LeNet" / RUN_ID
    return project, run_dir


def check_run(project: Path, run_dir: Path, data_dir: Path, tmp_path: Path, bitwise: bool) -> None:
    """Metrics, TensorBoard, checkpoints; resume from epoch 2, which branches into a new run
    directory (bitwise equal to the straight run where `bitwise`); evaluate the best checkpoint."""
    rows = read_metrics(run_dir)
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert float(rows[-1]["val_accuracy"]) >= 0.90, rows[-1]

    events = EventAccumulator(str(run_dir))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr"} <= tags
    assert [event.step for event in events.Scalars("val/accuracy")] == [1, 2, 3]

    for name in (
        "checkpoint-epoch1.pth",
        "checkpoint-epoch2.pth",
        "checkpoint-epoch3.pth",
        "latest.pth",
        "model_best.pth",
    ):
        checkpoint = torch.load(run_dir / name, map_location="cpu", weights_only=True)
        assert not any(key.startswith("module.") for key in checkpoint["state_dict"])
    straight = torch.load(run_dir / "checkpoint-epoch3.pth", map_location="cpu", weights_only=True)
    before = {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()}

    # epoch 2 is older than the run's latest.pth (epoch 3): the resume branches, the run stays as it was
    resumed = run_python(project, "train.py", "-r", str(run_dir / "checkpoint-epoch2.pth"))
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout and "at epoch 3" in resumed.stdout
    branch = run_dir.parent / f"{RUN_ID}-from-epoch2"
    assert sorted(path.name for path in run_dir.parent.iterdir()) == [RUN_ID, branch.name]
    assert {path.name: path.read_bytes() for path in run_dir.iterdir() if path.is_file()} == before
    assert [row["epoch"] for row in read_metrics(branch)] == ["1", "2", "3"]
    again = torch.load(branch / "checkpoint-epoch3.pth", map_location="cpu", weights_only=True)
    assert again["epoch"] == 3 and again["lr_scheduler"] == straight["lr_scheduler"]
    if bitwise:
        expected = straight["state_dict"]
        assert all(torch.equal(expected[key], again["state_dict"][key]) for key in expected)
        assert read_metrics(branch) == read_metrics(run_dir)

    before = sorted(tmp_path.rglob("*"))
    evaluated = run_python(
        project,
        "test.py",
        "-r",
        str(run_dir / "model_best.pth"),
        "-o",
        f"data_loader.args.data_dir={data_dir}",
        "-o",
        "n_gpu=0",
    )
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    results = dict(line.split(": ") for line in evaluated.stdout.splitlines() if ": " in line)
    assert float(results["accuracy"]) >= 0.85 and "loss" in results and "top_k_acc" in results
    assert sorted(tmp_path.rglob("*")) == before  # evaluation creates nothing

    # predict.py on the test split's IDX file: right as often as test.py says
    raw = data_dir / "MNIST" / "raw"
    out = tmp_path / "predictions.csv"
    predicted = run_python(
        project,
        "predict.py",
        "-r",
        str(run_dir / "model_best.pth"),
        str(raw / "t10k-images-idx3-ubyte"),
        "--out",
        str(out),
        "-o",
        "n_gpu=0",
    )
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    labels = (raw / "t10k-labels-idx1-ubyte").read_bytes()[8:]
    classes = [row["class"] for row in read_metrics_file(out)]
    assert len(classes) == len(labels) == 1000
    right = sum(name == str(label) for name, label in zip(classes, labels, strict=True))
    assert abs(right / len(labels) - float(results["accuracy"])) < 1e-6


def test_smoke_train_resume_evaluate_on_cpu(default_project: Path, mnist_sample_dir: Path, tmp_path: Path) -> None:
    project, run_dir = smoke_train(default_project, mnist_sample_dir, tmp_path, n_gpu=0)
    check_run(project, run_dir, mnist_sample_dir, tmp_path, bitwise=True)


@pytest.mark.cuda
@cuda
def test_smoke_train_resume_evaluate_on_cuda(default_project: Path, mnist_sample_dir: Path, tmp_path: Path) -> None:
    project, run_dir = smoke_train(default_project, mnist_sample_dir, tmp_path, n_gpu=1)
    assert "running on the CPU" not in (run_dir / "train.log").read_text()
    saved = torch.load(run_dir / "latest.pth", weights_only=True)
    assert saved["state_dict"]["conv1.weight"].is_cuda  # trained on the GPU; test.py below runs on CPU
    # cuDNN picks non-deterministic kernels by default, so the GPU resume is checked for
    # continuity (epoch, scheduler, run directory), not bitwise.
    check_run(project, run_dir, mnist_sample_dir, tmp_path, bitwise=False)


@pytest.mark.cuda
@cuda
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cuda(
    default_project: Path, mnist_sample_dir: Path, tmp_path: Path, precision: str
) -> None:
    project = default_project
    result = run_python(
        project,
        "train.py",
        "-c",
        "config.json",
        "--bs",
        "32",
        "-o",
        "trainer.epochs=2",
        "-o",
        f"trainer.precision={precision}",
        "-o",
        "n_gpu=1",
        "--run-id",
        precision,
        "-o",
        f"data_loader.args.data_dir={mnist_sample_dir}",
        "-o",
        f"trainer.save_dir={tmp_path / 'saved'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_metrics(tmp_path / "saved" / "Mnist_LeNet" / precision)
    assert float(rows[-1]["val_accuracy"]) >= 0.85
    checkpoint = torch.load(tmp_path / "saved" / "Mnist_LeNet" / precision / "latest.pth", weights_only=True)
    assert (checkpoint["scaler"] is not None) == (precision == "fp16")
