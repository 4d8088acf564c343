"""Config validation, overrides and object lookups (the bad-input catalogue is in test_bad_inputs.py)."""

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

import config_schema
import model.model as module_arch
from parse_config import ConfigParser, apply_override, lookup
from utils.errors import InputError

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def test_defaults_are_filled_in(make_config: Callable[..., dict[str, Any]]) -> None:
    config = make_config()
    del config["trainer"]["precision"], config["lr_scheduler"]
    resolved = config_schema.validate(config)
    assert resolved["trainer"]["precision"] == "fp32"
    assert resolved["lr_scheduler"] is None


def test_listed_args_are_checked_and_others_pass_through_in_order(
    make_config: Callable[..., dict[str, Any]],
) -> None:
    config = make_config()
    config["optimizer"]["args"] = {"amsgrad": True, "lr": 0.01, "betas": [0.8, 0.9]}
    resolved = config_schema.validate(config)
    assert list(resolved["optimizer"]["args"].items()) == [("amsgrad", True), ("lr", 0.01), ("betas", [0.8, 0.9])]
    config["optimizer"]["args"]["lr"] = 0
    with pytest.raises(InputError, match=re.escape("'optimizer.args.lr' must be > 0, got 0")):
        config_schema.validate(config)


def test_overrides_parse_json_and_fall_back_to_strings() -> None:
    config: dict[str, Any] = {"a": {"b": 1}}
    apply_override(config, "a.b=2.5")
    apply_override(config, "a.c=hello")
    apply_override(config, "d.e=[1, 2]")
    assert config == {"a": {"b": 2.5, "c": "hello"}, "d": {"e": [1, 2]}}
    with pytest.raises(InputError, match="expected KEY=VALUE"):
        apply_override(config, "a.b")
    with pytest.raises(InputError, match="'a.b' is not an object"):
        apply_override(config, "a.b.c=1")


def test_lookups_stay_inside_their_module_and_list_valid_names() -> None:
    assert lookup(module_arch, "MnistModel", "arch.type", torch.nn.Module) is module_arch.MnistModel
    for name in ("os", "__builtins__", "BaseModel.__init__", "F"):
        with pytest.raises(InputError, match="not one of model.model: .*MnistModel"):
            lookup(module_arch, name, "arch.type", torch.nn.Module)


def test_class_arguments_that_do_not_fit_are_named(make_config: Callable[..., dict[str, Any]]) -> None:
    config = make_config()
    config["optimizer"]["args"]["lrr"] = 0.1
    parser = ConfigParser(config)
    with pytest.raises(InputError, match="'optimizer.args' do not fit Adam: .*'lrr'"):
        parser.init_obj("optimizer", torch.optim, torch.optim.Optimizer, [torch.zeros(1, requires_grad=True)])


def test_readme_config_reference_is_the_schema() -> None:
    readme = (PROJECT_ROOT / "README.md").read_text()
    match = re.search(r"<!-- config-reference:start -->\n(.*?)\n<!-- config-reference:end -->", readme, re.S)
    assert match, "README.md lacks the config reference markers"
    assert match.group(1).strip() == config_schema.reference_table()
