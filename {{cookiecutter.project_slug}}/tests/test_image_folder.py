"""Own images (data_loader/image_folder.py; generated with dataset=image_folder only): one class
mapping, the training one, labels train/, val/ and test/, and travels in the checkpoint; images
are decoded once into a cache that follows every change of the files; training batches are
shifted by draws that depend only on (seed, epoch, batch)."""

import csv
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from test_resume import signal_after

import model.model as module_arch
import predict
import test as test_script
import train
from data_loader import ImageFolderDataLoader, image_files
from data_loader.image_folder import (
    batch_seed,
    evaluation_preprocessing,
    labelled_files,
    random_crop_boxes,
    random_shift,
    resized_crops,
)
from engine.checkpoint import upgrade
from engine.device import on_device
from parse_config import ConfigParser
from utils.errors import InputError, TrainingInterrupted

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# torchvision 0.29 warns on every image it decodes (its decoders are to move to TorchCodec)
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")

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


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the loader caches decoded images in ./cache/


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


def test_test_py_and_predict_py_use_the_checkpoints_classes(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    parser = ConfigParser(image_config(images, tmp_path / "saved", epochs=4), run_id="run")
    result = train.train(parser)
    assert result["val_accuracy"] == 1.0  # only right with cyan labelled 2
    assert parser.run_dir is not None
    checkpoint_path = parser.run_dir / "latest.pth"
    saved = torch.load(checkpoint_path, weights_only=True)
    assert saved["classes"] == ["amber", "blue", "cyan"]
    assert saved["preprocessing"] == {"channels": 3, "resize": "stretch", "resize_size": 8, "crop_size": None,
                                      "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    shutil.rmtree(images / "train")  # test.py takes the mapping from the checkpoint
    assert test_script.main(["-r", str(checkpoint_path), "--report", "report"]) == 0
    out = capsys.readouterr().out
    assert "accuracy: 1.000000" in out.splitlines()
    assert Path("report/confusion_matrix.csv").read_text().splitlines() == [
        "true \\ predicted,amber,blue,cyan", "amber,5,0,0", "blue,0,0,0", "cyan,0,0,5"]
    # predict.py names the checkpoint's classes, and is right where test.py is
    assert predict.main(["-r", str(checkpoint_path), str(images / "test"), "--out", "p.csv", "--top-k", "2"]) == 0
    rows = list(csv.DictReader(Path("p.csv").open()))
    assert len(rows) == 10 and all(row["class"] == Path(row["path"]).parent.name for row in rows)
    assert {row["class_2"] for row in rows} <= {"amber", "blue", "cyan"}


def test_an_image_file_gives_exactly_the_tensor_that_evaluation_feeds_the_model(images: Path) -> None:
    loader = ImageFolderDataLoader(str(images), batch_size=4, image_size=6, shuffle=False, training=False)
    evaluated = torch.cat([batch[0] for batch in on_device(loader, loader, torch.device("cpu"), 1)])
    paths = [path for path, _ in labelled_files(images / "test", loader.classes)[1]]  # the dataset's order
    read = torch.cat([ImageFolderDataLoader.read_inputs(path, loader.preprocessing()) for path in paths])
    assert read.shape == (10, 3, 6, 6) and torch.equal(read, evaluated)
    assert ImageFolderDataLoader.read_inputs(images / "notes.txt", loader.preprocessing()) is None


def test_a_version_4_checkpoint_gets_the_preprocessing_the_loader_had_then() -> None:
    config = {"data_loader": {"type": "ImageFolderDataLoader", "args": {"data_dir": "data/", "image_size": 48}}}
    old = {"format_version": 4, "arch": "ImageClassifier", "epoch": 1, "state_dict": {}, "config": config,
           "classes": ["cat", "dog"]}
    assert upgrade(old)["preprocessing"] == {"channels": 3, "resize": "stretch", "resize_size": 48, "crop_size": None,
                                             "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}


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
        train.train(parser)  # the fit check shifts its sample batch as training does
        assert parser.run_dir is not None
        return torch.load(parser.run_dir / "latest.pth", weights_only=True)["state_dict"]

    checked = final_weights("checked")
    monkeypatch.setattr(train, "check_trainer_fits_data", lambda *args: None)
    unchecked = final_weights("unchecked")
    assert all(torch.equal(checked[key], unchecked[key]) for key in checked)


def batches(loader: Any, epoch: int = 1) -> list[list[torch.Tensor]]:
    """The epoch's batches as the trainer gets them (on the CPU): through `device_transform`."""
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    transform = getattr(loader, "device_transform", None)
    return [transform(batch, epoch, index) if transform else batch for index, batch in enumerate(loader)]


def test_images_are_decoded_once_and_a_changed_image_rebuilds_the_cache(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loader = ImageFolderDataLoader(str(images), batch_size=4, image_size=8)
    assert loader.dataset.tensors[0].dtype == torch.uint8  # type: ignore[attr-defined]
    assert not (tmp_path / "cache").exists()  # written when batches are first asked for
    iter(loader)
    cached = sorted((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 2  # train/ and val/
    first = loader.dataset.tensors[0].clone()  # type: ignore[attr-defined]

    def no_decoding(path: Path, form: Any) -> torch.Tensor:
        raise AssertionError(f"decoded {path} again")

    with monkeypatch.context() as patched:
        patched.setattr(image_files, "read_image", no_decoding)
        again = ImageFolderDataLoader(str(images), batch_size=4, image_size=8)  # from the cache alone
    assert torch.equal(again.dataset.tensors[0], first)  # type: ignore[attr-defined]

    from PIL import Image

    Image.new("RGB", (8, 8), (255, 255, 255)).save(images / "train" / "blue" / "3.png")  # same name, new pixels
    old_format = image_files.cache_file(images / "train", "0" * 64, tmp_path / "cache").with_suffix(".pt")
    old_format.write_bytes(b"a cache of format 1")  # e.g. of a template version before 2
    changed = ImageFolderDataLoader(str(images), batch_size=4, image_size=8)
    iter(changed)
    assert not old_format.exists()
    index = [path.name for path in sorted((images / "train" / "blue").iterdir())].index("3.png") + 12
    white = torch.full((3, 8, 8), 255, dtype=torch.uint8)
    assert torch.equal(changed.dataset.tensors[0][index], white)  # type: ignore[attr-defined]
    assert len(sorted((tmp_path / "cache").glob("*.npy"))) == 2  # the stale train/ cache is gone
    (images / "train" / "cyan" / "0.png").unlink()  # a changed file list rebuilds it too
    assert len(ImageFolderDataLoader(str(images), batch_size=4, image_size=8).dataset) == 35  # type: ignore[arg-type]


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n" + b"not a picture" * 10, b""], ids=["garbage", "empty"])
def test_a_corrupt_image_is_one_line_naming_the_file(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    corrupt = images / "train" / "blue" / "5.png"
    corrupt.write_bytes(content)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(image_config(images, tmp_path / "saved")))
    assert train.main(["-c", str(config_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: image {corrupt} cannot be decoded (") and err.count("\n") == 1, err
    assert not (tmp_path / "saved").exists()


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [("hflip", "no", "true or false"), ("hflip", 1, "true or false"), ("image_size", 0, "a whole number of pixels"),
     ("cache_dir", 123, "a string or null"), ("preprocessing", "photos", "one of 'small', 'photo'"),
     ("resize_size", 40, "null, or with preprocessing 'photo' a whole number"),
     ("crop_scale", [0.5, 0.2], "two fractions"), ("crop_ratio", [1], "two aspect ratios"),
     ("mean", [0.5, 0.5], "null, a number or 3 numbers"),
     ("std", 0, "null, a number or 3 numbers, above 0")],
)
def test_a_bad_argument_of_the_loader_is_one_line(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: object, expected: str
) -> None:
    config = image_config(images, tmp_path / "saved")
    config["data_loader"]["args"][key] = value
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    assert train.main(["-c", str(config_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: config: 'data_loader.args.{key}' must be {expected}"), err
    assert err.count("\n") == 1 and f"got {value!r}" in err
    assert not (tmp_path / "saved").exists()


def test_cache_files_are_normal_files(images: Path, tmp_path: Path) -> None:
    """Readable by others as checkpoints are (a shared cache folder), not private like a temp file."""
    previous = os.umask(0o022)
    try:
        iter(ImageFolderDataLoader(str(images), batch_size=4, image_size=8))
    finally:
        os.umask(previous)
    cached = sorted((tmp_path / "cache").glob("images-*.npy"))
    assert len(cached) == 2 and {path.stat().st_mode & 0o777 for path in cached} == {0o644}


def test_an_unwritable_cache_folder_is_one_line(images: Path, tmp_path: Path) -> None:
    (tmp_path / "blocked").write_text("a file where the cache folder should be")
    with pytest.raises(InputError, match=r"^config: 'data_loader.args.cache_dir': cannot write the image cache"):
        ImageFolderDataLoader(str(images), batch_size=4, cache_dir=str(tmp_path / "blocked" / "cache"))


def test_the_batched_shift_is_a_per_sample_padded_crop() -> None:
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    for hflip in (False, True):
        shifted = random_shift(images, 2, hflip, torch.Generator().manual_seed(7))
        generator = torch.Generator().manual_seed(7)  # the same draws, in the same order
        offsets = torch.randint(0, 5, (2, 6, 1), generator=generator)
        mirrored = torch.rand(6, 1, generator=generator) < 0.5 if hflip else torch.zeros(6, 1, dtype=torch.bool)
        padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
        for i in range(6):
            top, left = int(offsets[0, i]), int(offsets[1, i])
            crop = padded[i, :, top : top + 8, left : left + 8]
            assert torch.equal(shifted[i], crop.flip(-1) if mirrored[i] else crop), (hflip, i)
        assert bool(mirrored.any()) == hflip  # seed 7 mirrors some of the 6


def test_training_draws_depend_only_on_seed_epoch_and_batch(images: Path) -> None:
    loader = ImageFolderDataLoader(str(images), batch_size=8, image_size=8, cache_dir=None)
    batch = next(iter(loader))
    state = torch.get_rng_state()
    first = loader.device_transform(batch, 2, 3)[0]
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is neither used nor advanced
    assert torch.equal(loader.device_transform(batch, 2, 3)[0], first)
    assert not torch.equal(loader.device_transform(batch, 2, 4)[0], first)  # another batch number
    assert not torch.equal(loader.device_transform(batch, 3, 3)[0], first)  # another epoch
    assert batch_seed(loader.seed, 2, 3, 0) != batch_seed(loader.seed + 1, 2, 3, 0)
    unshifted = (batch[0].float() / 255 - 0.5) / 0.5
    valid = loader.split_validation()
    assert valid is not None
    assert not torch.equal(first, unshifted)
    assert torch.equal(valid.device_transform(batch, 2, 3)[0], unshifted)  # type: ignore[misc]


def test_streamed_images_give_the_batches_of_cached_ones(images: Path) -> None:
    cached = ImageFolderDataLoader(str(images), batch_size=4, image_size=6)
    streamed = ImageFolderDataLoader(str(images), batch_size=4, image_size=6, cache_dir=None, num_workers=2)
    assert isinstance(streamed.dataset, image_files.StreamedImages)
    streamed.seed = cached.seed
    for split in ((cached, streamed), (cached.split_validation(), streamed.split_validation())):
        expected, actual = batches(split[0], epoch=2), batches(split[1], epoch=2)
        assert len(expected) == len(actual) > 1
        for one, other in zip(expected, actual, strict=True):
            assert all(torch.equal(a, b) for a, b in zip(one, other, strict=True))


def test_under_ddp_the_other_ranks_read_the_images_that_rank_0_decoded(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rank 0 decodes and hands its images over in a temporary file, removed once every rank has
    read it: the cache file itself waits for training, as in a single process."""
    folder = images / "train"
    paths = sorted(folder.rglob("*.png"))
    broadcasts: list[Any] = []
    monkeypatch.setattr(image_files.distributed, "active", lambda: True)
    monkeypatch.setattr(image_files.distributed, "is_main", lambda: True)
    monkeypatch.setattr(image_files.distributed, "barrier", lambda: None)
    monkeypatch.setattr(image_files.distributed, "broadcast", lambda value: broadcasts.append(value) or value)
    form = evaluation_preprocessing(photo=False, image_size=8, resize_size=None, mean=None, std=None)
    built, pending, _ = image_files.cached_images(folder, paths, form, tmp_path / "cache")  # rank 0
    assert [kind for kind, _ in broadcasts] == ["ready"] and ".share" in broadcasts[0][1]
    assert pending is not None and not (tmp_path / "cache").exists()  # handed over, then removed (folder too)
    key = image_files.cache_key(paths, form)
    shared = image_files.share(built, image_files.cache_file(folder, key, tmp_path / "cache"))

    def rank_1(news: tuple[str, Any], cache: Path) -> tuple[torch.Tensor, Any, Any]:
        with monkeypatch.context() as patched:
            patched.setattr(image_files.distributed, "is_main", lambda: False)
            patched.setattr(image_files.distributed, "broadcast", lambda value: news)
            return image_files.cached_images(folder, paths, form, cache)

    with monkeypatch.context() as patched:
        patched.setattr(image_files, "read_image", lambda path, form: pytest.fail(f"decoded {path} again"))
        assert torch.equal(rank_1(("ready", str(shared)), tmp_path / "cache")[0], built)  # rank 0's images
    other_machine, own, _ = rank_1(("ready", str(tmp_path / "elsewhere" / shared.name)), tmp_path / "unshared")
    assert torch.equal(other_machine, built) and own is not None  # decoded for itself, its own cache pending
    with pytest.raises(InputError, match="rank 0"):  # rank 0's error, on every rank
        rank_1(("error", "image x cannot be decoded (rank 0)"), tmp_path / "cache")
    with pytest.raises(TrainingInterrupted):  # and its stop signal
        rank_1(("stopped", 15), tmp_path / "cache")
    pending.write()
    assert [path.name for path in (tmp_path / "cache").glob("*.npy")] == [pending.file.name]


def test_under_ddp_the_other_ranks_map_the_file_that_rank_0_built(
    images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A memory-mapped cache is not copied for the other ranks: they map the file rank 0 built,
    which stays its pending cache file (renamed when training starts), and read no image."""
    folder = images / "train"
    paths = sorted(folder.rglob("*.png"))
    form = evaluation_preprocessing(photo=True, image_size=8, resize_size=None, mean=None, std=None)
    broadcasts: list[Any] = []
    monkeypatch.setattr(image_files.distributed, "active", lambda: True)
    monkeypatch.setattr(image_files.distributed, "is_main", lambda: True)
    monkeypatch.setattr(image_files.distributed, "barrier", lambda: None)
    monkeypatch.setattr(image_files.distributed, "broadcast", lambda value: broadcasts.append(value) or value)
    built, pending, mapped = image_files.cached_images(folder, paths, form, tmp_path / "cache", in_memory=False)
    assert pending is not None and broadcasts == [("ready", str(pending.built))] and mapped == pending.built
    assert pending.built.is_file()  # not removed after the others read it: it is the cache to be
    with monkeypatch.context() as patched:
        patched.setattr(image_files.distributed, "is_main", lambda: False)
        patched.setattr(image_files.distributed, "broadcast", lambda value: broadcasts[0])
        patched.setattr(image_files, "read_image", lambda path, form: pytest.fail(f"decoded {path} again"))
        other, own, other_mapped = image_files.cached_images(folder, paths, form, tmp_path / "cache", in_memory=False)
    assert torch.equal(other, built) and own is None and other_mapped == pending.built
    pending.write()
    assert [path.name for path in (tmp_path / "cache").iterdir()] == [pending.file.name]
    assert torch.equal(other, built)  # the mapping outlives the rename


def test_a_model_with_fewer_outputs_than_class_folders_is_one_line_and_more_is_a_warning(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """arch.args.num_classes against the class folders of train/. More outputs than classes is
    not refused: a head sized for classes still to come trains correctly (the extra outputs learn
    never to win), but it is said, as it is usually a forgotten num_classes."""
    config = image_config(images, tmp_path / "saved")
    config["arch"]["args"]["num_classes"] = 2
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    assert train.main(["-c", str(config_path)]) == 2
    err = capsys.readouterr().err
    assert err == ("error: config: the data has 3 classes (amber, blue, cyan) but the model outputs 2; set "
                   "'arch.args.num_classes' to 3\n")
    config["arch"]["args"]["num_classes"] = 5
    config_path.write_text(json.dumps(config))
    assert train.main(["-c", str(config_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("The model outputs 5 classes but the data has 3 (amber, blue, cyan): outputs 3 to 4 are never a target; "
            "fine for a head kept for classes to come, else set 'arch.args.num_classes' to 3") in out
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "images"]  # no cache/, no saved/


@pytest.fixture
def trained_on_three(images: Path, tmp_path: Path) -> Path:
    """latest.pth of 1 epoch on amber, blue, cyan; and images2/: the same but for blue, absent."""
    config = image_config(images, tmp_path / "saved")
    config["trainer"].get("mlflow", {})["enabled"] = False  # not what is tested here (a new store takes seconds)
    assert train.main(["-c", write_config(tmp_path, config), "--run-id", "run"]) == 0
    shutil.copytree(images, tmp_path / "images2")
    for split in ("train", "val", "test"):
        shutil.rmtree(tmp_path / "images2" / split / "blue", ignore_errors=True)
    return tmp_path / "saved" / "ImageFolder_CNN" / "run" / "latest.pth"


def write_config(folder: Path, config: dict[str, Any]) -> str:
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder / "config.json")


def test_fine_tuning_onto_other_class_folders_warns_naming_what_changed(
    trained_on_three: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Every tensor fits, yet output 1 meant blue and now means cyan: one warning line says so."""
    args = ["--fine-tune", "-r", str(trained_on_three), "-o", f"data_loader.args.data_dir={tmp_path / 'images2'}"]
    assert train.main([*args, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert ("The data's classes are not the checkpoint's: not in the data: blue; outputs that now mean another "
            "class: 1 ('blue' -> 'cyan'); fine-tuning teaches those outputs the data's classes") in out
    assert "The model outputs 3 classes but the data has 2 (amber, cyan): output 2 is never a target" in out


def test_resuming_with_other_class_folders_is_refused_and_moved_images_resume(
    trained_on_three: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    recorded = json.loads((trained_on_three.parent / "config.json").read_text())
    assert recorded["data_loader"]["args"]["cache_dir"] == str(tmp_path / "cache")  # absolute: from any folder
    before = snapshot(trained_on_three.parent)
    resume = ["-r", str(trained_on_three), "-o", "trainer.epochs=2"]
    assert train.main([*resume, "-o", f"data_loader.args.data_dir={tmp_path / 'images2'}"]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: checkpoint '{trained_on_three}': resuming cannot change the classes (not in the data: "
                   "blue; outputs that now mean another class: 1 ('blue' -> 'cyan')): it would no longer be the same "
                   "run; to train on these classes, start a new run from these weights: --fine-tune -r CHECKPOINT\n")
    assert snapshot(trained_on_three.parent) == before
    (tmp_path / "images").rename(tmp_path / "moved")  # the same images elsewhere: where the data are, not what
    assert train.main([*resume, "-o", f"data_loader.args.data_dir={tmp_path / 'moved'}"]) == 0


def test_a_refused_run_and_a_dry_run_write_no_image_cache(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cache file is written when training first asks for batches: a config refused after the
    images were decoded (here by the optimizer) leaves none, and a dry run writes none, reading
    an existing cache or decoding only the images it loads."""
    config = image_config(images, tmp_path / "saved")
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    refused = ["-c", str(config_path), "-o", "optimizer.args.betas=[2, 0.5]"]  # Adam refuses it after the data
    assert train.main(refused) == 2
    assert "'optimizer.args' rejected by Adam" in capsys.readouterr().err
    decoded: list[Path] = []
    read_image = image_files.read_image
    monkeypatch.setattr(image_files, "read_image", lambda path, form: decoded.append(path) or read_image(path, form))
    assert train.main(["-c", str(config_path), "--dry-run"]) == 0
    assert 0 < len(decoded) < 36 + 8  # the fit check's sample and two batches, not every image
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "images"]  # no cache/, no saved/

    assert train.main(["-c", str(config_path), "--run-id", "run"]) == 0
    cache = snapshot(tmp_path / "cache")
    assert len(cache) == 2  # train/ and val/
    decoded.clear()
    assert train.main(["-c", str(config_path), "--dry-run"]) == 0
    assert decoded == [] and snapshot(tmp_path / "cache") == cache  # read from the cache, left as it was


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {path.name: (path.stat().st_size, path.stat().st_mtime_ns) for path in folder.iterdir()}


def test_the_image_folder_config_trains_two_classes(images: Path, tmp_path: Path) -> None:
    """The shipped config's metrics suit any number of classes (top_k_acc with k=3, refused for
    2 classes and always 1.0 for 3, is not among them)."""
    shutil.rmtree(images / "train" / "cyan")
    shutil.rmtree(images / "val" / "cyan")
    config = image_config(images, tmp_path / "saved")
    config["arch"]["args"]["num_classes"] = 2
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    assert train.main(["-c", str(config_path), "--dry-run"]) == 0


# --------------------------------------------------------------------------- photos

PHOTO_COLOURS = {"amber": (230, 150, 20), "blue": (20, 40, 220), "cyan": (20, 220, 220)}


def write_photos(root: Path, split: str, counts: dict[str, int], seed: int = 0) -> None:
    """`counts[name]` JPEG photos of mixed sizes and aspect ratios (24 to 64 pixels a side) in
    `root/split/name/`: a smooth field of colour `name` with a darker blob somewhere."""
    from torchvision.io import encode_jpeg

    generator = torch.Generator().manual_seed(seed + len(split))
    for name, count in counts.items():
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(count):
            height, width = (int(side) for side in torch.randint(24, 65, (2,), generator=generator))
            field = torch.nn.functional.interpolate(torch.rand(1, 3, 3, 3, generator=generator), (height, width),
                                                    mode="bilinear", align_corners=False)[0]
            image = torch.tensor(PHOTO_COLOURS[name], dtype=torch.float32).view(3, 1, 1) * (0.7 + 0.3 * field)
            top, left = int(torch.randint(0, height // 2, ())), int(torch.randint(0, width // 2, ()))
            image[:, top : top + height // 3, left : left + width // 3] *= 0.5
            (folder / f"{i}.jpg").write_bytes(encode_jpeg(image.round().to(torch.uint8), quality=90).numpy().tobytes())


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    write_photos(root, "train", {"amber": 16, "blue": 16, "cyan": 16})
    write_photos(root, "val", {"amber": 4, "blue": 4, "cyan": 4})
    write_photos(root, "test", {"amber": 5, "blue": 5, "cyan": 5})
    return root


def photo_config(data_dir: Path, save_dir: Path, epochs: int = 2) -> dict[str, Any]:
    config = image_config(data_dir, save_dir, epochs)
    config["data_loader"]["args"].update(preprocessing="photo", image_size=16, hflip=True)
    return config


def thirds(width: int, height: int, wide: bool) -> torch.Tensor:
    """uint8 (3, height, width): red, green and blue thirds, left to right (`wide`) or top to bottom."""
    image = torch.zeros(3, height, width, dtype=torch.uint8)
    for channel in range(3):
        if wide:
            image[channel, :, channel * width // 3 : (channel + 1) * width // 3] = 255
        else:
            image[channel, channel * height // 3 : (channel + 1) * height // 3, :] = 255
    return image


def test_photos_keep_their_aspect_ratio_and_evaluation_sees_their_centre(tmp_path: Path) -> None:
    """A wide image whose thirds are red, green and blue, and a tall one: resized on the shorter
    side and cropped in the centre, evaluation (validation, test.py, predict.py) sees the green
    middle third alone; squashed ("small"), it sees all three colours."""
    from torchvision.io import encode_png

    root = tmp_path / "thirds"
    for split in ("train", "val", "test"):
        (root / split / "flag").mkdir(parents=True)
        (root / split / "flag" / "wide.png").write_bytes(encode_png(thirds(120, 40, wide=True)).numpy().tobytes())
        (root / split / "flag" / "tall.png").write_bytes(encode_png(thirds(42, 150, wide=False)).numpy().tobytes())
    green = torch.tensor([-1.0, 1.0, -1.0]).view(1, 3, 1, 1)  # normalised with mean and std 0.5
    photo = ImageFolderDataLoader(str(root), batch_size=4, image_size=24, preprocessing="photo")
    assert photo.preprocessing() == {"channels": 3, "resize": "shorter_side", "resize_size": 27, "crop_size": 24,
                                     "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}
    valid = photo.split_validation()
    assert valid is not None
    evaluated = [batches(valid)[0][0], batches(ImageFolderDataLoader(
        str(root), batch_size=4, image_size=24, preprocessing="photo", training=False))[0][0]]
    evaluated += [ImageFolderDataLoader.read_inputs(root / "test" / "flag" / name, photo.preprocessing())
                  for name in ("tall.png", "wide.png")]
    for images in evaluated:
        assert images is not None and images.shape[1:] == (3, 24, 24)
        assert torch.allclose(images, green.expand_as(images), atol=0.02), (images - green).abs().amax()
    squashed = batches(ImageFolderDataLoader(str(root), batch_size=4, image_size=24, training=False))[0][0]
    assert squashed.shape == (2, 3, 24, 24) and (squashed.amax(dim=(2, 3)) > 0.9).all()  # red, green and blue


def test_the_batched_random_resized_crop_equals_torchvision_per_image() -> None:
    from torchvision.transforms.v2 import functional

    images = torch.randint(0, 256, (32, 3, 37, 37), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(5)
    boxes = random_crop_boxes(32, 37, (0.08, 1.0), (3 / 4, 4 / 3), generator)
    mirrored = torch.rand(32, generator=generator) < 0.5
    cropped = resized_crops(images, boxes, 32, mirrored)
    assert cropped.shape == (32, 3, 32, 32) and cropped.dtype == torch.float32
    for image, box, flip, batched in zip(images, boxes.tolist(), mirrored, cropped, strict=True):
        top, left, height, width = box
        assert 0 <= top <= 37 - height and 0 <= left <= 37 - width
        assert 0.08 * 37**2 * 0.9 <= height * width <= 37**2 and 3 / 4 * 0.85 <= width / height <= 4 / 3 * 1.15
        expected = functional.resized_crop(image.float(), top, left, height, width, [32, 32], antialias=False)
        assert torch.allclose(batched, expected.flip(-1) if flip else expected, atol=2e-3)  # of 255
    assert 0 < int(mirrored.sum()) < 32
    assert len({tuple(box) for box in boxes.tolist()}) == 32  # every image its own box
    # ratios that a square cannot take within 10 tries: the largest centred box of the nearest ratio
    narrow = random_crop_boxes(4, 30, (0.9, 1.0), (3.0, 4.0), torch.Generator().manual_seed(0))
    assert narrow.tolist() == [[10, 0, 10, 30]] * 4


def test_photo_training_draws_depend_only_on_seed_epoch_and_batch(photos: Path) -> None:
    loader = ImageFolderDataLoader(str(photos), batch_size=8, image_size=16, preprocessing="photo", hflip=True)
    batch = next(iter(loader))
    assert batch[0].shape == (8, 3, 18, 18)  # the cache holds round(16 / 0.875) squares
    state = torch.get_rng_state()
    first = loader.device_transform(batch, 2, 3)[0]
    assert first.shape == (8, 3, 16, 16) and torch.equal(torch.get_rng_state(), state)
    assert torch.equal(loader.device_transform(batch, 2, 3)[0], first)
    assert not torch.equal(loader.device_transform(batch, 2, 4)[0], first)
    assert not torch.equal(loader.device_transform(batch, 3, 3)[0], first)


def loader_batches(loader: Any, epoch: int = 2) -> list[list[torch.Tensor]]:
    """The training batches and the validation batches of `loader`, as the trainer gets them."""
    valid = loader.split_validation()
    return batches(loader, epoch) + (batches(valid, epoch) if valid is not None else [])


def test_a_memory_mapped_cache_gives_the_batches_of_the_in_memory_one_and_follows_changes(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folders larger than the memory budget are cached in a file read through a memory map:
    built image by image, written when first served, the same batches (also gathered in worker
    processes), and rebuilt when an image changes."""
    def photo_loader(**options: Any) -> ImageFolderDataLoader:
        return ImageFolderDataLoader(str(photos), batch_size=8, image_size=16, preprocessing="photo", hflip=True,
                                     **options)

    in_memory = photo_loader()
    expected = loader_batches(in_memory)
    shutil.rmtree(tmp_path / "cache")
    monkeypatch.setattr(image_files, "CACHE_MEMORY_FRACTION", 0.0)
    allocated: list[tuple[int, ...]] = []
    empty = torch.empty
    monkeypatch.setattr(image_files.torch, "empty", lambda *shape, **kw: allocated.append(shape) or empty(*shape, **kw))
    mapped = photo_loader()
    assert allocated == []  # built image by image on disk, never whole in memory
    assert isinstance(mapped.dataset, image_files.CachedImages) and mapped.dataset.mapped is not None
    assert mapped.dataset.mapped.name.endswith(".tmp")
    assert sorted(path.suffix for path in (tmp_path / "cache").iterdir()) == [".tmp", ".tmp"]  # not written yet
    mapped.seed = in_memory.seed
    for one, other in zip(expected, loader_batches(mapped), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(one, other, strict=True))
    files = sorted((tmp_path / "cache").glob("images-*.npy"))
    assert len(files) == 2 and mapped.dataset.mapped in files
    assert np.load(files[0], mmap_mode="r").shape in ((48, 3, 18, 18), (12, 3, 18, 18))  # a plain .npy array
    again = photo_loader(num_workers=2)  # from the file, each worker mapping it
    assert again.dataset.mapped in files  # type: ignore[attr-defined]
    again.seed = in_memory.seed
    for one, other in zip(expected, loader_batches(again), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(one, other, strict=True))

    write_photos(tmp_path / "other", "train", {"blue": 1}, seed=9)
    shutil.copy(tmp_path / "other" / "train" / "blue" / "0.jpg", photos / "train" / "amber" / "3.jpg")
    changed = photo_loader()
    iter(changed)
    new_files = sorted((tmp_path / "cache").glob("images-*.npy"))
    assert len(new_files) == 2 and len(set(new_files) & set(files)) == 1  # val/ kept; train/ rebuilt, the old gone
    index = sorted(path.name for path in (photos / "train" / "amber").iterdir()).index("3.jpg")
    assert changed.dataset.tensors[0][index, 2].float().mean() > 150  # type: ignore[attr-defined]  # blue now


def test_a_memory_mapped_cache_that_is_never_served_leaves_no_file(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run refused after the images were decoded into a mapped cache: its temporary files (and
    the cache folder made for them) go when the loader does, at the latest when the process ends."""
    import gc

    monkeypatch.setattr(image_files, "CACHE_MEMORY_FRACTION", 0.0)
    loader = ImageFolderDataLoader(str(photos), batch_size=8, image_size=16, preprocessing="photo")
    assert len(list((tmp_path / "cache").iterdir())) == 2
    del loader
    gc.collect()
    assert not (tmp_path / "cache").exists()


def test_temporary_cache_files_that_a_killed_build_left_are_removed_by_the_next(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_files, "CACHE_MEMORY_FRACTION", 0.0)
    (tmp_path / "cache").mkdir()
    left = image_files.cache_file(photos / "train", "0" * 64, tmp_path / "cache")
    stale, fresh = (left.with_name(f".{left.name}.{name}.tmp") for name in ("stale", "fresh"))
    for temporary in (stale, fresh):
        temporary.write_bytes(b"half a cache")
    os.utime(stale, (0, os.stat(stale).st_mtime - image_files.STALE_SECONDS - 60))
    iter(ImageFolderDataLoader(str(photos), batch_size=8, image_size=16, preprocessing="photo"))
    assert not stale.exists() and fresh.exists()  # a live process may still be writing that one
    assert len(list((tmp_path / "cache").glob("images-*.npy"))) == 2


@pytest.mark.parametrize(
    ("folder", "budget"),
    [("images", image_files.CACHE_MEMORY_FRACTION), ("photos", image_files.CACHE_MEMORY_FRACTION), ("photos", 0.0)],
    ids=["small-in-memory", "photos-in-memory", "photos-memory-mapped"],
)
def test_ctrl_c_while_decoding_stops_within_an_image_and_leaves_no_cache(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest,
    folder: str, budget: float,
) -> None:
    monkeypatch.setattr(image_files, "CACHE_MEMORY_FRACTION", budget)
    data = request.getfixturevalue(folder)
    config = photo_config(data, tmp_path / "saved") if folder == "photos" else image_config(data, tmp_path / "saved")
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    decoded: list[Path] = []
    read_image = image_files.read_image

    def read_and_press_ctrl_c(path: Path, form: Any) -> torch.Tensor:
        decoded.append(path)
        if len(decoded) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return read_image(path, form)

    monkeypatch.setattr(image_files, "read_image", read_and_press_ctrl_c)
    assert train.main(["-c", str(config_path)]) == 130
    assert capsys.readouterr().err == "interrupted by signal 2 before training started; nothing was saved\n"
    assert len(decoded) == 3  # the image being decoded is the last
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", folder]  # no cache/, no saved/


IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # the `normalization` of torchvision's ImageNet weights


def test_photos_stop_on_sigterm_resume_bitwise_and_predict_py_equals_test_py(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """JPEG photos of mixed sizes, the photo recipe (random resized crops and flips), the cache
    memory-mapped, and a model whose pretrained weights want ImageNet's normalisation: a SIGTERM
    in epoch 2 resumes bitwise equal to a straight run; the checkpoint records the shorter-side
    resize, the centre crop and the model's mean and std, and predict.py on the test photos is
    right exactly where test.py is."""
    monkeypatch.setattr(image_files, "CACHE_MEMORY_FRACTION", 0.0)
    monkeypatch.setattr(module_arch.ImageClassifier, "normalization", IMAGENET, raising=False)
    config = photo_config(photos, tmp_path / "saved")
    train.train(ConfigParser(json.loads(json.dumps(config)), run_id="straight"))
    with monkeypatch.context() as patch:
        signal_after(patch, "train_step", 9)  # 6 batches an epoch: in epoch 2
        with pytest.raises(TrainingInterrupted):
            train.train(ConfigParser(json.loads(json.dumps(config)), run_id="stopped"))
    stopped = tmp_path / "saved" / "ImageFolder_CNN" / "stopped"
    assert torch.load(stopped / "latest.pth", weights_only=True)["batches_done"] == 3
    assert train.main(["-r", str(stopped / "latest.pth")]) == 0
    straight = torch.load(tmp_path / "saved" / "ImageFolder_CNN" / "straight" / "latest.pth", weights_only=True)
    resumed = torch.load(stopped / "latest.pth", weights_only=True)
    assert all(torch.equal(straight["state_dict"][key], resumed["state_dict"][key]) for key in straight["state_dict"])
    assert (stopped / "metrics.csv").read_text() == (stopped.parent / "straight" / "metrics.csv").read_text()
    assert resumed["preprocessing"] == {"channels": 3, "resize": "shorter_side", "resize_size": 18, "crop_size": 16,
                                        "interpolation": "bilinear", "mean": [0.485, 0.456, 0.406],
                                        "std": [0.229, 0.224, 0.225]}

    capsys.readouterr()
    evaluated: list[dict[str, Any]] = []
    evaluate = test_script.Trainer.evaluate

    def recorded(self: Any, loader: Any, **options: Any) -> dict[str, float]:
        evaluated.append(loader.preprocessing())
        return evaluate(self, loader, **options)

    monkeypatch.setattr(test_script.Trainer, "evaluate", recorded)
    assert test_script.main(["-r", str(stopped / "latest.pth")]) == 0
    assert evaluated == [resumed["preprocessing"]]  # test.py normalises as training did
    accuracy = float(next(line for line in capsys.readouterr().out.splitlines() if line.startswith("accuracy: "))
                     .split()[1])
    assert predict.main(["-r", str(stopped / "latest.pth"), str(photos / "test"), "--out", "p.csv"]) == 0
    rows = list(csv.DictReader(Path("p.csv").open()))
    right = sum(row["class"] == Path(row["path"]).parent.name for row in rows)
    assert len(rows) == 15 and right / 15 == pytest.approx(accuracy, abs=1e-6)
