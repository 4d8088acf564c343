"""Predictions as a table: for each input the most probable class with its probability, and the
next most probable ones, from a classifier's scores. Scores may be logits or log-probabilities
(the template's models end in log_softmax): softmax turns either into probabilities."""

import csv
import io
from dataclasses import dataclass

import torch

from utils.errors import InputError

TABLE_ROWS = 20  # at most this many predictions are also printed as a table


@dataclass
class Prediction:
    """One input's `k` most probable classes, as (class name, probability), the likeliest first."""

    name: str
    top: list[tuple[str, float]]


def check_scores(scores: object, count: int, model: str, tool: str) -> None:
    """A classifier's output for `count` inputs is one score per class, (count, classes) with
    two classes or more: anything else is an InputError saying that `tool` needs one."""
    shape = tuple(scores.shape) if isinstance(scores, torch.Tensor) else None
    if shape is None or len(shape) != 2 or shape[0] != count or shape[1] < 2:
        got = f"shape {shape}" if shape is not None else type(scores).__name__
        raise InputError(f"model '{model}' is not a classifier {tool} can use: for {count} inputs it returns {got}, "
                         f"not one score per class ({count}, classes)")


def rank(names: list[str], scores: torch.Tensor, class_names: list[str], k: int) -> list[Prediction]:
    """The `k` most probable of `class_names` for each input of the batch `scores` (B, classes)."""
    probabilities, indices = scores.float().softmax(dim=1).topk(k, dim=1)
    return [Prediction(name, [(class_names[index], value) for index, value in zip(row, values, strict=True)])
            for name, row, values in zip(names, indices.tolist(), probabilities.tolist(), strict=True)]


def csv_text(predictions: list[Prediction], k: int) -> str:
    """The CSV file: `path,class,probability`, then `class_2,probability_2` up to the k-th."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["path", "class", "probability", *(f"{key}_{rank}" for rank in range(2, k + 1)
                                                       for key in ("class", "probability"))])
    for prediction in predictions:
        writer.writerow([prediction.name, *(cell for name, probability in prediction.top
                                            for cell in (name, f"{probability:.6f}"))])
    return out.getvalue()


def table_text(predictions: list[Prediction]) -> str:
    """A short aligned table of the predictions for the terminal."""
    rows = [["path", "class", "probability", "next most probable"]]
    rows += [[p.name, p.top[0][0], f"{p.top[0][1]:.4f}", ", ".join(f"{name} {value:.4f}" for name, value in p.top[1:])]
             for p in predictions]
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
                     for row in rows)
