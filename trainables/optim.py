"""Optimizers and learning-rate schedules built from a TrainConfig."""

from __future__ import annotations

import inspect
import math
import types
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

from trainables.config import TrainConfig


def build_optimizer(config: TrainConfig, params: Any, fused: bool = False) -> torch.optim.Optimizer:
    """The optimizer named by the config; `weight_decay` is L2 except for adamw (decoupled).

    `fused=True` picks PyTorch's fused implementation (one kernel for all parameters, on CPU
    and CUDA) for sgd, momentum, nesterov, adam and adamw: the same update, computed faster.
    The other optimizers ignore it.
    """
    lr, wd = config.lr, config.weight_decay
    name = config.optimizer
    fast: dict[str, Any] = {"fused": True} if fused else {}
    optim = torch.optim
    if name == "sgd":
        return eager(optim.SGD)(params, lr=lr, weight_decay=wd, **fast)
    if name == "momentum":
        return eager(optim.SGD)(params, lr=lr, momentum=config.momentum, weight_decay=wd, **fast)
    if name == "nesterov":
        return eager(optim.SGD)(params, lr=lr, momentum=config.momentum, nesterov=True, weight_decay=wd, **fast)
    if name == "rmsprop":
        return eager(optim.RMSprop)(params, lr=lr, weight_decay=wd)
    if name == "adagrad":
        return eager(optim.Adagrad)(params, lr=lr, weight_decay=wd)
    if name == "adam":
        return eager(optim.Adam)(params, lr=lr, betas=config.betas, weight_decay=wd, **fast)
    if name == "adamw":
        return eager(optim.AdamW)(params, lr=lr, betas=config.betas, weight_decay=wd, **fast)
    raise ValueError(f"unknown optimizer {name!r}")


# The Optimizer methods that PyTorch wraps in `torch._disable_dynamo`, which imports torch._dynamo
# (2.6 s on a 2-core CPU) the first time one is called, to keep torch.compile out of them.
_DYNAMO_DISABLED = ("add_param_group", "zero_grad", "state_dict", "load_state_dict")


Opt = TypeVar("Opt", bound=torch.optim.Optimizer)


def eager(cls: type[Opt]) -> Callable[..., Opt]:
    """A constructor of `cls` whose optimizers run in eager mode without importing torch._dynamo.

    Every torch.optim optimizer imports torch._dynamo (2.6 s on a 2-core CPU) on construction
    (`add_param_group` is wrapped in `torch._disable_dynamo`, which imports it to keep
    torch.compile out) and on its first `step` (`_use_grad_for_differentiable` imports it to
    mark graph breaks). Neither wrapper does anything in eager mode: dynamo is off unless
    something is being compiled. The optimizer built here is a plain `cls` whose instance
    calls the same methods without those wrappers (their `__wrapped__` originals, and
    `step` with PyTorch's own hooks and grad mode around it), so the update is the same
    code, and the import is left to whoever compiles. Where a wrapper is not found (another
    PyTorch), it is `cls` as it comes: the same numbers, the import paid.
    """
    base = torch.optim.Optimizer
    originals = {name: getattr(getattr(base, name), "__wrapped__", None) for name in _DYNAMO_DISABLED}
    raw_step = inspect.unwrap(cls.step)  # under `_use_grad_for_differentiable` (and the hooks, once patched in)
    hooked = getattr(base, "profile_hook_step", None)
    if raw_step is cls.step or hooked is None or any(f is None for f in originals.values()):
        return cls

    def step(self: torch.optim.Optimizer, closure: Any = None) -> Any:
        # as `_use_grad_for_differentiable`, without its graph breaks (no-ops when not compiling)
        previous = torch.is_grad_enabled()
        try:
            torch.set_grad_enabled(self.defaults["differentiable"])
            return raw_step(self, closure)
        finally:
            torch.set_grad_enabled(previous)

    methods = {**originals, "step": hooked(step)}

    def build(*args: Any, **kwargs: Any) -> Opt:
        optimizer = cls.__new__(cls)
        for name, function in methods.items():  # the instance's own: found before the class's
            setattr(optimizer, name, types.MethodType(function, optimizer))
        optimizer.__init__(*args, **kwargs)  # type: ignore[misc]
        return optimizer

    return build


class Schedule:
    """One interface over PyTorch's schedulers: the loop calls `after_step` and `after_epoch`.

    onecycle steps per batch (as PyTorch documents it); every other schedule per epoch.
    """

    def __init__(self, config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> None:
        self.name = config.lr_schedule
        self.per_batch = self.name == "onecycle"
        self.scheduler: Any = _build_scheduler(config, optimizer, steps_per_epoch)

    def after_step(self) -> None:
        if self.per_batch:
            self.scheduler.step()

    def after_epoch(self, val_loss: float) -> None:
        if self.name == "plateau":
            self.scheduler.step(val_loss)
        elif not self.per_batch and self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return {} if self.scheduler is None else dict(self.scheduler.state_dict())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)


def _build_scheduler(config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> Any:
    s = torch.optim.lr_scheduler
    name, epochs = config.lr_schedule, config.epochs
    if name == "constant":
        return None
    if name == "step":
        return s.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    if name == "exponential":
        return s.ExponentialLR(optimizer, gamma=config.decay_rate)
    if name == "cosine":
        return s.CosineAnnealingLR(optimizer, T_max=epochs)
    if name == "plateau":
        return s.ReduceLROnPlateau(optimizer, factor=config.plateau_factor, patience=config.plateau_patience)
    if name == "onecycle":
        # cycle_momentum=False: cycling would overwrite the configured momentum/beta1, give plain sgd
        # momentum, and fails outright for adagrad (no momentum to cycle)
        return s.OneCycleLR(optimizer, max_lr=config.lr, total_steps=epochs * steps_per_epoch, cycle_momentum=False)
    if name == "warmup_cosine":
        return s.LambdaLR(optimizer, lambda epoch: warmup_cosine_factor(epoch, config.warmup_epochs, epochs))
    raise ValueError(f"unknown lr_schedule {name!r}")


def warmup_cosine_factor(epoch: int, warmup_epochs: int, epochs: int) -> float:
    """Linear warm-up to the full lr over `warmup_epochs`, then cosine decay towards 0."""
    if epoch < warmup_epochs:
        return (epoch + 1) / (warmup_epochs + 1)
    progress = (epoch - warmup_epochs) / max(1, epochs - warmup_epochs)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def l1_penalty(model: nn.Module) -> torch.Tensor:
    """Sum of absolute weights (biases and norm parameters excluded)."""
    return torch.stack([p.abs().sum() for p in model.parameters() if p.ndim > 1]).sum()
