"""Losing as little as possible when things go wrong: a NaN loss stops the run before any
checkpoint holds its weights; a new run that fails in its first epoch leaves no folder; the
checkpoint files on disk agree after a kill between writes; `trainer.save_every_*` writes the
position inside an epoch, and resuming from it is exact; schedulers step per optimizer step."""

import json
import math
import os
import signal
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import train
from engine.metric_tracker import RECENT_BATCHES, MetricTracker
from parse_config import ConfigParser
from trainer import Trainer
from utils.errors import TrainingDiverged, TrainingInterrupted

ConfigFactory = Callable[..., dict[str, Any]]
BATCHES = 12  # per epoch: 360 training images of the synthetic data at batch 32


def run_dir(tmp_path: Path, run_id: str) -> Path:
    return tmp_path / "saved" / "Mnist_LeNet" / run_id


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def fresh(config: dict[str, Any], run_id: str) -> ConfigParser:
    return ConfigParser(json.loads(json.dumps(config)), run_id=run_id)


def assert_same_weights(expected: Path, actual: Path) -> None:
    a, b = load(expected), load(actual)
    assert all(torch.equal(a["state_dict"][key], b["state_dict"][key]) for key in a["state_dict"])
    for index, state in a["optimizer"]["state"].items():
        assert all(torch.equal(value, b["optimizer"]["state"][index][key]) for key, value in state.items())


def patch_batches(monkeypatch: pytest.MonkeyPatch, action: Callable[[int], None]) -> None:
    """Call `action(n)` after the n-th training step of the process (n from 1)."""
    original = Trainer.train_step
    count = 0

    def wrapped(self: Trainer, batch: Any) -> Any:
        nonlocal count
        result = original(self, batch)
        count += 1
        action(count)
        return result

    monkeypatch.setattr(Trainer, "train_step", wrapped)


def nan_loss_at(monkeypatch: pytest.MonkeyPatch, call: int) -> None:
    """Make the loss of the `call`-th training batch NaN, as a diverging run's would be."""
    original = Trainer.train_step
    count = 0

    def wrapped(self: Trainer, batch: Any) -> Any:
        nonlocal count
        count += 1
        data, target = batch
        if count == call:
            data = torch.full_like(data, float("nan"))
        return original(self, (data, target))

    monkeypatch.setattr(Trainer, "train_step", wrapped)


def test_a_nan_loss_stops_with_status_3_and_keeps_the_last_good_checkpoint(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(make_config(trainer__epochs=3)))
    nan_loss_at(monkeypatch, BATCHES + 5)  # epoch 2, batch 5
    assert train.main(["-c", str(tmp_path / "config.json"), "--run-id", "nan"]) == TrainingDiverged.EXIT_STATUS
    err = capsys.readouterr().err
    folder = run_dir(tmp_path, "nan")
    assert err.count("\n") == 1 and "in epoch 2 at batch 5 of 12" in err and str(folder / "latest.pth") in err
    assert "try a lower 'optimizer.args.lr'" in err and "check the data" not in err  # the data were fine
    assert sorted(path.name for path in folder.glob("*.pth")) == ["checkpoint-epoch1.pth", "latest.pth",
                                                                   "model_best.pth"]
    latest = load(folder / "latest.pth")
    assert latest["epoch"] == 1 and all(torch.isfinite(t).all() for t in latest["state_dict"].values())
    assert "Training failed: training diverged" in (folder / "train.log").read_text()


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_nan_loss_from_nan_in_the_data_says_so_and_names_the_samples(
    make_config: ConfigFactory, tmp_path: Path, value: float,
) -> None:
    trainer = train.build_trainer(fresh(make_config(trainer__epochs=1), "bad-data"))
    trainer.data_loader.set_epoch(1)
    order = trainer.data_loader.batches.epoch_order().tolist()
    bad = sorted([order[40], order[45]])  # both in batch 2 of epoch 1 (batches of 32)
    images = trainer.data_loader.dataset.tensors[0]
    images[bad[0], 0, 3, 4] = value
    images[bad[1]] = value
    with pytest.raises(TrainingDiverged) as caught:
        trainer.train()
    message = str(caught.value)
    assert "in epoch 1 at batch 2 of 12, and the data of that batch already hold NaN or infinite values" in message
    assert f"(dataset samples {bad[0]}, {bad[1]}): check the data" in message and "optimizer.args.lr" not in message
    assert caught.value.bad_samples == bad


def test_a_nan_loss_is_caught_before_a_mid_epoch_save(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(trainer__epochs=2, trainer__save_every_steps=1)
    nan_loss_at(monkeypatch, BATCHES + 3)
    with pytest.raises(TrainingDiverged, match="in epoch 2 at batch 3 of 12"):
        train.train(fresh(config, "nan"))
    latest = load(run_dir(tmp_path, "nan") / "latest.pth")
    assert (latest["epoch"], latest["batches_done"]) == (1, 2)  # the last step before the NaN


def test_a_new_run_that_fails_in_its_first_epoch_leaves_no_folder(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fail(n: int) -> None:
        if n == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")

    patch_batches(monkeypatch, fail)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        train.train(fresh(make_config(), "broken"))
    assert not run_dir(tmp_path, "broken").exists()


def test_a_resumed_run_that_fails_keeps_its_folder(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    train.train(fresh(make_config(trainer__epochs=1), "kept"))
    folder = run_dir(tmp_path, "kept")

    def fail(n: int) -> None:
        raise RuntimeError("a bug in the user's step")

    patch_batches(monkeypatch, fail)
    with pytest.raises(RuntimeError, match="a bug"):
        train.main(["-r", str(folder / "latest.pth"), "-o", "trainer.epochs=2"])
    assert (folder / "latest.pth").is_file() and load(folder / "latest.pth")["epoch"] == 1


def test_a_kill_between_checkpoint_writes_leaves_files_that_agree(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the loss falls, so 'min loss' improves every epoch: epoch 2 writes three files
    config = make_config(trainer__monitor="min loss")
    original = os.replace
    renames = 0

    def rename_then_die(source: str, destination: Path) -> None:
        nonlocal renames
        original(source, destination)
        renames += Path(destination).suffix == ".pth"
        if renames == 4:  # epoch 1 put three checkpoints in place; the first of epoch 2 is in place, then a kill
            raise SystemExit(137)

    monkeypatch.setattr(os, "replace", rename_then_die)
    with pytest.raises(SystemExit):
        train.train(fresh(config, "killed"))
    folder = run_dir(tmp_path, "killed")
    latest, best = load(folder / "latest.pth"), load(folder / "model_best.pth")
    assert latest["epoch"] == 1  # latest.pth is written last: still epoch 1's
    assert best["monitor_best"] <= latest["monitor_best"]  # no best is claimed that model_best.pth lacks


@pytest.mark.parametrize("option", [("save_every_steps", 5), ("save_every_minutes", 1e-9)])
def test_saves_inside_an_epoch_and_an_exact_resume_after_a_crash(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, option: tuple[str, float],
) -> None:
    config = make_config(trainer__epochs=2, **{f"trainer__{option[0]}": option[1]})
    train.train(fresh(config, "straight"))

    def die(n: int) -> None:
        if n == BATCHES + 8:  # epoch 2, batch 8: as if killed with -9 there
            raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch_batches(patch, die)
        with pytest.raises(KeyboardInterrupt):
            train.train(fresh(config, "crashed"))
    folder = run_dir(tmp_path, "crashed")
    saved = load(folder / "latest.pth")
    expected_batches = 5 if option[0] == "save_every_steps" else 7  # every 5 steps / every step
    assert (saved["epoch"], saved["batches_done"]) == (1, expected_batches)
    assert train.main(["-r", str(folder / "latest.pth")]) == 0
    assert_same_weights(run_dir(tmp_path, "straight") / "latest.pth", folder / "latest.pth")
    straight_rows = (run_dir(tmp_path, "straight") / "metrics.csv").read_text()
    assert (folder / "metrics.csv").read_text() == straight_rows


ONE_CYCLE = {"type": "OneCycleLR", "args": {"max_lr": 0.01, "epochs": 2, "steps_per_epoch": BATCHES}}


def test_one_cycle_steps_per_optimizer_step_and_resumes_exactly_mid_epoch(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = make_config(lr_scheduler=ONE_CYCLE)
    train.train(fresh(config, "straight"))
    straight = load(run_dir(tmp_path, "straight") / "latest.pth")
    assert straight["lr_scheduler"]["last_epoch"] == 2 * BATCHES  # one step per optimizer step
    lrs = [float(line.split(",")[-1]) for line in
           (run_dir(tmp_path, "straight") / "metrics.csv").read_text().splitlines()[1:]]
    assert lrs[0] < lrs[1]  # epoch 1 starts at the bottom of the warm-up, epoch 2 past its peak

    with monkeypatch.context() as patch:
        patch_batches(patch, lambda n: signal.raise_signal(signal.SIGTERM) if n == BATCHES + 7 else None)
        with pytest.raises(TrainingInterrupted):
            train.train(fresh(config, "stopped"))
    folder = run_dir(tmp_path, "stopped")
    assert load(folder / "latest.pth")["lr_scheduler"]["last_epoch"] == BATCHES + 7
    assert train.main(["-r", str(folder / "latest.pth")]) == 0
    assert_same_weights(run_dir(tmp_path, "straight") / "latest.pth", folder / "latest.pth")
    assert load(folder / "latest.pth")["lr_scheduler"] == straight["lr_scheduler"]


def test_resuming_after_a_stop_in_validation_warns_nothing(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    original = Trainer.valid_step

    def stop_in_validation(self: Trainer, batch: Any) -> Any:
        result = original(self, batch)
        signal.raise_signal(signal.SIGTERM)
        return result

    with monkeypatch.context() as patch:
        patch.setattr(Trainer, "valid_step", stop_in_validation)
        with pytest.raises(TrainingInterrupted):
            train.train(fresh(make_config(trainer__epochs=1), "stopped"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train.main(["-r", str(run_dir(tmp_path, "stopped") / "latest.pth")]) == 0
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)], [str(w.message) for w in caught]


def test_the_tracker_sums_every_batch_and_finds_the_first_nan_among_the_recent_ones() -> None:
    tracker = MetricTracker("loss", "accuracy")
    losses = [0.25 * i for i in range(45)]
    for index, loss in enumerate(losses):
        value = float("nan") if index in (31, 38) else loss
        tracker.update_batch([torch.tensor(value), torch.tensor(0.5)], n=4)
        if index == 29:
            assert tracker.first_nonfinite("loss") is None
            assert tracker.average("loss") == pytest.approx(sum(losses[:30]) / 30)
    assert tracker.updates == 45 and tracker.first_nonfinite("loss") == 31  # not 38, the later one
    assert tracker.first_nonfinite("accuracy") is None
    result = tracker.result()
    assert math.isnan(result["loss"]) and result["accuracy"] == 0.5
    state = tracker.state()
    assert state["counts"] == {"loss": 180, "accuracy": 180} and float(state["sums"]["accuracy"]) == 90.0
    again = MetricTracker("loss", "accuracy")
    again.load_state(state, torch.device("cpu"))
    assert again.result()["accuracy"] == 0.5 and again.first_nonfinite("loss") is None  # the rows are not saved


def test_a_nan_older_than_the_recent_batches_is_no_longer_reported() -> None:
    tracker = MetricTracker("loss")
    tracker.update_batch([torch.tensor(float("inf"))], n=1)
    assert tracker.first_nonfinite("loss") == 0
    for _ in range(RECENT_BATCHES):  # the trainer checks at least this often: the row is checked before it goes
        tracker.update_batch([torch.tensor(1.0)], n=1)
    assert tracker.first_nonfinite("loss") is None
