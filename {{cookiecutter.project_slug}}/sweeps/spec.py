"""sweep.json: the study's name, direction, sampler, pruner, trial budget and search space,
checked before any study or run is touched. Every mistake is an InputError naming the file and
the key; the space is also checked against the config it sweeps (each key must be a value the
config has, and every value the space can take must pass the config's own validation)."""

import copy
import difflib
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from config_schema import validate
from engine.resume import flatten
from parse_config import read_json
from utils.errors import InputError

# The keys of sweep.json and of one parameter of its space (docs/sweeps.md describes each).
TOP_KEYS = ("study", "direction", "trials", "sampler", "pruner", "heartbeat_interval", "space")
PARAM_KEYS = {"float": ("type", "low", "high", "log", "step"), "int": ("type", "low", "high", "log", "step"),
              "categorical": ("type", "choices")}
DIRECTIONS = {"min": "minimize", "max": "maximize"}
BLOCK_SHAPE = '{"type": name, "args": {...}}'
SPACE_SHAPE = '{"optimizer.args.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": true} }'
DEFAULT_SAMPLER = {"type": "TPESampler", "args": {}}
DEFAULT_PRUNER = {"type": "MedianPruner", "args": {}}


@dataclass(frozen=True)
class Param:
    """One dimension of the space: a dotted config key and the values it may take."""

    key: str
    kind: str  # float, int or categorical
    low: float = 0
    high: float = 0
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value for this key (an enqueued trial gets its fixed value back)."""
        if self.kind == "float":
            return trial.suggest_float(self.key, self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_categorical(self.key, list(self.choices))

    def distribution(self) -> BaseDistribution:
        """The distribution that `suggest` records in a trial (what a study remembers of the key)."""
        if self.kind == "float":
            return FloatDistribution(self.low, self.high, log=self.log, step=self.step)
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return CategoricalDistribution(list(self.choices))

    def corners(self) -> list[Any]:
        """The extreme values, to check against the config's schema before sampling."""
        if self.kind == "categorical":
            return list(self.choices)
        cast = float if self.kind == "float" else int
        return [cast(self.low), cast(self.high)]


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep.json (defaults filled in)."""

    study: str
    direction: str  # minimize or maximize
    trials: int
    sampler: dict[str, Any]
    pruner: dict[str, Any]
    heartbeat_interval: int
    space: tuple[Param, ...]
    path: Path  # the sweep file, for messages

    def make_sampler(self, seed_offset: int = 0) -> optuna.samplers.BaseSampler:
        """The sampler; a seed in its args is moved by `seed_offset` (see sweeps.study)."""
        args = dict(self.sampler["args"])
        if isinstance(args.get("seed"), int):
            args["seed"] += seed_offset
        return self.sampler_class(**args)

    def make_pruner(self) -> optuna.pruners.BasePruner:
        return self.pruner_class(**self.pruner["args"])

    @property
    def sampler_class(self) -> type:
        return getattr(optuna.samplers, self.sampler["type"])

    @property
    def pruner_class(self) -> type:
        return getattr(optuna.pruners, self.pruner["type"])


def read_sweep(path: Path, config: dict[str, Any]) -> SweepSpec:
    """Read and check sweep.json at `path` against the resolved `config` (overrides applied)."""
    spec = read_json(path, what="sweep")
    where = f"sweep '{path}'"
    if not isinstance(spec, dict):
        raise InputError(f"{where}: must be a JSON object")
    refuse_unknown(spec, TOP_KEYS, where, "")
    if "space" not in spec:
        raise InputError(f"{where}: missing required key 'space' (the dotted config keys to search)")
    space = read_space(spec["space"], config, where)
    result = SweepSpec(
        study=read_study_name(spec.get("study", config["name"]), where),
        direction=read_direction(spec.get("direction"), config["trainer"]["monitor"], where),
        trials=read_count(spec.get("trials", 20), "trials", where),
        sampler=read_block(spec.get("sampler", DEFAULT_SAMPLER), "sampler", optuna.samplers, where),
        pruner=read_block(spec.get("pruner", DEFAULT_PRUNER), "pruner", optuna.pruners, where),
        heartbeat_interval=read_count(spec.get("heartbeat_interval", 60), "heartbeat_interval", where),
        space=space,
        path=path,
    )
    try_build(result.make_sampler, "sampler", result.sampler["type"], where)
    try_build(result.make_pruner, "pruner", result.pruner["type"], where)
    return result


def refuse_unknown(block: dict[str, Any], known: tuple[str, ...], where: str, prefix: str) -> None:
    for name in block:
        if name not in known:
            hint = difflib.get_close_matches(name, known, n=1)
            suggestion = f"did you mean '{prefix}{hint[0]}'?" if hint else f"valid keys: {', '.join(known)}"
            raise InputError(f"{where}: unknown key '{prefix}{name}'; {suggestion}")


def read_study_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name) or name in (".", ".."):
        raise InputError(f"{where}: 'study' must be a folder name (letters, digits, '_', '-', '.'), got {name!r}")
    return name


def read_direction(direction: Any, monitor: str, where: str) -> str:
    """The direction: the monitor's unless given, and never against it (a trial's value is the
    monitor's best value, which the monitor's mode decides)."""
    if monitor == "off":
        raise InputError(f"{where}: the config's 'trainer.monitor' is 'off'; a sweep optimises the monitored "
                         "metric, e.g. -o \"trainer.monitor=min val_loss\"")
    implied = DIRECTIONS[monitor.split()[0]]
    if direction is None:
        return implied
    if direction not in DIRECTIONS.values():
        raise InputError(f"{where}: 'direction' must be 'minimize' or 'maximize', got {direction!r}")
    if direction != implied:
        raise InputError(f"{where}: 'direction' is '{direction}' but 'trainer.monitor' is '{monitor}'; "
                         f"leave 'direction' out or make it '{implied}'")
    return direction


def read_count(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{where}: '{key}' must be an integer >= 1, got {value!r}")
    return value


def read_block(block: Any, key: str, module: Any, where: str) -> dict[str, Any]:
    """`{"type": <class of optuna.samplers / optuna.pruners>, "args": {...}}`."""
    if not isinstance(block, dict) or not isinstance(block.get("type"), str):
        raise InputError(f"{where}: '{key}' must be {BLOCK_SHAPE}, got {block!r}")
    refuse_unknown(block, ("type", "args"), where, f"{key}.")
    args = block.get("args", {})
    if not isinstance(args, dict):
        raise InputError(f"{where}: '{key}.args' must be an object, got {args!r}")
    base = module.BaseSampler if key == "sampler" else module.BasePruner
    valid = sorted(name for name in module.__all__ if usable(getattr(module, name, None), base))
    if block["type"] not in valid:
        raise InputError(f"{where}: '{key}.type' is '{block['type']}', not one of {module.__name__}: "
                         f"{', '.join(valid)}")
    return {"type": block["type"], "args": args}


def usable(value: Any, base: type) -> bool:
    return inspect.isclass(value) and issubclass(value, base) and value is not base and not inspect.isabstract(value)


def try_build(build: Callable[[], Any], key: str, name: str, where: str) -> None:
    try:
        build()
    except (TypeError, ValueError) as exc:
        raise InputError(f"{where}: '{key}.args' rejected by {name}: {exc}") from None


def read_space(space: Any, config: dict[str, Any], where: str) -> tuple[Param, ...]:
    if not isinstance(space, dict) or not space:
        raise InputError(f"{where}: 'space' must be an object of dotted config keys, e.g. {SPACE_SHAPE}")
    known = list(flatten(config))
    params = []
    for key, spec in space.items():
        if key not in known:
            hint = difflib.get_close_matches(key, known, n=1)
            suggestion = f"; did you mean '{hint[0]}'?" if hint else ""
            raise InputError(f"{where}: 'space.{key}' is not a key of the config{suggestion}")
        param = read_param(key, spec, where)
        check_against_config(param, config, where)
        params.append(param)
    return tuple(params)


def read_param(key: str, spec: Any, file_where: str) -> Param:
    where = f"{file_where}: 'space.{key}'"
    if not isinstance(spec, dict) or spec.get("type") not in PARAM_KEYS:
        raise InputError(f"{where} must be an object whose 'type' is 'float', 'int' or 'categorical', got {spec!r}")
    kind = spec["type"]
    refuse_unknown(spec, PARAM_KEYS[kind], file_where, f"space.{key}.")
    if kind == "categorical":
        return Param(key, kind, choices=read_choices(spec.get("choices"), where))
    low, high, log, step = (spec.get(name) for name in ("low", "high", "log", "step"))
    number, what = (int, "an integer") if kind == "int" else ((int, float), "a number")
    for name, value in (("low", low), ("high", high)):
        if isinstance(value, bool) or not isinstance(value, number) or not math.isfinite(value):
            raise InputError(f"{where}: '{name}' must be {what}, got {value!r}")
    if low >= high:
        raise InputError(f"{where}: 'low' must be below 'high', got {low!r} and {high!r}")
    if log not in (None, True, False):
        raise InputError(f"{where}: 'log' must be true or false, got {log!r}")
    if log and low <= 0:
        raise InputError(f"{where}: a log scale needs 'low' > 0, got {low!r}")
    if step is not None and (isinstance(step, bool) or not isinstance(step, number) or step <= 0 or log):
        raise InputError(f"{where}: 'step' must be {what} > 0, and not with 'log', got {step!r}")
    return Param(key, kind, low=low, high=high, log=bool(log), step=step)


def read_choices(choices: Any, where: str) -> tuple[Any, ...]:
    scalar = (str, int, float, bool, type(None))
    if not isinstance(choices, list) or not choices or not all(isinstance(c, scalar) for c in choices):
        raise InputError(f"{where}: 'choices' must be a non-empty list of numbers, strings, booleans or null, "
                         f"got {choices!r}")
    if len({repr(choice) for choice in choices}) != len(choices):
        raise InputError(f"{where}: 'choices' lists a value twice: {choices!r}")
    return tuple(choices)


def check_against_config(param: Param, config: dict[str, Any], where: str) -> None:
    """Every extreme value of `param`, set in the config, must pass the config's validation."""
    for value in param.corners():
        trial_config = with_values(config, {param.key: value})
        try:
            validate(trial_config)
        except InputError as exc:
            raise InputError(f"{where}: 'space.{param.key}' may take {value!r}, which the config refuses: "
                             f"{exc}") from None


def with_values(config: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """A copy of `config` with each dotted key of `values` set."""
    result = copy.deepcopy(config)
    for key, value in values.items():
        *parents, last = key.split(".")
        node = result
        for name in parents:
            node = node[name]
        node[last] = value
    return result
