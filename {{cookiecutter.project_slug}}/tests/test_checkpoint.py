"""Checkpoint files: which are written when, their format, and refusals of bad files."""

import os
import stat
from pathlib import Path
from typing import Any

import torch
from torch import nn

from data_loader.data_loaders import PREPROCESSING
from engine import distributed
from engine.branch import check_same_run
from engine.checkpoint import (
    FORMAT_VERSION,
    CheckpointSaver,
    load_checkpoint,
    load_weights,
    restore_training_state,
    run_uid_of,
    unwrap_model,
    upgrade,
)
from model.model import MnistModel
from utils.seed import rng_state, set_rng_state


def minimal_state(model: nn.Module, epoch: int = 1) -> dict:
    return {"format_version": FORMAT_VERSION, "arch": "MnistModel", "epoch": epoch,
            "state_dict": unwrap_model(model).state_dict(), "config": {"name": "x"}}


def test_saver_writes_latest_always_periodic_and_best_when_due(tmp_path: Path) -> None:
    saver = CheckpointSaver(tmp_path, save_period=2)
    model = MnistModel()
    assert {p.name for p in saver.save(minimal_state(model, 1), 1, is_best=False)} == {"latest.pth"}
    assert {p.name for p in saver.save(minimal_state(model, 2), 2, is_best=False)} == {
        "latest.pth", "checkpoint-epoch2.pth"}
    assert {p.name for p in saver.save(minimal_state(model, 3), 3, is_best=True)} == {
        "latest.pth", "model_best.pth"}
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-epoch2.pth", "latest.pth", "model_best.pth"]  # no temp files left behind
    assert load_checkpoint(tmp_path / "latest.pth")["epoch"] == 3


def test_round_trip_restores_identical_weights(tmp_path: Path) -> None:
    model = MnistModel()
    CheckpointSaver(tmp_path, 1).save(minimal_state(model), 1, is_best=False)
    restored = MnistModel()
    load_weights(restored, load_checkpoint(tmp_path / "latest.pth"), "MnistModel", tmp_path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key])


def test_wrapped_models_save_keys_without_prefixes() -> None:
    model = MnistModel()
    wrapped = nn.DataParallel(model)
    assert unwrap_model(wrapped) is model
    assert not any(key.startswith("module.") for key in minimal_state(wrapped)["state_dict"])


def test_weights_saved_with_wrapper_prefixes_by_other_code_still_load(tmp_path: Path) -> None:
    source = MnistModel()
    state = minimal_state(source)
    state["state_dict"] = {f"module._orig_mod.{key}": value for key, value in state["state_dict"].items()}
    torch.save(state, tmp_path / "wrapped.pth")
    target = MnistModel()
    load_weights(target, load_checkpoint(tmp_path / "wrapped.pth"), "MnistModel", tmp_path / "wrapped.pth")
    pairs = zip(source.state_dict().values(), target.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_keep_last_deletes_only_older_periodic_checkpoints(tmp_path: Path) -> None:
    saver = CheckpointSaver(tmp_path, save_period=1, keep_last=2)
    for epoch in range(1, 13):  # past 10, so that epoch 10 must not sort before epoch 9
        saver.save(minimal_state(MnistModel(), epoch), epoch, is_best=epoch == 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "checkpoint-epoch11.pth", "checkpoint-epoch12.pth", "latest.pth", "model_best.pth"]


def test_checkpoint_files_get_the_usual_permissions(tmp_path: Path) -> None:
    old_mask = os.umask(0o022)
    try:
        path = CheckpointSaver(tmp_path, save_period=1).save_latest(minimal_state(MnistModel()))
    finally:
        os.umask(old_mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # not mkstemp's private 0o600


def test_a_version_2_checkpoint_is_upgraded_in_one_place_and_resumes(make_config: Any, tmp_path: Path) -> None:
    """Checkpoints written before format 3 (a tensorboard_step, no classes, one set of running
    metrics) load through `upgrade` and resume like new ones."""
    import train
    from parse_config import ConfigParser

    train.train(ConfigParser(make_config(trainer__epochs=1), run_id="old"))
    latest = tmp_path / "saved" / "Mnist_LeNet" / "old" / "latest.pth"
    state = torch.load(latest, weights_only=True)
    # format 5: what predict.py and export.py need besides the model
    assert state["classes"] == [str(digit) for digit in range(10)]
    assert state["preprocessing"] == PREPROCESSING.to_dict()
    del state["classes"], state["rng_per_rank"], state["preprocessing"]
    torch.save({**state, "format_version": 2, "tensorboard_step": 1}, latest)
    upgraded = load_checkpoint(latest)
    assert upgraded["format_version"] == FORMAT_VERSION and "tensorboard_step" not in upgraded
    assert upgraded["classes"] is None and upgraded["rng_per_rank"] is None
    assert upgraded["preprocessing"] == PREPROCESSING.to_dict()  # what the MNIST loader did before format 5
    assert train.main(["-r", str(latest), "-o", "trainer.epochs=2"]) == 0
    assert torch.load(latest, weights_only=True)["epoch"] == 2


def test_a_version_3_checkpoint_gets_its_number_of_processes_and_the_samples_it_trained() -> None:
    """Format 4 records the number of processes and the position inside an epoch in samples;
    for older checkpoints `upgrade` derives both (every rank took its share of the order's start)."""
    config = {"data_loader": {"args": {"batch_size": 32}}}
    old = {"format_version": 3, "arch": "MnistModel", "epoch": 1, "state_dict": {}, "config": config, "rng": None,
           "batches_done": 5, "rng_per_rank": None, "classes": None}
    assert (upgrade(old)["world_size"], upgrade(old)["samples_done"]) == (1, 5 * 32)
    two = upgrade({**old, "rng_per_rank": [{}, {}]})
    assert (two["world_size"], two["samples_done"], two["format_version"]) == (2, 2 * 5 * 32, FORMAT_VERSION)
    assert upgrade({**old, "config": {"name": "x"}})["samples_done"] is None  # no batch size: counted in batches


def test_a_version_4_checkpoint_gets_the_preprocessing_its_loader_had_or_none() -> None:
    """Format 5 records the data loader's evaluation preprocessing; for older checkpoints
    `upgrade` derives what the template's own loaders did, and None for any other loader."""
    config = {"data_loader": {"type": "MnistDataLoader", "args": {"batch_size": 32}}}
    old = {"format_version": 4, "arch": "MnistModel", "epoch": 1, "state_dict": {}, "config": config, "classes": None}
    assert upgrade(old)["preprocessing"] == PREPROCESSING.to_dict() and upgrade(old)["classes"] is None
    mine = {**old, "config": {"data_loader": {"type": "MyLoader", "args": {}}}}
    assert upgrade(mine)["preprocessing"] is None
    assert upgrade({**old, "config": {"name": "x"}})["preprocessing"] is None


def test_a_version_5_checkpoint_names_no_run_and_is_judged_by_its_position_alone(tmp_path: Path) -> None:
    """Format 6 records the run that wrote a checkpoint (`run_uid`); an older one names none, so
    a resume checks nothing about its run (as before) and a branch from it gets an identity."""
    config = {"data_loader": {"type": "MnistDataLoader", "args": {"batch_size": 32}}}
    old = {"format_version": 5, "arch": "MnistModel", "epoch": 1, "state_dict": {}, "config": config}
    assert upgrade(old)["run_uid"] is None and upgrade(old)["format_version"] == FORMAT_VERSION == 6
    folder = tmp_path / "run"
    folder.mkdir()
    torch.save({**old, "run_uid": "0123456789abcdef"}, folder / "latest.pth")
    torch.save(old, folder / "copied.pth")
    check_same_run(folder / "copied.pth", upgrade(old))  # passes: nothing says it is of another run
    assert run_uid_of(folder / "latest.pth") == "0123456789abcdef" and run_uid_of(folder / "copied.pth") is None


def test_ranks_a_checkpoint_did_not_have_get_random_states_of_their_own(monkeypatch: Any) -> None:
    optimizer = torch.optim.SGD(MnistModel().parameters(), lr=0.1)
    checkpoint = {"optimizer": None, "lr_scheduler": None, "scaler": None, "data_loader_seed": None,
                  "rng": rng_state(), "rng_per_rank": None, "epoch": 1, "batches_done": 0, "samples_done": 0,
                  "global_step": 0, "monitor_best": None, "not_improved_count": 0, "epoch_metrics": None,
                  "epoch_lr": None}
    draws = []
    for rank in (0, 1, 1, 2):  # a single-process checkpoint resumed on 3 processes
        monkeypatch.setattr(distributed, "rank", lambda rank=rank: rank)
        restore_training_state(checkpoint, optimizer, None, None)
        draws.append(torch.rand(3))
    rank0, rank1, again, rank2 = draws
    set_rng_state(checkpoint["rng"])
    assert torch.equal(rank0, torch.rand(3))  # rank 0 goes on with the saved state
    assert torch.equal(rank1, again) and not torch.equal(rank1, rank0) and not torch.equal(rank1, rank2)
