"""Own images (data_loader/image_folder.py; generated with dataset=image_folder only): one class
mapping, the training one, labels train/, val/ and test/, and travels in the checkpoint."""

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import test as test_script
import train
from data_loader import ImageFolderDataLoader
from parse_config import ConfigParser
from utils.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]

COLOURS = {"amber": (255, 160, 0), "blue": (0, 0, 255), "cyan": (0, 255, 255), "drab": (90, 90, 60)}


def write_images(root: Path, split: str, counts: dict[str, int]) -> None:
    """`counts[name]` noisy 8x8 PNGs of colour `name` in `root/split/name/`: classes that a
    small CNN tells apart after a few steps."""
    from PIL import Image

    rng = np.random.default_rng(len(split))
    for name, count in counts.items():
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(count):
            pixels = np.clip(np.array(COLOURS[name]) + rng.integers(-30, 30, size=(8, 8, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i}.png")


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """train/ with three classes; val/ and test/ without the middle one, `blue`."""
    root = tmp_path / "images"
    write_images(root, "train", {"amber": 12, "blue": 12, "cyan": 12})
    write_images(root, "val", {"amber": 4, "cyan": 4})
    write_images(root, "test", {"amber": 5, "cyan": 5})
    return root


def image_config(data_dir: Path, save_dir: Path, epochs: int = 1) -> dict[str, Any]:
    config = json.loads((PROJECT_ROOT / "config.json").read_text())
    config["n_gpu"] = 0
    config["arch"]["args"]["num_classes"] = 3
    config["data_loader"]["args"].update(data_dir=str(data_dir), batch_size=8, image_size=8, num_workers=0)
    config["optimizer"]["args"]["lr"] = 0.01
    config["trainer"].update(epochs=epochs, save_dir=str(save_dir), verbosity=0)
    return config


def test_val_and_test_are_labelled_with_the_classes_of_train(images: Path) -> None:
    loader = ImageFolderDataLoader(str(images), batch_size=4)
    assert loader.classes == ["amber", "blue", "cyan"]
    valid = loader.split_validation()
    assert valid is not None
    assert sorted(set(torch.cat([target for _, target in valid]).tolist())) == [0, 2]  # cyan is 2, not 1
    evaluation = ImageFolderDataLoader(str(images), batch_size=4, training=False)
    assert evaluation.classes == ["amber", "blue", "cyan"]
    assert sorted(set(evaluation.dataset.targets)) == [0, 2]  # type: ignore[attr-defined]
    shutil.rmtree(images / "train")  # without train/, the given classes label test/
    given = ImageFolderDataLoader(str(images), batch_size=4, training=False, classes=["amber", "blue", "cyan"])
    assert sorted(set(given.dataset.targets)) == [0, 2]  # type: ignore[attr-defined]


def test_test_py_evaluates_with_the_checkpoints_classes(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = ConfigParser(image_config(images, tmp_path / "saved", epochs=4), run_id="run")
    result = train.train(parser)
    assert result["val_accuracy"] == 1.0  # only right with cyan labelled 2
    assert parser.run_dir is not None
    checkpoint_path = parser.run_dir / "latest.pth"
    assert torch.load(checkpoint_path, weights_only=True)["classes"] == ["amber", "blue", "cyan"]
    shutil.rmtree(images / "train")  # test.py takes the mapping from the checkpoint
    assert test_script.main(["-r", str(checkpoint_path)]) == 0
    out = capsys.readouterr().out
    assert "accuracy: 1.000000" in out.splitlines()


def test_a_class_in_val_that_train_lacks_is_refused_in_one_line(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_images(images, "val", {"drab": 2})
    message = f"class folder 'drab' of {images / 'val'} is not among the classes of train/ (amber, blue, cyan)"
    with pytest.raises(InputError, match="class folder 'drab'"):
        ImageFolderDataLoader(str(images), batch_size=4)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(image_config(images, tmp_path / "saved")))
    for dry_run in ([], ["--dry-run"]):
        assert train.main(["-c", str(config_path), *dry_run]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: config: 'data_loader.args.data_dir': ") and err.count("\n") == 1
        assert message in err
    assert not (tmp_path / "saved").exists()


def test_a_class_in_test_that_the_checkpoint_lacks_is_refused_in_one_line(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = ConfigParser(image_config(images, tmp_path / "saved"), run_id="run")
    train.train(parser)
    assert parser.run_dir is not None
    write_images(images, "test", {"drab": 2})
    assert test_script.main(["-r", str(parser.run_dir / "latest.pth")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"class folder 'drab' of {images / 'test'} is not among the model's classes (amber, blue, cyan)" in err


def test_the_fit_check_leaves_an_augmented_run_bitwise_unchanged(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def final_weights(run_id: str) -> dict[str, torch.Tensor]:
        parser = ConfigParser(image_config(images, tmp_path / "saved"), run_id=run_id)
        train.train(parser)  # the random crops of training draw from the global RNG (no workers)
        assert parser.run_dir is not None
        return torch.load(parser.run_dir / "latest.pth", weights_only=True)["state_dict"]

    checked = final_weights("checked")
    monkeypatch.setattr(train, "check_model_fits_data", lambda *args: None)
    unchecked = final_weights("unchecked")
    assert all(torch.equal(checked[key], unchecked[key]) for key in checked)
