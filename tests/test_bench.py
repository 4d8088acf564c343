"""bench/bench.py's arithmetic, on made-up runs (no process is started): the whole-process figure
per epoch is (wall of N epochs - wall of 1) / (N - 1) for each repeat, start-up, first-epoch
costs and exit cancelling out, and one run prints it beside the in-process figures, with each
repeat's own ratio."""

import math
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
sys.dont_write_bytecode = True  # no __pycache__ in bench/
import bench  # noqa: E402  (bench/ is not a package)


def made_up_run(which: str, repeat: int, epochs: int, later: float, overhead: float) -> dict[str, Any]:
    """A run whose first epoch costs 3 s more than the `later` ones, with a start-up and an exit
    of `overhead` seconds each outside the epochs."""
    times = [later + 3.0] + [later] * (epochs - 1)
    return {
        "which": which,
        "repeat": repeat,
        "epochs_run": epochs,
        "epochs": [{"total": t, "train": t - 0.5, "valid": 0.5, "other": 0.0, "cpu": t} for t in times],
        "wall": 2 * overhead + sum(times),
        "cpu": 2 * overhead + sum(times),
        "startup": overhead,
        "load": 0.0,
        "val_accuracy": 0.98,
    }


def test_the_whole_process_figure_cancels_start_up_the_first_epoch_and_exit(capsys: pytest.CaptureFixture[str]) -> None:
    runs = [
        made_up_run(which, repeat, epochs, later, overhead)
        for repeat, overhead in ((1, 2.0), (2, 5.0), (3, 2.5))
        for which, later in (("ours", 4.2), ("bare", 4.0))
        for epochs in (3, 1)
    ]
    summary = bench.summarise(runs)
    assert summary["ours"]["whole"] == pytest.approx(4.2) and summary["bare"]["whole"] == pytest.approx(4.0)
    assert summary["ours"]["epoch_2_on"] == pytest.approx(4.2)
    assert summary["ours"]["epoch"] == pytest.approx(4.2)  # the median of 3 x 3 epochs, 3 of them first ones
    ratios = bench.ratios(summary, "ours")
    assert ratios["whole"] == pytest.approx(1.05) and ratios["whole_cpu"] == pytest.approx(1.05)
    assert bench.repeat_ratios(runs, "ours")["whole"] == pytest.approx([1.05] * 3)
    bench.print_report(runs, summary, 3)
    report = capsys.readouterr().out
    assert "in-process, epochs 2+                 1.05x" in report
    assert "whole-process (TN - T1) / (N - 1)     1.05x   (1.05  1.05  1.05)" in report


def test_a_repeat_without_its_one_epoch_run_gives_no_whole_process_figure() -> None:
    runs = [made_up_run("ours", 1, 3, 4.0, 2.0), made_up_run("bare", 1, 3, 4.0, 2.0)]
    assert math.isnan(bench.whole_process_per_epoch(runs, "ours", "wall"))
