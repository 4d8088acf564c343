"""report.py: runs side by side. Real runs trained in-process on the synthetic data (three seeds
of one config, one run with another lr, one stopped by SIGTERM) for the table and the plot; run
folders written by hand for how a state and a wall time are read; the bad inputs, each one
`error:` line, exit status 2 and nothing written."""

import csv
import io
import json
import signal
import statistics
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import call_main
from matplotlib import image
from test_bad_inputs import base_config, snapshot

import report
from cli import with_overrides
from engine import run_files
from parse_config import ConfigParser
from reports.plot import plot_metrics
from reports.run_folder import read_run, read_runs
from reports.table import runs_table
from train import build_trainer, train
from utils import TrainingInterrupted
from utils.errors import DiskFull

SEEDS = (1, 2, 3)


def small_config(mnist_dir: Path, save_dir: Path, *overrides: str) -> dict[str, Any]:
    config = base_config(mnist_dir)
    config["trainer"].update(epochs=2, save_dir=str(save_dir), tensorboard=False)
    return with_overrides(config, list(overrides))


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, mnist_dir: Path) -> Path:
    """save_dir holding Mnist_LeNet/ (seed1, seed2, seed3: trainer.seed 1, 2, 3; lr-high:
    optimizer.args.lr 0.01, the config's seed), Stopped/stopped (SIGTERM after epoch 1 of 2) and
    Crashed/crashed (an exception after epoch 1 of 2)."""
    save_dir = tmp_path_factory.mktemp("report") / "saved"
    for seed in SEEDS:
        train(ConfigParser(small_config(mnist_dir, save_dir, f"trainer.seed={seed}"), run_id=f"seed{seed}"))
    train(ConfigParser(small_config(mnist_dir, save_dir, "optimizer.args.lr=0.01"), run_id="lr-high"))
    trainer = build_trainer(ConfigParser(small_config(mnist_dir, save_dir, "name=Stopped"), run_id="stopped"))
    trainer.on_epoch_end = lambda epoch, log: signal.raise_signal(signal.SIGTERM)  # as a scheduler would
    with pytest.raises(TrainingInterrupted):
        trainer.train()
    trainer = build_trainer(ConfigParser(small_config(mnist_dir, save_dir, "name=Crashed"), run_id="crashed"))
    trainer.on_epoch_end = crash  # type: ignore[method-assign]
    with pytest.raises(RuntimeError, match="a bug"):
        trainer.train()
    return save_dir


def crash(epoch: int, log: dict[str, float]) -> None:
    raise RuntimeError("a bug in the user's code")


def run_report(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return call_main(report.main, args, capsys)


def best_val_loss(run_dir: Path) -> float:
    with (run_dir / "metrics.csv").open(newline="") as file:
        return min(float(row["val_loss"]) for row in csv.DictReader(file))


def test_three_seeds_and_another_lr_are_two_rows_with_mean_and_sample_std(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    folder = saved / "Mnist_LeNet"
    status, out, err = run_report([str(folder), "--csv", str(tmp_path / "runs.csv")], capsys)
    assert status == 0, err
    rows = list(csv.DictReader(io.StringIO((tmp_path / "runs.csv").read_text())))
    assert [row["run"] for row in rows] == ["lr-high", "seed1, seed2, seed3"]
    lr_high, seeds = rows
    bests = [best_val_loss(folder / f"seed{seed}") for seed in SEEDS]
    mean, std = statistics.fmean(bests), statistics.stdev(bests)
    assert std != pytest.approx(statistics.pstdev(bests))  # the two can be told apart
    assert (seeds["n"], seeds["state"], seeds["epochs"]) == ("3", "finished", "2")
    assert float(seeds["best"]) == pytest.approx(mean, rel=1e-9)
    assert float(seeds["best_std"]) == pytest.approx(std, rel=1e-9)
    assert float(lr_high["best"]) == pytest.approx(best_val_loss(folder / "lr-high"), rel=1e-9)
    assert lr_high["n"] == "1" and lr_high["best_std"] == ""
    # the keys the runs differ in, so a reader sees why: the seeds of the group, the lr of each row
    assert (seeds["trainer.seed"], lr_high["trainer.seed"]) == ("1, 2, 3", "123")
    assert (seeds["optimizer.args.lr"], lr_high["optimizer.args.lr"]) == ("0.001", "0.01")
    assert f"| seed1, seed2, seed3 | 3 | finished | 2 | {mean:.4g} ± {std:.4g} |" in out
    assert "| run | n | state | epochs | best val_loss (min) | best epoch | final lr | wall time | " \
           "optimizer.args.lr | trainer.seed |" in out
    assert "sample standard deviation (n - 1 in the denominator)" in out


def test_a_stopped_run_shows_as_stopped_at_its_last_epoch(saved: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_report([str(saved / "Stopped" / "stopped")], capsys)
    assert status == 0, err
    assert "| stopped | 1 | stopped at epoch 1 | 1 |" in out


def last_ended(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "run_info.json").read_text())[-1]["ended"]


def test_how_each_run_ended_is_recorded_and_a_crash_shows_as_one(
    saved: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Each invocation's run_info.json entry gets `ended` when its process ends, which the
    report reads: a crash is not shown as a stop."""
    outcomes = {name: last_ended(saved / folder) for name, folder in
                (("finished", "Mnist_LeNet/seed1"), ("stopped", "Stopped/stopped"), ("crashed", "Crashed/crashed"))}
    assert {name: (ended["outcome"], ended["status"], ended["epoch"]) for name, ended in outcomes.items()} == {
        "finished": ("finished", 0, 2), "stopped": ("stopped", 128 + signal.SIGTERM, 1), "crashed": ("crashed", 1, 1)}
    assert all(datetime.fromisoformat(ended["at"]).tzinfo is not None for ended in outcomes.values())
    status, out, err = run_report([str(saved / "Crashed" / "crashed")], capsys)
    assert status == 0, err
    assert "| crashed | 1 | crashed at epoch 1 | 1 |" in out


def test_a_failure_to_record_how_a_run_ended_changes_nothing_else(
    mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """A disk that fills after the last save: the record is lost (report.py then judges the run
    by its files), the run still finishes as it would have."""
    trainer = build_trainer(ConfigParser(small_config(mnist_dir, tmp_path, "trainer.epochs=1"), run_id="full"))

    def disk_fills(folder: Path, contents: dict[str, Any]) -> None:
        raise DiskFull("no space left on /scratch (/dev/sdb1)", str(folder / "run_info.json"))

    trainer.on_epoch_end = lambda epoch, log: monkeypatch.setattr(run_files, "_write_all", disk_fills)
    assert trainer.train()["epoch"] == 1
    run_dir = tmp_path / "Mnist_LeNet" / "full"
    assert "ended" not in json.loads((run_dir / "run_info.json").read_text())[-1]
    assert "Could not record how the run ended" in "".join(capsys.readouterr())
    assert read_run(run_dir).state == "finished"


def test_runs_that_differ_in_nothing_are_rows_of_their_own(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Two branches of one run (the same config, the same seed) are not two samples of a seed:
    rows group runs that differ in the seed alone, each seed once."""
    config = small_config(mnist_dir, tmp_path)
    for name, seed in (("base-from-epoch1", 1), ("base-from-epoch2", 1), ("other-seed", 2)):
        write_run(tmp_path / "runs" / name, with_overrides(json.loads(json.dumps(config)), [f"trainer.seed={seed}"]))
    status, _, err = run_report([str(tmp_path / "runs"), "--csv", str(tmp_path / "runs.csv")], capsys)
    assert status == 0, err
    rows = list(csv.DictReader(io.StringIO((tmp_path / "runs.csv").read_text())))
    assert [(row["run"], row["trainer.seed"]) for row in rows] == [("base-from-epoch1, other-seed", "1, 2"),
                                                                  ("base-from-epoch2", "1")]
    write_run(tmp_path / "two" / "a", config)
    write_run(tmp_path / "two" / "b", config)
    status, out, err = run_report([str(tmp_path / "two")], capsys)
    assert status == 0, err
    assert "| a | 1 |" in out and "| b | 1 |" in out and "standard deviation" not in out


def test_a_run_that_cannot_be_read_in_a_folder_of_runs_is_left_out_with_a_line(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """One broken run does not hide the others; named itself, it is the error it was."""
    config = small_config(mnist_dir, tmp_path)
    write_run(tmp_path / "runs" / "good", config)
    broken = write_run(tmp_path / "runs" / "semicolons", config)
    (broken / "metrics.csv").write_text("epoch;loss\n1;0.5\n")
    status, out, err = run_report([str(tmp_path / "runs"), "--csv", str(tmp_path / "runs.csv")], capsys)
    assert status == 0, err
    assert "| good | 1 | finished | 2 |" in out
    assert f"Left out semicolons, which cannot be read: metrics file '{broken / 'metrics.csv'}': " in out
    assert [row["run"] for row in csv.DictReader(io.StringIO((tmp_path / "runs.csv").read_text()))] == ["good"]
    status, _, err = run_report([str(broken)], capsys)
    assert status == 2 and err.startswith(f"error: metrics file '{broken / 'metrics.csv'}': ") and err.count("\n") == 1


def test_the_default_is_every_run_of_the_config(
    saved: Path, mnist_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(small_config(mnist_dir, tmp_path / "elsewhere")))
    status, out, err = run_report(["-o", f"trainer.save_dir={saved}"], capsys)
    assert status == 0, err
    assert "| lr-high | 1 | finished |" in out and "| seed1, seed2, seed3 | 3 |" in out
    assert "stopped" not in out  # another config name: another folder


def test_the_plot_has_one_line_per_row_and_decodes(
    saved: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    runs, _ = read_runs([saved / "Mnist_LeNet" / name for name in ("lr-high", "seed1", "seed2", "seed3")])
    _, rows = runs_table(runs)
    figure = plot_metrics(rows, ["loss", "val_loss"])
    for axes in figure.axes:
        assert len(axes.get_lines()) == 2  # lr-high, and the seeds' mean
        assert len(axes.collections) == 1  # the seeds' band
        assert [text.get_text() for text in axes.get_legend().get_texts()] == [
            "lr-high", "seed1, seed2, seed3: mean of 3, band min-max"]
    seed_mean = figure.axes[1].get_lines()[1].get_ydata()
    assert list(seed_mean) == pytest.approx([statistics.fmean(run.curve("val_loss")[epoch] for run in runs[1:])
                                             for epoch in (1, 2)])

    png = tmp_path / "runs.png"
    status, out, err = run_report([str(saved / "Mnist_LeNet"), "--plot", "loss", "--plot", "val_loss",
                                   "--out", str(png)], capsys)
    assert status == 0, err
    pixels = image.imread(png)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 300 and pixels[..., :3].std() > 0.05  # drawn, not blank
    assert f"wrote {png}" in out


# ---------------------------------------------------------------- run folders written by hand
def write_run(folder: Path, config: dict[str, Any], epochs: int = 2, run_info: list[dict[str, Any]] | None = None,
              log: str = "", latest: dict[str, Any] | None = None) -> Path:
    """A run folder as training leaves it: config.json, metrics.csv with `epochs` rows, and
    (given) run_info.json, train.log and latest.pth."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    lines = ["epoch,loss,val_loss,lr"] + [f"{e},{1 / e},{2 / e},0.001" for e in range(1, epochs + 1)]
    (folder / "metrics.csv").write_text("\n".join(lines) + "\n")
    if run_info is not None:
        (folder / "run_info.json").write_text(json.dumps(run_info))
    if log:
        (folder / "train.log").write_text(log)
    if latest is not None:
        torch.save(latest, folder / "latest.pth")
    return folder


START = "2025-03-01T10:00:00+01:00"


def ended(outcome: str, epoch: int, at: str = "2025-03-01T10:05:00+01:00") -> list[dict[str, Any]]:
    return [{"started": START, "argv": ["train.py"], "ended": {"at": at, "outcome": outcome, "status": 0,
                                                              "epoch": epoch}}]


def log_lines(*messages: str) -> str:
    return "".join(f"2025-03-01 10:0{i}:00,000 INFO trainer: {message}\n" for i, message in enumerate(messages))


DIVERGED = "Training failed: training diverged: the loss is NaN or infinite in epoch 3 at batch 2 of 12"
# (id, how the folder is written beyond config.json (epochs 4, early_stop 2) and metrics.csv, the state)
STATES: list[tuple[str, dict[str, Any], str]] = [
    ("ended-finished", {"run_info": ended("finished", 4), "epochs": 4}, "finished"),
    ("ended-stopped", {"run_info": ended("stopped", 2)}, "stopped at epoch 2"),
    ("ended-diverged", {"run_info": ended("diverged", 2)}, "diverged"),
    ("ended-crashed", {"run_info": ended("crashed", 2)}, "crashed at epoch 2"),
    ("ended-no-space", {"run_info": ended("no space", 2)}, "no space at epoch 2"),
    ("log-diverged", {"log": log_lines("epoch 1: loss 1", "epoch 2: loss 2", DIVERGED)}, "diverged"),
    ("diverged-then-resumed", {"log": log_lines(DIVERGED, "Resuming from 'x/latest.pth' at epoch 2 with 0 of its "
                                                "batches already trained, in x")}, "stopped at epoch 2"),
    ("latest-at-the-last-epoch", {"latest": {"epoch": 4, "batches_done": 0}, "epochs": 4}, "finished"),
    ("latest-inside-the-last-epoch", {"latest": {"epoch": 4, "batches_done": 5}, "epochs": 3},
     "stopped at epoch 3"),
    ("latest-early-stop", {"latest": {"epoch": 2, "batches_done": 0, "not_improved_count": 2}}, "finished"),
    ("latest-before-the-end", {"latest": {"epoch": 2, "batches_done": 0, "not_improved_count": 1}},
     "stopped at epoch 2"),
    ("no-checkpoint", {}, "stopped at epoch 2"),
]


@pytest.mark.parametrize(("files", "state"), [case[1:] for case in STATES], ids=[case[0] for case in STATES])
def test_the_state_is_read_from_what_the_folder_holds(
    files: dict[str, Any], state: str, tmp_path: Path, mnist_dir: Path,
) -> None:
    config = small_config(mnist_dir, tmp_path, "trainer.epochs=4", "trainer.early_stop=2")
    assert read_run(write_run(tmp_path / "run", config, **files)).state == state


def test_a_run_whose_lock_is_held_is_running_and_the_lock_stays_its_holders(tmp_path: Path, mnist_dir: Path) -> None:
    folder = write_run(tmp_path / "run", small_config(mnist_dir, tmp_path), run_info=ended("finished", 2))
    (folder / ".lock").touch()
    assert read_run(folder).state == "finished"  # a lock file that nobody holds
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys; f = open(sys.argv[1], 'a'); fcntl.lockf(f, fcntl.LOCK_EX); "
         "print('held', flush=True); sys.stdin.read()", str(folder / ".lock")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert read_run(folder).state == "running"
        assert read_run(folder).state == "running"  # asking did not take or drop the holder's lock
    finally:
        holder.communicate("")
    assert read_run(folder).state == "finished"


def test_the_wall_time_sums_the_invocations_without_the_waits_between(tmp_path: Path, mnist_dir: Path) -> None:
    """First invocation: 10:00 to its last log line at 10:07:30 (killed: no `ended`); a resume
    at 12:00 that ended at 12:02 by its record: 7.5 + 2 minutes."""
    run_info = [{"started": START}, {"started": "2025-03-01T12:00:00+01:00",
                                     "ended": {"at": "2025-03-01T12:02:00+01:00", "outcome": "finished"}}]
    log = ("2025-03-01 10:00:01,000 INFO trainer: Run directory: x\n"
           "2025-03-01 10:07:30,250 INFO trainer: epoch 1: loss 1\n"
           "2025-03-01 12:00:02,000 INFO trainer: Resuming from 'x' at epoch 2\n")
    run = read_run(write_run(tmp_path / "run", small_config(mnist_dir, tmp_path), run_info=run_info, log=log))
    assert run.wall_s == pytest.approx(7.5 * 60 + 0.25 + 2 * 60)


# ---------------------------------------------------------------- bad inputs
# (id, the command line (in a folder holding config.json with save_dir `saved` and runs `good`,
# `good2` and bad ones), what the error line must say)
BAD_INPUTS: list[tuple[str, list[str], str]] = [
    ("no-runs-of-the-config", [], "/saved/Mnist_LeNet' yet; train one with python train.py -c config.json"),
    ("no-such-folder", ["nope"], "'nope': no such run or folder"),
    ("a-file", ["config.json"], "'config.json': a file, not a run folder"),
    ("a-folder-without-runs", ["empty"], "'empty': not a run folder (no config.json) and holds no run folders"),
    ("a-save-dir", ["outer"], "'outer': not a run folder (no config.json) and holds no run folders; its folders "
     "Exp hold runs: report one with python report.py outer/Exp"),
    ("a-folder-of-broken-runs", ["broken"], "no run found can be read; the first: metrics file "
     "'broken/no-epoch/metrics.csv': no 'epoch' column"),
    ("metric-nobody-logged", ["good", "--plot", "val_los"], "--plot val_los: no run logged it; their metrics.csv "
     "hold loss, val_loss, lr; did you mean 'val_loss'?"),
    ("metrics-without-epoch", ["no-epoch"], "metrics file 'no-epoch/metrics.csv': no 'epoch' column"),
    ("metrics-not-a-number", ["good", "word"], "metrics file 'word/metrics.csv': epoch 2 has loss 'fast', "
     "not a number"),
    ("metrics-a-folder", ["folder-metrics"], "metrics file 'folder-metrics/metrics.csv': cannot read it"),
    ("config-broken", ["broken-config"], "config 'broken-config/config.json': invalid JSON"),
    ("checkpoint-broken", ["broken-latest"], "checkpoint 'broken-latest/latest.pth': cannot read it"),
    ("plot-file-kind", ["good", "--plot", "loss", "--out", "plot.txt"], "--out 'plot.txt': the file name must end "
     "in one of"),
    ("plot-folder-missing", ["good", "--plot", "loss", "--out", "nope/plot.png"], "'nope/plot.png': cannot write "
     "in the folder 'nope'"),
    ("csv-a-folder", ["good", "--csv", "empty"], "'empty': a folder; give a file name"),
    ("out-without-plot", ["good", "--out", "plot.png"], "--out names the plot's file: give --plot METRIC too"),
    ("dash-o-a-file", ["--plot", "loss", "-o", "plot.png"], "-o plot.png: -o sets a config key as in train.py"),
    ("config-with-runs", ["good", "-c", "config.json"], "-c and -o say where a config's runs are"),
    ("override-unknown-key", ["-o", "trainer.save_dri=x"], "unknown key 'trainer.save_dri'; did you mean"),
    ("plot-without-metric", ["good", "--plot"], "argument --plot: expected at least one argument"),
]


@pytest.mark.parametrize(("args", "names"), [case[1:] for case in BAD_INPUTS], ids=[case[0] for case in BAD_INPUTS])
def test_a_bad_input_is_one_line_status_2_and_writes_nothing(
    args: list[str], names: str, tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = small_config(mnist_dir, Path("saved"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "empty").mkdir()
    (tmp_path / "outer" / "Exp" / "run").mkdir(parents=True)  # a save_dir: <name>/<run id>/
    (tmp_path / "outer" / "Exp" / "run" / "config.json").write_text("{}")
    for name in ("good", "no-epoch", "word", "folder-metrics", "broken-config", "broken-latest"):
        write_run(tmp_path / name, config)
    (tmp_path / "no-epoch" / "metrics.csv").write_text("Epoch,Loss\n1,0.5\n")
    (tmp_path / "word" / "metrics.csv").write_text("epoch,loss\n1,0.5\n2,fast\n")
    (tmp_path / "folder-metrics" / "metrics.csv").unlink()
    (tmp_path / "folder-metrics" / "metrics.csv").mkdir()
    (tmp_path / "broken-config" / "config.json").write_text('{"name": ')
    (tmp_path / "broken-latest" / "latest.pth").write_bytes(b"not a checkpoint")
    write_run(tmp_path / "broken" / "no-epoch", config)
    (tmp_path / "broken" / "no-epoch" / "metrics.csv").write_text("Epoch,Loss\n1,0.5\n")
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    status, _, err = run_report([*args, "--csv", "table.csv"] if "--csv" not in args else args, capsys)
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and names in err, err
    assert snapshot(tmp_path) == before


def test_the_bad_input_catalogue_is_distinct() -> None:
    ids = [case[0] for case in BAD_INPUTS]
    assert len(ids) == len(set(ids)) >= 15


def test_durations_are_shown_to_a_tenth_of_a_second_below_ten_seconds() -> None:
    from reports.table import duration

    assert [duration(s) for s in (0.04, 4.25, 9.96, 45.4, 185, 7620)] == ["0.0s", "4.2s", "10s", "45s", "3m05s",
                                                                          "2h07m"]
