"""Export a trained model for a runtime: python export.py -r CHECKPOINT [--format onnx|pt2] [--out FILE]
[--tolerance T] [-o KEY=VALUE ...]

Writes the model (ONNX, or torch.export's .pt2; the batch size free) and, beside it, FILE.json
with what a runtime needs: the input's shape, layout and dtype, the preprocessing, the class
names, the opset or torch version and the checkpoint it came from. Every export is run on
inputs of the test split (random ones of the input's shape when the data are not there) in
batches of two sizes and held against the model first; one that fails, or differs, is refused
in one line and nothing is written (docs/use-the-model.md)."""

import exit_status  # first: a Ctrl-C while torch is imported (seconds), or later, is one line, not a traceback

# isort: split
import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from base import BaseDataLoader
from base.preprocessing import Preprocessing
from cli import config_from_args, refuse_output_overrides, use_parser
from engine.device import on_device
from engine.signals import stop_signals_blocked
from inference.exporting import (
    FORMAT_NAMES,
    FORMATS,
    INPUT_NAME,
    OUTPUT_NAME,
    TOLERANCE,
    Exported,
    check_packages,
    export_model,
)
from inference.predictions import check_scores
from inference.trained_model import TrainedModel, evaluation_loader, load_trained_model
from logger import setup_logging
from parse_config import ConfigParser
from utils.errors import InputError, exit_status_of, first_line
from utils.staged_files import StagedFiles, check_writable_file

VERIFY_INPUTS = 8  # the check runs batches of 1 and of this many inputs
CPU = torch.device("cpu")


@dataclass
class Written:
    """An export that was written: the model file, its description, and what the check found."""

    model_file: Path
    description_file: Path
    description: dict[str, Any]


def export(config: ConfigParser, fmt: str, out: Path | None = None, tolerance: float = TOLERANCE) -> Written:
    """Export the model of `config.resume_path` to `fmt` as `out` (default: the checkpoint's
    path with the format's suffix) and `out`.json, both written only after the export ran and
    matched the model within `tolerance`. Every mistake is an InputError, and nothing is written."""
    if config.resume_path is None:
        raise InputError("no checkpoint: give the checkpoint to export with -r")
    out = out or config.resume_path.with_suffix(FORMATS[fmt])
    if out.suffix.lower() in FORMATS.values() and out.suffix.lower() != FORMATS[fmt]:
        raise InputError(f"--out '{out}': a {out.suffix} file for --format {fmt}; name it {out.stem}{FORMATS[fmt]}")
    description_file = out.with_name(out.name + ".json")
    for path in (out, description_file):
        check_writable_file(path, "--out ")
    check_packages(fmt)
    setup_logging(config["trainer"]["verbosity"])
    trained = load_trained_model(config, CPU, "export.py")  # exported from the CPU, in float32
    inputs, source = verification_inputs(config, trained)
    with torch.no_grad():
        scores = trained.model(inputs)
    check_scores(scores, len(inputs), trained.arch, "export.py")
    exported = export_model(trained.model, inputs, fmt, tolerance)
    description = describe(trained, exported, out, inputs, scores.shape[1], source)
    with StagedFiles() as files:  # both or neither, also when Ctrl-C comes between the renames
        files.add(exported.data, out)
        files.add((json.dumps(description, indent=2) + "\n").encode("utf-8"), description_file)
        with stop_signals_blocked():
            files.commit()
    return Written(out, description_file, description)


def verification_inputs(config: ConfigParser, trained: TrainedModel) -> tuple[torch.Tensor, str]:
    """VERIFY_INPUTS inputs of the model, as evaluation feeds them: the first of the test split,
    read without downloading or caching anything; random ones of the preprocessing's input size
    when the split cannot be read here. Also what they are, for the messages."""
    try:
        loader = evaluation_loader(config, trained.checkpoint, batch_size=VERIFY_INPUTS, num_workers=0,
                                   download=False, write_cache=False)
        if isinstance(loader, BaseDataLoader):
            loader.adapt_to_model(trained.model)  # as training did
        batch = next(on_device(iter(loader), loader, CPU, 1), None)
        reason = "the test split is empty"
        if isinstance(batch, (list, tuple)) and isinstance(batch[0], torch.Tensor) and len(batch[0]) >= 2:
            return batch[0].float(), f"inputs of the test split ({config['data_loader']['type']})"
        reason = reason if batch is None else "its batches are not (inputs, targets) pairs of at least 2"
    except InputError as exc:
        reason = first_line(exc)
    shape = Preprocessing.from_dict(trained.preprocessing, f"checkpoint '{trained.path}'").input_size
    generator = torch.Generator().manual_seed(0)
    return torch.randn((VERIFY_INPUTS, *shape), generator=generator), f"random inputs (no test data: {reason})"


def describe(trained: TrainedModel, exported: Exported, out: Path, inputs: torch.Tensor, classes: int,
             source: str) -> dict[str, Any]:
    """What a runtime needs to feed the exported model and read its outputs: FILE.json."""
    onnx = exported.fmt == "onnx"
    return {
        "format": exported.fmt,
        "file": out.name,
        "checkpoint": str(trained.path.resolve()),
        "arch": trained.arch,
        "epoch": trained.checkpoint["epoch"],
        "input": {**({"name": INPUT_NAME} if onnx else {}), "shape": ["batch", *inputs.shape[1:]],
                  "layout": "NCHW" if inputs.dim() == 4 else None, "dtype": "float32"},
        "output": {**({"name": OUTPUT_NAME} if onnx else {}), "shape": ["batch", classes], "dtype": "float32",
                   "meaning": "one score per class (log-probabilities or logits): softmax gives the probabilities"},
        "classes": trained.class_names(classes),
        "preprocessing": trained.preprocessing,
        **({"opset": exported.details["opset"]} if onnx else {}),
        "torch": torch.__version__,
        "verified": {"runtime": exported.runtime, "inputs": source, "batch_sizes": exported.batch_sizes,
                     "max_difference": exported.difference, "tolerance": exported.tolerance},
    }


def command_line_parser() -> argparse.ArgumentParser:
    parser = use_parser("Export a trained model to ONNX or torch.export's .pt2, checked against the model, with "
                        "FILE.json describing its input, output, classes and preprocessing.", devices=False)
    parser.add_argument("--format", choices=sorted(FORMATS), default="onnx",
                        help="onnx (needs requirements-export.txt) or pt2 (torch.export; default onnx)")
    parser.add_argument("--out", type=Path, metavar="FILE",
                        help="the model file to write (default: the checkpoint's path with .onnx or .pt2); its "
                        "description goes to FILE.json; both are replaced whole")
    parser.add_argument("--tolerance", type=non_negative, default=TOLERANCE, metavar="T",
                        help=f"the largest difference from the model's outputs accepted, absolute and relative above 1 "
                        f"(default {TOLERANCE:g})")
    return parser


def non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of 0 or more")
    return value


def main(argv: list[str] | None = None) -> int:
    args = command_line_parser().parse_args(argv)
    try:
        refuse_output_overrides(args.override)
        written = export(config_from_args(args), args.format, args.out, args.tolerance)
    except Exception as exc:
        status = exit_status_of(exc)  # InputError 2, a full disk 4
        if status is None:
            raise  # a bug: its traceback
        return exit_status.finish(status, f"error: {exc}")
    described = written.description
    verified = described["verified"]
    opset = f", opset {described['opset']}" if "opset" in described else ""
    print(f"exported {described['checkpoint']} to {written.model_file} ({FORMAT_NAMES[args.format]}{opset}), "
          f"described in {written.description_file}")
    print(f"verified with {verified['runtime']} on batches of {' and '.join(map(str, verified['batch_sizes']))} "
          f"{verified['inputs']}: largest difference from the model {verified['max_difference']:.1e} "
          f"(tolerance {verified['tolerance']:g})")
    return exit_status.finish(0, "")


if __name__ == "__main__":
    sys.exit(main())
