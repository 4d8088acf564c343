"""metrics.csv keeps every column honest: files re-saved by a spreadsheet resume, a metric added
on resume gets its own column, a metric removed leaves empty cells, and a file that cannot be
continued is one error line that changes nothing."""

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import train
from logger import MetricsCSV
from logger.metrics_csv import epoch_ranges
from utils.errors import InputError

ConfigFactory = Callable[..., dict[str, Any]]


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def spreadsheet_copy(path: Path) -> None:
    """Re-save `path` as a spreadsheet does: byte order mark, CRLF, epochs as `2.0`, empty lines."""
    rows = read_rows(path)
    lines = [",".join(rows[0])]
    lines += [",".join(f"{float(v):.1f}" if k == "epoch" else v for k, v in row.items()) for row in rows]
    path.write_bytes(("\ufeff" + "\r\n".join(lines) + "\r\n\r\n,,,\r\n\r\n").encode("utf-8"))


def test_a_file_resaved_by_a_spreadsheet_is_continued(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_bytes("\ufeffepoch,loss,lr\r\n1.0,0.5,0.1\r\n2.0,0.4,0.1\r\n3.0,0.3,0.1\r\n\r\n,,\r\n".encode())
    metrics = MetricsCSV(path, start_epoch=3)
    metrics.write({"epoch": 3, "loss": 0.25, "lr": 0.1})
    metrics.write({"epoch": 4, "loss": 0.2, "lr": 0.1})
    text = path.read_text(encoding="utf-8")
    assert not text.startswith("\ufeff")
    assert read_rows(path) == [
        {"epoch": "1", "loss": "0.5", "lr": "0.1"},
        {"epoch": "2", "loss": "0.4", "lr": "0.1"},
        {"epoch": "3", "loss": "0.25", "lr": "0.1"},
        {"epoch": "4", "loss": "0.2", "lr": "0.1"},
    ]


def test_a_metric_added_on_resume_becomes_a_column_with_empty_old_cells(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,loss,lr\n1,0.5,0.1\n")
    metrics = MetricsCSV(path, start_epoch=2)
    metrics.write({"epoch": 2, "loss": 0.4, "top_k_acc": 0.9, "lr": 0.1})
    metrics.write({"epoch": 3, "loss": 0.3, "top_k_acc": 0.95, "lr": 0.1})
    with path.open(newline="") as file:
        header = next(csv.reader(file))
    assert header == ["epoch", "loss", "lr", "top_k_acc"]
    assert [row["top_k_acc"] for row in read_rows(path)] == ["", "0.9", "0.95"]


def test_a_removed_metric_leaves_empty_cells_and_a_real_nan_stays_nan(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    metrics = MetricsCSV(path)
    metrics.write({"epoch": 1, "loss": 0.5, "accuracy": 0.8})
    resumed = MetricsCSV(path, start_epoch=2)
    resumed.write({"epoch": 2, "loss": math.nan})
    assert read_rows(path) == [
        {"epoch": "1", "loss": "0.5", "accuracy": "0.8"},
        {"epoch": "2", "loss": "nan", "accuracy": ""},
    ]


@pytest.mark.parametrize(("content", "problem"), [
    ("loss,lr\n0.5,0.1\n", "no 'epoch' column in its header (loss,lr)"),
    ("\ufeffepoch;loss\r\n1;0.5\r\n", "its columns are separated by ';', not commas (epoch;loss); save it as "
     "comma-separated CSV"),
    ("epoch,loss\n1,0.5\nTOTAL,0.5\n", "line 3 has epoch 'TOTAL', not a whole number"),
    ("epoch,loss\n1.5,0.5\n", "line 2 has epoch '1.5', not a whole number"),
    ("epoch,loss\n1,0.5,0.7\n", "line 2 has 3 cells, the header 2"),
    ("epoch,loss,loss\n1,0.5,0.5\n", "column 'loss' appears twice in its header"),
    # what two processes training one run at once left (each appended its own epoch 1 and 2)
    ("epoch,loss\n1,0.5\n1,0.6\n2,0.4\n", "epoch 1 has two rows (lines 2 and 3), written by two processes "
     "training this run at once; keep one row per epoch and resume again"),
])
def test_a_file_that_cannot_be_continued_is_one_line_naming_it(tmp_path: Path, content: str, problem: str) -> None:
    path = tmp_path / "metrics.csv"
    path.write_bytes(content.encode())
    with pytest.raises(InputError) as error:
        MetricsCSV(path, start_epoch=2)
    assert str(error.value) == f"metrics file '{path}': {problem}"
    assert path.read_bytes() == content.encode()


def test_resume_through_train_py_continues_a_spreadsheet_file_and_widens_it(
    make_config: ConfigFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(make_config(metrics=["accuracy"])))
    assert train.main(["-c", str(tmp_path / "config.json"), "--run-id", "run"]) == 0
    run_dir = tmp_path / "saved" / "Mnist_LeNet" / "run"
    spreadsheet_copy(run_dir / "metrics.csv")
    status = train.main(["-r", str(run_dir / "latest.pth"), "-o", "trainer.epochs=3",
                         "-o", 'metrics=["accuracy", "top_k_acc"]'])
    assert status == 0, capsys.readouterr().err
    rows = read_rows(run_dir / "metrics.csv")
    assert [row["epoch"] for row in rows] == ["1", "2", "3"]
    assert list(rows[0]) == ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr",
                             "top_k_acc", "val_top_k_acc"]
    assert [row["top_k_acc"] == "" for row in rows] == [True, True, False]
    assert all(row["val_accuracy"] not in ("", "nan") for row in rows)


def test_the_epochs_without_a_row_are_named(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    assert MetricsCSV(path, start_epoch=3).missing == [1, 2]  # no file at all
    path.write_text("epoch,loss\n1,0.5\n3,0.3\n6,0.1\n")
    assert MetricsCSV(path, start_epoch=6).missing == [2, 4, 5]
    assert MetricsCSV(path, start_epoch=2).missing == []
    assert epoch_ranges([7, 2, 3, 4, 9]) == "2-4, 7, 9"


def test_resume_after_rows_were_taken_out_says_which_and_goes_on(
    make_config: ConfigFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(make_config(trainer__epochs=3)))
    assert train.main(["-c", str(tmp_path / "config.json"), "--run-id", "run"]) == 0
    run_dir = tmp_path / "saved" / "Mnist_LeNet" / "run"
    lines = (run_dir / "metrics.csv").read_text().splitlines()
    (run_dir / "metrics.csv").write_text("\n".join([lines[0], lines[1]]) + "\n")  # epochs 2 and 3 taken out
    caplog.clear()
    assert train.main(["-r", str(run_dir / "latest.pth"), "-o", "trainer.epochs=4"]) == 0
    said = f"{run_dir / 'metrics.csv'} has no row for epochs 2-3, which the checkpoint has trained"
    assert [record.levelname for record in caplog.records if said in record.getMessage()] == ["WARNING"]
    assert [row["epoch"] for row in read_rows(run_dir / "metrics.csv")] == ["1", "4"]


def test_resume_with_a_metrics_file_it_cannot_continue_changes_nothing(
    make_config: ConfigFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(make_config(trainer__epochs=1)))
    assert train.main(["-c", str(tmp_path / "config.json"), "--run-id", "run"]) == 0
    run_dir = tmp_path / "saved" / "Mnist_LeNet" / "run"
    (run_dir / "metrics.csv").write_text("Epoch,Loss\n1,0.5\n")  # renamed columns
    before = {path.name: path.read_bytes() for path in run_dir.iterdir()}
    capsys.readouterr()
    status = train.main(["-r", str(run_dir / "latest.pth"), "-o", "trainer.epochs=2"])
    err = capsys.readouterr().err
    assert status == 2
    assert err == f"error: metrics file '{run_dir / 'metrics.csv'}': no 'epoch' column in its header (Epoch,Loss)\n"
    assert {path.name: path.read_bytes() for path in run_dir.iterdir()} == before
