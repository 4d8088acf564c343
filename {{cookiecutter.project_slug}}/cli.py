"""The command line of train.py and test.py: options, victoresque's shortcuts, `-o KEY=VALUE`
overrides, and which checkpoint `-r` means. It hands a ConfigParser to the rest."""

import argparse
import copy
import json
import os
import re
from pathlib import Path
from typing import Any, NoReturn

from config_schema import validate
from engine.checkpoint import load_checkpoint
from engine.resume import has_ended
from parse_config import ConfigParser, DuplicateKeyError, read_json, unique_keys
from utils.errors import InputError

LATEST = "latest"  # `-r latest`: the newest run of the config


def newest_run_checkpoint(config: dict[str, Any], config_path: Path) -> Path:
    """`latest.pth` of the newest run (by that file's modification time) under `config`'s
    `<save_dir>/<name>/` (the config file `config_path` with the command line's overrides)."""
    config = validate(config)
    runs = Path(config["trainer"]["save_dir"]) / config["name"]
    candidates = sorted(runs.glob("*/latest.pth"), key=lambda path: path.stat().st_mtime_ns)
    if not candidates:
        raise InputError(
            f"-r {LATEST}: no run of config '{config_path}' has a latest.pth under '{runs}'; "
            f"start one with -c {config_path}"
        )
    return candidates[-1]


def apply_override(config: dict[str, Any], override: str) -> None:
    """Set one dotted key from `KEY=VALUE`, e.g. `trainer.epochs=5` or `optimizer.args.lr=0.01`.

    VALUE is read as JSON (numbers, true/false, null, lists, objects) and as a plain string
    otherwise. The result is validated with the rest of the config afterwards.
    """
    path, sep, text = override.partition("=")
    keys = path.strip().split(".")
    if not sep or not all(keys):
        raise InputError(f"override '{override}': expected KEY=VALUE, e.g. trainer.epochs=5")
    try:
        value = json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError:
        value = text
    except DuplicateKeyError as exc:
        raise InputError(f"override '{override}': key '{exc.key}' appears twice in one object") from None
    node = config
    for depth, key in enumerate(keys[:-1]):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            parent = ".".join(keys[: depth + 1])
            raise InputError(f"override '{override}': '{parent}' is not an object, cannot set '{path}'")
    node[keys[-1]] = value


def gpu_indices(text: str) -> str:
    if not re.fullmatch(r"\d+(,\d+)*", text):
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of GPU indices, e.g. 0 or 0,1")
    return text


def folder_name(text: str) -> str:
    if not re.fullmatch(r"[\w.-]+", text) or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"'{text}' is not a folder name (letters, digits, '_', '-', '.')")
    return text


class CommandLineParser(argparse.ArgumentParser):
    """argparse, but a usage mistake is one line on stderr and exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def command_line_parser(description: str) -> CommandLineParser:
    """The parser with the options shared by train.py and test.py."""
    parser = CommandLineParser(description=description)
    parser.add_argument("-c", "--config", help="config file (JSON)")
    parser.add_argument(
        "-r", "--resume",
        help=f"checkpoint to resume from (train) or evaluate (test); '{LATEST}': latest.pth of the newest run "
        "of the config (-c, default config.json)",
    )
    parser.add_argument(
        "-d", "--device", type=gpu_indices, help="GPU indices to use, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES)"
    )
    parser.add_argument(
        "-o", "--override", action="append", default=[], metavar="KEY=VALUE",
        help="set any config key, e.g. -o trainer.epochs=5 -o optimizer.args.lr=3e-4 (repeatable)",
    )
    return parser


def use_parser(description: str, devices: bool = True) -> CommandLineParser:
    """The options of the scripts that use a trained model (predict.py, export.py): the
    checkpoint (-r, required), with `devices` the GPUs (-d), and overrides of the checkpoint's
    config (-o KEY=VALUE, as for train.py and test.py). Each names its output file with --out."""
    parser = CommandLineParser(description=description)
    parser.add_argument(
        "-r", "--resume", required=True, metavar="CHECKPOINT",
        help=f"the checkpoint to use (it holds the model, its classes and its preprocessing); '{LATEST}': "
        "latest.pth of the newest run of config.json",
    )
    if devices:
        parser.add_argument(
            "-d", "--device", type=gpu_indices, help="GPU indices to use, e.g. 0 (sets CUDA_VISIBLE_DEVICES)"
        )
    parser.add_argument(
        "-o", "--override", action="append", default=[], metavar="KEY=VALUE",
        help="set a key of the checkpoint's config, e.g. -o n_gpu=0 (repeatable); the output file is --out",
    )
    parser.set_defaults(config=None, device=None)
    return parser


def refuse_output_overrides(overrides: list[str]) -> None:
    """`-o` sets config keys in every script; one without `=` is most likely an output file
    meant for `--out` (report.py, predict.py and export.py name theirs so): say so."""
    for override in overrides:
        if "=" not in override:
            raise InputError(f"-o {override}: -o sets a config key as in train.py (KEY=VALUE); the output file "
                             "is given with --out")


def config_from_args(args: argparse.Namespace, shortcuts: dict[str, str] | None = None,
                     training: bool = False) -> ConfigParser:
    """The run's config from parsed arguments. `-c` alone: that file. `-r` alone: the
    checkpoint's own config. `-c` with `-r`: the file, whose differences from the checkpoint's
    config a resume applies or refuses (engine/resume.py); with `--fine-tune`, a new run from the
    checkpoint's weights (with `--partial`, those that fit the model). `-o` overrides and
    `shortcuts` (an attribute of `args`, e.g. `lr`, to the dotted key it sets, e.g.
    `optimizer.args.lr`) apply to whichever it is; `-r latest` finds the newest run where that
    config (`-c`, default config.json) puts runs. `training` (train.py): a resume is checked
    against the checkpoint (ConfigParser.check_resume) before anything else is read."""
    if args.device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.device
    fine_tune, partial = getattr(args, "fine_tune", False), getattr(args, "partial", False)
    if fine_tune and not args.resume:
        raise InputError("--fine-tune needs the checkpoint to start from: give it with -r")
    if partial and not fine_tune:
        raise InputError("--partial loads part of a checkpoint's weights into a new run: use it with --fine-tune -r "
                         "CHECKPOINT (a resume needs every tensor)")
    overrides = list(args.override) + [f"{key}={getattr(args, attribute)}" for attribute, key in
                                       (shortcuts or {}).items() if getattr(args, attribute, None) is not None]
    if getattr(args, "resume_or_start", False):
        return resume_or_start(args, overrides)
    config = with_overrides(read_config(Path(args.config)), overrides) if args.config else None
    resume_path = Path(args.resume) if args.resume else None
    if args.resume == LATEST:
        config_path = Path(args.config or "config.json")
        where = config if config is not None else with_overrides(read_config(config_path), overrides)
        resume_path = newest_run_checkpoint(where, config_path)
    if resume_path is not None:
        checkpoint = load_checkpoint(resume_path)  # a bad checkpoint is refused before anything else
        if config is None:
            config = with_overrides(copy.deepcopy(checkpoint["config"]), overrides)  # the record stays as it was
    if config is None:
        raise InputError("no config: give a config file with -c or a checkpoint with -r")
    parser = ConfigParser(config, resume_path=resume_path, fine_tune=fine_tune, run_id=getattr(args, "run_id", None),
                          partial=partial)
    if training and parser.resuming:
        parser.check_resume(checkpoint)  # before the data are read: a refused change is the one line, not the data's
    return parser


def resume_or_start(args: argparse.Namespace, overrides: list[str]) -> ConfigParser:
    """`--resume-or-start --run-id ID`: the run `<save_dir>/<name>/<ID>` of the config (`-c`,
    default config.json, with the overrides), resumed from its latest.pth when it has one,
    started (again, in a folder without a checkpoint) when it has none; a run that has ended
    gets its reason in `finished`. The same command therefore serves a job's first start and
    every requeue."""
    for given, option in ((args.resume, "-r"), (args.fine_tune, "--fine-tune")):
        if given:
            raise InputError(f"--resume-or-start finds the run's checkpoint itself; leave out {option}")
    if not args.run_id:
        raise InputError("--resume-or-start needs --run-id: the run folder to start or resume (e.g. the job's id)")
    config_path = Path(args.config or "config.json")
    config = with_overrides(read_config(config_path), overrides)
    resolved = validate(copy.deepcopy(config))
    run_dir = Path(resolved["trainer"]["save_dir"]).resolve() / resolved["name"] / args.run_id
    latest = run_dir / "latest.pth"
    if not latest.is_file():
        return ConfigParser(config, run_id=args.run_id, restart=True)
    parser = ConfigParser(config, resume_path=latest)
    checkpoint = load_checkpoint(latest)
    reason = has_ended(checkpoint, parser.config)
    if reason is None:
        parser.check_resume(checkpoint)
        return parser
    parser.finished = f"run directory '{run_dir}' has finished: {reason}; nothing to do"
    try:  # a job whose config changed since: said, as the run it would have continued is done anyway
        parser.check_resume(checkpoint)
    except InputError as exc:
        what = str(exc).split(": ", 1)[-1].split(": ", 1)[0]  # its first clause, without the checkpoint's name
        parser.finished += f" (this config could not have continued it: {what})"
    return parser


def read_config(path: Path) -> dict[str, Any]:
    config = read_json(path)
    if not isinstance(config, dict):
        raise InputError(f"config '{path}': must be a JSON object")
    return config


def with_overrides(config: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for override in overrides:
        apply_override(config, override)
    return config
