"""Training end to end on synthetic data: learning, the run directory, resume, evaluation."""

import csv
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from conftest import TENSORBOARD

import model.loss as module_loss
import train as train_script
from cli import apply_override
from model.model import MnistModel
from parse_config import ConfigParser
from test import evaluate
from train import build_trainer, train

ConfigFactory = Callable[..., dict[str, Any]]


def run(config: dict[str, Any], run_id: str = "run", **kwargs: Any) -> dict[str, float]:
    return train(ConfigParser(config, run_id=run_id, **kwargs))


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["state_dict"]


def test_training_steps_lower_the_loss_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    model = MnistModel()
    model.eval()  # no dropout: the loss depends on the weights alone
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    data, target = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    with torch.no_grad():
        before = module_loss.nll_loss(model(data), target).item()
    for _ in range(30):
        optimizer.zero_grad()
        module_loss.nll_loss(model(data), target).backward()
        optimizer.step()
    with torch.no_grad():
        after = module_loss.nll_loss(model(data), target).item()
    assert after < before * 0.5


def test_train_fills_the_run_directory(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config(trainer__epochs=4, trainer__save_period=2)
    result = run(config)
    run_dir = tmp_path / "saved" / "Mnist_LeNet" / "run"
    names = {path.name for path in run_dir.iterdir() if not path.name.startswith("events.out.tfevents")}
    assert names == {"config.json", "run_info.json", "train.log", "metrics.csv", "checkpoint-epoch2.pth",
                     "checkpoint-epoch4.pth", "model_best.pth", "latest.pth", ".lock"}
    tensorboard_events = any(path.name.startswith("events.out.tfevents") for path in run_dir.iterdir())
    assert tensorboard_events == TENSORBOARD
    rows = read_metrics(run_dir)
    assert [row["epoch"] for row in rows] == ["1", "2", "3", "4"]
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "top_k_acc", "val_loss", "val_accuracy",
                             "val_top_k_acc", "lr"]
    assert float(rows[-1]["val_accuracy"]) == result["val_accuracy"]
    assert result["val_accuracy"] >= 0.9  # the synthetic classes are easy
    checkpoint = torch.load(run_dir / "latest.pth", weights_only=True)
    assert checkpoint["epoch"] == 4 and checkpoint["arch"] == "MnistModel"
    assert checkpoint["config"] == json.loads((run_dir / "config.json").read_text())
    assert "Run directory" in (run_dir / "train.log").read_text()


def test_resume_continues_at_the_next_epoch_and_matches_a_straight_run(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    run(make_config(trainer__epochs=3), run_id="straight")
    straight = tmp_path / "saved" / "Mnist_LeNet" / "straight"
    run(make_config(trainer__epochs=2), run_id="resumed")
    resumed = tmp_path / "saved" / "Mnist_LeNet" / "resumed"
    checkpoint = torch.load(resumed / "checkpoint-epoch2.pth", weights_only=True)
    config = dict(checkpoint["config"], trainer=dict(checkpoint["config"]["trainer"], epochs=3))
    run(config, resume_path=resumed / "checkpoint-epoch2.pth")

    assert [row["epoch"] for row in read_metrics(resumed)] == ["1", "2", "3"]
    assert "Resuming from" in (resumed / "train.log").read_text()
    expected, actual = weights(straight / "latest.pth"), weights(resumed / "latest.pth")
    assert all(torch.equal(expected[key], actual[key]) for key in expected)
    assert read_metrics(resumed) == read_metrics(straight)


def test_fine_tuning_starts_a_new_run_from_the_weights(make_config: ConfigFactory, tmp_path: Path) -> None:
    run(make_config(trainer__epochs=1), run_id="base")
    base = tmp_path / "saved" / "Mnist_LeNet" / "base"
    run(make_config(trainer__epochs=1), run_id="tuned", resume_path=base / "latest.pth", fine_tune=True)
    tuned = tmp_path / "saved" / "Mnist_LeNet" / "tuned"
    assert [row["epoch"] for row in read_metrics(tuned)] == ["1"]
    assert len(read_metrics(base)) == 1


def test_partial_fine_tuning_loads_what_fits_and_logs_what_it_left_out(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    """Transfer learning into a head for 12 classes: --partial loads every tensor of the 10-class
    checkpoint whose name and shape fit, bitwise; the new head is as a new run initialises it."""
    run(make_config(trainer__epochs=1), run_id="base")
    checkpoint = tmp_path / "saved" / "Mnist_LeNet" / "base" / "latest.pth"
    saved = weights(checkpoint)
    twelve = make_config(trainer__epochs=1, arch={"type": "MnistModel", "args": {"num_classes": 12}})
    fresh = build_trainer(ConfigParser(twelve, run_id="fresh")).raw_model.state_dict()  # writes nothing
    parser = ConfigParser(twelve, run_id="tuned", resume_path=checkpoint, fine_tune=True, partial=True)
    trainer = build_trainer(parser)
    loaded = trainer.raw_model.state_dict()
    head = {"fc2.weight", "fc2.bias"}
    assert all(torch.equal(loaded[key], saved[key]) for key in saved if key not in head)
    assert all(torch.equal(loaded[key], fresh[key]) and loaded[key].shape[0] == 12 for key in head)
    trainer.train()
    log = (tmp_path / "saved" / "Mnist_LeNet" / "tuned" / "train.log").read_text()
    assert (f"Fine-tuning from the weights of '{checkpoint}' (epoch 1): --partial loaded 6 of its 8 tensors (the "
            "model has 8); left out: 2 tensors differ in shape (checkpoint -> model): fc2.weight (10, 50) -> "
            "(12, 50), fc2.bias (10,) -> (12,)\n") in log
    command = ["-r", str(checkpoint), "--fine-tune", "-o", "arch.args.num_classes=12", "--dry-run"]
    assert train_script.main([*command, "--partial"]) == 0  # the flag reaches the trainer from the command line
    assert train_script.main(command) == 2


def test_evaluate_reports_metrics_and_writes_nothing(make_config: ConfigFactory, tmp_path: Path) -> None:
    run(make_config())
    run_dir = tmp_path / "saved" / "Mnist_LeNet" / "run"
    before = sorted(tmp_path.rglob("*"))
    checkpoint = torch.load(run_dir / "model_best.pth", weights_only=True)
    config = ConfigParser(checkpoint["config"], resume_path=run_dir / "model_best.pth")
    results = evaluate(config)
    assert set(results) == {"loss", "accuracy", "top_k_acc"}
    assert results["accuracy"] >= 0.9
    assert sorted(tmp_path.rglob("*")) == before


def test_early_stop_ends_training_when_the_monitor_stops_improving(make_config: ConfigFactory) -> None:
    # 'max loss' cannot keep improving while training lowers the loss: it stops after 1 + 2 epochs
    result = run(make_config(trainer__epochs=10, trainer__monitor="max loss", trainer__early_stop=2))
    assert result["epoch"] == 3


def test_reduce_lr_on_plateau_steps_on_the_monitored_metric(make_config: ConfigFactory, tmp_path: Path) -> None:
    # threshold 0.9 (relative): epoch 2 cannot improve on epoch 1 by 90%, so with patience 0 it halves the lr
    scheduler = {"type": "ReduceLROnPlateau", "args": {"patience": 0, "factor": 0.5, "threshold": 0.9}}
    result = run(make_config(lr_scheduler=scheduler, trainer__monitor="min val_loss"))
    assert result["epoch"] == 2
    latest = torch.load(tmp_path / "saved" / "Mnist_LeNet" / "run" / "latest.pth", weights_only=True)
    assert latest["optimizer"]["param_groups"][0]["lr"] == 0.0005


def test_reduce_lr_on_plateau_follows_a_max_monitor(make_config: ConfigFactory, tmp_path: Path) -> None:
    # accuracy rises from epoch 1 to 2 on the synthetic digits: with the monitor's mode (max) nothing
    # is cut; with torch's default mode (min) patience 0 would halve the lr after epoch 2
    scheduler = {"type": "ReduceLROnPlateau", "args": {"patience": 0, "factor": 0.5}}
    run(make_config(lr_scheduler=scheduler, trainer__monitor="max val_accuracy"))
    run_dir = tmp_path / "saved" / "Mnist_LeNet" / "run"
    accuracies = [float(row["val_accuracy"]) for row in read_metrics(run_dir)]
    assert accuracies == sorted(accuracies) and accuracies[0] < accuracies[-1], accuracies
    latest = torch.load(run_dir / "latest.pth", weights_only=True)
    assert latest["optimizer"]["param_groups"][0]["lr"] == 0.001
    assert json.loads((run_dir / "config.json").read_text())["lr_scheduler"]["args"]["mode"] == "max"


def test_a_victoresque_config_runs_unchanged_apart_from_paths(
    make_config: ConfigFactory, mnist_dir: Path, tmp_path: Path
) -> None:
    config = {
        "name": "Mnist_LeNet",
        "n_gpu": 1,
        "arch": {"type": "MnistModel", "args": {}},
        "data_loader": {"type": "MnistDataLoader", "args": {
            "data_dir": str(mnist_dir), "batch_size": 128, "shuffle": True, "validation_split": 0.1,
            "num_workers": 2}},
        "optimizer": {"type": "Adam", "args": {"lr": 0.001, "weight_decay": 0, "amsgrad": True}},
        "loss": "nll_loss",
        "metrics": ["accuracy", "top_k_acc"],
        "lr_scheduler": {"type": "StepLR", "args": {"step_size": 50, "gamma": 0.1}},
        "trainer": {"epochs": 1, "save_dir": str(tmp_path / "saved"), "save_period": 1, "verbosity": 2,
                    "monitor": "min val_loss", "early_stop": 10, "tensorboard": TENSORBOARD},
    }
    apply_override(config, "trainer.epochs=1")  # as `-o trainer.epochs=1` would, to keep the test short
    result = run(config)
    assert result["epoch"] == 1
    assert (tmp_path / "saved" / "Mnist_LeNet" / "run" / "checkpoint-epoch1.pth").is_file()
