"""A sweep: trials taken from the study one at a time with Optuna's `study.optimize` (which
samples or takes an enqueued trial, beats the heartbeat and records the outcome), until the study
holds `--trials` finished ones. Under torchrun rank 0 talks to the study and sends each trial's
values to the other ranks, which run the same trial with it."""

import logging
from pathlib import Path
from typing import Any

import optuna

from sweeps.spec import SweepSpec
from sweeps.study import (
    RESUME_FROM,
    enqueue_retry,
    finished_trials,
    open_storage,
    open_study,
    report_summary,
    storage_url,
    study_folder,
    summary,
)
from sweeps.trial import new_trial_config, resumed_trial_config, run_trial
from utils import distributed
from utils.errors import TrainingDiverged, TrainingInterrupted
from utils.signals import stop_request

logger = logging.getLogger("sweep")


class SweepStopped(Exception):
    """A signal arrived between two trials: nothing was running, nothing is lost."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(f"sweep stopped by signal {signal_number} between trials; run the same command to go on")
        self.signal_number = signal_number


class Sweep:
    """The trials of one study over `base` (the config with its `-o` overrides applied)."""

    def __init__(self, spec: SweepSpec, base: dict[str, Any], overrides: list[str], storage: str | None) -> None:
        self.spec, self.base, self.overrides = spec, base, overrides
        self.folder = study_folder(base, spec.study)
        self.url = storage_url(storage, self.folder)
        self.metric = base["trainer"]["monitor"].split()[1]
        self._trial: optuna.Trial | None = None  # the trial this process is running (rank 0)

    def run(self, trials: int) -> dict[str, Any] | None:
        """Run trials until the study has `trials` finished ones (complete or pruned); returns
        the summary (on rank 0; None on the other ranks)."""
        if not distributed.is_main():
            self._follow()
            return None
        study = open_study(self.spec, open_storage(self.url, self.spec.heartbeat_interval))
        while finished_trials(study) < trials:
            if stop_request.signal_number is not None:
                distributed.broadcast(None)  # the other ranks wait for a trial: there is none
                raise SweepStopped(stop_request.signal_number)
            self._one_trial(study)
        distributed.broadcast(None)
        result = summary(study, self.metric, self.url)
        report_summary(result, self.folder)
        return result

    def _one_trial(self, study: optuna.Study) -> None:
        try:  # a diverged trial is a failed one; the sweep goes on
            study.optimize(self._objective, n_trials=1, catch=(TrainingDiverged,))
        except TrainingInterrupted:
            assert self._trial is not None  # failed by optimize, with the attributes set below
            frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == self._trial.number)
            enqueue_retry(study, frozen, frozen.user_attrs.get(RESUME_FROM))
            raise

    def _objective(self, trial: optuna.Trial) -> float:
        self._trial = trial
        values = {param.key: param.suggest(trial) for param in self.spec.space}
        resume_from = trial.user_attrs.get(RESUME_FROM)
        distributed.broadcast((trial.number, values, resume_from))
        value, pruned = self._run(trial.number, values, resume_from, trial)
        shown = ", ".join(f"{key}={value}" for key, value in values.items())
        outcome = "pruned" if pruned else "finished"
        print(f"trial {trial.number} {outcome}: best {self.metric} {value:.6g} ({shown})", flush=True)
        if pruned:
            raise optuna.TrialPruned(f"pruned with best {self.metric} {value}")
        return value

    def _follow(self) -> None:
        """Ranks other than 0: run each trial that rank 0 announces, until it says no more."""
        while (job := distributed.broadcast(None)) is not None:
            self._run(*job, trial=None)

    def _run(self, number: int, values: dict[str, Any], resume_from: str | None,
             trial: optuna.Trial | None) -> tuple[float, bool]:
        if resume_from is not None and Path(resume_from).is_file():
            logger.info("Trial %d resumes from %s", number, resume_from)
            config = resumed_trial_config(Path(resume_from), self.overrides, {p.key for p in self.spec.space})
        else:
            if resume_from is not None:
                logger.warning("Trial %d: %s is not here; its parameters start anew", number, resume_from)
            config = new_trial_config(self.base, values, self.folder, number)
        try:
            return run_trial(config, trial)
        except TrainingDiverged as exc:
            if distributed.is_main():
                print(f"trial {number} failed: {exc}", flush=True)
            raise
        except TrainingInterrupted as exc:
            if trial is not None and exc.checkpoint is not None:
                trial.set_user_attr(RESUME_FROM, str(Path(exc.checkpoint).resolve()))
            raise
