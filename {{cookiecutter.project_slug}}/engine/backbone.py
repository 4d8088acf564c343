"""The fine-tuning recipe of a model with a head and a backbone (a model with a
`head_parameters()` method, such as TorchvisionClassifier): `trainer.freeze_backbone_epochs`
trains only the head at first, `trainer.backbone_lr_factor` gives the backbone a learning rate of
its own. The optimizer holds every parameter from the start, in two groups (head, backbone), so
its state_dict has one layout before, across and after the unfreezing, and resumes are exact."""

from typing import Any

import torch
from torch import nn

from utils.errors import InputError

# Normalisation layers whose running statistics a frozen backbone keeps as they are (eval mode).
BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)


def head_parameters(model: nn.Module, key: str, value: Any) -> list[nn.Parameter]:
    """The parameters of `model`'s head, for config key `key` (set to `value`): an InputError in
    one line for a model that does not say which they are, or whose head or backbone is empty."""
    method = getattr(model, "head_parameters", None)
    if method is None:
        raise InputError(f"config: 'trainer.{key}' is {value!r}, but the model {type(model).__name__} has no "
                         "head_parameters() method to tell its head from its backbone; use TorchvisionClassifier, "
                         "or add the method (docs/backbones.md)")
    head = list(method())
    others = [p for p in model.parameters() if all(p is not q for q in head)]
    if not head or not others:
        part = "head" if not head else "backbone"
        raise InputError(f"config: 'trainer.{key}' is {value!r}, but the {part} of {type(model).__name__} "
                         "(its head_parameters() and the rest) has no parameters")
    return head


def parameter_groups(model: nn.Module, lr_factor: float, freeze_epochs: int) -> list[Any]:
    """What the optimizer is built over: the model's trainable parameters, or, for the
    fine-tuning recipe, two groups, the head's first (its lr is the logged one) and the backbone's."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    if lr_factor == 1 and not freeze_epochs:
        return parameters
    key, value = ("backbone_lr_factor", lr_factor) if lr_factor != 1 else ("freeze_backbone_epochs", freeze_epochs)
    head = head_parameters(model, key, value)
    return [{"params": [p for p in parameters if any(p is q for q in head)]},
            {"params": [p for p in parameters if all(p is not q for q in head)]}]


def scale_backbone_lr(optimizer: torch.optim.Optimizer, lr_factor: float) -> None:
    """Give the backbone's group (the second) `lr_factor` times the head's learning rate."""
    if len(optimizer.param_groups) == 2:
        optimizer.param_groups[1]["lr"] = optimizer.param_groups[0]["lr"] * lr_factor


def check_lr_factor_kept(optimizer: torch.optim.Optimizer, lr_factor: float, scheduler: Any) -> None:
    """A scheduler that sets every group's learning rate itself when it is built (OneCycleLR's
    `max_lr`, CyclicLR's `base_lr`, given as one number) would silently undo `lr_factor`: refuse it."""
    if len(optimizer.param_groups) != 2 or scheduler is None:
        return
    head, backbone = (group.get("initial_lr", group["lr"]) for group in optimizer.param_groups)
    if head and abs(backbone / head - lr_factor) > 1e-6 * lr_factor:
        name = type(scheduler).__name__
        raise InputError(f"config: 'lr_scheduler' {name} sets the learning rate of the head and of the backbone "
                         f"alike, which undoes trainer.backbone_lr_factor {lr_factor}; give its learning rates as "
                         f"lists [head, backbone] in that ratio, e.g. [{head:g}, {head * lr_factor:g}]")


class BackboneFreeze:
    """`trainer.freeze_backbone_epochs`: in the first `epochs` epochs only the head of `model`
    trains; its backbone's parameters get no gradient (so no optimizer update, weight decay or
    momentum either) and its BatchNorm layers stay in eval mode (their running statistics are
    those of the pretrained weights, and the frozen backbone computes what it will compute at
    test time). From epoch `epochs + 1` on every parameter trains. Which epochs are frozen
    depends on the epoch alone, so a resume on either side of the unfreezing is exact."""

    def __init__(self, model: nn.Module, epochs: int) -> None:
        self.epochs = epochs
        self.frozen = False  # the state the model is in: built trainable
        self.backbone: list[nn.Parameter] = []
        self.norms: list[nn.Module] = []
        if not epochs:
            return
        head = head_parameters(model, "freeze_backbone_epochs", epochs)
        in_head = {id(p) for p in head}
        self.backbone = [p for p in model.parameters() if id(p) not in in_head and p.requires_grad]
        self.norms = [module for module in model.modules() if isinstance(module, BATCH_NORMS)
                      and not any(id(p) in in_head for p in module.parameters(recurse=False))]

    def set_epoch(self, epoch: int) -> bool:
        """Freeze or unfreeze the backbone for `epoch`; True when that changed which parameters
        get gradients (a DistributedDataParallel wrapper must then be built again)."""
        frozen = epoch <= self.epochs
        if frozen == self.frozen:
            return False
        for parameter in self.backbone:
            parameter.requires_grad_(not frozen)
        self.frozen = frozen
        return True

    def keep_statistics(self) -> None:
        """After `model.train()`: the frozen backbone's BatchNorm layers back in eval mode."""
        if self.frozen:
            for module in self.norms:
                module.eval()
