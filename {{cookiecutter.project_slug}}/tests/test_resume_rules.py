"""What a resume may do: an older checkpoint branches into a new run folder and leaves the run
as it was; new optimizer and scheduler values are applied, not just recorded; anything else
that would change the run is refused in one line, and so is a resume on another number of
processes that could not go on exactly (a per-step schedule, a loader that counts no samples)."""

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader
from torchvision import datasets

import test as test_script
import train
from engine.checkpoint import Progress
from parse_config import ConfigParser
from utils.errors import InputError

ConfigFactory = Callable[..., dict[str, Any]]


def run_dir(tmp_path: Path, run_id: str) -> Path:
    return tmp_path / "saved" / "Mnist_LeNet" / run_id


def load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True)


def rows(folder: Path) -> list[dict[str, str]]:
    with (folder / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


@pytest.fixture
def three_epochs(make_config: ConfigFactory, tmp_path: Path) -> Path:
    """A finished 3-epoch run whose best epoch (monitor: max loss, which falls) is epoch 1."""
    config = make_config(trainer__epochs=3, trainer__monitor="max loss", trainer__early_stop=0)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert train.main(["-c", str(tmp_path / "config.json"), "--run-id", "run"]) == 0
    return run_dir(tmp_path, "run")


@pytest.mark.parametrize("name", ["checkpoint-epoch1.pth", "checkpoint-epoch2.pth", "model_best.pth"])
def test_an_older_checkpoint_branches_and_leaves_the_run_untouched(three_epochs: Path, name: str) -> None:
    before = snapshot(three_epochs)
    epoch = load(three_epochs / name)["epoch"]
    assert train.main(["-r", str(three_epochs / name), "-o", "trainer.epochs=4"]) == 0
    assert snapshot(three_epochs) == before  # not one byte of the run changed
    branch = three_epochs.parent / f"run-from-epoch{epoch}"
    assert [row["epoch"] for row in rows(branch)] == ["1", "2", "3", "4"]
    assert rows(branch)[:epoch] == rows(three_epochs)[:epoch]  # the rows up to the branch point, carried
    assert load(branch / "latest.pth")["epoch"] == 4
    assert (branch / "model_best.pth").is_file()  # the run's best is epoch 1: not later than the branch
    assert "branching into" in (branch / "train.log").read_text()


def test_the_best_of_a_later_epoch_is_not_carried(make_config: ConfigFactory, tmp_path: Path) -> None:
    config = make_config(trainer__epochs=3, trainer__monitor="min loss")  # the loss falls: best is epoch 3
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert train.main(["-c", str(tmp_path / "config.json"), "--run-id", "run"]) == 0
    origin = run_dir(tmp_path, "run")
    assert load(origin / "model_best.pth")["epoch"] == 3
    assert train.main(["-r", str(origin / "checkpoint-epoch1.pth"), "-o", "trainer.epochs=2"]) == 0
    branch = origin.parent / "run-from-epoch1"
    assert load(branch / "model_best.pth")["epoch"] == 2  # written by the branch itself, not carried
    assert load(branch / "model_best.pth")["monitor_best"] == float(rows(branch)[1]["loss"])


def test_the_newest_state_resumes_in_place(three_epochs: Path) -> None:
    assert train.main(["-r", str(three_epochs / "checkpoint-epoch3.pth"), "-o", "trainer.epochs=4"]) == 0
    assert [path.name for path in three_epochs.parent.iterdir()] == ["run"]
    assert [row["epoch"] for row in rows(three_epochs)] == ["1", "2", "3", "4"]


def test_a_second_branch_from_the_same_epoch_gets_its_own_folder(three_epochs: Path) -> None:
    for _ in range(2):
        assert train.main(["-r", str(three_epochs / "checkpoint-epoch1.pth"), "-o", "trainer.epochs=2"]) == 0
    assert sorted(path.name for path in three_epochs.parent.iterdir()) == [
        "run", "run-from-epoch1", "run-from-epoch1-2"]


def run_uid(path: Path) -> str:
    return load(path)["run_uid"]


def test_every_file_of_a_run_names_its_run_and_a_branch_is_a_run_of_its_own(three_epochs: Path) -> None:
    own = run_uid(three_epochs / "latest.pth")
    assert len(own) == 16 and all(run_uid(path) == own for path in three_epochs.glob("*.pth"))
    assert [entry["run_uid"] for entry in json.loads((three_epochs / "run_info.json").read_text())] == [own]
    assert train.main(["-r", str(three_epochs / "checkpoint-epoch1.pth"), "-o", "trainer.epochs=4"]) == 0
    branch = three_epochs.parent / "run-from-epoch1"
    mine = run_uid(branch / "latest.pth")
    assert mine != own
    assert run_uid(branch / "model_best.pth") == mine  # carried from the run (epoch 1), made the branch's own
    assert [entry["run_uid"] for entry in json.loads((branch / "run_info.json").read_text())] == [mine]


@pytest.fixture
def two_runs(make_config: ConfigFactory, tmp_path: Path) -> tuple[Path, Path]:
    """Two finished runs of 2 epochs: `base` (batch 32) and `other` (batch 16)."""
    (tmp_path / "config.json").write_text(json.dumps(make_config()))
    assert train.main(["-c", str(tmp_path / "config.json"), "--run-id", "base"]) == 0
    assert train.main(["-c", str(tmp_path / "config.json"), "--run-id", "other", "--bs", "16"]) == 0
    return run_dir(tmp_path, "base"), run_dir(tmp_path, "other")


@pytest.mark.parametrize("told_by", ["latest.pth", "run_info.json"])
def test_a_checkpoint_of_another_run_is_refused_in_a_run_folder(
    two_runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str], told_by: str,
) -> None:
    base, other = two_runs
    if told_by == "run_info.json":  # a folder whose latest.pth is gone still knows its run
        (base / "latest.pth").unlink()
    foreign = base / "foreign.pth"
    foreign.write_bytes((other / "checkpoint-epoch2.pth").read_bytes())
    before = snapshot(base)
    assert train.main(["-r", str(foreign), "-o", "trainer.epochs=3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint '{foreign}': it is of another run") and err.count("\n") == 1
    assert "resume it from that run's own folder, or put it alone in an empty folder" in err
    assert f"--fine-tune -r {foreign}" in err
    assert snapshot(base) == before


def test_a_checkpoint_alone_in_an_empty_folder_continues_its_run_there(
    two_runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    base, other = two_runs
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "copied.pth").write_bytes((other / "checkpoint-epoch2.pth").read_bytes())
    assert train.main(["-r", str(scratch / "copied.pth"), "-o", "trainer.epochs=3"]) == 0
    assert [row["epoch"] for row in rows(scratch)] == ["3"]  # the rows before are in the run's first folder
    assert run_uid(scratch / "latest.pth") == run_uid(other / "latest.pth")  # the same run, in a new place
    assert "held no run: the run goes on in it, so its metrics.csv starts at epoch 3" in (
        scratch / "train.log").read_text()
    # now it holds that run: a checkpoint of another run is refused there
    (scratch / "foreign.pth").write_bytes((base / "latest.pth").read_bytes())
    assert train.main(["-r", str(scratch / "foreign.pth"), "-o", "trainer.epochs=4"]) == 2
    assert "it is of another run" in capsys.readouterr().err


@pytest.fixture
def project_run(make_config: ConfigFactory, tmp_path: Path, mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """latest.pth of a 1-epoch run started in a project folder whose config names its paths
    relative to it (`data/`, `saved/`), as the shipped config does; the test then runs elsewhere,
    offline (MNIST downloads go to a closed local port)."""
    monkeypatch.setattr(datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    project = tmp_path / "project"
    shutil.copytree(mnist_dir, project / "data")
    config = make_config(trainer__epochs=1, trainer__save_dir="saved/")
    config["data_loader"]["args"]["data_dir"] = "data/"
    (project / "config.json").write_text(json.dumps(config))
    monkeypatch.chdir(project)
    assert train.main(["-c", "config.json", "--run-id", "run"]) == 0
    monkeypatch.chdir(tmp_path)  # no data/ here
    return project / "saved" / "Mnist_LeNet" / "run" / "latest.pth"


def test_a_run_records_its_paths_absolute_and_resumes_from_any_folder(project_run: Path) -> None:
    project = project_run.parents[3]
    recorded = json.loads((project_run.parent / "config.json").read_text())
    assert recorded["data_loader"]["args"]["data_dir"] == str(project / "data")
    assert recorded["trainer"]["save_dir"] == str(project / "saved")
    assert train.main(["-r", str(project_run), "-o", "trainer.epochs=2"]) == 0
    assert [row["epoch"] for row in rows(project_run.parent)] == ["1", "2"]
    assert test_script.main(["-r", str(project_run)]) == 0  # evaluated on the run's own data, from here


def test_data_that_moved_is_named_on_resume_applied_and_logged(
    project_run: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    project = project_run.parents[3]
    (project / "data").rename(project / "moved")  # staged elsewhere: the same data
    assert train.main(["-r", str(project_run), "-o", "trainer.epochs=2"]) == 2
    assert f"MNIST not found in '{project / 'data'}/MNIST/raw'" in capsys.readouterr().err  # where the run had it
    moved = project / "moved"
    assert train.main(["-r", str(project_run), "-o", "trainer.epochs=2", "-o", f"data_loader.args.data_dir={moved}"
                       ]) == 0
    assert [row["epoch"] for row in rows(project_run.parent)] == ["1", "2"]
    recorded = json.loads((project_run.parent / "config.json").read_text())
    assert recorded["data_loader"]["args"]["data_dir"] == str(moved)
    log = (project_run.parent / "train.log").read_text()
    assert f"Resuming with new values: data_loader.args.data_dir '{project / 'data'}' -> '{moved}'" in log


@pytest.fixture
def one_epoch(make_config: ConfigFactory, tmp_path: Path) -> Path:
    config = make_config(trainer__epochs=1)  # StepLR(step_size 5, gamma 0.5), Adam lr 0.001
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert train.main(["-c", str(tmp_path / "config.json"), "--run-id", "run"]) == 0
    return run_dir(tmp_path, "run") / "latest.pth"


def test_a_new_learning_rate_on_resume_is_used_and_becomes_the_schedule_base(one_epoch: Path) -> None:
    assert train.main(["-r", str(one_epoch), "--lr", "0.01", "-o", "trainer.epochs=2"]) == 0
    state = load(one_epoch)
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.01
    assert state["lr_scheduler"]["base_lrs"] == [0.01]
    recorded = json.loads((one_epoch.parent / "config.json").read_text())
    assert recorded["optimizer"]["args"]["lr"] == 0.01
    assert float(rows(one_epoch.parent)[1]["lr"]) == 0.01  # epoch 2 trained at it
    assert "optimizer.args.lr 0.001 -> 0.01" in (one_epoch.parent / "train.log").read_text()


def test_new_scheduler_and_optimizer_arguments_on_resume_are_used(one_epoch: Path) -> None:
    assert train.main(["-r", str(one_epoch), "-o", "trainer.epochs=3", "-o", "lr_scheduler.args.step_size=1",
                       "-o", "lr_scheduler.args.gamma=0.1", "-o", "optimizer.args.weight_decay=0.5"]) == 0
    state = load(one_epoch)
    assert state["lr_scheduler"]["step_size"] == 1 and state["lr_scheduler"]["gamma"] == 0.1
    assert state["optimizer"]["param_groups"][0]["weight_decay"] == 0.5
    # a change takes effect at the next scheduler step: after epoch 2, not before it
    assert [float(row["lr"]) for row in rows(one_epoch.parent)] == pytest.approx([0.001, 0.001, 0.0001])


@pytest.mark.parametrize(
    ("override", "key"),
    [("data_loader.args.batch_size=64", "data_loader.args.batch_size"),
     ("arch.args.num_classes=12", "arch.args.num_classes"),
     ("data_loader.args.validation_split=0.2", "data_loader.args.validation_split"),
     ("trainer.seed=7", "trainer.seed")],
)
def test_a_change_a_resume_cannot_honour_is_refused_in_one_line(
    one_epoch: Path, capsys: pytest.CaptureFixture[str], override: str, key: str,
) -> None:
    before = snapshot(one_epoch.parent)
    assert train.main(["-r", str(one_epoch), "-o", "trainer.epochs=2", "-o", override]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint '{one_epoch}': resuming cannot change '{key}'") and err.count("\n") == 1
    assert snapshot(one_epoch.parent) == before


def with_world_size(checkpoint: Path, processes: int) -> None:
    """Make `checkpoint` one that `processes` DDP processes wrote (each rank's RNG state)."""
    state = load(checkpoint)
    torch.save({**state, "world_size": processes, "rng_per_rank": [state["rng"]] * processes}, checkpoint)


def test_a_per_step_schedule_cannot_resume_on_another_number_of_processes(
    make_config: ConfigFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    one_cycle = {"type": "OneCycleLR", "args": {"max_lr": 0.01, "epochs": 2, "steps_per_epoch": 12}}
    (tmp_path / "config.json").write_text(json.dumps(make_config(trainer__epochs=1, lr_scheduler=one_cycle)))
    assert train.main(["-c", str(tmp_path / "config.json"), "--run-id", "run"]) == 0
    latest = run_dir(tmp_path, "run") / "latest.pth"
    with_world_size(latest, 2)
    before = snapshot(latest.parent)
    assert train.main(["-r", str(latest), "-o", "trainer.epochs=2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: checkpoint '{latest}': the run trained on 2 processes and this one has 1: "
                          "lr_scheduler OneCycleLR steps at every optimizer step") and err.count("\n") == 1
    assert "resume on 2 processes, or start a new run from these weights" in err
    assert snapshot(latest.parent) == before


def test_a_data_loader_without_sample_positions_resumes_an_epoch_on_the_saved_number_of_processes_only(
    make_config: ConfigFactory, tmp_path: Path,
) -> None:
    trainer = train.build_trainer(ConfigParser(make_config()))
    trainer.data_loader = DataLoader(trainer.data_loader.dataset, batch_size=32)  # no BaseDataLoader
    stopped_inside = Progress(epoch=1, batches_done=3, samples_done=None)
    assert trainer._resume_position(stopped_inside, tmp_path / "latest.pth") == (3, None)  # skips 3 batches
    trainer.saved_world_size = 2
    with pytest.raises(InputError, match=r"the run trained on 2 processes and this one has 1, and it stopped inside "
                                         r"epoch 2, whose rest the data loader DataLoader cannot share out"):
        trainer._resume_position(stopped_inside, tmp_path / "latest.pth")
    assert trainer._resume_position(Progress(epoch=1), tmp_path / "latest.pth") == (0, None)  # an epoch's end: fine
