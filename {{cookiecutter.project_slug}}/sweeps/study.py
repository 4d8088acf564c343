"""The study in its storage: SQLite beside the runs by default, or any database URL that
Optuna's RDBStorage takes (PostgreSQL, MySQL) for several machines. A trial that stopped on a
signal, or whose process died (no heartbeat for twice `heartbeat_interval`), cannot be reopened:
it stays failed, and the same parameters are enqueued with the checkpoint to resume from, so the
next trial any process of the study takes is that one.

Retries are derived from the study, not remembered: before taking a trial, a process enqueues one
for every failed trial that did not fail by itself (it has no `failure`) and has no retry yet. A
process that dies between failing a trial and enqueueing its retry therefore loses nothing; two
processes that enqueue the same retry at once are told apart when the second one is taken (the
retry started first runs, the other is skipped as a duplicate)."""

import json
import logging
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from sweeps.spec import SweepSpec
from utils.errors import InputError, first_line
from utils.staged_files import write_atomic  # the one atomic writer of run files

logger = logging.getLogger("sweep")

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)  # what `--trials N` counts
# User attributes of a trial: its run folder; for a retry, the checkpoint it resumes (None: the
# parameters start anew) and the number of the trial it continues; for a trial that failed by
# itself (diverged, an error, a duplicate retry) why, which means that it is not retried.
RUN_DIR, RESUME_FROM, RETRY_OF, FAILURE = "run_dir", "resume_from", "retry_of", "failure"
STORAGE_ERRORS = (SQLAlchemyError, optuna.exceptions.StorageInternalError)


class StudyError(Exception):
    """The study's database failed while the sweep was using it (sweep.py: one line, exit 1)."""


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Turn a database error inside the block into a StudyError naming the storage."""
    try:
        yield
    except STORAGE_ERRORS as exc:
        raise StudyError(f"study storage '{shown_url(url)}': {reasons(exc)}") from exc
OPEN_ATTEMPTS = 4  # a database that does not open is tried again, after 1, 2 and 3 seconds


def study_folder(config: dict[str, Any], study: str) -> Path:
    """`<save_dir>/<name>/<study>/`: the trials' run folders, the summary and the default database."""
    return Path(config["trainer"]["save_dir"]) / config["name"] / study


def storage_url(url: str | None, folder: Path) -> str:
    return url if url is not None else f"sqlite:///{(folder / 'study.db').resolve()}"


STORAGE_FILE = "storage.json"  # in the study folder: the storage whose study its trials' folders belong to


def check_study_folder(folder: Path, url: str) -> None:
    """Refuse in one line, before anything is written, a study `folder` (the study's run folders
    and summary) that belongs to the study of another storage than `url`'s: the two studies
    would mix their trials' folders and overwrite each other's summary.json. A URL of no known
    database is refused first, as opening it would."""
    try:
        make_url(url).get_dialect()
    except (SQLAlchemyError, ValueError, ImportError) as exc:
        raise InputError(f"--storage '{shown_url(url)}': cannot open it ({reasons(exc)})") from None
    default = storage_url(None, folder)
    recorded = shown_url(default) if (folder / "study.db").is_file() else None  # its own database
    for name in (STORAGE_FILE, "summary.json"):  # summary.json: a folder made before storage.json
        if recorded:
            break
        try:
            recorded = json.loads((folder / name).read_text()).get("storage")
        except (OSError, ValueError, AttributeError):
            continue
    if recorded and recorded != shown_url(url):
        other = "" if url == default else ", or leave out --storage"
        raise InputError(f"study folder '{folder}' belongs to the study in {recorded}, not to the one in "
                         f"{shown_url(url)}; give this sweep another study name (--study NAME){other}")


def record_study_storage(folder: Path, url: str) -> None:
    """Bind the study `folder` to the storage at `url` (once its study opened there)."""
    if not (folder / STORAGE_FILE).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic((json.dumps({"storage": shown_url(url)}, indent=4) + "\n").encode(), folder / STORAGE_FILE)


def shown_url(url: str) -> str:
    """The URL without its password, for messages and the summary."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (SQLAlchemyError, ValueError):
        return url


def open_storage(url: str, heartbeat_interval: int) -> optuna.storages.RDBStorage:
    """Optuna's RDBStorage with heartbeats (a dead process's trial is failed and retried); a URL
    that does not open is an InputError naming it (without its password)."""
    sqlite = url.startswith("sqlite")
    if sqlite:
        Path(make_url(url).database or ".").parent.mkdir(parents=True, exist_ok=True)
    engine = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: "experimental"
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=heartbeat_interval,
                                                  grace_period=2 * heartbeat_interval)
        except SQLAlchemyError as exc:  # also two processes creating a new database's tables at once
            if attempt + 1 == OPEN_ATTEMPTS or isinstance(exc, NoSuchModuleError | ArgumentError):
                raise InputError(f"--storage '{shown_url(url)}': cannot open it ({reasons(exc)})") from None
            time.sleep(1 + attempt)
        except (ValueError, ImportError, OSError) as exc:
            raise InputError(f"--storage '{shown_url(url)}': cannot open it ({reasons(exc)})") from None
    raise AssertionError("unreachable")


def reasons(exc: BaseException) -> str:
    """The first line of `exc`'s message, and of its cause's (e.g. the missing driver's name)."""
    text = first_line(exc)
    return f"{text}: {reasons(exc.__cause__)}" if exc.__cause__ is not None else text


def open_study(spec: SweepSpec, storage: optuna.storages.RDBStorage) -> optuna.Study:
    """Create the study, or join it. A sampler seed moves by the number of trials the study
    already holds, so that a process joining later does not propose the same points again."""
    try:
        study = optuna.create_study(study_name=spec.study, storage=storage, direction=spec.direction,
                                    sampler=spec.make_sampler(), pruner=spec.make_pruner(), load_if_exists=True)
    except ValueError as exc:  # e.g. the stored study has the other direction
        raise InputError(f"study '{spec.study}': {exc}") from None
    if list(study.directions) != [optuna.study.StudyDirection[spec.direction.upper()]]:
        raise InputError(f"study '{spec.study}': stored with direction {study.direction.name.lower()}, "
                         f"the sweep asks for {spec.direction}; use another --study")
    check_space(study, spec)
    study.sampler = spec.make_sampler(seed_offset=len(study.get_trials(deepcopy=False)))
    return study


def check_space(study: optuna.Study, spec: SweepSpec) -> None:
    """Refuse a space that is not the one the study's trials were drawn from (a key whose range,
    scale, step, choices or type changed, or a key added or removed), before a trial is taken:
    Optuna would fail the trial half-suggested, or mix two spaces in one study without a word.
    A trial that failed while its values were being suggested holds only some keys: keys are
    missing from the study only when no trial has them."""
    where = f"sweep '{spec.path}'"
    remedy = "use a new --study, or the old space"
    wanted = {param.key: param.distribution() for param in spec.space}
    seen: dict[str, BaseDistribution] = {}
    for trial in study.get_trials(deepcopy=False):
        for key, distribution in trial.distributions.items():
            if key not in wanted:
                raise InputError(f"{where}: '{key}' ({describe(distribution)}) is searched in study '{spec.study}' "
                                 f"but is not in 'space'; {remedy}")
            if distribution != wanted[key]:
                raise InputError(f"{where}: '{key}' was {describe(distribution)} in study '{spec.study}', now "
                                 f"{describe(wanted[key])}; {remedy}")
            seen[key] = distribution
    added = [key for key in wanted if key not in seen]
    if seen and added:
        raise InputError(f"{where}: 'space.{added[0]}' is new to study '{spec.study}', whose trials search "
                         f"{', '.join(seen)}; {remedy}")


def describe(distribution: BaseDistribution) -> str:
    """A distribution as sweep.json states it, e.g. `float in [0.0001, 0.01] (log)`."""
    if not isinstance(distribution, FloatDistribution | IntDistribution):
        return f"categorical of {list(getattr(distribution, 'choices', ()))}"
    kind = "int" if isinstance(distribution, IntDistribution) else "float"
    text = f"{kind} in [{distribution.low}, {distribution.high}]"
    if distribution.log:
        return text + " (log)"
    step = distribution.step
    return text + (f" step {step}" if step is not None and not (kind == "int" and step == 1) else "")


def finished_trials(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


def enqueue_missing_retries(study: optuna.Study) -> None:
    """Fail the trials whose process died (no heartbeat), then enqueue a retry for every failed
    trial that did not fail by itself and has none yet."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get(RETRY_OF) for t in trials if FAILURE not in t.user_attrs}
    for trial in trials:
        if (trial.state == TrialState.FAIL and FAILURE not in trial.user_attrs and trial.number not in retried
                and trial.params):
            enqueue_retry(study, trial)


def enqueue_retry(study: optuna.Study, trial: FrozenTrial) -> None:
    """Enqueue `trial`'s parameters again, to resume from its run folder's `latest.pth` (or the
    checkpoint it was itself to resume from, when it stopped before its run began)."""
    run_dir = trial.user_attrs.get(RUN_DIR)
    checkpoint = str(Path(run_dir) / "latest.pth") if run_dir else trial.user_attrs.get(RESUME_FROM)
    study.enqueue_trial(trial.params, user_attrs={RESUME_FROM: checkpoint, RETRY_OF: trial.number})
    logger.warning("Trial %d stopped; its parameters are enqueued to %s", trial.number,
                   f"resume from {checkpoint}" if checkpoint else "start again")


def duplicate_of(study: optuna.Study, number: int) -> int | None:
    """For the retry `number` just taken: the retry of the same trial that started before it (it
    runs that run; this one must not), or None."""
    trials = study.get_trials(deepcopy=False)
    mine = next(t for t in trials if t.number == number)
    original = mine.user_attrs.get(RETRY_OF)
    if original is None or mine.datetime_start is None:
        return None
    earlier = [t.number for t in trials if t.number != number and t.user_attrs.get(RETRY_OF) == original
               and t.datetime_start is not None and (t.datetime_start, t.number) < (mine.datetime_start, number)]
    return min(earlier) if earlier else None


def trial_name(number: int, retry_of: int | None = None, run_dir: str | Path | None = None) -> str:
    """How the sweep's lines name a trial: its number in the study (as Optuna's tools show it)
    and, for a retry, the trial it continues and the run folder it trains in (that trial's, e.g.
    `trial 1 (retry of trial 0, run trial-0000)`)."""
    if retry_of is None:
        return f"trial {number}"
    run = f", run {Path(run_dir).name}" if run_dir else ""
    return f"trial {number} (retry of trial {retry_of}{run})"


def summary(study: optuna.Study, metric: str, url: str) -> dict[str, Any]:
    """The study's counts and its best trial: value, parameters, run folder, model_best.pth, and
    for a retry the trial it continued (`best_retry_of`)."""
    trials = study.get_trials(deepcopy=False)
    counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
    result: dict[str, Any] = {"study": study.study_name, "storage": shown_url(url), "direction":
                              study.direction.name.lower(), "metric": metric, "trials": counts}
    if counts["complete"]:
        best = study.best_trial
        run_dir = best.user_attrs.get(RUN_DIR)
        result.update(best_trial=best.number, best_retry_of=best.user_attrs.get(RETRY_OF), best_value=best.value,
                      best_params=best.params, best_run_dir=run_dir,
                      best_checkpoint=str(Path(run_dir) / "model_best.pth") if run_dir else None)
    return result


def report_summary(result: dict[str, Any], folder: Path) -> Path:
    """Print the summary and write it to `<folder>/summary.json`; returns that path."""
    counts = ", ".join(f"{n} {state}" for state, n in result["trials"].items() if n)
    print(f"study {result['study']} ({result['storage']}): {counts or 'no trials'}")
    if "best_value" in result:
        params = ", ".join(f"{key}={value}" for key, value in result["best_params"].items())
        name = trial_name(result["best_trial"], result["best_retry_of"], result["best_run_dir"])
        print(f"best {result['metric']} {result['best_value']:.6g} in {name}: {params}")
        print(f"best run: {result['best_run_dir']}  checkpoint: {result['best_checkpoint']}")
    path = folder / "summary.json"
    folder.mkdir(parents=True, exist_ok=True)
    write_atomic((json.dumps(result, indent=4) + "\n").encode(), path)
    print(f"summary: {path}")
    return path
