"""test.py --report DIR: per-class precision, recall, F1 and support, the confusion matrix (CSV and
PNG) and the metrics (JSON), counted from the outputs the reported metrics are measured on."""

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import call_main, files_under

import test as test_script
from reports.evaluation import confusion_figure, per_class


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as file:
        return list(csv.reader(file))


def test_the_report_counts_every_test_sample_and_agrees_with_the_reported_accuracy(
    mnist_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "reports" / "lenet"  # made, parents too
    status, out, err = call_main(test_script.main, ["-r", str(mnist_checkpoint), "--report", str(report)], capsys)
    assert status == 0, err
    printed = dict(line.split(": ") for line in out.splitlines() if ": " in line)
    assert out.splitlines()[-1] == f"wrote per_class.csv, confusion_matrix.csv, confusion_matrix.png, metrics.json " \
                                   f"into {report}"
    matrix = read_csv(report / "confusion_matrix.csv")
    names = [str(digit) for digit in range(10)]
    assert matrix[0] == ["true \\ predicted", *names] and [row[0] for row in matrix[1:]] == names
    counts = torch.tensor([[int(cell) for cell in row[1:]] for row in matrix[1:]])
    assert counts.sum() == 100  # the synthetic test split
    assert counts.trace() / counts.sum() == pytest.approx(float(printed["accuracy"]), abs=1e-6)

    table = read_csv(report / "per_class.csv")
    assert table[0] == ["class", "precision", "recall", "f1", "support"] and [row[0] for row in table[1:]] == names
    for digit, (_, precision, recall, f1, support) in enumerate(table[1:]):
        right = counts[digit, digit].item()
        assert int(support) == counts[digit].sum() == 10
        assert float(recall) == pytest.approx(right / 10, abs=1e-6)
        predicted = counts[:, digit].sum().item()
        assert float(precision) == pytest.approx(right / predicted if predicted else 0.0, abs=1e-6)
        p, r = float(precision), float(recall)
        assert float(f1) == pytest.approx(2 * p * r / (p + r) if p + r else 0.0, abs=1e-5)

    summary = json.loads((report / "metrics.json").read_text())
    assert summary["samples"] == 100 and summary["checkpoint"] == str(mnist_checkpoint.resolve())
    assert {key: f"{value:.6f}" for key, value in summary["metrics"].items()} == printed
    assert summary["macro_avg"]["recall"] == pytest.approx(float(printed["accuracy"]))  # 10 of each class
    assert (report / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_without_report_test_py_writes_nothing(
    mnist_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    before = files_under(mnist_checkpoint.parents[2]), files_under(tmp_path)
    assert call_main(test_script.main, ["-r", str(mnist_checkpoint)], capsys)[0] == 0
    assert (files_under(mnist_checkpoint.parents[2]), files_under(tmp_path)) == before


@pytest.mark.parametrize(("folder", "message"), [
    ("a_file", "--report 'a_file': a file, not a folder"),
    ("a_file/report", "--report 'a_file/report': cannot write into it (Not a directory)"),
    # /proc takes no new folder from anyone (a check of the permission bits let root through)
    pytest.param("/proc/report", "--report '/proc/report': cannot write into it (",  # which reason: by user
                 marks=pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="Linux /proc")),
])
def test_a_report_folder_that_cannot_be_written_is_one_line_before_evaluating(
    folder: str, message: str, mnist_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a_file").write_text("")
    monkeypatch.setattr(test_script, "evaluation_loader", lambda *args, **kwargs: pytest.fail("evaluated"))
    status, out, err = call_main(test_script.main, ["-r", str(mnist_checkpoint), "--report", folder], capsys)
    assert (status, out) == (2, "") and err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a_file"]


def test_per_class_figures_and_the_picture_name_the_classes() -> None:
    counts = torch.tensor([[3, 1, 0], [0, 0, 0], [2, 0, 4]])  # true down, predicted across; "bird" never seen
    rows = per_class(counts)
    assert [row["support"] for row in rows] == [4, 0, 6]
    assert rows[0]["precision"] == pytest.approx(3 / 5) and rows[0]["recall"] == pytest.approx(3 / 4)
    assert rows[1] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}  # nothing to divide by: 0
    assert rows[2]["f1"] == pytest.approx(2 * 1.0 * (4 / 6) / (1.0 + 4 / 6))
    axes = confusion_figure(counts, ["cat", "bird", "dog"]).axes[0]
    assert [label.get_text() for label in axes.get_xticklabels()] == ["cat", "bird", "dog"]
    assert [label.get_text() for label in axes.get_yticklabels()] == ["cat", "bird", "dog"]
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("predicted class", "true class")
