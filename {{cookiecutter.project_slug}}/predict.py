"""Predict the classes of image files with a trained model:
python predict.py -r CHECKPOINT INPUT... [--out predictions.csv] [--batch-size N] [--top-k K]
[--skip-unreadable] [-d GPUS] [-o KEY=VALUE ...]

INPUT: image files and folders (searched recursively; files the model does not read are skipped
and counted). Each file is turned into the model's input exactly as evaluation turns it, by the
data loader's `read_inputs` with the checkpoint's preprocessing, so the checkpoint is all it
needs (docs/use-the-model.md). Writes one CSV row per input, whole at the end: on an error,
nothing."""

import exit_status  # first: a Ctrl-C while torch is imported (seconds), or later, is one line, not a traceback

# isort: split
import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from cli import config_from_args, refuse_output_overrides, use_parser
from engine.device import setup_device
from engine.optimizer_step import OptimizerStep
from inference.inputs import InputBatches, find_input_files
from inference.predictions import TABLE_ROWS, Prediction, check_scores, csv_text, rank, table_text
from inference.trained_model import USE_DOCS, TrainedModel, load_trained_model
from logger import setup_logging
from parse_config import ConfigParser
from utils.errors import InputError, exit_status_of
from utils.staged_files import check_writable_file, write_atomic

DEFAULT_OUT = "predictions.csv"
DEFAULT_TOP_K = 3  # or the number of classes, when the model has fewer


@dataclass
class Predicted:
    """What a prediction run did: the predictions, the files read, those skipped (not inputs of
    this model) and the unreadable ones skipped (`--skip-unreadable`)."""

    predictions: list[Prediction]
    files: int
    skipped: int
    unreadable: list[Path]


def predict(config: ConfigParser, inputs: list[Path], out: Path, batch_size: int | None = None,
            top_k: int | None = None, skip_unreadable: bool = False) -> Predicted:
    """Predict the class of every input that `inputs` (files and folders) hold with the model of
    `config.resume_path`, and write the CSV file `out` whole at the end. Every mistake (a missing
    input, an output folder that cannot be written, a checkpoint or model this cannot use, an
    unreadable image) is an InputError, before or instead of writing anything."""
    check_writable_file(out, "--out ")
    files = find_input_files(inputs)
    setup_logging(config["trainer"]["verbosity"])
    device, _ = setup_device(config["n_gpu"], config["trainer"]["deterministic"])
    trained = load_trained_model(config, device, "predict.py")
    read_inputs = getattr(trained.loader_class, "read_inputs", None)
    if read_inputs is None:
        raise InputError(f"data loader '{trained.loader_class.__name__}' has no read_inputs(path, preprocessing), "
                         f"which predict.py needs to read input files: subclass BaseDataLoader ({USE_DOCS})")
    size = batch_size or config["data_loader"]["args"].get("batch_size", 64)
    with tqdm(total=len(files), unit="file", desc="predict", delay=1.0, leave=False, dynamic_ncols=True,
              disable=not sys.stderr.isatty()) as bar:
        batches = InputBatches(files, lambda path: read_inputs(path, trained.preprocessing), size, skip_unreadable,
                               on_file=bar.update)
        predictions = run_model(trained, batches, device, OptimizerStep(trained.model, None, config["trainer"], device),
                                top_k)
    if not predictions:
        raise InputError(f"no inputs: none of the {len(files)} files under {', '.join(map(str, inputs))} is an "
                         f"input of this model (data loader {trained.loader_class.__name__})")
    try:
        write_atomic(csv_text(predictions, len(predictions[0].top)).encode("utf-8"), out)
    except OSError as exc:  # e.g. the folder went away meanwhile (a full disk is a DiskFull)
        raise InputError(f"--out '{out}': cannot write it ({exc.strerror or exc})") from None
    return Predicted(predictions, len(files), batches.skipped, batches.unreadable)


def run_model(trained: TrainedModel, batches: InputBatches, device: torch.device, precision: OptimizerStep,
              top_k: int | None) -> list[Prediction]:
    """Every batch through the model (under the config's precision), ranked."""
    predictions: list[Prediction] = []
    for names, inputs in batches:
        with torch.no_grad(), precision.autocast():
            scores = trained.model(inputs.to(device, non_blocking=True))
        check_scores(scores, len(names), trained.arch, "predict.py")
        classes = scores.size(1)
        if top_k is not None and top_k > classes:
            raise InputError(f"--top-k {top_k}: the model has {classes} classes")
        predictions += rank(names, scores, trained.class_names(classes), top_k or min(DEFAULT_TOP_K, classes))
    return predictions


def summary(result: Predicted, out: Path) -> str:
    """The last line: what was written, and what was skipped."""
    skipped = []
    if result.skipped:
        skipped.append(f"{result.skipped} file{'s' if result.skipped != 1 else ''} skipped: not inputs of this model")
    if result.unreadable:
        skipped.append(f"{len(result.unreadable)} unreadable skipped, the first {result.unreadable[0]}")
    note = f" ({'; '.join(skipped)})" if skipped else ""
    return f"wrote {out}: {len(result.predictions)} predictions from {result.files} files{note}"


def command_line_parser() -> argparse.ArgumentParser:
    parser = use_parser("Predict the classes of image files with a trained model: one CSV row per input.")
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT",
                        help="image files and folders (searched recursively); the MNIST example also reads IDX files "
                        "of digits (*-idx3-ubyte)")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), metavar="FILE",
                        help=f"the CSV file to write (default {DEFAULT_OUT}; replaced whole)")
    parser.add_argument("--batch-size", type=positive, metavar="N",
                        help="inputs per batch (default: the config's data_loader.args.batch_size)")
    parser.add_argument("--top-k", type=positive, metavar="K",
                        help=f"the K most probable classes of each input (default {DEFAULT_TOP_K}, or all when fewer)")
    parser.add_argument("--skip-unreadable", action="store_true",
                        help="skip (and count) image files that cannot be decoded, instead of stopping")
    return parser


def positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number of 1 or more")
    return int(text)


def main(argv: list[str] | None = None) -> int:
    args = command_line_parser().parse_args(argv)
    try:
        refuse_output_overrides(args.override)
        result = predict(config_from_args(args), args.inputs, args.out, args.batch_size, args.top_k,
                         args.skip_unreadable)
    except Exception as exc:
        status = exit_status_of(exc)  # InputError 2, a full disk 4
        if status is None:
            raise  # a bug: its traceback
        return exit_status.finish(status, f"error: {exc}")
    if len(result.predictions) <= TABLE_ROWS:
        print(table_text(result.predictions))
    print(summary(result, args.out))
    return exit_status.finish(0, "")


if __name__ == "__main__":
    sys.exit(main())
