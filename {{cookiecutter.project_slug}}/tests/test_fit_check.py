"""Model, data and config that do not fit each other are refused while building, in one line that
names the loss or metric and what it received; what fits passes (count targets with a
regression loss, a structured output that the trainer unpacks); the check that finds out
changes nothing about the run; test.py names what a user's loader lacks."""

import inspect
import json
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset, TensorDataset

import data_loader as module_data
import model.model as module_arch
import test as test_script
import train
from base import BaseDataLoader
from data_loader import MnistDataLoader
from engine.fit_check import check_class_count, check_model_fits_data
from model.loss import nll_loss
from model.metric import accuracy, top_k_acc
from model.model import MnistModel
from parse_config import ConfigParser
from trainer import Trainer
from utils.errors import InputError

ConfigFactory = Callable[..., dict[str, Any]]
CPU = torch.device("cpu")


def test_top_k_acc_refuses_more_k_than_classes() -> None:
    output = torch.randn(4, 2).log_softmax(dim=1)
    with pytest.raises(ValueError, match="top-k with k=3 needs at least 3 classes, the model outputs 2"):
        top_k_acc(output, torch.tensor([0, 1, 1, 0]))
    assert top_k_acc(output, torch.tensor([0, 1, 1, 0]), k=2) == 1.0


class Unlabelled(Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return torch.zeros(3), index % 4


def test_max_label_is_read_from_labels_without_loading_samples(mnist_dir: Path) -> None:
    assert MnistDataLoader(str(mnist_dir), batch_size=8, validation_split=0.1).max_label() == 9
    labels = TensorDataset(torch.zeros(6, 3), torch.tensor([0, 4, 2, 1, 0, 3]))
    assert BaseDataLoader(labels, 2, False, 0.0, 0).max_label() == 4
    targets = Unlabelled()
    targets.targets = [0, 7, 1]  # type: ignore[attr-defined]  # as torchvision's datasets have them
    assert BaseDataLoader(targets, 2, False, 0.0, 0, valid_dataset=labels).max_label() == 7
    assert BaseDataLoader(Unlabelled(), 2, False, 0.0, 0).max_label() is None
    regression = TensorDataset(torch.zeros(6, 3), torch.rand(6))
    assert BaseDataLoader(regression, 2, False, 0.0, 0).max_label() is None


def test_without_known_labels_the_sample_label_is_checked() -> None:
    loader = BaseDataLoader(Unlabelled(), 2, False, 0.0, 0)  # first sample: label 0
    check_model_fits_data(nn.Sequential(nn.Linear(3, 1), nn.LogSoftmax(dim=1)), loader, nll_loss, [], CPU)
    later = BaseDataLoader(Unlabelled(), 2, False, 0.0, 0)
    later.train_indices = [3]  # a sample of label 3
    with pytest.raises(InputError, match="labels go up to 3 but the model outputs 2 classes"):
        check_model_fits_data(nn.Sequential(nn.Linear(3, 2), nn.LogSoftmax(dim=1)), later, nll_loss, [], CPU)


def count_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error of a predicted count (B, 1) against integer counts (B,)."""
    return F.mse_loss(output.squeeze(1), target.float())


def test_integer_targets_need_classes_only_where_the_loss_takes_classes() -> None:
    counts = BaseDataLoader(TensorDataset(torch.rand(8, 3), torch.tensor([0, 1, 2, 3] * 2)), 2, False, 0.0, 0)
    check_model_fits_data(nn.Linear(3, 1), counts, count_loss, [accuracy], CPU)  # a count regression
    message = "config: labels go up to 3 but the model outputs 1 classes, too few for loss 'nll_loss'"
    with pytest.raises(InputError, match=re.escape(message)):
        check_model_fits_data(nn.Sequential(nn.Linear(3, 1), nn.LogSoftmax(dim=1)), counts, nll_loss, [], CPU)


class TwoHeads(MnistModel):
    """Digit log-probabilities and an auxiliary output: a model that returns a tuple."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scores = super().forward(x)  # (B, num_classes)
        return scores, scores[:, :4].exp()  # (B, num_classes), (B, 4)


class TwoHeadsTrainer(Trainer):
    """Unpacks TwoHeads' output: its scores are what the loss and the metrics see."""

    def train_step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        data, target = batch
        scores, aux = self.model(data)
        return self.criterion(scores, target) + 1e-3 * aux.mean(), scores, target

    def valid_step(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        data, target = batch
        scores, _ = self.raw_model(data)
        return self.criterion(scores, target), scores, target


def test_a_metric_that_fails_on_a_structured_output_is_one_line() -> None:
    loader = BaseDataLoader(TensorDataset(torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])), 2, False, 0.0, 0)
    model = TwoHeads()

    def valid_step(batch: Any, criterion: Callable[..., torch.Tensor]) -> tuple[Any, Any, Any]:
        data, target = batch  # Trainer.valid_step's way: the output goes to the loss and the metrics as it is
        output = model(data)
        return criterion(output, target), output, target

    def first_head_loss(output: tuple[torch.Tensor, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        return nll_loss(output[0], target)

    with pytest.raises(InputError) as refused:
        check_model_fits_data(model, loader, first_head_loss, [accuracy], CPU, valid_step)
    assert str(refused.value) == (
        "config: metric 'accuracy' failed on the model's output (tuple of 2: Tensor(1, 10), Tensor(1, 4)) and target "
        "Tensor(1,) int64: AttributeError: 'tuple' object has no attribute 'argmax'; a trainer whose model returns "
        "several outputs unpacks them in train_step/valid_step (docs/extending.md: Write your own trainer)"
    )


def test_a_structured_output_is_one_line_in_a_dry_run_and_trains_with_a_trainer_that_unpacks_it(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(module_arch, "TwoHeads", TwoHeads, raising=False)
    (tmp_path / "two_heads.json").write_text(json.dumps(make_config(arch={"type": "TwoHeads", "args": {}})))
    assert train.main(["-c", str(tmp_path / "two_heads.json"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: config: loss 'nll_loss' failed on the model's output (tuple of 2: Tensor(1, 10), "
                          "Tensor(1, 4)) and target Tensor(1,) int64: TypeError: ")
    assert err.endswith("unpacks them in train_step/valid_step (docs/extending.md: Write your own trainer)\n")

    monkeypatch.setattr(train, "Trainer", TwoHeadsTrainer)  # as if trainer/trainer.py held it
    assert train.main(["-c", str(tmp_path / "two_heads.json"), "--run-id", "two-heads"]) == 0
    rows = (tmp_path / "saved" / "Mnist_LeNet" / "two-heads" / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3  # the header and 2 epochs
    (tmp_path / "five.json").write_text(json.dumps(make_config(arch={"type": "TwoHeads", "args": {"num_classes": 5}})))
    assert train.main(["-c", str(tmp_path / "five.json"), "--dry-run"]) == 2  # checked through the trainer's step
    assert "labels go up to 9 but the model outputs 5 classes, too few for loss 'nll_loss'" in capsys.readouterr().err


class RandomDataset(Dataset):
    """Each fetch draws from every global RNG, as random augmentations do."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        random.random()
        np.random.rand()
        return torch.rand(3), torch.tensor(index % 2)


class RandomInEval(nn.Module):
    """Draws noise even in eval mode; its second layer is meant to stay in eval mode."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2)
        self.frozen = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.linear(x) + torch.randn(x.size(0), 2)).log_softmax(dim=1)


def test_the_check_restores_every_rng_and_every_module_mode() -> None:
    loader = BaseDataLoader(RandomDataset(), 2, True, 0.0, 0)
    model = RandomInEval()
    model.frozen.eval()
    torch.manual_seed(3), random.seed(3), np.random.seed(3)
    before = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    check_model_fits_data(model, loader, nll_loss, [accuracy], CPU)
    after = (torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy())
    assert torch.equal(before[0], after[0]) and before[1] == after[1] and np.array_equal(before[2], after[2])
    assert model.training and model.linear.training and not model.frozen.training


def test_a_run_with_the_check_is_bitwise_the_run_without(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def final_weights(run_id: str) -> dict[str, torch.Tensor]:
        parser = ConfigParser(make_config(trainer__epochs=1), run_id=run_id)
        train.train(parser)
        assert parser.run_dir is not None
        return torch.load(parser.run_dir / "latest.pth", weights_only=True)["state_dict"]

    checked = final_weights("checked")
    monkeypatch.setattr(train, "check_trainer_fits_data", lambda *args: None)
    unchecked = final_weights("unchecked")
    assert all(torch.equal(checked[key], unchecked[key]) for key in checked)


class NoTrainingLoader(BaseDataLoader):
    """A user's loader that forgot test.py's `training` argument."""

    def __init__(self, data_dir: str, batch_size: int, shuffle: bool = True, validation_split: float = 0.0,
                 num_workers: int = 0) -> None:
        super().__init__(MnistDataLoader(data_dir, batch_size).dataset, batch_size, shuffle, validation_split,
                         num_workers)


class OnlyTrainingLoader(BaseDataLoader):
    """A user's loader with `training` but neither `shuffle` nor `validation_split`."""

    def __init__(self, data_dir: str, batch_size: int, training: bool = True) -> None:
        super().__init__(MnistDataLoader(data_dir, batch_size, training=training).dataset, batch_size, False,
                         0.0, 0)


@pytest.fixture
def checkpoint_path(make_config: ConfigFactory) -> Path:
    parser = ConfigParser(make_config(trainer__epochs=1), run_id="run")
    train.train(parser)
    assert parser.run_dir is not None
    return parser.run_dir / "latest.pth"


def test_test_py_names_the_missing_training_argument(
    make_config: ConfigFactory, checkpoint_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for loader in (NoTrainingLoader, OnlyTrainingLoader):
        monkeypatch.setattr(module_data, loader.__name__, loader, raising=False)
    config = make_config()
    data_dir = config["data_loader"]["args"]["data_dir"]
    config["data_loader"] = {"type": "NoTrainingLoader", "args": {"data_dir": data_dir, "batch_size": 32}}
    (tmp_path / "no_training.json").write_text(json.dumps(config))
    status = test_script.main(["-r", str(checkpoint_path), "-c", str(tmp_path / "no_training.json")])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert err == ("error: data loader 'NoTrainingLoader' has no 'training' argument, which test.py needs to load "
                   "the test split; add training: bool = True to NoTrainingLoader.__init__ "
                   "(see docs/extending.md)\n")

    config["data_loader"]["type"] = "OnlyTrainingLoader"  # shuffle and validation_split are not forced on it
    (tmp_path / "only_training.json").write_text(json.dumps(config))
    status = test_script.main(["-r", str(checkpoint_path), "-c", str(tmp_path / "only_training.json")])
    out, err = capsys.readouterr()
    assert status == 0, err
    assert "accuracy: " in out


@pytest.mark.parametrize("outputs", [1, 3])
def test_data_of_one_class_is_said_to_teach_nothing(outputs: int, caplog: pytest.LogCaptureFixture) -> None:
    check_class_count(["cat"], outputs)
    assert [record.getMessage() for record in caplog.records] == [
        "The data has one class (cat): every sample has the same label, so there is nothing to learn; give the "
        "data a folder per class"]


class Refusing(nn.Module):
    """A model with a bug of its own: what the check names is the line in the project's code."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError(f"cannot take {tuple(x.shape)}")


class Records(Dataset):
    """Samples as dicts, as many datasets of one's own have them."""

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"image": torch.zeros(3), "label": index % 2}


def trainers_valid_step(model: nn.Module) -> Callable[[Any, Callable[..., torch.Tensor]], tuple[Any, Any, Any]]:
    def valid_step(batch: Any, criterion: Callable[..., torch.Tensor]) -> tuple[Any, Any, Any]:
        data, target = batch  # Trainer.valid_step's way
        output = model(data)
        return criterion(output, target), output, target

    return valid_step


def test_a_model_or_step_that_fails_on_the_first_sample_is_one_line_naming_where() -> None:
    pairs = BaseDataLoader(TensorDataset(torch.rand(4, 3), torch.tensor([0, 1, 0, 1])), 2, False, 0.0, 0)
    with pytest.raises(InputError) as wrong_size:
        check_model_fits_data(nn.Linear(5, 2), pairs, nll_loss, [], CPU)
    assert str(wrong_size.value).startswith(
        "the model Linear failed on the data's first sample (data Tensor(1, 3) float32, target Tensor(1,) int64): "
        "RuntimeError: mat1 and mat2 shapes cannot be multiplied")  # torch's own code: no line of the project named
    with pytest.raises(InputError) as own_bug:
        check_model_fits_data(Refusing(), pairs, nll_loss, [], CPU)
    line = inspect.getsourcelines(Refusing.forward)[1] + 1
    assert str(own_bug.value) == (
        "the model Refusing failed on the data's first sample (data Tensor(1, 3) float32, target Tensor(1,) int64) "
        f"at tests/test_fit_check.py:{line}: ValueError: cannot take (1, 3)")
    records = BaseDataLoader(Records(), 2, False, 0.0, 0)
    model = nn.Sequential(nn.Linear(3, 2), nn.LogSoftmax(dim=1))
    with pytest.raises(InputError) as dict_batch:
        check_model_fits_data(model, records, nll_loss, [], CPU, trainers_valid_step(model))
    message = str(dict_batch.value)
    assert message.startswith("the trainer's valid_step failed on the data's first sample (dict of 2: image "
                              "Tensor(1, 3) float32, label Tensor(1,) int64) at tests/test_fit_check.py:"), message
    assert message.endswith("; a batch that is not a (data, target) pair of tensors needs a train_step and "
                            "valid_step of your own (docs/extending.md: Write your own trainer)"), message
