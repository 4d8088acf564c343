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

import predict
import test as test_script
import train
from data_loader import ImageFolderDataLoader, image_files
from data_loader.image_folder import batch_seed, labelled_files, random_shift
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
    cached = sorted((tmp_path / "cache").glob("*.pt"))
    assert len(cached) == 2  # train/ and val/
    first = loader.dataset.tensors[0].clone()  # type: ignore[attr-defined]

    def no_decoding(path: Path, size: int) -> torch.Tensor:
        raise AssertionError(f"decoded {path} again")

    with monkeypatch.context() as patched:
        patched.setattr(image_files, "read_image", no_decoding)
        again = ImageFolderDataLoader(str(images), batch_size=4, image_size=8)  # from the cache alone
    assert torch.equal(again.dataset.tensors[0], first)  # type: ignore[attr-defined]

    from PIL import Image

    Image.new("RGB", (8, 8), (255, 255, 255)).save(images / "train" / "blue" / "3.png")  # same name, new pixels
    changed = ImageFolderDataLoader(str(images), batch_size=4, image_size=8)
    iter(changed)
    index = [path.name for path in sorted((images / "train" / "blue").iterdir())].index("3.png") + 12
    white = torch.full((3, 8, 8), 255, dtype=torch.uint8)
    assert torch.equal(changed.dataset.tensors[0][index], white)  # type: ignore[attr-defined]
    assert len(sorted((tmp_path / "cache").glob("*.pt"))) == 2  # the stale train/ cache is gone
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
     ("cache_dir", 123, "a string or null")],
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
    cached = sorted((tmp_path / "cache").glob("*.pt"))
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
    built, pending = image_files.cached_images(folder, paths, 8, tmp_path / "cache")  # rank 0
    assert [kind for kind, _ in broadcasts] == ["ready"] and ".share" in broadcasts[0][1]
    assert pending is not None and not (tmp_path / "cache").exists()  # handed over, then removed (folder too)
    key = image_files.cache_key(paths, 8)
    shared = image_files.share(built, key, image_files.cache_file(folder, key, tmp_path / "cache"))

    def rank_1(news: tuple[str, Any], cache: Path) -> tuple[torch.Tensor, Any]:
        with monkeypatch.context() as patched:
            patched.setattr(image_files.distributed, "is_main", lambda: False)
            patched.setattr(image_files.distributed, "broadcast", lambda value: news)
            return image_files.cached_images(folder, paths, 8, cache)

    with monkeypatch.context() as patched:
        patched.setattr(image_files, "read_image", lambda path, size: pytest.fail(f"decoded {path} again"))
        assert torch.equal(rank_1(("ready", str(shared)), tmp_path / "cache")[0], built)  # rank 0's images
    other_machine, own = rank_1(("ready", str(tmp_path / "elsewhere" / shared.name)), tmp_path / "unshared")
    assert torch.equal(other_machine, built) and own is not None  # decoded for itself, its own cache pending
    with pytest.raises(InputError, match="rank 0"):  # rank 0's error, on every rank
        rank_1(("error", "image x cannot be decoded (rank 0)"), tmp_path / "cache")
    with pytest.raises(TrainingInterrupted):  # and its stop signal
        rank_1(("stopped", 15), tmp_path / "cache")
    pending.write()
    assert [path.name for path in (tmp_path / "cache").glob("*.pt")] == [pending.file.name]


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
    monkeypatch.setattr(image_files, "read_image", lambda path, size: decoded.append(path) or read_image(path, size))
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


def test_ctrl_c_while_decoding_stops_within_an_image_and_leaves_no_cache(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(image_config(images, tmp_path / "saved")))
    decoded: list[Path] = []
    read_image = image_files.read_image

    def read_and_press_ctrl_c(path: Path, size: int) -> torch.Tensor:
        decoded.append(path)
        if len(decoded) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return read_image(path, size)

    monkeypatch.setattr(image_files, "read_image", read_and_press_ctrl_c)
    assert train.main(["-c", str(config_path)]) == 130
    assert capsys.readouterr().err == "interrupted by signal 2 before training started; nothing was saved\n"
    assert len(decoded) == 3  # the image being decoded is the last
    assert sorted(path.name for path in tmp_path.iterdir()) == ["config.json", "images"]  # no cache/, no saved/
