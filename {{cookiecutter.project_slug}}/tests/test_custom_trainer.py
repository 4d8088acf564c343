"""A trainer written the way docs/extending.md says: override `train_step` only (here, to add a weight
penalty to the loss). The base's loop keeps its promises for it: SIGTERM in the middle of an
epoch saves the position, and the resume ends bitwise where an uninterrupted run ends, with
gradient accumulation on."""

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import train
from parse_config import ConfigParser
from trainer import Trainer
from utils.errors import TrainingInterrupted

ConfigFactory = Callable[..., dict[str, Any]]


class PenalisedTrainer(Trainer):
    """The default step plus an L2 penalty on the weights: a user's own training step."""

    def train_step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        data, target = batch
        output = self.model(data)
        penalty = sum(p.pow(2).sum() for p in self.raw_model.parameters())
        return self.criterion(output, target) + 1e-3 * penalty, output, target


def final(folder: Path) -> dict[str, Any]:
    return torch.load(folder / "latest.pth", weights_only=True)


def test_overriding_only_train_step_keeps_exact_resume(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(trainer__epochs=2, trainer__accumulate_grad_batches=2)
    runs = tmp_path / "saved" / "Mnist_LeNet"
    train.train(ConfigParser(json.loads(json.dumps(config)), run_id="plain"))
    monkeypatch.setattr(train, "Trainer", PenalisedTrainer)  # as if trainer/trainer.py held it
    train.train(ConfigParser(json.loads(json.dumps(config)), run_id="straight"))
    assert not torch.equal(final(runs / "plain")["state_dict"]["fc1.weight"],
                           final(runs / "straight")["state_dict"]["fc1.weight"])  # the step was used

    calls = 0
    original = PenalisedTrainer.train_step

    def signalling_step(self: PenalisedTrainer, batch: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 12 + 5:  # epoch 2, batch 5: inside an accumulation of two
            signal.raise_signal(signal.SIGTERM)
        return original(self, batch)

    with monkeypatch.context() as patch:
        patch.setattr(PenalisedTrainer, "train_step", signalling_step)
        with pytest.raises(TrainingInterrupted):
            train.train(ConfigParser(json.loads(json.dumps(config)), run_id="stopped"))
    assert final(runs / "stopped")["batches_done"] == 6  # stopped at the next optimizer step, not inside one
    assert train.main(["-r", str(runs / "stopped" / "latest.pth")]) == 0
    expected, actual = final(runs / "straight"), final(runs / "stopped")
    assert all(torch.equal(value, actual["state_dict"][key]) for key, value in expected["state_dict"].items())
    for index, state in expected["optimizer"]["state"].items():
        assert all(torch.equal(value, actual["optimizer"]["state"][index][key]) for key, value in state.items())
    assert (runs / "stopped" / "metrics.csv").read_text() == (runs / "straight" / "metrics.csv").read_text()


def test_metrics_and_loss_take_arguments(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config(trainer__epochs=1, trainer__monitor="max val_top_k_acc_k2")
    config["metrics"] = ["accuracy", {"type": "top_k_acc", "args": {"k": 2}}]
    config["loss"] = {"type": "nll_loss", "args": {"weight": [1.0] * 5 + [2.0] * 5}}
    train.train(ConfigParser(config, run_id="args"))
    header = (tmp_path / "saved" / "Mnist_LeNet" / "args" / "metrics.csv").read_text().splitlines()[0]
    assert header.split(",") == ["epoch", "loss", "accuracy", "top_k_acc_k2", "val_loss", "val_accuracy",
                                 "val_top_k_acc_k2", "lr"]
