"""Convert a victoresque/pytorch-template checkpoint into this project's format:
python convert_checkpoint.py OLD.pth OUT.pth --trust-pickle

victoresque's trainer pickles its `ConfigParser` object into every checkpoint, so reading one
runs code stored in the file (torch.load with weights_only=False); this project loads only
plain data. The converted file holds the weights, `arch`, `epoch`, `monitor_best` and the
config as a plain dict: enough for test.py and for fine-tuning (`train.py --fine-tune -r
OUT.pth`), but not a state to resume (no optimizer, scheduler or random number states).
"""

import argparse
import io
import json
import sys
from pathlib import Path
from typing import Any

import torch

from cli import CommandLineParser
from config_schema import validate
from engine.checkpoint import strip_wrappers  # the rule load_weights applies
from utils.errors import InputError
from utils.staged_files import write_atomic  # the trainer's own atomic writer

WRAPPER_NAMES = {"DataParallel", "DistributedDataParallel"}  # what victoresque records as `arch` with n_gpu > 1


def load_old(path: Path, trust_pickle: bool) -> dict[str, Any]:
    """The old checkpoint's dict. Plain-data files load safely; any other needs `trust_pickle`,
    because unpickling it can run arbitrary code."""
    if not path.is_file():
        raise InputError(f"checkpoint '{path}': no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        pickled = any(marker in str(exc) for marker in ("Unsupported global", "Unsupported class"))
        if not pickled:  # damaged, or not a torch file: unpickling would not help
            reason = " ".join(str(exc).split())
            raise InputError(f"checkpoint '{path}': not a readable checkpoint ({reason[:200]})") from None
        if not trust_pickle:
            raise InputError(
                f"checkpoint '{path}': holds pickled Python objects, and unpickling runs code stored in the "
                "file; if you trust where it came from, run again with --trust-pickle"
            ) from None
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # e.g. a class of the old project that this one does not have
            detail = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            raise InputError(f"checkpoint '{path}': cannot unpickle it ({detail[:200]})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise InputError(f"checkpoint '{path}': not a victoresque checkpoint (no state_dict)")
    if "format_version" in checkpoint:
        raise InputError(f"checkpoint '{path}': already in this project's format; use it as it is")
    return checkpoint


def config_dict(saved: Any, path: Path) -> dict[str, Any]:
    """The config as a plain dict: victoresque's ConfigParser keeps it in `_config`; a plain
    dict is accepted as it is."""
    attributes = getattr(saved, "__dict__", {})
    config = saved if isinstance(saved, dict) else attributes.get("_config", attributes.get("config"))
    if not isinstance(config, dict):
        raise InputError(f"checkpoint '{path}': its config is a {type(saved).__name__} without a config dict")
    try:
        return json.loads(json.dumps(config))  # plain data only, as the converted file must load weights-only
    except (TypeError, ValueError) as exc:
        raise InputError(f"checkpoint '{path}': its config is not plain JSON data ({exc})") from None


def convert(old: dict[str, Any], path: Path) -> tuple[dict[str, Any], str | None]:
    """This project's checkpoint dict for `old`, and a warning when its config does not pass
    this project's schema (it is then kept as it was)."""
    if "config" not in old:
        raise InputError(f"checkpoint '{path}': no config in it, so arch and data cannot be known")
    config = config_dict(old["config"], path)
    warning = None
    try:
        config = validate(config)  # fills the keys this project added with their defaults
    except InputError as exc:
        warning = (f"warning: the converted config does not pass this project's schema ({exc}); it is kept "
                   "as it was: give test.py -c config.json (or -o KEY=VALUE) to evaluate the weights")
    arch = old.get("arch")
    if not isinstance(arch, str) or arch in WRAPPER_NAMES:
        arch = config.get("arch", {}).get("type") if isinstance(config.get("arch"), dict) else None
    if not isinstance(arch, str):
        raise InputError(f"checkpoint '{path}': names no model class (no arch, nor arch.type in its config)")
    converted = {
        "format_version": 1,  # the layout of weights and epoch-level values only (engine/checkpoint.py upgrades it)
        "arch": arch,
        "epoch": int(old.get("epoch", 0)),
        "state_dict": {strip_wrappers(key): value for key, value in old["state_dict"].items()},
        "monitor_best": _plain_number(old.get("monitor_best")),
        "config": config,
    }
    return converted, warning


def _plain_number(value: Any) -> float | None:
    """victoresque may store the best value as a 0-d tensor; the converted file keeps a float."""
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = CommandLineParser(
        description="Convert a victoresque/pytorch-template checkpoint to this project's format."
    )
    parser.add_argument("source", type=Path, help="the victoresque checkpoint (.pth)")
    parser.add_argument("destination", type=Path, help="the file to write; must not exist yet")
    parser.add_argument(
        "--trust-pickle", action="store_true",
        help="unpickle the source (weights_only=False), which runs code stored in it: only for files you trust",
    )
    args: argparse.Namespace = parser.parse_args(argv)
    try:
        if args.destination.exists():
            raise InputError(f"output '{args.destination}': already exists; choose a new file name")
        if not args.destination.parent.is_dir():
            raise InputError(f"output '{args.destination}': folder '{args.destination.parent}' does not exist")
        converted, warning = convert(load_old(args.source, args.trust_pickle), args.source)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if warning:
        print(warning, file=sys.stderr)
    buffer = io.BytesIO()
    torch.save(converted, buffer)
    write_atomic(buffer.getvalue(), args.destination)
    out = args.destination
    print(f"wrote {out}: {converted['arch']} weights of epoch {converted['epoch']}; evaluate with "
          f"python test.py -r {out}, or fine-tune with python train.py --fine-tune -r {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
