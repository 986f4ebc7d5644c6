"""The typed, validated configuration of one training run."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

OPTIMIZERS = ("sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw")
MOMENTUM_OPTIMIZERS = ("momentum", "nesterov")  # optimizers that read `momentum`
ADAM_FAMILY = ("adam", "adamw")  # optimizers that read `beta1`/`beta2`
SCHEDULES = ("constant", "step", "exponential", "cosine", "plateau", "onecycle", "warmup_cosine")
SCHEDULE_FIELDS = {  # the parameters each schedule reads
    "step": ("step_size", "gamma"),
    "exponential": ("decay_rate",),
    "plateau": ("plateau_patience", "plateau_factor"),
    "warmup_cosine": ("warmup_epochs",),
}
DATASETS = ("mnist1d", "mnist", "fashion_mnist", "cifar10")
MODELS = ("mlp", "cnn1d", "cnn", "resnet")
PRECISIONS = ("auto", "fp32", "bf16")


class ConfigError(ValueError):
    """A config field has a value outside its valid choices or range."""

    def __init__(self, field: str, value: Any, expected: str) -> None:
        self.field, self.value, self.expected = field, value, expected
        super().__init__(f"{field}={value!r} is invalid: expected {expected}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines one training run; validated on construction.

    Schedule parameters are read only by the schedule that uses them:
    `step_size`/`gamma` (step), `decay_rate` (exponential, per epoch),
    `warmup_epochs` (warmup_cosine), `plateau_patience`/`plateau_factor` (plateau).
    """

    dataset: str = "mnist1d"
    model: str = "cnn1d"
    optimizer: str = "adam"
    lr: float = 1e-2
    batch_size: int = 100
    epochs: int = 20
    lr_schedule: str = "constant"
    step_size: int = 5  # epochs between decays (step)
    gamma: float = 0.5  # multiplicative decay (step)
    decay_rate: float = 0.9  # multiplicative decay per epoch (exponential)
    warmup_epochs: int = 2  # linear warm-up length (warmup_cosine)
    plateau_patience: int = 2  # epochs without val_loss improvement (plateau)
    plateau_factor: float = 0.5  # multiplicative decay (plateau)
    weight_decay: float = 0.0  # L2 (coupled), decoupled for adamw
    l1: float = 0.0  # strength of the L1 penalty on weights, added to the loss
    dropout: float = 0.0
    momentum: float = 0.9  # momentum and nesterov only
    beta1: float = 0.9  # adam and adamw only
    beta2: float = 0.999  # adam and adamw only
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU), fp32, bf16
    data_dir: str = "data"  # where torchvision datasets live
    download: bool = False  # let torchvision download missing files
    val_fraction: float = 0.2  # share of the training split held out for validation
    train_samples: int = 0  # use only this many training samples (0: all)

    def __post_init__(self) -> None:
        _check_choice("dataset", self.dataset, DATASETS)
        _check_choice("model", self.model, MODELS)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("lr_schedule", self.lr_schedule, SCHEDULES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_range("lr", self.lr, low=0.0, high=None, low_open=True)
        _check_int("batch_size", self.batch_size, low=1)
        _check_int("epochs", self.epochs, low=1)
        _check_int("step_size", self.step_size, low=1)
        _check_range("gamma", self.gamma, low=0.0, high=1.0, low_open=True)
        _check_range("decay_rate", self.decay_rate, low=0.0, high=1.0, low_open=True)
        _check_int("warmup_epochs", self.warmup_epochs, low=0)
        _check_int("plateau_patience", self.plateau_patience, low=0)
        _check_range("plateau_factor", self.plateau_factor, low=0.0, high=1.0, low_open=True, high_open=True)
        _check_range("weight_decay", self.weight_decay, low=0.0, high=None)
        _check_range("l1", self.l1, low=0.0, high=None)
        _check_range("dropout", self.dropout, low=0.0, high=1.0, high_open=True)
        _check_range("momentum", self.momentum, low=0.0, high=1.0, high_open=True)
        _check_range("beta1", self.beta1, low=0.0, high=1.0, high_open=True)
        _check_range("beta2", self.beta2, low=0.0, high=1.0, high_open=True)
        _check_int("seed", self.seed, low=0)
        _check_int("train_samples", self.train_samples, low=0)
        _check_range("val_fraction", self.val_fraction, low=0.0, high=1.0, low_open=True, high_open=True)
        if not isinstance(self.download, bool):
            raise ConfigError("download", self.download, "true or false")
        if not isinstance(self.data_dir, str) or not self.data_dir:
            raise ConfigError("data_dir", self.data_dir, "a directory path")
        if not (self.device in ("auto", "cpu", "cuda") or _is_cuda_index(self.device)):
            raise ConfigError("device", self.device, "one of auto, cpu, cuda, cuda:N")
        if self.lr_schedule == "warmup_cosine" and self.warmup_epochs >= self.epochs:
            raise ConfigError("warmup_epochs", self.warmup_epochs, f"fewer than epochs ({self.epochs})")
        if self.optimizer == "nesterov" and self.momentum == 0:  # torch.optim.SGD refuses it only when training
            raise ConfigError("momentum", self.momentum, "a number in (0.0, 1.0) for nesterov")

    @property
    def betas(self) -> tuple[float, float]:
        """Adam's (beta1, beta2)."""
        return (self.beta1, self.beta2)

    def ignored_fields(self) -> set[str]:
        """Fields this config does not read (momentum for adam, schedule knobs of other schedules...)."""
        ignored = set() if self.optimizer in MOMENTUM_OPTIMIZERS else {"momentum"}
        if self.optimizer not in ADAM_FAMILY:
            ignored |= {"beta1", "beta2"}
        for schedule, fields in SCHEDULE_FIELDS.items():
            if schedule != self.lr_schedule:
                ignored |= set(fields)
        if self.dataset == "mnist1d":
            ignored |= {"data_dir", "download"}
        return ignored

    def active(self) -> dict[str, Any]:
        """The fields this config actually reads, by name."""
        ignored = self.ignored_fields()
        return {k: v for k, v in self.to_dict().items() if k not in ignored}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


def _is_cuda_index(device: object) -> bool:
    return isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit()


def _check_choice(field: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(field, value, "one of " + ", ".join(choices))


def _check_int(field: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(field, value, f"an integer >= {low}")


def _check_range(
    field: str,
    value: object,
    low: float,
    high: float | None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        assert isinstance(value, (int, float))
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high)
        )
    if not ok:
        left = "(" if low_open else "["
        right = "inf)" if high is None else (f"{high})" if high_open else f"{high}]")
        raise ConfigError(field, value, f"a number in {left}{low}, {right}")
