"""TrainConfig: valid configs construct, every bad value is a ConfigError that says what to change."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from trainables import ConfigError, TrainConfig

NAN = float("nan")
INF = float("inf")
OPTIMIZER_CHOICES = ("sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw")
SCHEDULE_CHOICES = ("constant", "step", "exponential", "cosine", "plateau", "onecycle", "warmup_cosine")

# (overrides, the field the error names, the valid choices or range it must state)
BAD_VALUES: list[tuple[dict[str, Any], str, tuple[str, ...]]] = [
    ({"optimizer": "adamax"}, "optimizer", OPTIMIZER_CHOICES),
    ({"optimizer": "Adam"}, "optimizer", OPTIMIZER_CHOICES),
    ({"lr_schedule": "linear"}, "lr_schedule", SCHEDULE_CHOICES),
    ({"dataset": "imagenet"}, "dataset", ("mnist1d", "mnist", "fashion_mnist", "cifar10")),
    ({"model": "vit"}, "model", ("mlp", "cnn1d", "cnn", "resnet")),
    ({"precision": "fp16"}, "precision", ("auto", "fp32", "bf16")),
    ({"device": "tpu"}, "device", ("auto", "cpu", "cuda", "cuda:N")),
    ({"device": "cuda:x"}, "device", ("auto", "cpu", "cuda", "cuda:N")),
    ({"lr": 0.0}, "lr", ("(0.0, inf)",)),
    ({"lr": -1e-3}, "lr", ("(0.0, inf)",)),
    ({"lr": NAN}, "lr", ("(0.0, inf)",)),
    ({"lr": INF}, "lr", ("(0.0, inf)",)),
    ({"lr": "0.1"}, "lr", ("(0.0, inf)",)),
    ({"lr": True}, "lr", ("(0.0, inf)",)),
    ({"batch_size": 0}, "batch_size", ("integer >= 1",)),
    ({"batch_size": -32}, "batch_size", ("integer >= 1",)),
    ({"batch_size": True}, "batch_size", ("integer >= 1",)),
    ({"batch_size": 32.0}, "batch_size", ("integer >= 1",)),
    ({"epochs": 0}, "epochs", ("integer >= 1",)),
    ({"epochs": False}, "epochs", ("integer >= 1",)),
    ({"step_size": 0}, "step_size", ("integer >= 1",)),
    ({"dropout": 1.0}, "dropout", ("[0.0, 1.0)",)),
    ({"dropout": -0.1}, "dropout", ("[0.0, 1.0)",)),
    ({"momentum": -0.5}, "momentum", ("[0.0, 1.0)",)),
    ({"momentum": 1.0}, "momentum", ("[0.0, 1.0)",)),
    ({"gamma": 1.5}, "gamma", ("(0.0, 1.0]",)),
    ({"gamma": 0.0}, "gamma", ("(0.0, 1.0]",)),
    ({"decay_rate": 0}, "decay_rate", ("(0.0, 1.0]",)),
    ({"plateau_factor": 1.0}, "plateau_factor", ("(0.0, 1.0)",)),
    ({"plateau_patience": -1}, "plateau_patience", ("integer >= 0",)),
    ({"weight_decay": -1e-4}, "weight_decay", ("[0.0, inf)",)),
    ({"l1": NAN}, "l1", ("[0.0, inf)",)),
    ({"beta1": 1.0}, "beta1", ("[0.0, 1.0)",)),
    ({"beta2": 1.2}, "beta2", ("[0.0, 1.0)",)),
    ({"seed": -1}, "seed", ("integer >= 0",)),
    ({"seed": 1.5}, "seed", ("integer >= 0",)),
    ({"train_samples": -1}, "train_samples", ("integer >= 0",)),
    ({"val_fraction": 0.0}, "val_fraction", ("(0.0, 1.0)",)),
    ({"val_fraction": 1.0}, "val_fraction", ("(0.0, 1.0)",)),
    ({"download": "yes"}, "download", ("true or false",)),
    ({"data_dir": ""}, "data_dir", ("directory",)),
    ({"lr_schedule": "warmup_cosine", "epochs": 3, "warmup_epochs": 3}, "warmup_epochs", ("fewer than epochs (3)",)),
    ({"lr_schedule": "warmup_cosine", "epochs": 3, "warmup_epochs": 7}, "warmup_epochs", ("fewer than epochs (3)",)),
    ({"optimizer": "nesterov", "momentum": 0.0}, "momentum", ("nesterov",)),
]


def _case_id(case: tuple[dict[str, Any], str, tuple[str, ...]]) -> str:
    overrides, field, _ = case
    return f"{field}={overrides[field]!r}"


@pytest.mark.parametrize(("overrides", "field", "expected"), BAD_VALUES, ids=[_case_id(c) for c in BAD_VALUES])
def test_bad_value_is_a_config_error_naming_field_value_and_valid_values(
    overrides: dict[str, Any], field: str, expected: tuple[str, ...]
) -> None:
    value = overrides[field]
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**overrides)
    error = caught.value
    message = str(error)
    assert error.field == field
    assert error.value is value  # the offending object itself, not a converted copy
    assert message.startswith(f"{field}={value!r} ")
    for valid in expected:
        assert valid in message


def test_config_error_is_a_value_error() -> None:
    # callers that handle bad input generically can catch ValueError
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="lbfgs")


def test_defaults_are_the_documented_sensible_run() -> None:
    config = TrainConfig()
    assert (config.dataset, config.model, config.optimizer) == ("mnist1d", "cnn1d", "adam")
    assert (config.lr, config.batch_size, config.epochs, config.lr_schedule) == (1e-2, 100, 20, "constant")
    assert config.betas == (0.9, 0.999)


@pytest.mark.parametrize(
    "overrides",
    [
        {"dropout": 0.0, "momentum": 0.0, "weight_decay": 0.0, "l1": 0.0},  # closed lower ends
        {"gamma": 1.0, "decay_rate": 1.0},  # closed upper ends
        {"lr_schedule": "warmup_cosine", "epochs": 3, "warmup_epochs": 2},  # largest valid warm-up
        {"lr_schedule": "warmup_cosine", "epochs": 1, "warmup_epochs": 0},
        {"warmup_epochs": 40, "epochs": 3},  # warmup_epochs only matters for warmup_cosine
        {"device": "cuda:1", "precision": "bf16"},  # checked when fit resolves the device, not here
        {"lr": 5, "batch_size": 1, "seed": 2**40, "train_samples": 10},  # an int where a float is expected
        {"optimizer": "momentum", "momentum": 0.0},
    ],
)
def test_boundary_values_are_accepted(overrides: dict[str, Any]) -> None:
    config = TrainConfig(**overrides)
    for name, value in overrides.items():
        assert getattr(config, name) == value


def test_config_is_frozen_and_replace_validates_again() -> None:
    config = TrainConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 1.0  # type: ignore[misc]
    assert config.replace(lr=0.5).lr == 0.5
    assert config.lr == 1e-2  # replace returns a new config
    with pytest.raises(ConfigError, match=r"^lr=-1"):
        config.replace(lr=-1)


def test_to_dict_round_trips_and_names_every_field() -> None:
    config = TrainConfig(optimizer="nesterov", lr=0.3, lr_schedule="step", seed=7)
    as_dict = config.to_dict()
    assert tuple(as_dict) == TrainConfig.field_names()
    assert TrainConfig(**as_dict) == config
    assert all(not isinstance(v, float) or math.isfinite(v) for v in as_dict.values())
