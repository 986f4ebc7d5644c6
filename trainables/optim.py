"""Optimizers and learning-rate schedules built from a TrainConfig."""

from __future__ import annotations

import math
from typing import Any

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
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd, **fast)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd, **fast)
    if name == "nesterov":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, nesterov=True, weight_decay=wd, **fast)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=config.betas, weight_decay=wd, **fast)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=config.betas, weight_decay=wd, **fast)
    raise ValueError(f"unknown optimizer {name!r}")


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
