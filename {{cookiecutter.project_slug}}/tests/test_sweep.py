"""sweep.py in-process on the synthetic data: the bad sweep files of the bad-input catalogue
(exit status 2, one `error:` line naming the file and key, nothing created), a short study whose
trials are ordinary runs, what a resumed trial takes from the command line, and how retries are
derived from the study (none lost when a process dies, none run twice); report.py on a study."""

import csv
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from conftest import call_main
from matplotlib import image
from test_bad_inputs import base_config, snapshot
from test_report import write_run

import report
import sweep
from parse_config import ConfigParser
from sweeps.spec import read_sweep, with_values
from sweeps.study import FAILURE, RESUME_FROM, RETRY_OF, RUN_DIR, duplicate_of, enqueue_missing_retries
from sweeps.trial import resumed_trial_config
from train import train

LR = {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}
BATCH = {"type": "categorical", "choices": [32, 64]}
GOOD = {"study": "s", "space": {"optimizer.args.lr": LR, "data_loader.args.batch_size": BATCH}}


def edited(**changes: Any) -> dict[str, Any]:
    """GOOD with top-level keys changed (None removes one); `space__<key>` sets one parameter."""
    spec = json.loads(json.dumps(GOOD))
    for name, value in changes.items():
        if name.startswith("space__"):
            spec["space"][name[len("space__"):].replace("__", ".")] = value
        elif value is None:
            del spec[name]
        else:
            spec[name] = value
    return spec


# (id, sweep.json content (a dict, or text as it is), extra arguments, what the error line must say)
SWEEP_CATALOGUE: list[tuple[str, Any, list[str], str]] = [
    ("sweep-missing", None, ["-s", "nope.json"], "sweep 'nope.json': cannot read it"),
    ("sweep-not-json", '{\n  "space": oops\n}\n', [], "sweep 'sweep.json': invalid JSON at line 2 column 12"),
    ("sweep-duplicate-key", '{"space": {}, "space": {}}', [], "sweep 'sweep.json': key 'space' appears twice"),
    ("sweep-a-list", "[1, 2]", [], "sweep 'sweep.json': must be a JSON object"),
    ("unknown-key", edited(spaces={}), [], "unknown key 'spaces'; did you mean 'space'?"),
    ("space-missing", edited(space=None), [], "missing required key 'space'"),
    ("space-empty", edited(space={}), [], "'space' must be an object of dotted config keys"),
    ("space-key-unknown", edited(space__optimizer__args__lrr=LR), [],
     "'space.optimizer.args.lrr' is not a key of the config; did you mean 'optimizer.args.lr'?"),
    ("param-type-unknown", edited(space__optimizer__args__lr={"type": "uniform", "low": 0.1, "high": 1}), [],
     "'space.optimizer.args.lr' must be an object whose 'type' is 'float', 'int' or 'categorical'"),
    ("param-key-misspelt", edited(space__optimizer__args__lr={"type": "float", "low": 0.1, "hihg": 1}), [],
     "unknown key 'space.optimizer.args.lr.hihg'; did you mean 'space.optimizer.args.lr.high'?"),
    ("range-reversed", edited(space__optimizer__args__lr={**LR, "low": 0.01, "high": 0.001}), [],
     "'space.optimizer.args.lr': 'low' must be below 'high', got 0.01 and 0.001"),
    ("log-from-zero", edited(space__optimizer__args__lr={**LR, "low": 0}), [], "a log scale needs 'low' > 0, got 0"),
    ("int-fractional", edited(space__data_loader__args__batch_size={"type": "int", "low": 16.5, "high": 64}), [],
     "'space.data_loader.args.batch_size': 'low' must be an integer, got 16.5"),
    ("range-outside-config", edited(space__data_loader__args__batch_size={"type": "int", "low": 0, "high": 64}), [],
     "'space.data_loader.args.batch_size' may take 0, which the config refuses: config: "
     "'data_loader.args.batch_size' must be >= 1, got 0"),
    ("choice-of-wrong-type", edited(space__optimizer__args__lr={"type": "categorical", "choices": [0.1, "fast"]}),
     [], "may take 'fast', which the config refuses: config: 'optimizer.args.lr' must be a number"),
    ("choices-empty", edited(space__data_loader__args__batch_size={"type": "categorical", "choices": []}), [],
     "'choices' must be a non-empty list"),
    ("choices-twice", edited(space__data_loader__args__batch_size={"type": "categorical", "choices": [32, 32]}),
     [], "'choices' lists a value twice"),
    ("direction-unknown", edited(direction="down"), [], "'direction' must be 'minimize' or 'maximize', got 'down'"),
    ("direction-against-monitor", edited(direction="maximize"), [],
     "'direction' is 'maximize' but 'trainer.monitor' is 'min val_loss'"),
    ("monitor-off", GOOD, ["-o", "trainer.monitor=off"], "the config's 'trainer.monitor' is 'off'"),
    ("sampler-unknown", edited(sampler={"type": "TPE"}), [], "'sampler.type' is 'TPE', not one of optuna.samplers: "),
    ("sampler-argument-unknown", edited(sampler={"type": "TPESampler", "args": {"seeed": 1}}), [],
     "'sampler.args' rejected by TPESampler: "),
    ("pruner-argument-out-of-range", edited(pruner={"type": "MedianPruner", "args": {"n_startup_trials": -1}}),
     [], "'pruner.args' rejected by MedianPruner: "),
    ("trials-zero", edited(trials=0), [], "'trials' must be an integer >= 1, got 0"),
    ("trials-option-zero", GOOD, ["--trials", "0"], "argument --trials: invalid positive value: '0'"),
    ("study-not-a-folder-name", edited(study="a/b"), [], "'study' must be a folder name"),
    ("study-option-escapes", GOOD, ["--study", ".."], "argument --study: '..' is not a folder name"),
    ("storage-unknown-dialect", GOOD, ["--storage", "nodb://host/x"], "--storage 'nodb://host/x': cannot open it"),
    ("override-unknown-key", GOOD, ["-o", "trainer.epoch=3"], "unknown key 'trainer.epoch'; did you mean"),
]


def write_workspace(root: Path, mnist_dir: Path, content: Any) -> None:
    (root / "config.json").write_text(json.dumps(base_config(mnist_dir), indent=4))
    if content is not None:
        (root / "sweep.json").write_text(content if isinstance(content, str) else json.dumps(content, indent=4))


def run_sweep(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    return call_main(sweep.main, args, capsys)


@pytest.mark.parametrize(("content", "args", "names"), [case[1:] for case in SWEEP_CATALOGUE],
                         ids=[case[0] for case in SWEEP_CATALOGUE])
def test_a_bad_sweep_gets_one_line_status_2_and_creates_nothing(
    content: Any, args: list[str], names: str, tmp_path: Path, mnist_dir: Path,
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_workspace(tmp_path, mnist_dir, content)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path, mnist_dir)
    status, _, err = run_sweep(["-c", "config.json", "-s", "sweep.json", *args], capsys)
    assert status == 2
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and names in err, err
    assert snapshot(tmp_path, mnist_dir) == before


def test_the_sweep_catalogue_is_distinct() -> None:
    ids = [case[0] for case in SWEEP_CATALOGUE]
    assert len(ids) == len(set(ids)) >= 25


def test_a_short_study_records_ordinary_runs(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    write_workspace(tmp_path, mnist_dir, edited(sampler={"type": "RandomSampler", "args": {"seed": 0}}))
    monkeypatch.chdir(tmp_path)
    status, out, err = run_sweep(["-c", "config.json", "-s", "sweep.json", "--trials", "2"], capsys)
    assert status == 0, err
    folder = tmp_path / "saved" / "Mnist_LeNet" / "s"
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{folder / 'study.db'}")
    assert [trial.state.name for trial in study.trials] == ["COMPLETE", "COMPLETE"]
    for trial in study.trials:
        run_dir = Path(trial.user_attrs[RUN_DIR])
        assert run_dir.parent == folder.resolve()
        config = json.loads((run_dir / "config.json").read_text())
        assert config["optimizer"]["args"]["lr"] == trial.params["optimizer.args.lr"]
        assert config["data_loader"]["args"]["batch_size"] == trial.params["data_loader.args.batch_size"]
        assert trial.intermediate_values.keys() == {1}  # one epoch, reported
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["best_value"] == study.best_value and summary["trials"]["complete"] == 2
    assert f"best val_loss {study.best_value:.6g}" in out


def test_a_resumed_trial_takes_only_overrides_a_resume_accepts(tmp_path: Path, mnist_dir: Path) -> None:
    config = base_config(mnist_dir)
    config["trainer"]["save_dir"] = str(tmp_path / "saved")
    parser = ConfigParser(config, run_id="t")
    train(parser)
    checkpoint = parser.run_dir / "latest.pth"
    overrides = ["trainer.epochs=3", "data_loader.args.batch_size=32", "optimizer.args.lr=0.5", "arch.args={}"]
    resumed = resumed_trial_config(checkpoint, overrides, swept={"optimizer.args.lr"})
    assert resumed["trainer"]["epochs"] == 3  # accepted by a resume
    assert resumed["data_loader"]["args"]["batch_size"] == 64  # refused by a resume: left as the run had it
    assert resumed["optimizer"]["args"]["lr"] == config["optimizer"]["args"]["lr"]  # swept: the trial's own
    assert resumed.resuming and resumed.resume_path == checkpoint


def failed_trial(study: optuna.Study, lr: float, **attrs: Any) -> int:
    """A trial of `study` that failed with the user attributes `attrs`; its number."""
    trial = study.ask({"optimizer.args.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    trial.suggest_float("optimizer.args.lr", 1e-4, 1e-2, log=True)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    study.tell(trial, state=optuna.trial.TrialState.FAIL)  # nothing enqueued: as a process that died left it
    return trial.number


def test_retries_are_derived_from_failed_trials_once_and_a_duplicate_is_told_apart(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="s")
    stopped = failed_trial(study, 1e-3, **{RUN_DIR: str(tmp_path / "trial-0000")})  # its retry was never enqueued
    failed_trial(study, 2e-3, **{RUN_DIR: str(tmp_path / "trial-0001"), FAILURE: "diverged"})  # not retried
    enqueue_missing_retries(study)
    enqueue_missing_retries(study)  # a second process: the retry is there already
    waiting = study.get_trials(states=[optuna.trial.TrialState.WAITING])
    assert [trial.user_attrs for trial in waiting] == [{RETRY_OF: stopped, RESUME_FROM: str(tmp_path / "trial-0000"
                                                                                           / "latest.pth")}]

    # Two processes that enqueued the same retry at once: the retry taken first runs, the other is skipped
    study.enqueue_trial(waiting[0].params, user_attrs=dict(waiting[0].user_attrs))
    first, second = study.ask(), study.ask()
    assert first.user_attrs[RETRY_OF] == second.user_attrs[RETRY_OF] == stopped
    assert duplicate_of(study, first.number) is None and duplicate_of(study, second.number) == first.number


# The study's space as Optuna records it in each trial: GOOD's `space`
RECORDED = {"optimizer.args.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
            "data_loader.args.batch_size": optuna.distributions.CategoricalDistribution([32, 64])}


def study_with_a_trial(root: Path, state: optuna.trial.TrialState, **attrs: Any) -> optuna.Study:
    """Study 's' where sweep.py keeps it under `root`, holding one trial of GOOD's space that
    ended in `state` with the user attributes `attrs`."""
    folder = root / "saved" / "Mnist_LeNet" / "s"
    folder.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(study_name="s", storage=f"sqlite:///{(folder / 'study.db').resolve()}")
    trial = study.ask(RECORDED)
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    study.tell(trial, 0.5 if state == optuna.trial.TrialState.COMPLETE else None, state=state)
    return study


# (id, the changed space of sweep.json, what the error line must say)
CHANGED_SPACES: list[tuple[str, dict[str, Any], str]] = [
    ("range", {**GOOD["space"], "optimizer.args.lr": {**LR, "low": 1e-3, "high": 1e-1}},
     "'optimizer.args.lr' was float in [0.0001, 0.01] (log) in study 's', now float in [0.001, 0.1] (log)"),
    ("scale", {**GOOD["space"], "optimizer.args.lr": {**LR, "log": False}},
     "'optimizer.args.lr' was float in [0.0001, 0.01] (log) in study 's', now float in [0.0001, 0.01];"),
    ("choices", {**GOOD["space"], "data_loader.args.batch_size": {**BATCH, "choices": [32, 128]}},
     "'data_loader.args.batch_size' was categorical of [32, 64] in study 's', now categorical of [32, 128]"),
    ("type", {**GOOD["space"], "data_loader.args.batch_size": {"type": "int", "low": 32, "high": 64}},
     "'data_loader.args.batch_size' was categorical of [32, 64] in study 's', now int in [32, 64]"),
    ("key-added", {**GOOD["space"], "trainer.seed": {"type": "int", "low": 1, "high": 5}},
     "'space.trainer.seed' is new to study 's', whose trials search optimizer.args.lr, data_loader.args.batch_size"),
    ("key-removed", {"optimizer.args.lr": LR},
     "'data_loader.args.batch_size' (categorical of [32, 64]) is searched in study 's' but is not in 'space'"),
]


@pytest.mark.parametrize(("space", "names"), [case[1:] for case in CHANGED_SPACES],
                         ids=[case[0] for case in CHANGED_SPACES])
def test_a_space_that_changed_under_a_study_is_one_line_and_adds_no_trial(
    space: dict[str, Any], names: str, tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Optuna fails a trial half-suggested (a traceback, a failed trial that is then retried) or
    silently mixes two spaces in one study: the space is checked against the study's trials first."""
    write_workspace(tmp_path, mnist_dir, edited(space=space))
    monkeypatch.chdir(tmp_path)
    study = study_with_a_trial(tmp_path, optuna.trial.TrialState.COMPLETE)
    status, _, err = run_sweep(["-c", "config.json", "-s", "sweep.json", "--trials", "2"], capsys)
    assert status == 2, err
    assert err.startswith("error: sweep 'sweep.json': ") and err.count("\n") == 1, err
    assert names in err and "Traceback" not in err, err
    assert err.rstrip().endswith("; use a new --study, or the old space"), err
    assert [trial.state.name for trial in study.get_trials()] == ["COMPLETE"]  # nothing added
    assert not list((tmp_path / "saved" / "Mnist_LeNet" / "s").glob("trial-*"))


@pytest.mark.parametrize("binding", ["study.db", "storage.json"])
def test_a_study_folder_of_another_storage_is_one_line_and_nothing_is_written(
    binding: str, tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The same study name in another database would put its trials' folders among this study's
    and overwrite its summary.json: the folder is bound to its storage (the local study.db, or
    storage.json, which the first sweep writes)."""
    write_workspace(tmp_path, mnist_dir, GOOD)
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "saved" / "Mnist_LeNet" / "s"
    if binding == "study.db":
        study_with_a_trial(tmp_path, optuna.trial.TrialState.COMPLETE)
        args, other, hint = ["--storage", f"sqlite:///{tmp_path / 'other.db'}"], tmp_path / "other.db", True
    else:
        folder.mkdir(parents=True)
        (folder / "storage.json").write_text(json.dumps({"storage": "postgresql://me@db/studies"}))
        args, other, hint = [], folder / "study.db", False
    before = snapshot(tmp_path, mnist_dir)
    status, _, err = run_sweep(["-c", "config.json", "-s", "sweep.json", "--trials", "1", *args], capsys)
    assert status == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: study folder '{folder}' belongs to the study in "), err
    assert "give this sweep another study name (--study NAME)" in err
    assert ("or leave out --storage" in err) == hint
    assert snapshot(tmp_path, mnist_dir) == before and not other.exists()


def test_the_recorded_space_is_what_trials_record(tmp_path: Path, mnist_dir: Path) -> None:
    """The check compares `Param.distribution()` with what `Param.suggest` records: equal for
    every kind of parameter, or every study would be refused."""
    space = {"optimizer.args.lr": {"type": "float", "low": 0.25, "high": 1, "step": 0.25},
             "trainer.epochs": {"type": "int", "low": 1, "high": 9},
             "data_loader.args.batch_size": {"type": "int", "low": 2, "high": 64, "log": True},
             "optimizer.args.amsgrad": {"type": "categorical", "choices": [True, False]}}
    (tmp_path / "sweep.json").write_text(json.dumps({"space": space}))
    spec = read_sweep(tmp_path / "sweep.json", base_config(mnist_dir))
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")
    trial = study.ask()
    for param in spec.space:
        param.suggest(trial)
    assert {param.key: param.distribution() for param in spec.space} == study.get_trials()[0].distributions


def test_a_retried_trial_is_named_with_the_trial_and_the_run_it_continues(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A retry is a new trial of the study (trial 1) that trains on in the run folder of the trial
    it retries (trial-0000): its line and the summary say both, not `trial 1` beside `trial-0000`."""
    write_workspace(tmp_path, mnist_dir, GOOD)
    monkeypatch.chdir(tmp_path)
    values = {"optimizer.args.lr": 1e-3, "data_loader.args.batch_size": 64}
    parser = ConfigParser(with_values(base_config(mnist_dir), values), run_id="s/trial-0000")
    train(parser)  # trial 0's run, stopped after its last epoch (as a signal after the last step leaves it)
    assert parser.run_dir is not None
    study_with_a_trial(tmp_path, optuna.trial.TrialState.FAIL, **{RUN_DIR: str(parser.run_dir.resolve())})
    status, out, err = run_sweep(["-c", "config.json", "-s", "sweep.json", "--trials", "1"], capsys)
    assert status == 0, err
    assert "trial 1 (retry of trial 0, run trial-0000) finished: best val_loss" in out, out
    assert "in trial 1 (retry of trial 0, run trial-0000): " in out, out
    summary = json.loads((tmp_path / "saved" / "Mnist_LeNet" / "s" / "summary.json").read_text())
    assert summary["best_trial"] == 1 and summary["best_retry_of"] == 0
    assert summary["best_run_dir"] == str(parser.run_dir.resolve())


def test_the_report_of_a_study_lists_its_trials_and_draws_optunas_plots(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """report.py on a study folder: a row per trial with the study's state, the trial's best
    value and parameters and its run folder; --plot also writes Optuna's optimisation history and
    parameter importances. The config's folder, holding only the study, points to it."""
    write_workspace(tmp_path, mnist_dir, edited(sampler={"type": "RandomSampler", "args": {"seed": 0}}))
    monkeypatch.chdir(tmp_path)
    status, _, err = run_sweep(["-c", "config.json", "-s", "sweep.json", "--trials", "2"], capsys)
    assert status == 0, err
    folder = Path("saved", "Mnist_LeNet", "s")
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{folder / 'study.db'}")
    failed_trial(study, 2e-3, **{FAILURE: "diverged"})  # a trial that failed before its run began
    assert report.main([str(folder), "--csv", "trials.csv", "--plot", "val_loss", "--out", "study.png"]) == 0
    out = capsys.readouterr().out
    with open("trials.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    trials = study.get_trials()
    assert [(int(row["trial"]), row["state"]) for row in rows] == [(0, "complete"), (1, "complete"), (2, "failed")]
    for row, trial in zip(rows[:2], trials, strict=False):
        assert float(row["best"]) == pytest.approx(trial.value)
        assert float(row["optimizer.args.lr"]) == trial.params["optimizer.args.lr"]
        assert int(row["data_loader.args.batch_size"]) == trial.params["data_loader.args.batch_size"]
        assert row["run"] == Path(trial.user_attrs[RUN_DIR]).name == f"trial-{trial.number:04d}"
    assert rows[2]["run"] == rows[2]["best"] == rows[2]["data_loader.args.batch_size"] == ""
    assert f"Study s: 2 complete, 1 failed; best: trial {study.best_trial.number}." in out
    for name in ("study.png", "study-history.png", "study-importances.png"):
        assert image.imread(name).ndim == 3 and f"wrote {name}" in out

    assert report.main([]) == 2  # config.json's runs: none but the study's
    err = capsys.readouterr().err
    assert f"it holds the studies s: report one with python report.py {folder.resolve()}" in err, err


def test_the_report_shows_a_retry_with_its_own_values_and_the_run_folder_it_shares(
    tmp_path: Path, mnist_dir: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Trial 0 stopped after epoch 2; trial 1 retried it in the same run folder to epoch 3: each
    row has the values its trial reported, and both name trial-0000."""
    study = study_with_a_trial(tmp_path, optuna.trial.TrialState.COMPLETE)  # trial 0, no run: a row of dashes
    folder = tmp_path / "saved" / "Mnist_LeNet" / "s"
    run_dir = write_run(folder / "trial-0000", base_config(mnist_dir), epochs=3)
    for number, losses, state in ((1, [0.9, 0.8], "FAIL"), (2, [0.9, 0.8, 0.7], "COMPLETE")):
        trial = study.ask(RECORDED)
        trial.set_user_attr(RUN_DIR, str(run_dir))
        if number == 2:
            trial.set_user_attr(RETRY_OF, 1)
        for epoch, loss in enumerate(losses, start=1):
            trial.report(loss, epoch)
        study.tell(trial, losses[-1] if state == "COMPLETE" else None, state=optuna.trial.TrialState[state])
    assert report.main([str(folder)]) == 0
    out = capsys.readouterr().out
    assert "| trial | state | best val_loss (min) | best epoch | epochs | final lr | wall time | run |" in out
    assert "| 1 | failed | 0.8 | 2 | 2 | 0.001 | - | trial-0000 |" in out, out
    assert "| 2 (retry of 1) | complete | 0.7 | 3 | 3 | 0.001 | - | trial-0000 |" in out, out
    assert "| 0 | complete | 0.5 | - | - | - | - | - |" in out, out
