"""ConfigParser: read config.json, validate it, apply command-line overrides, build objects."""

import argparse
import copy
import importlib
import inspect
import json
import os
import pkgutil
import re
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn

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


LATEST = "latest"  # `-r latest`: the newest run of the config


def newest_run_checkpoint(config_path: Path) -> Path:
    """`latest.pth` of the newest run (by that file's modification time) under the config's
    `<save_dir>/<name>/`."""
    config = validate(read_json(config_path))
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


class ConfigParser:
    """The validated config of one run, plus factories that build objects from its
    `{"type": ..., "args": ...}` blocks. Creating one touches no file: the run directory
    is made by `make_run_dir`, which only training calls."""

    def __init__(
        self,
        config: dict[str, Any],
        checkpoint: dict[str, Any] | None = None,
        resume_path: Path | None = None,
        fine_tune: bool = False,
        run_id: str | None = None,
    ) -> None:
        self.config = validate(config)
        self.checkpoint = checkpoint
        self.resume_path = resume_path
        self.fine_tune = fine_tune  # -c with -r: start a new run from the checkpoint's weights
        self.run_id = run_id
        self.run_dir: Path | None = None
        self.branched_from: Path | None = None  # the run folder a resume from an older checkpoint branched off

    @classmethod
    def from_args(cls, args: argparse.Namespace, shortcuts: dict[str, str] | None = None) -> "ConfigParser":
        """Build from parsed CLI arguments. `shortcuts` maps an attribute of `args`
        (e.g. `lr`) to the dotted config key it sets (e.g. `optimizer.args.lr`)."""
        if args.device is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = args.device
        checkpoint = None
        resume_path = Path(args.resume) if args.resume else None
        resume_latest = args.resume == LATEST
        if resume_latest:
            resume_path = newest_run_checkpoint(Path(args.config or "config.json"))
        if resume_path is not None:
            checkpoint = load_checkpoint(resume_path)
        if args.config and not resume_latest:
            config = read_json(Path(args.config))
        elif checkpoint is not None:
            config = copy.deepcopy(checkpoint["config"])  # overrides must not rewrite the checkpoint's record
        else:
            raise InputError("no config: give a config file with -c or a checkpoint with -r")
        if not isinstance(config, dict):
            raise InputError(f"config '{args.config}': must be a JSON object")
        overrides = list(args.override)
        for attribute, key in (shortcuts or {}).items():
            value = getattr(args, attribute, None)
            if value is not None:
                overrides.append(f"{key}={value}")
        for override in overrides:
            apply_override(config, override)
        return cls(
            config,
            checkpoint=checkpoint,
            resume_path=resume_path,
            fine_tune=bool(args.config and resume_path and not resume_latest),
            run_id=getattr(args, "run_id", None),
        )

    def __getitem__(self, name: str) -> Any:
        return self.config[name]

    @property
    def resuming(self) -> bool:
        """True when training continues a run (as opposed to starting or fine-tuning one)."""
        return self.checkpoint is not None and not self.fine_tune

    def make_run_dir(self) -> Path:
        """Create (or, when resuming, reuse) the run directory and save the resolved config and
        this invocation's record (`run_info.json`) in it."""
        if self.resuming:
            assert self.resume_path is not None and self.checkpoint is not None
            run_dir = self.resume_path.resolve().parent
            if is_older_than_its_run(self.resume_path, self.checkpoint):
                run_dir = branch_folder(run_dir, self.checkpoint["epoch"])
                self.branched_from = self.resume_path.resolve().parent
                start_branch(self.resume_path, self.checkpoint, run_dir)
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
        """The function named by config key `name` (a string, or each string of a list)."""
        value = self.config[name]
        if isinstance(value, list):
            return [lookup(module, item, f"{name}[{i}]") for i, item in enumerate(value)]
        return lookup(module, value, name)


# Where a name that config.json gives must be defined, said when the name is not found there.
WHERE_NAMES_LIVE = {
    "data_loader": "a data loader class must subclass BaseDataLoader in a .py file of data_loader/",
    "model.model": "a model class must subclass BaseModel (or nn.Module) in model/model.py",
    "model.loss": "a loss must be a function f(output, target) in model/loss.py",
    "model.metric": "a metric must be a function f(output, target) in model/metric.py",
}
PROJECT_ROOT = Path(__file__).resolve().parent


def lookup(module: ModuleType, name: str, key: str, base: type | tuple[type, ...] | None = None) -> Any:
    """Public attribute `name` of `module` that is a concrete subclass of `base` (or, without
    `base`, a function). `name` is never imported or evaluated: an unknown one lists the valid
    names and says where such a name must be defined.

    A package of this project (data_loader) is searched module by module: a class defined in
    any .py file of its folder is found without being exported from its __init__.py. Those
    modules are imported here, so an error in one surfaces with its own traceback; a name
    defined in two of them is refused, naming both files.
    """
    bases = base if isinstance(base, tuple) else (base,)

    def fits(value: Any) -> bool:
        if base is None:
            return inspect.isroutine(value)
        return (inspect.isclass(value) and issubclass(value, base)
                and value not in bases and not inspect.isabstract(value))

    modules = package_modules(module)
    found = [] if name.startswith("_") else definitions(modules, name, fits)
    if not found:
        names = {n for m in modules for n in dir(m) if not n.startswith("_")}
        valid = sorted(n for n in names if definitions(modules, n, fits))
        where = WHERE_NAMES_LIVE.get(module.__name__)
        raise InputError(f"config: '{key}' is '{name}', not one of {module.__name__}: {', '.join(valid)}"
                         + (f"; {where}" if where else ""))
    if len(found) > 1:
        first, second = (source_file(value) for value in found[:2])
        raise InputError(f"config: '{key}' is '{name}', which is defined in both {first} and {second}; "
                         "rename one of them")
    return found[0]


def package_modules(module: ModuleType) -> list[ModuleType]:
    """`module`, and when it is a package of this project, every module in its folder, imported."""
    path = getattr(module, "__path__", None)
    if path is None or not Path(module.__file__ or "").resolve().is_relative_to(PROJECT_ROOT):
        return [module]  # a module, or a library's package (torch.optim): its own names only
    names = sorted(info.name for info in pkgutil.iter_modules(path))
    return [module, *(importlib.import_module(f"{module.__name__}.{name}") for name in names)]


def definitions(modules: list[ModuleType], name: str, fits: Callable[[Any], bool]) -> list[Any]:
    """The distinct values called `name` in `modules` that fit. The first module offers all its
    names (what a package exports); the others only what they define, not what they import."""
    found: list[Any] = []
    for module in modules:
        value = getattr(module, name, None)
        offered = module is modules[0] or getattr(value, "__module__", None) == module.__name__
        if value is not None and offered and fits(value) and all(value is not other for other in found):
            found.append(value)
    return found


def source_file(value: Any) -> str:
    """The file that defines `value`, relative to the project folder where it is inside it."""
    file = Path(inspect.getsourcefile(value) or "?").resolve()
    return str(file.relative_to(PROJECT_ROOT)) if file.is_relative_to(PROJECT_ROOT) else str(file)
