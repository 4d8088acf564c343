"""A trained model exported to ONNX (torch.onnx.export, whose default exporter goes through
torch.export and needs onnxscript) or to torch.export's `.pt2` (torch.export.export, then
torch.export.save), its batch size free, and verified before it is kept: the exported model runs
(in onnxruntime, or loaded back with torch.export.load) on batches of two sizes, neither the one
traced, and its outputs are held against the model's own. The files are made in memory, so that
nothing is written until the export has passed (export.py writes them)."""

import importlib.util
import inspect
import io
import logging
import re
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from utils.errors import InputError, first_line

FORMATS = {"onnx": ".onnx", "pt2": ".pt2"}  # --format: the file's suffix
FORMAT_NAMES = {"onnx": "ONNX", "pt2": "torch.export's .pt2"}
ONNX_PACKAGES = ("onnx", "onnxscript", "onnxruntime")  # the exporter (onnx, onnxscript) and the runtime that checks
TOLERANCE = 1e-4  # |exported - model| <= TOLERANCE + TOLERANCE * |model| for every output
EXAMPLE_BATCH = 2  # the batch size traced: not 1, which torch.export would fix as the only size
INPUT_NAME, OUTPUT_NAME = "input", "scores"  # the ONNX graph's names

Runner = Callable[[torch.Tensor], torch.Tensor]


def check_packages(fmt: str) -> None:
    """The packages an export to `fmt` needs, or an InputError saying which to install."""
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None] if fmt == "onnx" else []
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise InputError(f"--format onnx needs the packages {', '.join(ONNX_PACKAGES)}, and {', '.join(missing)} "
                         f"{verb} not installed: pip install -r requirements-export.txt")


@dataclass
class Exported:
    """An export that passed its check: the file's bytes, what ran it (`runtime`), the batch
    sizes it ran, and the largest difference of its outputs from the model's."""

    fmt: str
    data: bytes
    runtime: str
    batch_sizes: list[int]
    difference: float
    tolerance: float
    details: dict[str, Any] = field(default_factory=dict)  # e.g. the ONNX opset


def export_model(model: nn.Module, inputs: torch.Tensor, fmt: str, tolerance: float = TOLERANCE) -> Exported:
    """`model` (on the CPU, in eval mode) exported to `fmt` with a free batch size, traced on
    the first EXAMPLE_BATCH of `inputs` (N, ...) and checked on batches of 1 and N. An export
    that fails is an InputError naming what the exporter could not take; one whose outputs
    differ from the model's by more than `tolerance` (absolute, and relative above 1) is
    refused in one line too."""
    example = inputs[:EXAMPLE_BATCH]
    try:
        with quiet():
            data, details = to_onnx(model, example) if fmt == "onnx" else to_pt2(model, example)
    except InputError:
        raise
    except Exception as exc:  # the exporters raise many types (UserError, TorchExportError, ConversionError, ...)
        raise InputError(export_failure(exc, model, FORMAT_NAMES[fmt])) from None
    run, runtime = onnx_runner(data) if fmt == "onnx" else pt2_runner(data)
    sizes = [1, len(inputs)]
    difference = max(compare(model, run, inputs[:size], tolerance, FORMAT_NAMES[fmt]) for size in sizes)
    return Exported(fmt, data, runtime, sizes, difference, tolerance, details)


@contextmanager
def quiet() -> Iterator[None]:
    """Nothing printed or logged by the exporters (advice, and when tracing fails the graph
    traced so far, dozens of lines on stderr): a failure is one line, made from its exception."""
    chatter = io.StringIO()
    with warnings.catch_warnings(), redirect_stdout(chatter), redirect_stderr(chatter):
        warnings.simplefilter("ignore")
        logging.disable(logging.CRITICAL)
        try:
            yield
        finally:
            logging.disable(logging.NOTSET)


def dynamic_batch() -> tuple[dict[int, Any], ...]:
    """The one input's first dimension, the batch, left free."""
    return ({0: torch.export.Dim("batch")},)


def to_onnx(model: nn.Module, example: torch.Tensor) -> tuple[bytes, dict[str, Any]]:
    program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=dynamic_batch(),
                                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], verbose=False)
    proto = program.model_proto
    try:
        data = proto.SerializeToString()
    except ValueError:  # protobuf's limit: larger models keep their weights in a second file
        raise InputError(f"model '{type(model).__name__}': its ONNX file would exceed the 2 GB that one ONNX file "
                         "holds; export with --format pt2") from None
    opset = next((entry.version for entry in proto.opset_import if entry.domain in ("", "ai.onnx")), None)
    return data, {"opset": opset}


def to_pt2(model: nn.Module, example: torch.Tensor) -> tuple[bytes, dict[str, Any]]:
    program = torch.export.export(model, (example,), dynamic_shapes=dynamic_batch(), strict=False)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return buffer.getvalue(), {}


def onnx_runner(data: bytes) -> tuple[Runner, str]:
    """The ONNX model's forward in onnxruntime (CPU), and the runtime's name and version."""
    import onnxruntime

    runtime = f"onnxruntime {onnxruntime.__version__}"
    try:
        session = onnxruntime.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:  # e.g. an opset newer than this onnxruntime knows
        raise InputError(f"{runtime} cannot load the exported model ({first_line(exc)}); pip install -U "
                         "onnxruntime") from None

    def run(batch: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {INPUT_NAME: batch.numpy()})[0])

    return run, runtime


def pt2_runner(data: bytes) -> tuple[Runner, str]:
    """The .pt2 program's forward, loaded back as a file's bytes would be."""
    module = torch.export.load(io.BytesIO(data)).module()
    return module, f"torch.export.load (torch {torch.__version__})"


@torch.no_grad()
def compare(model: nn.Module, run: Runner, batch: torch.Tensor, tolerance: float, what: str) -> float:
    """The largest difference between the exported model's outputs on `batch` and the model's;
    an InputError when any differs by more than `tolerance` (absolute, and relative above 1)."""
    expected = model(batch).float()
    got = run(batch).float()
    if got.shape != expected.shape:
        raise InputError(f"the {what} export returns shape {tuple(got.shape)} for a batch of {len(batch)}, the model "
                         f"{tuple(expected.shape)}; nothing written")
    difference = (got - expected).abs().masked_fill(got == expected, 0.0)  # equal infinities differ by 0, not NaN
    largest = float(difference.max()) if difference.numel() else 0.0
    if not torch.isclose(got, expected, rtol=tolerance, atol=tolerance).all():
        raise InputError(f"the {what} export differs from the model by up to {largest:.1e} on a batch of "
                         f"{len(batch)} (tolerance {tolerance:g}, relative above 1); nothing written")
    return largest


_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # the exporters colour words with terminal codes
_MISSING_OPERATOR = re.compile(r"No ONNX function found for <OpOverload\(op='([\w.]+)'")


def export_failure(exc: BaseException, model: nn.Module, what: str) -> str:
    """One line saying why `model` could not be exported to `what`: the operator the ONNX
    exporter has no translation for, a newer onnxscript that torch needs, or the exporter's own
    reason, with the line of the model's code where tracing stopped when it is known."""
    chain = list(causes(exc))
    text = "\n".join(_ANSI_ESCAPE.sub("", str(link)) for link in chain)
    head = f"model '{type(model).__name__}' cannot be exported to {what}"
    if (operator := _MISSING_OPERATOR.search(text)) is not None:
        return (f"{head}: the exporter has no ONNX translation of the operator {operator.group(1)}; replace it in "
                "the model, or export with --format pt2")
    missing = next((link for link in chain if isinstance(link, ImportError)), None)
    if missing is not None:
        return f"{head}: torch {torch.__version__}'s exporter needs a newer onnxscript ({first_line(missing)}): pip " \
               "install -U onnxscript"
    reason, where = _ANSI_ESCAPE.sub("", first_line(chain[-1])), model_line(chain, model)
    if "data-dependent" in text:
        because = f" ({reason})" if not where else ""  # the line of code says more than the symbols do
        reason = f"its forward branches on the values of a tensor, which torch.export cannot trace{because}"
    return f"{head}: {reason}{where}"


def causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and the exceptions it was raised from, outermost first."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def model_line(chain: list[BaseException], model: nn.Module) -> str:
    """` (at FILE:LINE: CODE)`, the last line of the model's source file in the tracebacks, or ''."""
    try:
        source = Path(inspect.getsourcefile(type(model)) or "").resolve()
    except TypeError:  # a class without a source file
        return ""
    for link in reversed(chain):
        frames = [frame for frame in traceback.extract_tb(link.__traceback__)
                  if Path(frame.filename).resolve() == source]
        if frames:
            frame = frames[-1]
            shown = source.relative_to(Path.cwd()) if source.is_relative_to(Path.cwd()) else source
            return f" (at {shown}:{frame.lineno}: {(frame.line or '').strip()})"
    return ""
