"""The one schema of config.json: every key, its type, range, default and meaning.

Validation, command-line overrides and the config reference in docs/config.md all read this
table, so they cannot disagree. To add a key for your own code, add one `Key` entry below
(under `trainer` for training options) and read it with `config["trainer"]["your_key"]`.
"""

import difflib
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from utils.errors import InputError

REQUIRED = object()  # marks a key that has no default
OPTIONAL = object()  # marks a key that is checked when present and left out when absent


@dataclass(frozen=True)
class Key:
    """One config key. `check` returns an error text (what is expected) or None."""

    types: tuple[type, ...]
    doc: str
    default: Any = REQUIRED
    check: Callable[[Any], str | None] | None = None
    children: dict[str, "Key"] | None = field(default=None)
    # True for a class's `args`: keys not listed are passed to the class unchecked (its own
    # signature decides), listed ones are checked here.
    open: bool = False
    # True for a file or folder: `~` is expanded and a relative path made absolute (from the
    # current folder) here, so every reader (the data loader, the run directory, `-r latest`, error
    # messages) sees the same real path, and a run's config.json records where its files were:
    # resuming it, or evaluating its checkpoints, works from any folder.
    path: bool = False


def _at_least(minimum: float) -> Callable[[Any], str | None]:
    return lambda value: None if value >= minimum else f"must be >= {minimum}"


def _above(minimum: float) -> Callable[[Any], str | None]:
    return lambda value: None if value > minimum else f"must be > {minimum}"


def _check_split(value: float) -> str | None:
    if isinstance(value, int):
        return None if value >= 0 else "must be a count of samples >= 0 or a fraction in [0, 1)"
    return None if 0.0 <= value < 1.0 else "must be a fraction in [0, 1) or a count of samples >= 0"


def _one_of(*choices: Any) -> Callable[[Any], str | None]:
    return lambda value: None if value in choices else f"must be one of {', '.join(map(repr, choices))}"


def _check_monitor(value: str) -> str | None:
    parts = value.split()
    if parts == ["off"] or (len(parts) == 2 and parts[0] in ("min", "max")):
        return None
    return "must be 'off' or '<min|max> <metric>', e.g. 'min val_loss'"


def _is_function(value: Any) -> bool:
    """A function's name, or `{"type": name, "args": {...}}` for one with arguments."""
    if isinstance(value, str):
        return True
    return (isinstance(value, dict) and isinstance(value.get("type"), str) and set(value) <= {"type", "args"}
            and isinstance(value.get("args", {}), dict))


def _check_function(value: Any) -> str | None:
    return None if _is_function(value) else 'must be a name or {"type": name, "args": {...}}'


def _check_names(value: list) -> str | None:
    if all(_is_function(item) for item in value):
        return None
    return 'must be a list of names or {"type": name, "args": {...}} objects'


# TensorBoard support is the file logger/visualization.py: a project generated without it has
# no such file (and no tensorboard requirement) and accepts victoresque's key only to turn it off.
HAS_TENSORBOARD = (Path(__file__).resolve().parent / "logger" / "visualization.py").is_file()


def _tensorboard_key() -> Key:
    if HAS_TENSORBOARD:
        return Key((bool,), "write TensorBoard scalars into the run directory", default=True)
    return Key((bool,), "accepted for victoresque configs; this project has no TensorBoard, so only false",
               default=False, check=lambda value: "must be false (the project was generated without TensorBoard)"
               if value else None)


# MLflow tracking is the file logger/mlflow_tracker.py: a project generated without it has no such
# file (and no mlflow requirement), and no `trainer.mlflow` key.
HAS_MLFLOW = (Path(__file__).resolve().parent / "logger" / "mlflow_tracker.py").is_file()


def _mlflow_keys() -> dict[str, Key]:
    if not HAS_MLFLOW:
        return {}
    children = {
        "enabled": Key((bool,), "track the run in MLflow; false: no MLflow at all (not even its import)",
                       default=True),
        "tracking_uri": Key((str, type(None)), "the MLflow store: a server (`http://host:5000`) or a database URI; "
                            "null: `$MLFLOW_TRACKING_URI`, else the SQLite database `<save_dir>/mlflow.db`",
                            default=None, check=lambda value: None if value.strip() else "must not be empty"),
        "experiment": Key((str, type(None)), "the MLflow experiment of new runs; null: the config's `name`",
                          default=None, check=lambda value: None if 0 < len(value.strip()) <= 500
                          else "must be 1 to 500 characters"),
        "log_checkpoints": Key((bool,), "also upload `model_best.pth` to the MLflow run whenever it improves",
                               default=False),
    }
    default = {name: key.default for name, key in children.items()}
    return {"mlflow": Key((dict,), "MLflow tracking: every run is also an MLflow run, a mirror of its `metrics.csv` "
                          "(docs/tracking.md)", default=default, children=children)}


# The image_folder loader is the file data_loader/image_folder.py: only a project generated with it
# has the key of its image cache (a path, made absolute like the others).
HAS_IMAGE_FOLDER = (Path(__file__).resolve().parent / "data_loader" / "image_folder.py").is_file()


def _image_folder_keys() -> dict[str, Key]:
    if not HAS_IMAGE_FOLDER:
        return {}
    return {"cache_dir": Key((str, type(None)), "folder of the image_folder loader's cache of decoded images; null "
                             "decodes every image every epoch", default=OPTIONAL, path=True)}


def _object(doc: str, args: dict[str, Key] | None = None, types: tuple[type, ...] = (dict,),
            default: Any = REQUIRED, extra: dict[str, Key] | None = None) -> Key:
    """A `{"type": ..., "args": {...}}` block that names a class and its keyword arguments;
    `args` lists the arguments checked here (others go to the class as they are); `extra`
    adds keys of the block beside `type` and `args`."""
    return Key(
        types,
        doc,
        default,
        children={
            "type": Key((str,), "name of the class"),
            "args": Key((dict,), "keyword arguments for the class", default={}, children=args or {}, open=True),
            **(extra or {}),
        },
    )


SCHEMA: dict[str, Key] = {
    "name": Key((str,), "run name: runs are saved under `<save_dir>/<name>/<run_id>/`"),
    "n_gpu": Key(
        (int,), "GPUs to use; 0 trains on the CPU, more than exist warns and uses what exists",
        default=1, check=_at_least(0),
    ),
    "arch": _object("model class in `model/model.py` and its arguments"),
    "data_loader": _object("data loader class in `data_loader/` and its arguments", {
        "data_dir": Key((str,), "folder of the dataset", default=OPTIONAL, path=True),
        "batch_size": Key((int,), "samples per batch", default=OPTIONAL, check=_at_least(1)),
        "shuffle": Key((bool,), "reshuffle the training samples every epoch", default=OPTIONAL),
        "validation_split": Key((float,), "held out for validation: a fraction in [0, 1) or a number of samples",
                                default=OPTIONAL, check=_check_split),
        "num_workers": Key((int,), "worker processes loading batches; 0 loads in the training process",
                           default=OPTIONAL, check=_at_least(0)),
        **_image_folder_keys(),
    }),
    "optimizer": _object("optimizer class in `torch.optim` and its arguments (the model's parameters come first)", {
        "lr": Key((float,), "learning rate", default=OPTIONAL, check=_above(0)),
        "weight_decay": Key((float,), "weight decay", default=OPTIONAL, check=_at_least(0)),
    }),
    "loss": Key((str, dict), "loss function in `model/loss.py`: its name, or `{\"type\": name, \"args\": {...}}` "
                "(e.g. class weights)", check=_check_function),
    "metrics": Key(
        (list,), "metric functions in `model/metric.py`, logged for training and validation: names, or "
        "`{\"type\": name, \"args\": {...}}` (e.g. top-k's `k`)", default=[], check=_check_names,
    ),
    "lr_scheduler": _object(
        "scheduler class in `torch.optim.lr_scheduler` and its arguments; null for none",
        types=(dict, type(None)), default=None,
        extra={"interval": Key((str, type(None)), "step the scheduler once per `epoch` or once per optimizer "
                               "`step`; null: `step` for OneCycleLR and CyclicLR, `epoch` for the others",
                               default=None, check=_one_of("epoch", "step"))},
    ),
    "trainer": Key((dict,), "training loop options", children={
        "epochs": Key((int,), "number of epochs to train", check=_at_least(1)),
        "save_dir": Key((str,), "root folder of all runs", default="saved/", path=True),
        "save_period": Key((int,), "write `checkpoint-epoch<N>.pth` every this many epochs", default=1,
                           check=_at_least(1)),
        "keep_last": Key((int,), "keep only the newest this many `checkpoint-epoch<N>.pth` (`model_best.pth` "
                         "and `latest.pth` are always kept); 0 keeps them all", default=0, check=_at_least(0)),
        "verbosity": Key((int,), "0: warnings only, 1: info, 2: debug", default=2, check=_one_of(0, 1, 2)),
        "monitor": Key((str,), "`off`, or `min <metric>` / `max <metric>` (e.g. `min val_loss`): "
                       "decides `model_best.pth` and early stopping",
                       default="off", check=_check_monitor),
        "save_every_minutes": Key((int, float, type(None)), "also write `latest.pth` (with the position) inside "
                                  "an epoch when this many minutes passed since the last save; null: only at "
                                  "epoch ends", default=None, check=_above(0)),
        "save_every_steps": Key((int, type(None)), "also write `latest.pth` inside an epoch every this many "
                                "optimizer steps; null: only at epoch ends", default=None, check=_at_least(1)),
        "early_stop": Key((int,), "stop after this many epochs without improvement of the monitored "
                          "metric; 0 never stops early", default=0, check=_at_least(0)),
        "tensorboard": _tensorboard_key(),
        **_mlflow_keys(),
        "seed": Key((int, type(None)), "seed of every random number generator; null for an unseeded run",
                    default=123),
        "precision": Key((str,), "'fp32', 'bf16' (autocast on CPU and CUDA) or 'fp16' (CUDA only, "
                         "with a gradient scaler)", default="fp32", check=_one_of("fp32", "bf16", "fp16")),
        "accumulate_grad_batches": Key((int,), "step the optimizer every this many batches, on the mean of "
                                       "their gradients", default=1, check=_at_least(1)),
        "clip_grad_norm": Key((int, float, type(None)), "clip the gradient norm to this value; null for no "
                              "clipping", default=None, check=lambda v: None if v is None or v > 0 else "must be > 0"),
        "freeze_backbone_epochs": Key((int,), "train only the model's head for this many epochs at the start (the "
                                      "backbone's weights and BatchNorm statistics frozen), then every parameter; for "
                                      "a model with `head_parameters()` (TorchvisionClassifier: docs/backbones.md); 0: "
                                      "none frozen", default=0, check=_at_least(0)),
        "backbone_lr_factor": Key((float,), "the backbone's learning rate is the optimizer's `lr` times this (the "
                                  "head's is `lr`), for a model with `head_parameters()` (docs/backbones.md)",
                                  default=1.0, check=_above(0)),
        "compile": Key((bool,), "compile the model with `torch.compile` (needs a C++ compiler on the CPU, Triton on "
                       "a GPU); checkpoints are unchanged and load without it", default=False),
        "deterministic": Key((bool,), "deterministic algorithms and cuDNN settings, so that a resumed GPU run equals "
                             "a straight one bitwise (slower on GPUs; CPU runs are reproducible either way)",
                             default=False),
    }),
}

_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false",
               list: "a list", dict: "an object", type(None): "null"}


def _type_ok(value: Any, types: tuple[type, ...]) -> bool:
    if isinstance(value, bool):  # JSON true/false must not pass for a number
        return bool in types
    if isinstance(value, int) and float in types:
        return True
    return isinstance(value, types)


def _validate(config: dict[str, Any], schema: dict[str, Key], prefix: str, open_: bool = False) -> dict[str, Any]:
    for name in config:
        if name not in schema and not open_:
            hint = difflib.get_close_matches(name, list(schema), n=1)
            suggestion = f"; did you mean '{prefix}{hint[0]}'?" if hint else f"; valid keys: {', '.join(schema)}"
            raise InputError(f"config: unknown key '{prefix}{name}'{suggestion}")
    resolved: dict[str, Any] = {name: value for name, value in config.items() if name not in schema}
    for name, key in schema.items():
        path = prefix + name
        if name not in config:
            if key.default is OPTIONAL:
                continue
            if key.default is REQUIRED:
                raise InputError(f"config: missing required key '{path}' ({key.doc})")
            resolved[name] = _expand(key, _copy(key.default))
            continue
        value = config[name]
        if not _type_ok(value, key.types):
            expected = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in key.types)
            raise InputError(f"config: '{path}' must be {expected}, got {value!r}")
        problem = key.check(value) if key.check and value is not None else None
        if problem:
            raise InputError(f"config: '{path}' {problem}, got {value!r}")
        if key.children is not None and isinstance(value, dict):
            value = _validate(value, key.children, path + ".", key.open)
        resolved[name] = _expand(key, value)
    ordered = {name: resolved.pop(name) for name in config}  # keep the file's order, defaults last
    return {**ordered, **resolved}


def _expand(key: Key, value: Any) -> Any:
    return os.path.abspath(os.path.expanduser(value)) if key.path and isinstance(value, str) else value


def _refuse_non_finite(value: Any, path: str) -> None:
    """JSON files and `-o` overrides may spell NaN and Infinity, and no range check stops them
    (NaN compares false, Infinity passes `> 0`); refuse them anywhere, open `args` included."""
    if isinstance(value, float) and not math.isfinite(value):
        spelled = "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
        raise InputError(f"config: '{path}' is {spelled}; numbers must be finite")
    if isinstance(value, dict):
        for name, item in value.items():
            _refuse_non_finite(item, f"{path}.{name}" if path else str(name))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _refuse_non_finite(item, f"{path}[{index}]")


def _copy(value: Any) -> Any:
    return {k: _copy(v) for k, v in value.items()} if isinstance(value, dict) else (
        list(value) if isinstance(value, list) else value)


def validate(config: Any) -> dict[str, Any]:
    """Return the config with defaults filled in and paths absolute (`~` expanded), or raise
    InputError naming the first bad key (a NaN or Infinity anywhere is one)."""
    if not isinstance(config, dict):
        raise InputError(f"config: must be a JSON object, got {type(config).__name__}")
    _refuse_non_finite(config, "")
    return _validate(config, SCHEMA, "")


def normalized(config: dict[str, Any]) -> dict[str, Any]:
    """`config` validated, its defaults filled in, to compare key by key with a validated config
    (a checkpoint's saved config with the one a resume asks for); a config that this schema
    refuses (one saved by an older schema) as it is: what is there is compared."""
    try:
        return validate(config)
    except InputError:
        return config


def reference_table() -> str:
    """The Markdown table of every key, as docs/config.md shows it."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]

    def walk(schema: dict[str, Key], prefix: str) -> None:
        for name, key in schema.items():
            shown = [t for t in key.types if not (t is int and float in key.types)]  # "a number" covers int
            types = " or ".join(_TYPE_NAMES.get(t, t.__name__) for t in shown)
            doc = key.doc.replace("|", "\\|")  # a bare | would end the table cell
            if key.path:
                doc += "; `~` is your home folder; a relative path is from the current folder, recorded absolute"
            if key.default is REQUIRED:
                default = "required"
            elif key.default is OPTIONAL:
                default = "the class's"
            else:
                default = f"`{json.dumps(key.default)}`"
            rows.append(f"| `{prefix}{name}` | {types} | {default} | {doc} |")
            if key.children:
                walk(key.children, f"{prefix}{name}.")

    walk(SCHEMA, "")
    return "\n".join(rows)

