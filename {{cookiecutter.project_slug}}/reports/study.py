"""A sweep's study folder (`<save_dir>/<name>/<study>/`: `study.db`, `summary.json` and the
trials' run folders `trial-NNNN/`) as report.py shows it: one row per trial of the study, with
its state as the study records it (complete, pruned, failed, running, waiting), its best value
and parameters; and Optuna's plots of the optimisation history and of the parameter
importances. Present only in projects made with sweeps."""

import warnings
from pathlib import Path
from typing import Any

import optuna
from matplotlib import pyplot
from matplotlib.figure import Figure
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from optuna.visualization.matplotlib import plot_optimization_history, plot_param_importances

from reports.plot import figure_bytes
from reports.run_folder import Run, read_run
from reports.table import Row, Table, duration
from sweeps.study import RESUME_FROM, RETRY_OF, RUN_DIR, STORAGE_ERRORS, reasons
from utils.errors import InputError, listed

STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
          TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
# PED-ANOVA (numpy only; fANOVA would need scikit-learn) compares the best trials with the
# others: with fewer complete trials there is nothing to compare.
IMPORTANCE_MIN_TRIALS = 2


def load_study(folder: Path) -> optuna.Study:
    """The study in `folder`'s study.db (the one named as the folder, as sweep.py names it)."""
    path = folder / "study.db"
    try:
        storage = optuna.storages.RDBStorage(f"sqlite:///{path.resolve()}", skip_table_creation=True)
        names = optuna.get_all_study_names(storage)
        name = folder.name if folder.name in names else names[0] if len(names) == 1 else None
        if name is None:
            raise InputError(f"study '{path}': holds {listed(names) or 'no study'}, none named '{folder.name}'")
        return optuna.load_study(study_name=name, storage=storage)
    except STORAGE_ERRORS as exc:
        raise InputError(f"study '{path}': cannot read it ({reasons(exc)})") from None


def trial_folder(folder: Path, trial: FrozenTrial) -> Path | None:
    """The trial's run folder (looked for in `folder` too, where the study has been moved), or
    None before its run began."""
    recorded = trial.user_attrs.get(RUN_DIR)
    if recorded is None and trial.user_attrs.get(RESUME_FROM):  # a retry not started yet
        recorded = str(Path(trial.user_attrs[RESUME_FROM]).parent)
    if recorded is None:
        return None
    for candidate in (Path(recorded), folder / Path(recorded).name):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def best_reported(trial: FrozenTrial, direction: StudyDirection) -> tuple[float, int | None] | None:
    """The best value the trial reported (one per epoch) and its epoch: its own record, also
    where a retry trained on in the same run folder afterwards. A retry of a run that had
    finished reported nothing: its value, without an epoch."""
    values: list[tuple[float, int | None]] = [(value, epoch) for epoch, value in
                                              sorted(trial.intermediate_values.items())]
    if not values:
        return (trial.value, None) if trial.value is not None else None
    return (min if direction == StudyDirection.MINIMIZE else max)(values, key=lambda pair: pair[0])


def study_report(folder: Path) -> tuple[Table, list[Row], optuna.Study]:
    """The table of the study's trials, a row per trial run folder (for the plot), the study."""
    study = load_study(folder)
    trials = study.get_trials(deepcopy=False)
    keys = list(dict.fromkeys(key for trial in trials for key in trial.params))
    runs: dict[Path, Run] = {}  # a retry trains on in the folder of the trial it retries: read once
    cells, csv_cells = [], []
    for trial in trials:
        run_dir = trial_folder(folder, trial)
        if run_dir is not None and run_dir not in runs:
            runs[run_dir] = read_run(run_dir)
        shown, numbers = trial_cells(trial, runs.get(run_dir) if run_dir else None, keys, study.direction)
        cells.append(shown)
        csv_cells.append(numbers)
    mode = "min" if study.direction == StudyDirection.MINIMIZE else "max"
    titles = ["trial", "state", f"best {objective(list(runs.values()))} ({mode})", "best epoch", "epochs",
              "final lr", "wall time", "run", *keys]
    csv_titles = ["trial", "retry_of", "state", "best", "best_epoch", "epochs", "final_lr", "wall_s", "run", *keys]
    table = Table(titles, cells, csv_titles, csv_cells, [summary_line(study)])
    return table, [Row([run]) for run in runs.values()], study


def trial_cells(trial: FrozenTrial, run: Run | None, keys: list[str],
                direction: StudyDirection) -> tuple[list[str], list[Any]]:
    """A trial's row: its number (and the trial it retries), its state in the study, the best
    value it reported and that epoch, the epochs it reported; from its run folder the final lr,
    wall time and name; its parameters. As Markdown cells, and as CSV cells."""
    retry_of = trial.user_attrs.get(RETRY_OF)
    state = STATES.get(trial.state, trial.state.name.lower())
    value, epoch = best_reported(trial, direction) or (None, None)
    epochs = max(trial.intermediate_values, default=None)
    lr, wall, name = (run.last("lr"), run.wall_s, run.label) if run else (None, None, None)
    params = [trial.params.get(key) for key in keys]
    numbers = [trial.number, retry_of, state, value, epoch, epochs, lr, wall, name, *params]
    number = str(trial.number) + (f" (retry of {retry_of})" if retry_of is not None else "")
    shown = [number, state, *map(_cell, (value, epoch, epochs, lr)), duration(wall) if wall is not None else "-",
             _cell(name), *map(_cell, params)]
    return shown, numbers


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def objective(runs: list[Run]) -> str:
    """The monitored metric that the trials' values are (`value` before any run began)."""
    return runs[0].monitor.partition(" ")[2] if runs else "value"


def summary_line(study: optuna.Study) -> str:
    trials = study.get_trials(deepcopy=False)
    counts = ", ".join(f"{n} {name}" for state, name in STATES.items() if (n := sum(t.state == state for t in trials)))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = f"; best: trial {study.best_trial.number}" if complete else ""
    return f"Study {study.study_name}: {counts or 'no trials'}{best}."


def study_figures(study: optuna.Study, rows: list[Row], out: Path) -> tuple[dict[Path, bytes], list[str]]:
    """Optuna's optimisation history and parameter importances (PED-ANOVA) of the trials' best
    monitored values, as files named after `out` (`<stem>-history<suffix>`,
    `<stem>-importances<suffix>`), and a line for what was left out."""
    metric = objective([run for row in rows for run in row.runs])
    files: dict[Path, bytes] = {}
    notes = []
    complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    plots = {"history": lambda: plot_optimization_history(study, target_name=metric)}
    if complete >= IMPORTANCE_MIN_TRIALS:
        plots["importances"] = lambda: plot_param_importances(study, evaluator=PedAnovaImportanceEvaluator(),
                                                              target_name=metric)
    else:
        notes.append(f"Parameter importances left out: {complete} complete trial(s), they need "
                     f"{IMPORTANCE_MIN_TRIALS}.")
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            figure: Figure = plot().figure
        path = out.with_name(f"{out.stem}-{name}{out.suffix}")
        files[path] = figure_bytes(figure, path)
        pyplot.close(figure)  # Optuna draws with pyplot, which keeps every figure until closed
    return files, notes

