"""The one owner of checkpoint files: what goes in them, how they are written and read back."""

import io
import re
import shlex
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import distributed
from utils.errors import InputError, listed
from utils.seed import rng_state, seed_everything, set_rng_state
from utils.staged_files import StagedFiles

# Bump when the layout of the dict changes (and teach `upgrade` the step); a checkpoint newer
# than this is refused. 1: weights and epoch-level state; 2: the position inside an epoch, RNGs;
# 3: the class list of image folders, every DDP rank's running metrics, no tensorboard_step;
# 4: the number of processes that trained, and the position inside an epoch in samples;
# 5: the data loader's evaluation `preprocessing` (and its `classes` for any loader that has them);
# 6: `run_uid`, the identity of the run that wrote it (engine/run_files.py).
FORMAT_VERSION = 6
REQUIRED_KEYS = ("format_version", "arch", "epoch", "state_dict", "config")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under DataParallel, DistributedDataParallel and torch.compile wrappers,
    so that saved state_dict keys carry no `module.` or `_orig_mod.` prefix."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


class CheckpointSaver:
    """Writes `checkpoint-epoch<N>.pth` every `save_period` epochs (keeping only the newest
    `keep_last` of them unless it is 0), `model_best.pth` whenever the monitored metric
    improved and `latest.pth` after every epoch and on interruption."""

    def __init__(self, run_dir: Path, save_period: int, keep_last: int = 0) -> None:
        self.run_dir = run_dir
        self.save_period = save_period
        self.keep_last = keep_last
        for stale in run_dir.glob(".*.tmp"):  # staged by a process killed while saving (this one owns the folder now)
            stale.unlink(missing_ok=True)

    def save(self, state: dict[str, Any], epoch: int, is_best: bool,
             row_files: dict[Path, bytes] | None = None) -> list[Path]:
        """Write `state` to every file due this epoch, with `row_files` (the epoch's metrics.csv,
        path -> content); returns the checkpoint paths. Every file is staged before any replaces
        its old version, so a full disk changes none of them (DiskFull). They are renamed in
        place row files first and `latest.pth` last, so that a kill between the renames never
        leaves a latest.pth ahead of metrics.csv, or one that claims a best value whose
        model_best.pth was not written."""
        names = []
        if is_best:
            names.append("model_best.pth")
        if epoch % self.save_period == 0:
            names.append(f"checkpoint-epoch{epoch}.pth")
        names.append("latest.pth")
        paths = self._write(state, names, row_files or {})
        self._drop_old_periodic()
        return paths

    def save_latest(self, state: dict[str, Any]) -> Path:
        """Write `latest.pth` only (an interruption in the middle of an epoch)."""
        return self._write(state, ["latest.pth"], {})[0]

    def _write(self, state: dict[str, Any], names: list[str], row_files: dict[Path, bytes]) -> list[Path]:
        """Serialise `state` once and write it, with `row_files`, to each of `names` in the run directory."""
        paths = [self.run_dir / name for name in names]
        with StagedFiles() as files:
            for path, content in row_files.items():
                files.add(content, path)
            files.add(_serialised(state), *paths)
            files.commit()
        return paths

    def _drop_old_periodic(self) -> None:
        if self.keep_last <= 0:
            return
        periodic = sorted(self.run_dir.glob("checkpoint-epoch*.pth"), key=_epoch_of)
        for old in periodic[: -self.keep_last]:
            old.unlink(missing_ok=True)


def write_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write the checkpoint dict `state` to `path` whole (temp file, flush, rename); a full disk
    is a DiskFull and leaves `path` as it was."""
    with StagedFiles() as files:
        files.add(_serialised(state), path)
        files.commit()


def _serialised(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _epoch_of(path: Path) -> int:
    digits = path.stem.removeprefix("checkpoint-epoch")
    return int(digits) if digits.isdigit() else -1


_last_read: tuple[tuple[str, int, int], dict[str, Any]] | None = None  # (file identity, its checkpoint)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read and check a checkpoint (upgraded to the current layout); any problem with the file
    is an InputError naming it. The last file read is kept, so that the command line (which
    needs its config) and the trainer (which restores it) read it from disk once."""
    global _last_read
    identity = _identity(path)
    if _last_read is not None and identity is not None and _last_read[0] == identity:
        return _last_read[1]
    checkpoint = upgrade(_read(path))
    if identity is not None:
        _last_read = (identity, checkpoint)
    return checkpoint


def forget_read_checkpoint() -> None:
    """Drop the kept checkpoint once its last reader is done, so that a run does not hold a copy
    of the model and optimizer state for its whole length."""
    global _last_read
    _last_read = None


def _identity(path: Path) -> tuple[str, int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return str(path.resolve()), info.st_mtime_ns, info.st_size


def run_uid_of(path: Path) -> str | None:
    """The `run_uid` of the checkpoint at `path`, read without reading its tensors (they are
    memory-mapped, not loaded); None for a checkpoint older than format 6, and for a file that
    cannot be read as a checkpoint."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001  (torch raises many types for a damaged or foreign file: no identity)
        return None
    uid = checkpoint.get("run_uid") if isinstance(checkpoint, dict) else None
    return uid if isinstance(uid, str) else None


CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".tar", ".bin")  # what a checkpoint file may be named


def _read(path: Path) -> dict[str, Any]:
    if path.is_dir():
        latest = path / "latest.pth"
        hint = f"; did you mean {latest}?" if latest.is_file() else ""  # a run folder: its newest state
        raise InputError(f"checkpoint '{path}': a folder, not a checkpoint file{hint}")
    if not path.is_file():
        raise InputError(f"checkpoint '{path}': no such file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        latest = path.parent / "latest.pth"
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES and latest.is_file():  # another file of a run folder
            raise InputError(f"checkpoint '{path}': {path.name} is not a checkpoint; did you mean {latest}?") from None
        raise InputError(_unreadable(path, exc)) from None
    if not isinstance(checkpoint, dict) or "format_version" not in checkpoint:
        raise InputError(f"checkpoint '{path}': not a checkpoint of this project (no format_version)")
    version = checkpoint["format_version"]
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(
            f"checkpoint '{path}': format_version {version!r} is newer than this code reads "
            f"({FORMAT_VERSION}); update the project"
        )
    missing = [key for key in REQUIRED_KEYS if key not in checkpoint]
    if missing:
        raise InputError(f"checkpoint '{path}': missing {', '.join(missing)}")
    return checkpoint


def upgrade(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint in the current layout: every format change is undone here, in one place,
    so that no reader needs to know older layouts."""
    upgraded = dict(checkpoint)
    if upgraded["format_version"] < 2:  # saved at epoch ends only, without RNG or position
        upgraded.update(batches_done=0, epoch_metrics=None, global_step=0, data_loader_seed=None)
        for key, default in (("monitor_best", None), ("not_improved_count", 0), ("optimizer", None),
                             ("lr_scheduler", None), ("scaler", None), ("rng", None)):
            upgraded.setdefault(key, default)
    if upgraded["format_version"] < 3:
        upgraded.pop("tensorboard_step", None)  # written, never read
        upgraded.setdefault("classes", None)
        upgraded.setdefault("rng_per_rank", None)
    if upgraded["format_version"] < 4:
        upgraded["world_size"] = len(upgraded["rng_per_rank"] or [None])
        upgraded["samples_done"] = _samples_done(upgraded)
    if upgraded["format_version"] < 5:
        upgraded["preprocessing"] = _preprocessing_before_5(upgraded["config"])
    if upgraded["format_version"] < 6:
        upgraded["run_uid"] = None  # unknown: a resume judges it by its position alone, as before format 6
    upgraded.setdefault("epoch_lr", None)  # an optional key of format 6: unknown, the epoch's row takes the lr now
    upgraded["format_version"] = FORMAT_VERSION
    return upgraded


def _samples_done(checkpoint: dict[str, Any]) -> int | None:
    """The samples of the epoch's order trained, for a checkpoint that counted only batches:
    before format 4 an epoch always ran on one number of processes, each rank taking every
    `world_size`-th sample of the order, so `batches_done` batches of each rank covered its first
    `world_size x batches_done x batch_size` samples (more than the epoch has once it is over:
    the data loader caps it). None when the config names no batch size."""
    if not checkpoint["batches_done"]:
        return 0
    try:
        batch_size = checkpoint["config"]["data_loader"]["args"]["batch_size"]
    except (KeyError, TypeError):
        return None
    return checkpoint["world_size"] * checkpoint["batches_done"] * batch_size if isinstance(batch_size, int) else None


def _preprocessing_before_5(config: Any) -> dict[str, Any] | None:
    """The evaluation preprocessing of a checkpoint saved before format 5 recorded it: what the
    template's own two loaders did then (MNIST: grey 28x28 digits normalised by MNIST's mean and
    std; image folders: RGB squares of `image_size`, mean and std 0.5), by the config's
    `data_loader`; None for any other loader, which predict.py and export.py then refuse."""
    try:
        loader, args = config["data_loader"]["type"], config["data_loader"].get("args", {})
    except (KeyError, TypeError, AttributeError):
        return None
    square = {"resize": "stretch", "crop_size": None, "interpolation": "bilinear"}
    if loader == "MnistDataLoader":
        return {"channels": 1, "resize_size": 28, "mean": [0.1307], "std": [0.3081], **square}
    if loader == "ImageFolderDataLoader" and isinstance(args, dict):
        return {"channels": 3, "resize_size": args.get("image_size", 32), "mean": [0.5] * 3, "std": [0.5] * 3, **square}
    return None


@dataclass
class Progress:
    """Where a run is: `epoch` epochs finished and `batches_done` batches of the next one trained
    by each process (with `epoch_metrics`, their running sums), which are its first
    `samples_done` samples (None where the data loader cannot tell), `global_step` optimizer
    steps in all, and the monitored metric's best value and epochs without improvement.
    Inside an epoch, `epoch_lr` is the learning rate it began with (a per-step scheduler has
    changed it since): the rate its row records."""

    epoch: int = 0
    batches_done: int = 0
    samples_done: int | None = 0
    global_step: int = 0
    monitor_best: float | None = None
    not_improved_count: int = 0
    epoch_metrics: dict[str, Any] | None = None
    epoch_lr: float | None = None  # inside an epoch: the learning rate it began with, its row's `lr`


def training_state(progress: Progress, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
                   scaler: Any, config: dict[str, Any], loader: Any = None,
                   run_uid: str | None = None) -> dict[str, Any]:
    """Everything the next batch depends on, as plain data (loads with weights_only=True): the
    checkpoint dict. Under DDP every rank's RNG state is gathered into `rng_per_rank`;
    `world_size` is the number of processes that trained; `run_uid` names the run."""
    rng = rng_state()
    return {
        "format_version": FORMAT_VERSION,
        "arch": type(unwrap_model(model)).__name__,
        **asdict(progress),
        "state_dict": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict(),
        "lr_scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng,
        "rng_per_rank": distributed.gather(rng) if distributed.active() else None,
        "world_size": distributed.world_size(),
        "data_loader_seed": getattr(loader, "seed", None),
        "classes": getattr(loader, "classes", None),  # class names in label order: test.py and predict.py use them
        "preprocessing": loader.preprocessing() if hasattr(loader, "preprocessing") else None,  # for predict/export
        "config": config,
        "run_uid": run_uid,  # which run wrote it: a resume in place must be of the folder's own run
    }


def restore_training_state(checkpoint: dict[str, Any], optimizer: torch.optim.Optimizer, scheduler: Any,
                           scaler: Any, loader: Any = None) -> Progress:
    """Put the optimizer, scheduler, scaler, data order and random number generators back as
    the checkpoint has them (weights: `load_weights`); returns the run's progress. Each DDP rank
    takes the random state its rank saved; on more processes than saved, the new ranks get
    states of their own, derived from rank 0's."""
    if checkpoint["optimizer"] is not None:
        optimizer.load_state_dict(checkpoint["optimizer"])
    if scheduler is not None and checkpoint["lr_scheduler"] is not None:
        scheduler.load_state_dict(checkpoint["lr_scheduler"])
    if scaler is not None and checkpoint["scaler"] is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    if hasattr(loader, "seed") and checkpoint["data_loader_seed"] is not None:
        loader.seed = checkpoint["data_loader_seed"]
    states = checkpoint["rng_per_rank"] or ([checkpoint["rng"]] if checkpoint["rng"] is not None else [])
    if distributed.rank() < len(states):
        set_rng_state(states[distributed.rank()])
    elif states:  # a rank the saved run did not have: random numbers of its own, drawn from rank 0's
        set_rng_state(states[0])
        seed_everything(int(torch.randint(0, 2**31, (1,))) + distributed.rank())  # numpy: < 2**32
    return Progress(**{field.name: checkpoint[field.name] for field in fields(Progress)})


# victoresque/pytorch-template's trainer pickles its `parse_config.ConfigParser` object into
# every checkpoint; weights_only loading stops at that class.
_VICTORESQUE_CONFIG = "parse_config.ConfigParser"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # torch's messages bold words with terminal codes
_UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def _unreadable(path: Path, exc: Exception) -> str:
    """One plain line saying why torch.load(weights_only=True) refused the file."""
    message = _ANSI_ESCAPE.sub("", str(exc))
    pickled = _UNSAFE_GLOBAL.search(message)
    if pickled and pickled.group(1) == _VICTORESQUE_CONFIG:
        command = f"python convert_checkpoint.py {shlex.quote(str(path))} OUT.pth --trust-pickle"
        return (f"checkpoint '{path}': saved by victoresque/pytorch-template (it pickles its config object), "
                f"which is not loaded for safety; convert it with: {command}")
    if pickled:
        return (f"checkpoint '{path}': not a readable checkpoint (it pickles the Python object "
                f"{pickled.group(1)}, which is not loaded for safety)")
    # After a weights-only refusal torch's first lines are advice; the unpickler's own reason follows this.
    message = message.partition("WeightsUnpickler error:")[2] or message
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    reason = " ".join(lines[0].split()) if lines else type(exc).__name__
    if _DAMAGED_ZIP in reason:  # torch's next sentences only say so at length
        damaged = "the file is cut short or damaged"
        return f"checkpoint '{path}': not a readable checkpoint: {damaged} ({_sentences(reason, 1)})"
    return f"checkpoint '{path}': not a readable checkpoint ({_sentences(reason)})"


_DAMAGED_ZIP = "failed reading zip archive"  # torch's words for a checkpoint file cut short or damaged
_REASON_LIMIT = 200  # characters of torch's reason kept in the one-line message


def _sentences(text: str, most: int | None = None) -> str:
    """The first sentences of `text` (at most `most`) that fit in _REASON_LIMIT characters, so
    that a message is never cut mid-sentence (a first sentence longer than that is cut at a word,
    with '...'); without the last sentence's full stop, as the message's parentheses close it."""
    sentences = re.split(r"(?<=[.!?])\s+", text.strip())[:most]
    kept = sentences[0]
    for sentence in sentences[1:]:
        if len(kept) + 1 + len(sentence) > _REASON_LIMIT:
            break
        kept += " " + sentence
    if len(kept) > _REASON_LIMIT:
        return kept[:_REASON_LIMIT].rsplit(" ", 1)[0] + " ..."
    return kept.removesuffix(".")


Shape = tuple[int, ...]


@dataclass
class WeightsFit:
    """How a checkpoint's tensors meet a model's, by name and shape."""

    matching: list[str]  # same name, same shape: what a partial load takes
    reshaped: list[tuple[str, Shape, Shape]]  # (name, the checkpoint's shape, the model's)
    only_in_checkpoint: list[str]
    only_in_model: list[str]

    @property
    def exact(self) -> bool:
        return not (self.reshaped or self.only_in_checkpoint or self.only_in_model)

    @property
    def in_checkpoint(self) -> int:
        return len(self.matching) + len(self.reshaped) + len(self.only_in_checkpoint)

    @property
    def in_model(self) -> int:
        return len(self.matching) + len(self.reshaped) + len(self.only_in_model)

    def difference(self, limit: int | None = None) -> str:
        """What does not match, by kind, counted, each kind naming its first `limit` tensors (all
        with None), e.g. `2 tensors differ in shape (checkpoint -> model): fc2.weight (10, 50) ->
        (12, 50), fc2.bias (10,) -> (12,)`."""
        reshaped = [f"{name} {old} -> {new}" for name, old, new in self.reshaped]
        kinds = [(reshaped, "tensor differs", "tensors differ", " in shape (checkpoint -> model)"),
                 (self.only_in_checkpoint, "tensor is", "tensors are", " in the checkpoint only"),
                 (self.only_in_model, "tensor is", "tensors are", " in the model only")]
        return "; ".join(f"{len(items)} {one if len(items) == 1 else many}{where}: {listed(items, limit)}"
                         for items, one, many, where in kinds if items)


def weights_fit(model: nn.Module, state_dict: dict[str, Any]) -> WeightsFit:
    """Compare `state_dict` (prefixes stripped) with the model's own, tensor by tensor."""
    own = unwrap_model(model).state_dict()
    matching, reshaped = [], []
    for name, value in state_dict.items():
        if name in own:
            saved, wanted = tuple(getattr(value, "shape", ())), tuple(own[name].shape)
            if saved == wanted:
                matching.append(name)
            else:
                reshaped.append((name, saved, wanted))
    return WeightsFit(matching, reshaped, [name for name in state_dict if name not in own],
                      [name for name in own if name not in state_dict])


class WeightsMismatch(InputError):
    """The checkpoint's weights are not the model's (another arch, or tensors that do not fit);
    `fit` says which tensors would fit a partial load."""

    def __init__(self, message: str, fit: WeightsFit) -> None:
        super().__init__(message)
        self.fit = fit


def load_weights(model: nn.Module, checkpoint: dict[str, Any], arch: str, path: Path | None,
                 partial: bool = False) -> WeightsFit:
    """Load the checkpoint's weights into `model`. Without `partial`, every tensor must fit, in a
    checkpoint of the same arch: else a WeightsMismatch saying which do not. With `partial`, load
    every tensor whose name and shape match (of any arch; refused when none does) and leave the
    model's others as they are. Returns how the tensors met."""
    state_dict = {strip_wrappers(key): value for key, value in checkpoint["state_dict"].items()}
    fit = weights_fit(model, state_dict)
    if partial:
        if not fit.matching:
            raise InputError(f"checkpoint '{path}': --partial: none of its {fit.in_checkpoint} tensors matches a "
                             f"tensor of the model {arch} by name and shape ({fit.difference(limit=3)})")
        state_dict = {name: state_dict[name] for name in fit.matching}
    elif checkpoint["arch"] != arch:
        raise WeightsMismatch(f"checkpoint '{path}': saved for arch '{checkpoint['arch']}', the config builds "
                              f"'{arch}'", fit)
    elif not fit.exact:
        raise WeightsMismatch(f"checkpoint '{path}': weights do not fit the model {arch}: "
                              f"{fit.difference(limit=3)}", fit)
    try:
        unwrap_model(model).load_state_dict(state_dict, strict=not partial)
    except RuntimeError as exc:  # names and shapes fit, yet the module refused them (its own checks)
        raise InputError(f"checkpoint '{path}': weights do not fit the model {arch}: "
                         f"{' '.join(str(exc).split())}") from None
    return fit


def strip_wrappers(key: str) -> str:
    """A state_dict key without the `module.` (DataParallel, DDP) and `_orig_mod.`
    (torch.compile) prefixes that files saved by other code may carry: the rule by which
    `load_weights` reads every checkpoint (convert_checkpoint.py applies it too)."""
    while key.startswith(("module.", "_orig_mod.")):
        key = key.partition(".")[2]
    return key
