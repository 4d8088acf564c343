"""TorchvisionClassifier: any classification model of torchvision, by name, with its classifier
head sized for your classes and, optionally, its pretrained weights (see docs/backbones.md)."""

import difflib
import os
from collections import OrderedDict
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import torch
import torch.nn.functional as F
from torch import nn

from base import BaseModel
from utils.errors import InputError, first_line, listed


class TorchvisionClassifier(BaseModel):
    """torchvision's classification model `name` (resnet18, efficientnet_b0, mobilenet_v3_small,
    convnext_tiny, vit_b_16, ...: any of `torchvision.models.list_models(torchvision.models)`)
    with a new classifier head for `num_classes` classes; `model_args` go to torchvision's
    builder as well (e.g. `{"dropout": 0.3}`, or `{"image_size": 64}` for a ViT).

    `weights` names the pretrained weights to start from: "DEFAULT" (torchvision's best for the
    model), a name such as "IMAGENET1K_V1", or None for random ones. Building the model reads no
    file: `load_pretrained` loads them (train.py calls it when a run starts; a resume, test.py and
    a checkpoint's other users take the weights from the checkpoint and need no weights file).

    The head is found by what it is, not by a table of names: the tensors whose shapes follow
    `num_classes` (for resnet18 `fc`, for efficientnet_b0 `classifier.1`, for vit_b_16
    `heads.head`), initialised as torchvision initialises that model's head; every other tensor
    is the backbone. `head_parameters` lists the head's parameters, which `trainer.freeze_backbone_epochs`
    and `trainer.backbone_lr_factor` use.

    `forward` returns log-probabilities (B, num_classes), like the project's other models: pair
    it with the `nll_loss` loss (the same as `cross_entropy` on the network's raw scores).
    Inception's and GoogLeNet's auxiliary outputs are not trained: build them with
    `{"aux_logits": false}`."""

    def __init__(self, name: str, num_classes: int, weights: str | None = None,
                 model_args: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.name = check_name(name)
        if type(num_classes) is not int or num_classes < 1:
            raise InputError(f"config: 'arch.args.num_classes' must be a whole number of classes, 1 or more, "
                             f"got {num_classes!r}")
        self.weights = resolve_weights(name, weights)
        self.model_args = dict(model_args or {})
        self.network = build(name, num_classes, self.model_args)
        self.head_names = head_tensor_names(self.network, name, num_classes, self.model_args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, 3, H, W), normalised as `normalization` says for pretrained weights
        scores = self.network(x)
        if isinstance(scores, tuple):  # inception_v3 and googlenet in training mode: (logits, auxiliary, ...)
            scores = scores[0]
        return F.log_softmax(scores, dim=1)  # (B, num_classes) log-probabilities

    def head_parameters(self) -> list[nn.Parameter]:
        """The parameters of the classifier head (new for `num_classes`); the others are the backbone."""
        return [parameter for name, parameter in self.network.named_parameters() if name in self.head_names]

    @property
    def normalization(self) -> tuple[list[float], list[float]] | None:
        """(mean, std) per channel, for pixel values in [0, 1], of the images the pretrained
        weights were trained on (torchvision's `weights.transforms()`), which the images fed to
        this model should be normalised with; None without pretrained weights."""
        if self.weights is None:
            return None
        transform = self.weights.transforms()
        return [float(value) for value in transform.mean], [float(value) for value in transform.std]

    def load_pretrained(self, download: bool = True) -> str:
        """Load the pretrained `weights` into every tensor but the head, through torchvision's own
        cache (`$TORCH_HOME/hub/checkpoints/`, downloaded there once when `download`); returns
        what was loaded, for the run's log ("" without weights). A file that is missing and
        cannot be downloaded, or cannot be read, is an InputError naming the file and its folder."""
        if self.weights is None:
            return ""
        state_dict = pretrained_state_dict(self.name, self.weights, download)
        kept = OrderedDict((key, value) for key, value in state_dict.items() if key not in self.head_names)
        kept._metadata = getattr(state_dict, "_metadata", None)  # type: ignore[attr-defined]  (module versions)
        try:
            missing, unexpected = self.network.load_state_dict(kept, strict=False)
        except RuntimeError as exc:  # a shape differs: the weights are for other builder arguments
            raise InputError(f"{weights_key(self.weights)}: they do not fit {self.name} built with model_args "
                             f"{self.model_args}: {' '.join(str(exc).split())[:300]}") from None
        missing = [key for key in missing if key not in self.head_names]
        if missing or unexpected:
            raise InputError(f"{weights_key(self.weights)}: they do not fit {self.name}: "
                             f"missing {listed(missing, 3)}; unexpected {listed(unexpected, 3)}")
        head = sorted({name.rpartition(".")[0] for name in self.head_names})
        return (f"Starting from the pretrained weights {self.weights} ({weights_file(self.weights)}); the new "
                f"head {', '.join(head)} is initialised for {self.head_classes()} classes")

    def head_classes(self) -> int:
        """The number of classes the head outputs."""
        return int(self.head_parameters()[-1].shape[0])


def torchvision_models() -> ModuleType:
    """torchvision.models, imported when a TorchvisionClassifier is built: it takes a while, and
    a project that uses other models does without it."""
    import torchvision.models

    return torchvision.models


def check_name(name: object) -> str:
    """`name` if torchvision has a classification model of that name, else an InputError with
    the nearest names."""
    models = torchvision_models()
    names = models.list_models(module=models)  # classification models only
    if isinstance(name, str) and name in names:
        return name
    close = difflib.get_close_matches(str(name), names, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(close)}?" if close else f"e.g. {', '.join(names[:5])}, ..."
    raise InputError(f"config: 'arch.args.name' is {name!r}, not a torchvision classification model; {hint} "
                     "(torchvision.models.list_models(torchvision.models) lists them)")


def resolve_weights(name: str, weights: object) -> Any:
    """The torchvision weights enum member that `weights` names for model `name` ("DEFAULT",
    "IMAGENET1K_V1", or "ResNet18_Weights.IMAGENET1K_V1"), or None."""
    if weights is None:
        return None
    enum = torchvision_models().get_model_weights(name)
    if isinstance(weights, str):
        member = getattr(enum, weights.removeprefix(f"{enum.__name__}."), None)
        if isinstance(member, enum):
            return member
    valid = ["DEFAULT", *(member.name for member in enum)]
    raise InputError(f"config: 'arch.args.weights' is {weights!r}, not weights of {name}: one of {', '.join(valid)}, "
                     "or null for random weights")


def build(name: str, num_classes: int, model_args: dict[str, Any]) -> nn.Module:
    """torchvision's `name` for `num_classes` classes, randomly initialised as torchvision does."""
    if not isinstance(model_args, dict):
        raise InputError(f"config: 'arch.args.model_args' must be an object, got {model_args!r}")
    try:
        return torchvision_models().get_model(name, weights=None, num_classes=num_classes, **model_args)
    except (TypeError, ValueError) as exc:
        raise InputError(f"config: 'arch.args.model_args' {model_args} rejected by torchvision's {name}: "
                         f"{first_line(exc)}") from None


def head_tensor_names(network: nn.Module, name: str, num_classes: int, model_args: dict[str, Any]) -> tuple[str, ...]:
    """The names of the state_dict tensors of `network` whose shapes follow the number of classes:
    those that differ from the same model built for one class more. It is built on the meta
    device (no memory, no initialisation), or on the CPU for the few builders that compute with
    tensors while building (regnet)."""
    get_model = torchvision_models().get_model
    try:
        with torch.device("meta"):
            other = get_model(name, weights=None, num_classes=num_classes + 1, **model_args)
    except (NotImplementedError, RuntimeError):
        other = get_model(name, weights=None, num_classes=num_classes + 1, **model_args)
    shapes = {key: value.shape for key, value in other.state_dict().items()}
    head = tuple(key for key, value in network.state_dict().items() if shapes.get(key) != value.shape)
    if not head:
        raise InputError(f"config: 'arch.args.name' {name}: no tensor of it depends on num_classes, so it has no "
                         "classifier head to replace")
    return head


def weights_file(weights: Any) -> Path:
    """Where torchvision keeps the file of `weights`: `$TORCH_HOME/hub/checkpoints/<the last part
    of its url>` (torch.hub's rule)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def weights_key(weights: Any) -> str:
    return f"config: 'arch.args.weights' ({weights})"


def pretrained_state_dict(name: str, weights: Any, download: bool) -> dict[str, torch.Tensor]:
    """The tensors of torchvision's model `name` with its `weights`, built by torchvision's own
    builder, so that what the builder does to load them (reading its cache, downloading a
    missing file with its hash checked, renaming old keys) is done as torchvision does it. The
    global random state is left as it was (the builder initialises before loading)."""
    file = weights_file(weights)
    cached = file.is_file()
    put_it_there = (f"download {weights.url} into {file.parent} (the folder follows TORCH_HOME), or set "
                    "arch.args.weights to null")
    if not cached and not download:
        raise InputError(f"{weights_key(weights)}: no file {file.name} in {file.parent}, and a dry run downloads "
                         f"nothing; train once to download it, or {put_it_there}")
    try:
        with torch.random.fork_rng(devices=[]):
            return torchvision_models().get_model(name, weights=weights).state_dict()
    except Exception as exc:  # noqa: BLE001  (urllib, the hash check and torch.load raise many types)
        if cached:
            raise InputError(f"{weights_key(weights)}: cannot read {file} ({first_line(exc)[:200]}); delete it "
                             "to download it again") from None
        raise InputError(f"{weights_key(weights)}: no file {file.name} in {file.parent}, and downloading it "
                         f"failed ({first_line(exc)[:200]}); {put_it_there}") from None
