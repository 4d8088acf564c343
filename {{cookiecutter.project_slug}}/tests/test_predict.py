"""predict.py: a checkpoint alone turns image files (and MNIST's IDX files) into predictions, as
evaluation would have made them; every mistake is one line, status 2, and nothing written."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Echo, call_main, edited_checkpoint, files_under, synthetic_digits, write_idx

import model.model as module_arch
import predict
import test as test_script

DIGITS = 12


@pytest.fixture
def checkpoint(mnist_checkpoint: Path) -> Path:
    return mnist_checkpoint


@pytest.fixture
def digits(tmp_path: Path) -> tuple[Path, Path, np.ndarray]:
    """The same synthetic digits as PNG files (`pngs/00.png`, ...) and as an IDX file of
    images; and their labels."""
    from PIL import Image

    images, labels = synthetic_digits(DIGITS, seed=7)
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for index, image in enumerate(images):
        Image.fromarray(image).save(pngs / f"{index:02d}.png")
    idx = tmp_path / "digits-idx3-ubyte"
    write_idx(idx, images)
    return pngs, idx, labels


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def test_png_digits_get_the_predictions_of_the_same_digits_in_an_idx_file(
    checkpoint: Path, digits: tuple[Path, Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pngs, idx, _ = digits
    status, out, err = call_main(predict.main, ["-r", str(checkpoint), str(pngs), "--out", str(tmp_path / "png.csv")],
                                 capsys)
    assert (status, err) == (0, "")
    assert out.splitlines()[-1] == f"wrote {tmp_path / 'png.csv'}: {DIGITS} predictions from {DIGITS} files"
    assert out.splitlines()[0].split() == ["path", "class", "probability", "next", "most", "probable"]  # the table
    args = ["-r", str(checkpoint), str(idx), "--out", str(tmp_path / "idx.csv")]
    status, _, _ = call_main(predict.main, args, capsys)
    from_png, from_idx = read_rows(tmp_path / "png.csv"), read_rows(tmp_path / "idx.csv")
    assert status == 0 and len(from_png) == len(from_idx) == DIGITS
    assert [row["path"] for row in from_png] == [str(pngs / f"{index:02d}.png") for index in range(DIGITS)]
    assert [row["path"] for row in from_idx] == [f"{idx}[{index}]" for index in range(DIGITS)]
    # the same classes and probabilities
    assert [{**row, "path": ""} for row in from_png] == [{**row, "path": ""} for row in from_idx]
    assert list(from_png[0]) == ["path", "class", "probability", "class_2", "probability_2", "class_3", "probability_3"]
    probabilities = [float(from_png[0][key]) for key in ("probability", "probability_2", "probability_3")]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1.0 + 1e-5


def test_predictions_on_the_test_files_have_the_accuracy_that_test_py_reports(
    checkpoint: Path, mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = mnist_dir / "MNIST" / "raw"
    assert test_script.main(["-r", str(checkpoint)]) == 0
    reported = float(next(line for line in capsys.readouterr().out.splitlines() if line.startswith("accuracy:"))[9:])
    out = tmp_path / "test.csv"
    args = ["-r", str(checkpoint), str(raw / "t10k-images-idx3-ubyte"), "--out", str(out), "--batch-size", "7"]
    assert call_main(predict.main, args, capsys)[0] == 0
    labels = raw.joinpath("t10k-labels-idx1-ubyte").read_bytes()[8:]
    rows = read_rows(out)
    assert len(rows) == len(labels) == 100  # streamed in batches of 7, no table for so many
    right = sum(row["class"] == str(label) for row, label in zip(rows, labels, strict=True))
    assert right / 100 == pytest.approx(reported)


def test_the_checkpoint_is_all_it_needs(
    checkpoint: Path, digits: tuple[Path, Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pngs, _, _ = digits
    saved = torch.load(checkpoint, weights_only=True)
    saved["config"]["data_loader"]["args"]["data_dir"] = str(tmp_path / "gone")  # the training data are not here
    alone = tmp_path / "elsewhere" / "model.pth"
    alone.parent.mkdir()
    torch.save(saved, alone)
    monkeypatch.chdir(alone.parent)
    status, out, _ = call_main(predict.main, ["-r", "model.pth", str(pngs), "--top-k", "1"], capsys)
    assert status == 0 and out.splitlines()[-1].startswith("wrote predictions.csv: 12 predictions")
    assert list(read_rows(alone.parent / "predictions.csv")[0]) == ["path", "class", "probability"]
    assert not (tmp_path / "gone").exists()


def test_with_skip_unreadable_a_broken_image_is_skipped_and_counted(
    checkpoint: Path, digits: tuple[Path, Path, np.ndarray], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pngs, _, _ = digits
    (pngs / "broken.png").write_bytes(b"\x89PNG cut short")
    (pngs / "notes.txt").write_text("not an image")
    args = ["-r", str(checkpoint), str(pngs), "--out", str(tmp_path / "p.csv"), "--skip-unreadable"]
    status, out, _ = call_main(predict.main, args, capsys)
    assert status == 0 and len(read_rows(tmp_path / "p.csv")) == DIGITS
    assert out.splitlines()[-1] == (f"wrote {tmp_path / 'p.csv'}: {DIGITS} predictions from {DIGITS + 2} files (1 file "
                                    f"skipped: not inputs of this model; 1 unreadable skipped, the first "
                                    f"{pngs / 'broken.png'})")


BAD_INPUTS = [
    ("input-missing", ["-r", "good.pth", "nope"], "input 'nope': no such file or folder"),
    ("out-folder-missing", ["-r", "good.pth", "pngs", "--out", "results/p.csv"],
     "--out 'results/p.csv': cannot write in the folder 'results' (missing or not writable)"),
    ("out-a-folder", ["-r", "good.pth", "pngs", "--out", "pngs"], "--out 'pngs': a folder; give a file name"),
    ("out-given-with-o", ["-r", "good.pth", "pngs", "-o", "p.csv"],
     "-o p.csv: -o sets a config key as in train.py (KEY=VALUE); the output file is given with --out"),
    ("no-checkpoint", ["pngs"], "the following arguments are required: -r/--resume"),
    ("checkpoint-an-image", ["-r", "pngs/00.png", "pngs"], "checkpoint 'pngs/00.png': not a readable checkpoint"),
    ("checkpoint-without-preprocessing", ["-r", "no_preprocessing.pth", "pngs"],
     "checkpoint 'no_preprocessing.pth': records no preprocessing of its inputs (its data loader MnistDataLoader has "
     "no preprocessing(), or wrote the checkpoint before format 5), which predict.py needs"),
    ("not-a-classifier", ["-r", "echo.pth", "pngs"],
     "model 'Echo' is not a classifier predict.py can use: for 12 inputs it returns shape (12, 1, 28, 28)"),
    ("unreadable-image", ["-r", "good.pth", "broken"],
     "image broken/broken.png cannot be decoded (cannot identify image file 'broken/broken.png'); replace or remove "
     "it; or skip such files with --skip-unreadable"),
    ("no-inputs", ["-r", "good.pth", "notes"],
     "no inputs: none of the 1 files under notes is an input of this model (data loader MnistDataLoader)"),
    ("top-k-above-classes", ["-r", "good.pth", "pngs", "--top-k", "11"], "--top-k 11: the model has 10 classes"),
    ("batch-size-zero", ["-r", "good.pth", "pngs", "--batch-size", "0"], "'0' is not a whole number of 1 or more"),
]


@pytest.mark.parametrize(("args", "message"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_a_bad_input_is_one_line_status_2_and_writes_nothing(
    args: list[str], message: str, checkpoint: Path, digits: tuple[Path, Path, np.ndarray], tmp_path: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "good.pth").write_bytes(checkpoint.read_bytes())
    edited_checkpoint(checkpoint, tmp_path / "no_preprocessing.pth", preprocessing=None)
    edited_checkpoint(checkpoint, tmp_path / "echo.pth", arch="Echo", state_dict={})
    monkeypatch.setattr(module_arch, "Echo", Echo, raising=False)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "broken.png").write_bytes(b"\x89PNG cut short")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.txt").write_text("not an image")
    before = files_under(tmp_path)
    status, out, err = call_main(predict.main, args, capsys)
    assert status == 2 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert files_under(tmp_path) == before


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="Linux /proc")
def test_an_output_folder_the_file_system_refuses_is_refused_before_any_work() -> None:
    """/proc takes no new file from anyone; a check of the permission bits alone let root through
    (and the file system refused the file only after the predictions were made)."""
    from utils.errors import InputError
    from utils.staged_files import check_writable_file

    with pytest.raises(InputError) as refused:
        check_writable_file(Path("/proc/p.csv"), "--out ")
    assert str(refused.value).startswith("--out '/proc/p.csv': cannot write in the folder '/proc' (")
