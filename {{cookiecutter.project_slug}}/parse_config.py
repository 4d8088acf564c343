"""The config of a run: read config.json, validate it, make the run directory, build the objects
its `{"type", "args"}` blocks name. (The command line is cli.py's.)"""

import functools
import importlib
import inspect
import json
import pkgutil
import re
import shutil
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any

from config_schema import normalized, validate
from engine.branch import check_resume_folder, is_older_than_its_run, make_branch_folder, start_branch
from engine.checkpoint import forget_read_checkpoint, load_checkpoint
from engine.resume import check_resumable, config_changes
from engine.run_files import check_writable, new_run_uid, recorded_run_uid, save_run_files
from engine.run_lock import RunLock
from utils.errors import DiskFull, InputError, did_you_mean
from utils.staged_files import full_disk_reported


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


def read_json(path: Path, what: str = "config") -> Any:
    """Parse a JSON file (UTF-8, a byte order mark allowed, or UTF-16/32 as JSON allows); a
    missing file, a file that is not JSON at all (YAML, say), bad JSON or a key given twice is an
    InputError naming the file (as `what`, e.g. `config 'config.json'`)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{what} '{path}': cannot read it ({exc.strerror or exc})") from None
    try:
        return json.loads(data, object_pairs_hook=unique_keys)  # bytes: json detects the encoding and skips a BOM
    except UnicodeDecodeError:
        raise InputError(f"{what} '{path}': not JSON text ({what}s are JSON files in UTF-8)") from None
    except json.JSONDecodeError as exc:
        if exc.doc.strip() and exc.pos == len(exc.doc) - len(exc.doc.lstrip()):  # fails at its first character
            begins = exc.doc.lstrip().splitlines()[0][:40]
            raise InputError(f"{what} '{path}': not JSON ({what}s are JSON files; this one begins with "
                             f"{begins!r})") from None
        raise InputError(f"{what} '{path}': invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except DuplicateKeyError as exc:
        raise InputError(f"{what} '{path}': key '{exc.key}' appears twice in one object") from None


class ConfigParser:
    """The validated config of one run, plus factories that build objects from its
    `{"type": ..., "args": ...}` blocks. Creating one touches no file: the run directory
    is made by `make_run_dir`, which only training calls."""

    def __init__(self, config: dict[str, Any], resume_path: Path | None = None, fine_tune: bool = False,
                 run_id: str | None = None, partial: bool = False, restart: bool = False) -> None:
        """`resume_path`: the checkpoint to resume from, or with `fine_tune` to start a new run
        from the weights of (the trainer reads it); with `partial` too, from those of its tensors
        whose names and shapes fit the model (e.g. all but a head for other classes); `run_id`:
        the new run folder's name; `restart`: a folder of that name that holds no checkpoint (its
        first start was killed before one was written) is started again, not refused
        (`--resume-or-start`)."""
        self.config = validate(config)
        self.resume_path = resume_path
        self.fine_tune = fine_tune
        self.partial = partial
        self.run_id = run_id
        self.restart = restart
        self.finished: str | None = None  # `--resume-or-start` of a run that has ended: why there is nothing to do
        self.run_dir: Path | None = None
        self.branched_from: Path | None = None  # the run folder a resume from an older checkpoint branched off
        self.took_in_run = False  # a resume made a folder that held no run the run's folder (engine/branch.py)
        self.run_uid: str | None = None  # the run's identity (engine/run_files.py), known once make_run_dir ran
        self.made_run_dir = False  # this process created the run folder
        self.run_lock: RunLock | None = None  # held from make_run_dir until release_run_dir

    def __getitem__(self, name: str) -> Any:
        return self.config[name]

    def changes_from(self, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Dotted key -> (value in `saved`, value here) for every key in which this config differs
        from `saved` (a checkpoint's config), defaults filled in on both sides; what a resume may
        change of them is engine/resume.py's to say."""
        return config_changes(normalized(saved), self.config)

    def check_resume(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, in one line and before anything is built or read, to resume `checkpoint` (the
        one at `resume_path`) with this config (engine/resume.py); the trainer checks again."""
        check_resumable(checkpoint, self.config, self.changes_from(checkpoint["config"]), self.resume_path)

    @property
    def resuming(self) -> bool:
        """True when training continues a run (as opposed to starting or fine-tuning one)."""
        return self.resume_path is not None and not self.fine_tune

    def make_run_dir(self) -> Path:
        """Claim the run directory (create it, or when resuming reuse it or branch from it),
        take its lock (engine/run_lock.py: one process at a time writes a run folder), and save
        the resolved config and this invocation's record (`run_info.json`) in it. Nothing in
        the folder is written before the lock is held, and a failure leaves the folders as they
        were. The path is absolute, so that every message names the folder the same way."""
        try:
            run_dir = self._claim_resumed_run_dir() if self.resuming else self._claim_new_run_dir()
            save_run_files(run_dir, self.config, resuming=self.resuming, run_uid=self.run_uid)
        except BaseException as exc:
            self._give_up_run_dir()
            if isinstance(exc, DiskFull):
                raise exc.resumable_from(str(self.resume_path.resolve()) if self.resuming else None) from None
            raise
        assert self.run_lock is not None
        self.run_lock.record()
        forget_read_checkpoint()  # the trainer restored from it before; nothing reads it after this
        self.run_dir = run_dir
        return run_dir

    def release_run_dir(self) -> None:
        """Give the run folder's lock back (training is over); the OS does it anyway when the
        process ends."""
        if self.run_lock is not None:
            self.run_lock.release()
            self.run_lock = None

    def _claim_new_run_dir(self) -> Path:
        """Create `<save_dir>/<name>/<run_id>` and lock it. Creating the folder is what claims a
        name: of two runs started in the same second, the second takes `<run_id>-1`; a name the
        user chose (--run-id) that exists is refused, unless it is to be started again."""
        base = Path(self.config["trainer"]["save_dir"]).resolve() / self.config["name"]
        run_id = self.run_id or datetime.now().strftime("%Y%m%d-%H%M%S")
        suffix = 0
        while True:
            run_dir = base / (f"{run_id}-{suffix}" if suffix else run_id)
            try:
                with full_disk_reported(run_dir):
                    run_dir.mkdir(parents=True)
            except FileExistsError:
                if self.restart:
                    return self._restart_in(run_dir)
                if self.run_id:
                    raise InputError(f"run directory '{run_dir}' already exists; choose another --run-id") from None
                suffix += 1
                continue
            except OSError as exc:
                raise InputError(f"run directory '{run_dir}': cannot create it ({exc.strerror or exc})") from None
            self._hold(RunLock.take(run_dir), made=True)
            self.run_uid = new_run_uid()
            return run_dir

    def _restart_in(self, run_dir: Path) -> Path:
        """Lock the existing `run_dir` to start its run again in it, if it holds no checkpoint."""
        check_writable(run_dir, resuming=False)
        self._hold(RunLock.take(run_dir), made=False)
        checkpoints = sorted(path.name for path in run_dir.glob("*.pth"))
        if "latest.pth" in checkpoints:  # written by a process that held the folder a moment ago
            raise InputError(f"run directory '{run_dir}' holds latest.pth now; run the same command again to resume it")
        if checkpoints:
            raise InputError(f"run directory '{run_dir}' holds {', '.join(checkpoints)} but no latest.pth; resume "
                             "from one of them with -r, or move the folder away to start the run again")
        self.run_uid = recorded_run_uid(run_dir) or new_run_uid()  # the same run, started again
        return run_dir

    def _claim_resumed_run_dir(self) -> Path:
        """The folder of the checkpoint, locked, when the checkpoint is its run's newest state
        (or the folder holds no run yet); else a new branch beside it (engine/branch.py), locked,
        filled, and the run's folder untouched. Which one is decided with the run's lock held,
        when this process can have it. A checkpoint of another run than the folder's is refused."""
        assert self.resume_path is not None
        checkpoint = load_checkpoint(self.resume_path)  # already read by the trainer: not read again
        check_resume_folder(self.resume_path, checkpoint)  # before the lock, whose file it would leave alone
        source = self.resume_path.resolve().parent
        lock: RunLock | None = None
        refused: InputError | None = None
        try:
            check_writable(source, resuming=True)
            lock = RunLock.take(source)
        except InputError as exc:  # in use, or read-only: fine for a branch, which leaves the run alone
            refused = exc
        self._hold(lock, made=False)
        empty = check_resume_folder(self.resume_path, checkpoint)  # again, with the lock: now nothing changes it
        if not is_older_than_its_run(self.resume_path, checkpoint):
            if refused is not None:
                raise refused
            self.took_in_run = empty
            self.run_uid = checkpoint["run_uid"] or recorded_run_uid(source) or new_run_uid()
            return source
        self._give_up_run_dir()  # the run's folder stays exactly as it was
        branch = make_branch_folder(source, checkpoint["epoch"])
        self._hold(RunLock.take(branch), made=True)
        self.branched_from = source
        self.run_uid = new_run_uid()  # a branch is a run of its own
        start_branch(self.resume_path, checkpoint, branch, self.run_uid)
        return branch

    def _hold(self, lock: RunLock | None, made: bool) -> None:
        self.run_lock, self.made_run_dir = lock, made

    def _give_up_run_dir(self) -> None:
        """Undo a claim that failed: remove the folder this process created, or the lock file
        it created in an existing one, and give the lock back."""
        lock, self.run_lock = self.run_lock, None
        if lock is None:
            return
        if self.made_run_dir:
            shutil.rmtree(lock.folder, ignore_errors=True)
        lock.release(undo=True)
        self.made_run_dir = False

    def init_obj(self, name: str, module: ModuleType, base: type | tuple[type, ...], *args: Any, **kwargs: Any) -> Any:
        """Build the object that config block `name` describes, looking its class up in
        `module` only (a subclass of `base`), with the block's `args` plus `kwargs`."""
        block = self.config[name]
        cls = lookup(module, block["type"], f"{name}.type", base)
        arguments = {**block["args"], **kwargs}
        try:
            inspect.signature(cls).bind(*args, **arguments)
        except TypeError as exc:
            unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
            hint = did_you_mean(unknown.group(1), list(inspect.signature(cls).parameters)) if unknown else ""
            if unknown and not hint:  # e.g. arguments of the class the config named before -o NAME.type=...
                hint = "; -o '" + name + ".args={...}' gives the arguments whole, replacing the config's"
            raise InputError(f"config: '{name}.args' do not fit {block['type']}: {exc}{hint}") from None
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
                         + did_you_mean(name, valid) + (f"; {where}" if where else ""))
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
