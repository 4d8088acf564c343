"""Pretrained torchvision backbones (model/torchvision_classifier.py) and the fine-tuning recipe
(engine/backbone.py): the head found and sized for any architecture, the weights read from
torchvision's cache in TORCH_HOME (never downloaded here), the backbone frozen for the first
epochs, a resume on either side of the unfreezing bitwise, and the one-line refusals."""

import json
import signal
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import call_main
from torch.utils.data import TensorDataset

import data_loader
import test as test_script
import train
from base import BaseDataLoader
from model.model import TorchvisionClassifier
from parse_config import ConfigParser
from trainer import Trainer
from utils.errors import InputError, TrainingInterrupted

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning:torchvision")

# (name, side of the test images, model_args, the head's tensors): a ViT's patch grid follows
# its image_size, so vit_b_16 is built for 32x32 images here instead of 224x224.
ARCHITECTURES = [
    ("resnet18", 32, {}, ("fc.weight", "fc.bias")),
    ("efficientnet_b0", 32, {}, ("classifier.1.weight", "classifier.1.bias")),
    ("mobilenet_v3_small", 32, {}, ("classifier.3.weight", "classifier.3.bias")),
    ("convnext_tiny", 32, {}, ("classifier.2.weight", "classifier.2.bias")),
    ("vit_b_16", 32, {"image_size": 32}, ("heads.head.weight", "heads.head.bias")),
]
BATCHES_PER_EPOCH = 5  # 36 training photos in batches of 8
IMAGENET_NORMALIZATION = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])


class PhotoTensors(BaseDataLoader):
    """48 random 3x16x16 "photos" of 3 classes, each class tinting one colour channel: RGB
    images that a torchvision model takes, a quarter of them held out for validation."""

    def __init__(self, batch_size: int, shuffle: bool = True, validation_split: float = 0.25,
                 num_workers: int = 0, training: bool = True) -> None:
        generator = torch.Generator().manual_seed(0 if training else 1)
        labels = torch.arange(48) % 3
        images = torch.randn(48, 3, 16, 16, generator=generator) + F.one_hot(labels, 3)[:, :, None, None]
        super().__init__(TensorDataset(images, labels), batch_size, shuffle, validation_split, num_workers)


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty TORCH_HOME, and no network: a download attempt fails as it does offline."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))

    def offline(url: str, *args: Any, **kwargs: Any) -> None:
        raise urllib.error.URLError("no network in tests")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    return home


def place_weights(torch_home: Path, name: str, weights: str = "DEFAULT", seed: int = 7) -> dict[str, torch.Tensor]:
    """A weights file for torchvision's `name` where torchvision looks for `weights` (its cache in
    TORCH_HOME, under the last part of their url), from a randomly initialised model; returns its tensors."""
    from torchvision.models import get_model, get_model_weights

    url = get_model_weights(name)[weights].url
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    state_dict = get_model(name, weights=None).state_dict()
    torch.save(state_dict, folder / url.rsplit("/", 1)[1])
    return state_dict


@pytest.fixture
def photos(monkeypatch: pytest.MonkeyPatch) -> None:
    """PhotoTensors, found by `data_loader.type` as if it were a file of data_loader/."""
    monkeypatch.setattr(data_loader, "PhotoTensors", PhotoTensors, raising=False)


def photo_config(tmp_path: Path, **trainer: Any) -> dict[str, Any]:
    """mobilenet_v3_small (BatchNorm in its backbone) from pretrained weights on PhotoTensors;
    the trainer's options updated by `trainer`."""
    return {
        "name": "Photos",
        "n_gpu": 0,
        "arch": {"type": "TorchvisionClassifier",
                 "args": {"name": "mobilenet_v3_small", "num_classes": 3, "weights": "DEFAULT"}},
        "data_loader": {"type": "PhotoTensors", "args": {"batch_size": 8}},
        "optimizer": {"type": "AdamW", "args": {"lr": 0.01, "weight_decay": 0.1}},
        "loss": "nll_loss",
        "metrics": ["accuracy"],
        "lr_scheduler": {"type": "StepLR", "args": {"step_size": 1, "gamma": 0.5}},
        "trainer": {"epochs": 3, "save_dir": str(tmp_path / "saved"), "verbosity": 0, "monitor": "off",
                    "freeze_backbone_epochs": 1, "backbone_lr_factor": 0.1, **trainer},
    }


def run(config: dict[str, Any], run_id: str) -> Path:
    parser = ConfigParser(json.loads(json.dumps(config)), run_id=run_id)
    train.train(parser)
    assert parser.run_dir is not None
    return parser.run_dir


def latest(run_dir: Path) -> dict[str, Any]:
    return torch.load(run_dir / "latest.pth", weights_only=True)


@pytest.mark.parametrize(("name", "size", "model_args", "head"), ARCHITECTURES, ids=[a[0] for a in ARCHITECTURES])
def test_the_head_is_found_and_outputs_num_classes_in_every_architecture(
    name: str, size: int, model_args: dict[str, Any], head: tuple[str, ...]
) -> None:
    model = TorchvisionClassifier(name, num_classes=3, model_args=model_args).eval()
    assert model.head_names == head
    assert [tuple(p.shape)[0] for p in model.head_parameters()] == [3, 3]
    with torch.no_grad():
        output = model(torch.randn(2, 3, size, size))
    assert output.shape == (2, 3)
    assert torch.allclose(output.exp().sum(dim=1), torch.ones(2))  # log-probabilities, for nll_loss
    assert model.normalization is None  # no pretrained weights: nothing to match


def test_the_pretrained_weights_are_read_from_the_file_in_torch_home(torch_home: Path) -> None:
    saved = place_weights(torch_home, "resnet18")
    model = TorchvisionClassifier("resnet18", num_classes=5, weights="DEFAULT")
    random_state = torch.get_rng_state()
    note = model.load_pretrained()
    assert torch.equal(torch.get_rng_state(), random_state)  # the run's random numbers do not depend on it
    assert "ResNet18_Weights.IMAGENET1K_V1" in note and "head fc is initialised for 5 classes" in note
    loaded = model.network.state_dict()
    assert loaded.keys() == saved.keys()
    for key, tensor in saved.items():
        if key.startswith("fc."):  # the new head: sized for 5 classes
            assert loaded[key].shape[0] == 5, key
        else:
            assert torch.equal(loaded[key], tensor), key
    assert model.normalization == IMAGENET_NORMALIZATION
    by_name = TorchvisionClassifier("resnet18", num_classes=5, weights="ResNet18_Weights.IMAGENET1K_V1")
    by_name.load_pretrained()
    assert torch.equal(by_name.network.conv1.weight, saved["conv1.weight"])


def test_offline_without_the_weights_file_is_one_line_and_status_2(
    torch_home: Path, photos: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(photo_config(tmp_path)))
    folder = torch_home / "hub" / "checkpoints"
    status, _, err = call_main(train.main, ["-c", str(config_file)], capsys)
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("error: config: 'arch.args.weights' "), err
    file = "mobilenet_v3_small-047dcff4.pth"
    assert f"no file {file} in {folder}, and downloading it failed (<urlopen error no network in tests>)" in err
    assert f"download https://download.pytorch.org/models/{file} into {folder}" in err
    status, _, err = call_main(train.main, ["-c", str(config_file), "--dry-run"], capsys)
    assert status == 2 and err.count("\n") == 1 and "a dry run downloads nothing" in err, err
    assert not (tmp_path / "saved").exists()


def test_a_resume_and_test_py_need_no_weights_file(torch_home: Path, photos: None, tmp_path: Path) -> None:
    place_weights(torch_home, "mobilenet_v3_small")
    run_dir = run(photo_config(tmp_path, epochs=1), "run")
    assert "Starting from the pretrained weights MobileNet_V3_Small_Weights.IMAGENET1K_V1" in (
        run_dir / "train.log").read_text()
    for file in (torch_home / "hub" / "checkpoints").iterdir():
        file.unlink()  # the checkpoint holds every weight
    assert train.main(["-r", str(run_dir / "latest.pth"), "-o", "trainer.epochs=2"]) == 0
    assert test_script.main(["-r", str(run_dir / "latest.pth")]) == 0


def test_the_log_says_when_the_backbone_is_frozen_and_when_its_weights_are_random(
    photos: None, tmp_path: Path
) -> None:
    config = photo_config(tmp_path, epochs=2, freeze_backbone_epochs=1)
    config["arch"]["args"]["weights"] = None  # a frozen backbone of random weights: said, not refused
    log = (run(config, "random") / "train.log").read_text()
    assert ("Epoch 1: the backbone is frozen, only the head trains (trainer.freeze_backbone_epochs 1); its weights "
            "are random (arch.args.weights is null)") in log
    assert "Epoch 2: the backbone trains too from here on (trainer.freeze_backbone_epochs 1)" in log


@pytest.mark.parametrize("optimizer", [
    {"type": "AdamW", "args": {"lr": 0.01, "weight_decay": 0.1}},
    {"type": "SGD", "args": {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1}},
], ids=["AdamW", "SGD"])
def test_the_frozen_epochs_train_the_head_alone(
    torch_home: Path, photos: None, tmp_path: Path, optimizer: dict[str, Any]
) -> None:
    """No gradient, update, weight decay or momentum for the backbone, and its BatchNorm
    statistics stay those of the weights file; the head trains."""
    saved = place_weights(torch_home, "mobilenet_v3_small")
    config = photo_config(tmp_path, epochs=1, freeze_backbone_epochs=2)
    config["optimizer"] = optimizer
    checkpoint = latest(run(config, "frozen"))
    trained = {key.removeprefix("network."): value for key, value in checkpoint["state_dict"].items()}
    backbone = [key for key in saved if not key.startswith("classifier.3.")]
    assert any("running_mean" in key for key in backbone)
    for key in backbone:
        assert torch.equal(trained[key], saved[key]), key
    initial_model = TorchvisionClassifier("mobilenet_v3_small", num_classes=3)
    assert not torch.equal(trained["classifier.3.weight"], initial_model.network.classifier[3].weight)
    groups = checkpoint["optimizer"]["param_groups"]  # every parameter, head first
    assert [len(group["params"]) for group in groups] == [2, len(list(initial_model.parameters())) - 2]
    assert set(checkpoint["optimizer"]["state"]) == set(groups[0]["params"])  # state for the head alone


def stop_at_the_end_of_epoch(monkeypatch: pytest.MonkeyPatch, stop_epoch: int) -> None:
    original = Trainer.on_epoch_end

    def on_epoch_end(self: Trainer, epoch: int, log: dict[str, float]) -> None:
        original(self, epoch, log)
        if epoch == stop_epoch:
            signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(Trainer, "on_epoch_end", on_epoch_end)


def stop_after_batches(monkeypatch: pytest.MonkeyPatch, batches: int) -> None:
    original, count = Trainer.train_step, 0

    def train_step(self: Trainer, batch: Any) -> Any:
        nonlocal count
        count += 1
        if count == batches:
            signal.raise_signal(signal.SIGTERM)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "train_step", train_step)


@pytest.mark.parametrize(("stop", "position"), [
    (lambda patch: stop_at_the_end_of_epoch(patch, 1), (1, 0)),  # the last frozen epoch saved, none trained after
    (lambda patch: stop_after_batches(patch, BATCHES_PER_EPOCH + 2), (1, 2)),  # inside the first unfrozen epoch
], ids=["end-of-last-frozen-epoch", "inside-first-unfrozen-epoch"])
def test_a_resume_across_the_unfreezing_is_bitwise(
    torch_home: Path, photos: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    stop: Callable[[pytest.MonkeyPatch], None], position: tuple[int, int],
) -> None:
    place_weights(torch_home, "mobilenet_v3_small")
    config = photo_config(tmp_path)
    straight = latest(run(config, "straight"))
    with monkeypatch.context() as patch:
        stop(patch)
        with pytest.raises(TrainingInterrupted):
            run(config, "stopped")
    stopped_dir = tmp_path / "saved" / "Photos" / "stopped"
    assert (latest(stopped_dir)["epoch"], latest(stopped_dir)["batches_done"]) == position
    assert train.main(["-r", str(stopped_dir / "latest.pth")]) == 0
    resumed = latest(stopped_dir)
    assert straight["state_dict"].keys() == resumed["state_dict"].keys()
    for key, tensor in straight["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][key]), key
    assert straight["optimizer"]["state"].keys() == resumed["optimizer"]["state"].keys()
    for index, state in straight["optimizer"]["state"].items():
        for key, tensor in state.items():
            assert torch.equal(tensor, resumed["optimizer"]["state"][index][key]), (index, key)
    assert [group["lr"] for group in resumed["optimizer"]["param_groups"]] == pytest.approx([0.00125, 0.000125])
    assert (stopped_dir / "metrics.csv").read_text() == (tmp_path / "saved" / "Photos" / "straight" /
                                                        "metrics.csv").read_text()


@pytest.mark.parametrize("key", ["freeze_backbone_epochs=2", "backbone_lr_factor=0.1"])
def test_the_recipe_on_a_model_without_a_head_is_one_line(
    make_config: Callable[..., dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps(make_config()))
    status, _, err = call_main(train.main, ["-c", str(config_file), "-o", f"trainer.{key}"], capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: config: 'trainer.{key.split('=')[0]}' is ")
    assert "the model MnistModel has no head_parameters() method" in err
    assert not (tmp_path / "saved").exists()


def test_the_backbone_gets_its_own_learning_rate_and_a_scheduler_may_not_undo_it(tmp_path: Path) -> None:
    config = photo_config(tmp_path)
    config["arch"]["args"]["weights"] = None
    config["lr_scheduler"] = {"type": "OneCycleLR", "args": {"max_lr": 0.01, "total_steps": 100}}
    parser = ConfigParser(config)
    model = TorchvisionClassifier("mobilenet_v3_small", num_classes=3)
    with pytest.raises(InputError, match=r"OneCycleLR sets the learning rate of the head and of the backbone alike"):
        train.build_optimizer(parser, model)
    config["lr_scheduler"]["args"]["max_lr"] = [0.01, 0.001]
    optimizer, _ = train.build_optimizer(ConfigParser(config), model)
    head, backbone = optimizer.param_groups
    assert head["params"] == model.head_parameters()
    assert len(head["params"]) + len(backbone["params"]) == len(list(model.parameters()))
    assert backbone["lr"] == pytest.approx(head["lr"] * 0.1)
