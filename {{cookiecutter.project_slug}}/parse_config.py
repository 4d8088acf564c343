"""The config of a run: read config.json, validate it, make the run directory, build the objects
its `{"type", "args"}` blocks name. (The command line is cli.py's.)"""

import functools
import inspect
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from config_schema import validate
from utils.branch import branch_folder, is_older_than_its_run, start_branch
from utils.checkpoint import load_checkpoint
from utils.errors import InputError
from utils.run_files import save_run_files


class DuplicateKeyError(Exception):
    """A JSON object names `key` twice."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """`object_pairs_hook` for json: plain json keeps the last of two equal keys without a word,
    so an edit further up the file would silently do nothing."""
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKeyError(key)
        seen[key] = value
    return seen


def read_json(path: Path) -> Any:
    """Parse a JSON file; a missing file, bad JSON or a key given twice is an InputError naming
    the file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(f"config '{path}': cannot read it ({exc.strerror or exc})") from None
    try:
        return json.loads(text, object_pairs_hook=unique_keys)
    except json.JSONDecodeError as exc:
        raise InputError(f"config '{path}': invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except DuplicateKeyError as exc:
        raise InputError(f"config '{path}': key '{exc.key}' appears twice in one object") from None


class ConfigParser:
    """The validated config of one run, plus factories that build objects from its
    `{"type": ..., "args": ...}` blocks. Creating one touches no file: the run directory
    is made by `make_run_dir`, which only training calls."""

    def __init__(self, config: dict[str, Any], resume_path: Path | None = None, fine_tune: bool = False,
                 run_id: str | None = None) -> None:
        """`resume_path`: the checkpoint to resume from, or with `fine_tune` to start a new run
        from the weights of (the trainer reads it); `run_id`: the new run folder's name."""
        self.config = validate(config)
        self.resume_path = resume_path
        self.fine_tune = fine_tune
        self.run_id = run_id
        self.run_dir: Path | None = None
        self.branched_from: Path | None = None  # the run folder a resume from an older checkpoint branched off

    def __getitem__(self, name: str) -> Any:
        return self.config[name]

    @property
    def resuming(self) -> bool:
        """True when training continues a run (as opposed to starting or fine-tuning one)."""
        return self.resume_path is not None and not self.fine_tune

    def make_run_dir(self) -> Path:
        """Create (or, when resuming, reuse) the run directory and save the resolved config and
        this invocation's record (`run_info.json`) in it."""
        if self.resuming:
            assert self.resume_path is not None
            checkpoint = load_checkpoint(self.resume_path)  # already read by the trainer: not read again
            run_dir = self.resume_path.resolve().parent
            if is_older_than_its_run(self.resume_path, checkpoint):
                run_dir = branch_folder(run_dir, checkpoint["epoch"])
                self.branched_from = self.resume_path.resolve().parent
                start_branch(self.resume_path, checkpoint, run_dir)
        else:
            base = Path(self.config["trainer"]["save_dir"]) / self.config["name"]
            run_id = self.run_id or datetime.now().strftime("%Y%m%d-%H%M%S")
            run_dir = base / run_id
            if self.run_id and run_dir.exists():
                raise InputError(f"run directory '{run_dir}' already exists; choose another --run-id")
            suffix = 1
            while run_dir.exists():  # two runs started in the same second
                run_dir = base / f"{run_id}-{suffix}"
                suffix += 1
        try:
            run_dir.mkdir(parents=True, exist_ok=self.resuming)
        except OSError as exc:
            raise InputError(f"run directory '{run_dir}': cannot create it ({exc.strerror or exc})") from None
        save_run_files(run_dir, self.config, made=not self.resuming)
        self.run_dir = run_dir
        return run_dir

    def init_obj(self, name: str, module: ModuleType, base: type | tuple[type, ...], *args: Any, **kwargs: Any) -> Any:
        """Build the object that config block `name` describes, looking its class up in
        `module` only (a subclass of `base`), with the block's `args` plus `kwargs`."""
        block = self.config[name]
        cls = lookup(module, block["type"], f"{name}.type", base)
        arguments = {**block["args"], **kwargs}
        try:
            inspect.signature(cls).bind(*args, **arguments)
        except TypeError as exc:
            raise InputError(f"config: '{name}.args' do not fit {block['type']}: {exc}") from None
        except ValueError:  # no inspectable signature: let the call itself check
            pass
        try:
            return cls(*args, **arguments)
        except (ValueError, TypeError) as exc:
            if not cls.__module__.startswith("torch."):
                raise  # a bug in the project's own class: its traceback is what helps
            raise InputError(f"config: '{name}.args' rejected by {block['type']}: {exc}") from None

    def init_ftn(self, name: str, module: ModuleType) -> Any:
        """The function config key `name` names (each one, for a list): a name, or
        `{"type": name, "args": {...}}`, whose args are bound to the function."""
        value = self.config[name]
        if isinstance(value, list):
            return [function(module, item, f"{name}[{i}]") for i, item in enumerate(value)]
        return function(module, value, name)


def function(module: ModuleType, spec: str | dict[str, Any], key: str) -> Callable[..., Any]:
    """The function of `module` that `spec` names, with the spec's `args` bound. Its `__name__`
    (the metric's column in metrics.csv) is the function's name, followed by the arguments
    when there are any: `top_k_acc_k5` for `{"type": "top_k_acc", "args": {"k": 5}}`."""
    if isinstance(spec, str):
        return lookup(module, spec, key)
    fn = lookup(module, spec["type"], f"{key}.type")
    args = spec.get("args", {})
    if not args:
        return fn
    try:
        inspect.signature(fn).bind_partial(None, None, **args)
    except TypeError as exc:
        raise InputError(f"config: '{key}.args' do not fit {spec['type']}: {exc}") from None
    bound = functools.partial(fn, **args)
    bound.__name__ = "_".join([spec["type"], *(f"{arg}{value}" for arg, value in args.items())])  # type: ignore[attr-defined]
    return bound


def lookup(module: ModuleType, name: str, key: str, base: type | tuple[type, ...] | None = None) -> Any:
    """Public attribute `name` of `module` that is a concrete subclass of `base` (or, without
    `base`, a function). Nothing is imported or evaluated: an unknown name lists the valid ones."""
    bases = base if isinstance(base, tuple) else (base,)

    def fits(value: Any) -> bool:
        if base is None:
            return inspect.isroutine(value)
        return (inspect.isclass(value) and issubclass(value, base)
                and value not in bases and not inspect.isabstract(value))

    value = getattr(module, name, None) if not name.startswith("_") else None
    if value is None or not fits(value):
        valid = sorted(n for n in dir(module) if not n.startswith("_") and fits(getattr(module, n)))
        raise InputError(f"config: '{key}' is '{name}', not one of {module.__name__}: {', '.join(valid)}")
    return value
