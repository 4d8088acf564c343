"""Search hyperparameters with Optuna: python sweep.py -c config.json -s sweep.json [--trials N]
[--storage URL] [--study NAME] [-o KEY=VALUE ...]

Every trial is an ordinary run of train.py's trainer in its own run folder. The study lives in
a SQLite file beside the runs unless --storage names a database that several processes or
machines share; running the same command again completes the study (an interrupted trial
first resumes from its checkpoint)."""

import exit_status  # first: a Ctrl-C while torch and optuna are imported is then one line, not a traceback

# isort: split
import dataclasses
import logging
import os
import sys
from pathlib import Path

import optuna

from cli import CommandLineParser, folder_name, gpu_indices, read_config, with_overrides
from config_schema import validate
from engine import distributed
from engine.signals import stop_request
from sweeps import Sweep, read_sweep
from sweeps.runner import report


def command_line_parser() -> CommandLineParser:
    parser = CommandLineParser(description="Search hyperparameters: each trial is a training run of the config.")
    parser.add_argument("-c", "--config", default="config.json", help="config file (JSON), default config.json")
    parser.add_argument("-s", "--sweep", default="sweep.json", help="the study and its search space, default "
                        "sweep.json")
    parser.add_argument("--trials", type=positive, help="finished trials (complete or pruned) the study should "
                        "have; a rerun adds what is missing (default: sweep.json's 'trials')")
    parser.add_argument("--storage", help="database URL of the study (e.g. postgresql://user@host/db); default: "
                        "a SQLite file beside the runs")
    parser.add_argument("--study", type=folder_name, help="study name (default: sweep.json's 'study')")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set a config key for every trial, as in train.py (repeatable)")
    parser.add_argument("-d", "--device", type=gpu_indices, help="GPU indices to use (sets CUDA_VISIBLE_DEVICES)")
    return parser


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ValueError(text)
    return int(text)


def sweep(argv: list[str] | None = None) -> Sweep:
    """The sweep the command line describes; every input mistake is an InputError."""
    args = command_line_parser().parse_args(argv)
    if args.device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.device
    base = validate(with_overrides(read_config(Path(args.config)), args.override))
    spec = read_sweep(Path(args.sweep), base)
    given = {"study": args.study, "trials": args.trials}
    spec = dataclasses.replace(spec, **{key: value for key, value in given.items() if value is not None})
    return Sweep(spec, base, args.override, args.storage)


def main(argv: list[str] | None = None) -> int:
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial's outcome is reported by the sweep itself
    logging.getLogger("optuna").propagate = False
    with stop_request.listening():  # a signal stops the running trial as it stops a run
        try:
            distributed.init_distributed()
            job = sweep(argv)
            job.run(job.spec.trials)
            status, line = 0, ""
        except Exception as exc:
            result = report(exc)
            if result is None:
                raise  # a bug: its traceback
            status, line = result
        finally:
            distributed.shutdown()
        return exit_status.finish(status, line, show=distributed.is_main())


if __name__ == "__main__":
    sys.exit(main())
