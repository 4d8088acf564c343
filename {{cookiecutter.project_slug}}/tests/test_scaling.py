"""Gradient accumulation, mixed precision on the CPU, and the batch arithmetic DDP relies on:
shards, and an epoch resumed on another number of processes (each of its samples trained once)."""

import json
import math
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from test_resume import signal_after

import train
from engine import checkpointed_run, distributed
from engine.batches import EpochBatches
from engine.checkpoint import Progress
from engine.checkpointed_run import (
    AGREE_EVERY_SECONDS,
    MAX_STEPS_APART,
    AgreementSchedule,
    CheckpointedRun,
    SaveSchedule,
)
from engine.device import set_deterministic
from parse_config import ConfigParser
from utils.errors import TrainingInterrupted

ConfigFactory = Callable[..., dict[str, Any]]


def one_step_weights(make_config: ConfigFactory, batch_size: int, accumulate: int) -> dict[str, torch.Tensor]:
    """Weights after the first optimizer step of a trainer built from the config, with dropout
    off, no shuffling and plain SGD (lr 1: the step is minus the gradient)."""
    config = make_config(trainer__accumulate_grad_batches=accumulate)
    config["data_loader"]["args"].update(batch_size=batch_size, shuffle=False)
    config["optimizer"] = {"type": "SGD", "args": {"lr": 1.0}}
    trainer = train.build_trainer(ConfigParser(config))
    trainer.model.eval()  # dropout off: both ways see the same network
    batches = iter(trainer.data_loader)
    for index in range(accumulate):
        trainer._train_batch(next(batches), step=index == accumulate - 1)
    assert trainer.progress.global_step == 1
    return {key: value.clone() for key, value in trainer.model.state_dict().items()}


def test_accumulating_two_batches_of_64_steps_like_one_batch_of_128(make_config: ConfigFactory) -> None:
    whole = one_step_weights(make_config, batch_size=128, accumulate=1)
    accumulated = one_step_weights(make_config, batch_size=64, accumulate=2)
    for key in whole:
        torch.testing.assert_close(accumulated[key], whole[key], rtol=1e-5, atol=1e-6)
    initial = one_step_weights(make_config, batch_size=64, accumulate=1)
    assert not all(torch.equal(initial[key], whole[key]) for key in whole)  # the comparison can fail


def test_accumulation_steps_every_k_batches_and_at_the_end_of_the_epoch(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    # 360 training images at batch 32 are 12 batches an epoch: steps after batches 5, 10 and 12
    config = make_config(trainer__epochs=1, trainer__accumulate_grad_batches=5)
    train.train(ConfigParser(config, run_id="acc"))
    latest = torch.load(tmp_path / "saved" / "Mnist_LeNet" / "acc" / "latest.pth", weights_only=True)
    assert latest["global_step"] == math.ceil(12 / 5)  # after batches 5, 10 and 12


def test_bf16_autocast_trains_on_the_cpu(make_config: ConfigFactory) -> None:
    result = train.train(ConfigParser(make_config(trainer__epochs=2, trainer__precision="bf16"), run_id="bf16"))
    assert math.isfinite(result["loss"]) and result["val_accuracy"] > 0.5


@pytest.mark.parametrize("n_samples", [3600, 3601])
def test_ddp_shards_give_every_rank_the_same_number_of_steps(n_samples: int) -> None:
    single = EpochBatches(list(range(n_samples)), batch_size=128, shuffle=True, seed=5)
    ranks = [EpochBatches(list(range(n_samples)), batch_size=64, shuffle=True, seed=5, rank=r, world_size=2)
             for r in range(2)]
    assert [len(list(rank)) for rank in ranks] == [len(single)] * 2 == [math.ceil(n_samples / 128)] * 2
    seen = [index for rank in ranks for batch in rank for index in batch]
    assert set(seen) == set(range(n_samples)) and len(seen) == n_samples + n_samples % 2  # padded by one
    shards = [EpochBatches(list(range(101)), 10, shuffle=False, seed=0, rank=r, world_size=2, pad=False)
              for r in range(2)]
    assert sorted(index for shard in shards for batch in shard for index in batch) == list(range(101))


def served(indices: int, processes: int, epoch: int = 3, **position: int) -> list[list[list[int]]]:
    """The batches (sample indices) each of `processes` ranks is served in `epoch` of a shuffled
    order of `indices` samples at batch 8, resumed at `position` (`skip` or `samples_done`)."""
    ranks = []
    for rank in range(processes):
        batches = EpochBatches(list(range(indices)), batch_size=8, shuffle=True, seed=3, rank=rank,
                               world_size=processes)
        batches.set_epoch(epoch, **position)
        ranks.append(list(batches))
    return ranks


@pytest.mark.parametrize("indices", [400, 403], ids=["no-padding", "padding"])
@pytest.mark.parametrize(("before", "after"), [(2, 1), (1, 2), (4, 2), (2, 4), (3, 2), (2, 2)])
def test_an_epoch_resumed_on_another_number_of_processes_trains_each_sample_once(
    indices: int, before: int, after: int,
) -> None:
    whole = served(indices, before)
    for done in (1, 3, len(whole[0]) // 2, len(whole[0]) - 1, len(whole[0])):  # batches of each rank before the stop
        first = [index for rank in whole for batch in rank[:done] for index in batch]
        position = EpochBatches(list(range(indices)), 8, shuffle=True, seed=3, world_size=before)
        samples_done = position.samples_after(done)
        assert samples_done == min(before * done * 8, indices)  # every rank's first batches: the order's start
        rest = served(indices, after, samples_done=samples_done)
        assert len({len(rank) for rank in rest}) == 1, rest  # the same number of batches on every rank
        trained = Counter(first + [index for rank in rest for batch in rank for index in batch])
        twice = sorted(index for index, count in trained.items() if count > 1)
        assert set(trained) == set(range(indices)), (before, after, done, sorted(set(range(indices)) - set(trained)))
        if indices % before == 0 and indices % after == 0:
            assert not twice, (before, after, done, twice)  # each sample exactly once
        else:  # DistributedSampler's padding: a few samples of the epoch's start, once more
            assert sum(trained.values()) - indices < before + after, (before, after, done, twice)
        if before == after:  # the same number of processes: the batches of an uninterrupted epoch
            assert rest == [rank[done:] for rank in whole] == served(indices, after, skip=done)


def test_a_checkpoint_of_two_processes_resumes_on_one_with_the_samples_and_sums_left(
    make_config: ConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A mid-epoch checkpoint as two processes write it (each rank's 3 batches and running sums,
    the first 192 samples of the order) resumed in one process trains the rest of the order once,
    from the merged sums: here that equals, bitwise, a single process stopped after 6 batches."""
    config = make_config()
    train.train(ConfigParser(json.loads(json.dumps(config)), run_id="straight"))
    with monkeypatch.context() as patch:
        signal_after(patch, "train_step", 12 + 6)  # 12 batches an epoch: stops in epoch 2 after 6
        with pytest.raises(TrainingInterrupted):
            train.train(ConfigParser(json.loads(json.dumps(config)), run_id="stopped"))
    folder = tmp_path / "saved" / "Mnist_LeNet" / "stopped"
    state = torch.load(folder / "latest.pth", weights_only=True)
    assert (state["epoch"], state["batches_done"]) == (1, 6)
    recorded = (state.get("samples_done"), state.get("world_size"))
    sums = state["epoch_metrics"]
    other_rank = {"sums": {key: torch.zeros(()) for key in sums["sums"]}, "counts": dict.fromkeys(sums["counts"], 0)}
    state.update(world_size=2, batches_done=3, rng_per_rank=[state["rng"], state["rng"]],
                 epoch_metrics={"per_rank": [sums, other_rank]})
    torch.save(state, folder / "latest.pth")

    assert train.main(["-r", str(folder / "latest.pth")]) == 0
    straight, resumed = (torch.load(tmp_path / "saved" / "Mnist_LeNet" / run / "latest.pth", weights_only=True)
                         for run in ("straight", "stopped"))
    assert resumed["global_step"] == straight["global_step"] == 24
    assert all(torch.equal(straight["state_dict"][key], resumed["state_dict"][key]) for key in straight["state_dict"])
    assert ((folder / "metrics.csv").read_text() ==
            (tmp_path / "saved" / "Mnist_LeNet" / "straight" / "metrics.csv").read_text())
    log = (folder / "train.log").read_text()
    assert "at epoch 2 with 3 of its batches already trained on 2 processes (its first 192 samples)" in log
    assert "Resumed on 1 process; the run had 2: the rest of epoch 2 is resharded over 1 process" in log
    assert recorded == (192, 1)  # the samples of the order trained, the number of processes


def test_ddp_ranks_agree_on_a_stop_every_quarter_second_and_save_by_steps_without_agreeing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock, collectives = [0.0], []

    def max_across_ranks(values: list[int], device: torch.device) -> list[int]:
        collectives.append(run.progress.global_step)
        return values

    monkeypatch.setattr(distributed, "active", lambda: True)
    monkeypatch.setattr(distributed, "max_across_ranks", max_across_ranks)
    monkeypatch.setattr(checkpointed_run.stop_request, "signal_number", None)  # whatever a test before left
    monkeypatch.setattr(checkpointed_run.time, "monotonic", lambda: clock[0])
    run = CheckpointedRun()
    run.progress, run.device = Progress(), torch.device("cpu")
    run.saving, run.agreement = SaveSchedule(every_steps=7, every_minutes=None), AgreementSchedule()

    def steps(first: int, last: int, seconds_each: float) -> list[int]:
        collectives.clear()
        saves = []
        for step in range(first, last + 1):
            clock[0] += seconds_each
            run.progress.global_step = step
            stop, save = run.poll()
            assert not stop
            if save:
                saves.append(step)
                run.saving.saved(step)
        return saves

    saves = steps(1, 25, AGREE_EVERY_SECONDS / 4)  # one agreement every 4 steps, once measured
    assert collectives == [1, 2, 6, 10, 14, 18, 22]
    assert saves == [7, 14, 21]  # every rank counts the same steps: no agreement needed
    steps(26, 200, 0.001)  # fast steps: at most MAX_STEPS_APART apart
    assert collectives[-1] - collectives[-2] == MAX_STEPS_APART
    steps(201, 260, 3.0)  # slow steps: once the step scheduled in the fast phase comes, every step
    assert collectives[0] <= 200 + MAX_STEPS_APART and collectives[-3:] == [258, 259, 260]
    run.poll(agree=True)  # at the end of an epoch: every rank agrees whatever the step
    assert collectives[-2:] == [260, 260]


def test_deterministic_training_sets_the_flags_and_trains_on_the_cpu(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # restored after the test
    try:
        log = train.train(ConfigParser(make_config(trainer__epochs=1, trainer__deterministic=True)))
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert math.isfinite(log["val_loss"])
    finally:
        set_deterministic(False)
    assert not torch.are_deterministic_algorithms_enabled()
