"""A sweep: trials taken from the study one at a time with Optuna's `study.optimize` (which
samples or takes an enqueued trial, beats the heartbeat and records the outcome), until the study
holds `--trials` finished ones. Under torchrun rank 0 talks to the study and sends each trial's
values to the other ranks, which run the same trial with it; whatever ends the sweep on rank 0
outside a trial (a storage that does not open, a signal between trials) is sent to them too, so
that every rank exits with the same status instead of waiting for a trial that never comes."""

import contextlib
import logging
from pathlib import Path
from typing import Any

import optuna

from engine import distributed
from engine.signals import stop_request
from sweeps.spec import SweepSpec
from sweeps.study import (
    FAILURE,
    RESUME_FROM,
    RETRY_OF,
    RUN_DIR,
    StudyError,
    check_study_folder,
    duplicate_of,
    enqueue_missing_retries,
    finished_trials,
    open_storage,
    open_study,
    record_study_storage,
    report_summary,
    storage_errors,
    storage_url,
    study_folder,
    summary,
    trial_name,
)
from sweeps.trial import new_trial_config, resumed_trial_config, run_trial
from utils.errors import DiskFull, InputError, TrainingDiverged, TrainingInterrupted

logger = logging.getLogger("sweep")


class SweepStopped(Exception):
    """A signal arrived between two trials: nothing was running, nothing is lost."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(f"sweep stopped by signal {signal_number} between trials; run the same command to go on")
        self.signal_number = signal_number


class SweepEnded(Exception):
    """Under torchrun, on a rank other than 0: rank 0 ended the sweep with `status`, and printed `line`."""

    def __init__(self, status: int, line: str) -> None:
        super().__init__(line)
        self.status, self.line = status, line


class DuplicateRetry(Exception):
    """The retry just taken is already run by another process (two processes enqueued it)."""


def ending(exc: BaseException) -> tuple[int, str] | None:
    """The exit status and the one line that `exc` ends sweep.py with; None: a bug (traceback)."""
    if isinstance(exc, InputError | StudyError):
        return 2 if isinstance(exc, InputError) else 1, f"error: {exc}"
    if isinstance(exc, DiskFull):
        return DiskFull.EXIT_STATUS, f"error: {exc}"
    if isinstance(exc, TrainingInterrupted) and exc.checkpoint is not None:
        return 128 + exc.signal_number, (f"interrupted by signal {exc.signal_number}; the trial resumes from "
                                         f"{exc.checkpoint} when the same sweep.py command runs again")
    if isinstance(exc, TrainingInterrupted | SweepStopped):
        return 128 + exc.signal_number, str(exc)
    if isinstance(exc, SweepEnded):
        return exc.status, exc.line
    if isinstance(exc, SystemExit) and isinstance(exc.code, int):
        return exc.code, "stopped"
    return None


class Sweep:
    """The trials of one study over `base` (the config with its `-o` overrides applied)."""

    def __init__(self, spec: SweepSpec, base: dict[str, Any], overrides: list[str], storage: str | None) -> None:
        self.spec, self.base, self.overrides = spec, base, overrides
        self.folder = study_folder(base, spec.study)
        self.url = storage_url(storage, self.folder)
        self.metric = base["trainer"]["monitor"].split()[1]
        self._trial: optuna.Trial | None = None  # the trial this process is running (rank 0)
        self._followers_waiting = True  # rank 0: the other ranks wait for the next message

    def run(self, trials: int) -> dict[str, Any] | None:
        """Run trials until the study has `trials` finished ones (complete or pruned); returns
        the summary (on rank 0; None on the other ranks)."""
        if not distributed.is_main():
            self._follow()
            return None
        try:
            with storage_errors(self.url):
                return self._lead(trials)
        except BaseException as exc:
            if self._followers_waiting:
                status, line = ending(exc) or (1, f"error: rank 0 failed: {type(exc).__name__}: {exc}")
                self._tell_followers(("end", status, line))
            raise

    def _lead(self, trials: int) -> dict[str, Any]:
        check_study_folder(self.folder, self.url)
        study = open_study(self.spec, open_storage(self.url, self.spec.heartbeat_interval))
        record_study_storage(self.folder, self.url)
        while finished_trials(study) < trials:
            if stop_request.signal_number is not None:
                raise SweepStopped(stop_request.signal_number)
            self._one_trial(study)
        self._tell_followers(("done",))
        result = summary(study, self.metric, self.url)
        report_summary(result, self.folder)
        distributed.barrier()  # the others wait here, so that no rank tears its connections down early
        return result

    def _tell_followers(self, message: tuple[Any, ...]) -> None:
        self._followers_waiting = False
        distributed.broadcast(message)

    def _one_trial(self, study: optuna.Study) -> None:
        enqueue_missing_retries(study)  # the retries of stopped and dead trials come first
        self._trial = None
        try:  # a diverged trial is a failed one; the sweep goes on
            study.optimize(self._objective, n_trials=1, catch=(TrainingDiverged, DuplicateRetry))
        except TrainingInterrupted:
            enqueue_missing_retries(study)  # now, so that any process of the study takes it next
            raise
        except SystemExit:  # Ctrl-C twice: Optuna left the trial running; fail it, for a retry at the next start
            if self._trial is not None:
                with contextlib.suppress(Exception):  # already failed by Optuna, or the database is away
                    study.tell(self._trial.number, state=optuna.trial.TrialState.FAIL)
            raise

    def _objective(self, trial: optuna.Trial) -> float:
        self._trial = trial
        values = {param.key: param.suggest(trial) for param in self.spec.space}
        resume_from, retry_of = trial.user_attrs.get(RESUME_FROM), trial.user_attrs.get(RETRY_OF)
        if (first := duplicate_of(trial.study, trial.number)) is not None:
            trial.set_user_attr(FAILURE, f"duplicate of trial {first}")
            print(f"trial {trial.number} skipped: trial {first} already retries trial "
                  f"{trial.user_attrs[RETRY_OF]}", flush=True)
            raise DuplicateRetry
        self._tell_followers(("trial", trial.number, values, resume_from, retry_of))
        try:
            value, pruned = self._run(trial.number, values, resume_from, retry_of, trial)
        except TrainingDiverged as exc:
            self._followers_waiting = True  # they go on to the next trial as well
            trial.set_user_attr(FAILURE, str(exc))
            raise
        except (TrainingInterrupted, StudyError):  # retried
            raise
        except Exception as exc:  # noqa: BLE001 - recorded, then raised: a trial that fails so is not retried
            trial.set_user_attr(FAILURE, f"{type(exc).__name__}: {exc}")
            raise
        self._followers_waiting = True
        shown = ", ".join(f"{key}={value}" for key, value in values.items())
        outcome = "pruned" if pruned else "finished"
        name = trial_name(trial.number, retry_of, trial.user_attrs.get(RUN_DIR))
        print(f"{name} {outcome}: best {self.metric} {value:.6g} ({shown})", flush=True)
        if pruned:
            raise optuna.TrialPruned(f"pruned with best {self.metric} {value}")
        return value

    def _follow(self) -> None:
        """Ranks other than 0: run each trial that rank 0 announces, until it says no more."""
        while True:
            kind, *details = distributed.broadcast(None)
            if kind == "done":
                distributed.barrier()  # until rank 0 has written the summary: the ranks end together
                return
            if kind == "end":
                raise SweepEnded(*details)
            try:
                self._run(*details, trial=None)
            except TrainingDiverged:
                continue  # rank 0 records it and takes the next trial

    def _run(self, number: int, values: dict[str, Any], resume_from: str | None, retry_of: int | None,
             trial: optuna.Trial | None) -> tuple[float, bool]:
        """Run trial `number` (for a retry of trial `retry_of`: on from `resume_from`, in its run folder)."""
        if resume_from is not None and Path(resume_from).is_file():
            name = trial_name(number, retry_of, Path(resume_from).parent)
            logger.info("%s resumes from %s", name, resume_from)
            config = resumed_trial_config(Path(resume_from), self.overrides, {p.key for p in self.spec.space})
        else:
            if resume_from is not None:
                logger.warning("%s: %s is not here; its parameters start anew", trial_name(number, retry_of),
                               resume_from)
            config = new_trial_config(self.base, values, self.folder, number)
            name = trial_name(number, retry_of, config.run_id)
        try:
            return run_trial(config, trial, self.url)
        except TrainingDiverged as exc:
            if distributed.is_main():
                print(f"{name} failed: {exc}", flush=True)
            raise
        except TrainingInterrupted as exc:
            if trial is not None and exc.checkpoint is not None:
                trial.set_user_attr(RESUME_FROM, str(Path(exc.checkpoint).resolve()))
            raise


def report(exc: Exception) -> tuple[int, str] | None:
    """sweep.py's exit status for `exc` and its one line ("" on a rank that rank 0 spoke for);
    None for a bug."""
    result = ending(exc)
    if result is None or not isinstance(exc, SweepEnded):
        return result
    return result[0], ""
