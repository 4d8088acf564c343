"""test.py --report DIR: the confusion matrix of an evaluation, counted from the very outputs and
targets of the trainer's `valid_step` that test.py's metrics are measured on, and the files made
from it: per-class precision, recall, F1 and support (per_class.csv), the matrix (CSV, and a PNG
with the class names on its axes), and the metrics (metrics.json). The folder is checked before
the evaluation and written whole after it."""

import contextlib
import csv
import io
import json
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from engine import distributed
from engine.signals import stop_signals_blocked
from reports.plot import figure_bytes
from utils.errors import InputError
from utils.staged_files import StagedFiles, full_disk_reported, write_refused

FILES = ("per_class.csv", "confusion_matrix.csv", "confusion_matrix.png", "metrics.json")
ANNOTATED_CLASSES = 30  # up to this many classes, every cell of the PNG shows its count


class ConfusionMatrix:
    """`counts[true, predicted]` over an evaluation, the predicted class being each output's
    largest score (as the accuracy metric takes it). Counted on the outputs' device, with no
    synchronisation per batch; `update` is the observer that BaseTrainer.evaluate calls."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None  # (classes * classes,) int64
        self.classes = 0

    def update(self, output: Any, target: Any) -> None:
        """Count one batch: `output` (B, classes) scores, `target` (B,) class indices."""
        if not (isinstance(output, torch.Tensor) and output.dim() == 2 and isinstance(target, torch.Tensor)
                and target.dim() == 1 and not target.is_floating_point() and len(target) == len(output)):
            raise InputError("--report: the confusion matrix needs class scores (batch, classes) and class indices "
                             f"(batch,) from valid_step, got {_shape(output)} and {_shape(target)}")
        if self.counts is None:
            self.classes = output.size(1)
            self.counts = torch.zeros(self.classes**2, dtype=torch.int64, device=output.device)
        cells = target.to(self.counts.device, torch.int64) * self.classes + output.argmax(dim=1).to(self.counts.device)
        self.counts.index_add_(0, cells, torch.ones_like(cells))

    def result(self) -> torch.Tensor:
        """The counts of every process together (DDP), on the CPU: (classes, classes)."""
        if self.counts is None:
            raise InputError("--report: the test split has no samples")
        counts = distributed.sum_across_ranks(self.counts.clone()).cpu()
        return counts.view(self.classes, self.classes)


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"Tensor{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    return type(value).__name__


def per_class(counts: torch.Tensor) -> list[dict[str, float]]:
    """Precision, recall, F1 and support of each class of `counts[true, predicted]`; a ratio
    with nothing to divide by (a class never predicted, or absent) is 0."""
    right = counts.diag().double()
    predicted, actual = counts.sum(dim=0).double(), counts.sum(dim=1).double()
    precision = torch.where(predicted > 0, right / predicted.clamp(min=1), 0.0)
    recall = torch.where(actual > 0, right / actual.clamp(min=1), 0.0)
    f1 = torch.where(precision + recall > 0, 2 * precision * recall / (precision + recall).clamp(min=1e-12), 0.0)
    return [{"precision": p, "recall": r, "f1": f, "support": int(s)}
            for p, r, f, s in zip(precision.tolist(), recall.tolist(), f1.tolist(), actual.tolist(), strict=True)]


def averages(rows: list[dict[str, float]]) -> dict[str, dict[str, float]]:
    """The classes' precision, recall and F1 averaged plainly (macro) and by support (weighted)."""
    total = sum(row["support"] for row in rows) or 1
    keys = ("precision", "recall", "f1")
    return {"macro_avg": {key: sum(row[key] for row in rows) / len(rows) for key in keys},
            "weighted_avg": {key: sum(row[key] * row["support"] for row in rows) / total for key in keys}}


def report_files(counts: torch.Tensor, names: list[str], metrics: dict[str, float],
                 checkpoint: Path) -> dict[str, bytes]:
    """The report's files by name: FILES, made from `counts[true, predicted]` of the classes
    `names` and test.py's `metrics`."""
    rows = per_class(counts)
    table = io.StringIO()
    writer = csv.writer(table, lineterminator="\n")
    writer.writerow(["class", "precision", "recall", "f1", "support"])
    writer.writerows([name, f"{row['precision']:.6f}", f"{row['recall']:.6f}", f"{row['f1']:.6f}", row["support"]]
                     for name, row in zip(names, rows, strict=True))
    matrix = io.StringIO()
    writer = csv.writer(matrix, lineterminator="\n")
    writer.writerow(["true \\ predicted", *names])
    writer.writerows([name, *row] for name, row in zip(names, counts.tolist(), strict=True))
    summary = {"checkpoint": str(checkpoint.resolve()), "samples": int(counts.sum()), "metrics": metrics,
               **averages(rows)}
    return {
        "per_class.csv": table.getvalue().encode("utf-8"),
        "confusion_matrix.csv": matrix.getvalue().encode("utf-8"),
        "confusion_matrix.png": figure_bytes(confusion_figure(counts, names), Path("confusion_matrix.png")),
        "metrics.json": (json.dumps(summary, indent=2) + "\n").encode("utf-8"),
    }


def confusion_figure(counts: torch.Tensor, names: list[str]) -> Figure:
    """The matrix as an image: true classes down, predicted across, named on the axes."""
    size = max(4.0, 0.45 * len(names) + 2.5)
    figure = Figure(figsize=(size + 1.0, size))
    axes = figure.add_subplot()
    image = axes.imshow(counts.numpy(), cmap="Blues")
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04)
    ticks = list(range(len(names)))
    axes.set_xticks(ticks, names, rotation=45 if max(map(len, names)) > 2 else 0, ha="right")
    axes.set_yticks(ticks, names)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"confusion matrix, {int(counts.sum()):,} samples")
    if len(names) <= ANNOTATED_CLASSES:
        threshold = counts.max().item() / 2
        for (true, predicted), count in zip(((t, p) for t in ticks for p in ticks), counts.flatten().tolist(),
                                            strict=True):
            axes.text(predicted, true, str(count), ha="center", va="center", fontsize=8,
                      color="white" if count > threshold else "black")
    return figure


def check_report_folder(folder: Path) -> None:
    """Refuse, before evaluating, a folder that cannot be made or written: made (with its missing
    parents) and written to for a moment, as the report will be, then left as it was."""
    if folder.exists() and not folder.is_dir():
        raise InputError(f"--report '{folder}': a file, not a folder")
    made = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        refused = write_refused(folder)
    except OSError as exc:
        refused = exc
    finally:
        remove_folders(made)
    if refused is not None:
        raise InputError(f"--report '{folder}': cannot write into it ({refused.strerror or refused})")


def remove_folders(folders: list[Path]) -> None:
    """Remove each of `folders` (innermost first) that is empty."""
    for path in folders:
        with contextlib.suppress(OSError):
            path.rmdir()


def write_report(folder: Path, files: dict[str, bytes]) -> None:
    """Make `folder` (and its missing parents) and write every file whole, all or none: a
    failure leaves the folder as it was, and removes the folders it made."""
    made = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        with full_disk_reported(folder):
            folder.mkdir(parents=True, exist_ok=True)
        with StagedFiles() as staged:
            for name, data in files.items():
                staged.add(data, folder / name)
            with stop_signals_blocked():  # all or none, also when Ctrl-C comes between the renames
                staged.commit()
    except OSError as exc:
        remove_folders(made)
        raise InputError(f"--report '{folder}': cannot write into it ({exc.strerror or exc})") from None
    except BaseException:
        remove_folders(made)
        raise
