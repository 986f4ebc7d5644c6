"""Optimizers and learning-rate schedules: each one trains, and the lr follows its closed form."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tests.trainables.helpers import assert_finite
from trainables import OPTIMIZERS, SCHEDULES, TrainConfig, fit
from trainables.optim import Schedule, build_optimizer, l1_penalty, warmup_cosine_factor

STEPS_PER_EPOCH = 4  # the `tiny` fixture: 200 training samples in batches of 50

# An lr at which each optimizer makes visible progress in 3 epochs on 200 MNIST-1D samples.
WORKING_LR = {
    "sgd": 0.2,
    "momentum": 0.05,
    "nesterov": 0.05,
    "rmsprop": 1e-3,
    "adagrad": 0.05,
    "adam": 1e-2,
    "adamw": 1e-2,
}


def lrs(config: TrainConfig) -> list[float]:
    records = list(fit(config))
    assert [r.epoch for r in records] == list(range(1, config.epochs + 1))
    assert_finite(records)
    return [r.lr for r in records]


def test_every_optimizer_is_covered() -> None:
    assert set(WORKING_LR) == set(OPTIMIZERS)


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_every_optimizer_trains_with_finite_metrics(tiny: TrainConfig, optimizer: str) -> None:
    config = tiny.replace(optimizer=optimizer, lr=WORKING_LR[optimizer], epochs=3)
    records = list(fit(config))
    assert_finite(records)
    assert [r.lr for r in records] == [config.lr] * 3  # constant schedule
    assert records[-1].train_loss < records[0].train_loss  # the weights are being updated


@pytest.mark.parametrize(
    ("optimizer", "torch_class", "expected"),
    [
        ("sgd", torch.optim.SGD, {"momentum": 0, "nesterov": False}),
        ("momentum", torch.optim.SGD, {"momentum": 0.8, "nesterov": False}),
        ("nesterov", torch.optim.SGD, {"momentum": 0.8, "nesterov": True}),
        ("rmsprop", torch.optim.RMSprop, {}),
        ("adagrad", torch.optim.Adagrad, {}),
        ("adam", torch.optim.Adam, {"betas": (0.7, 0.99)}),
        ("adamw", torch.optim.AdamW, {"betas": (0.7, 0.99)}),
    ],
)
def test_optimizer_gets_the_configured_hyperparameters(
    optimizer: str, torch_class: type[torch.optim.Optimizer], expected: dict[str, object]
) -> None:
    config = TrainConfig(optimizer=optimizer, lr=0.03, weight_decay=1e-3, momentum=0.8, beta1=0.7, beta2=0.99)
    built = build_optimizer(config, nn.Linear(2, 2).parameters())
    assert type(built) is torch_class
    group = built.param_groups[0]
    assert group["lr"] == 0.03
    assert group["weight_decay"] == 1e-3
    for key, value in expected.items():
        assert group[key] == value


def test_l1_penalty_sums_absolute_weights_but_not_biases() -> None:
    layer = nn.Linear(2, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0], [0.5, -0.25]]))
        layer.bias.fill_(100.0)
    assert l1_penalty(nn.Sequential(layer)).item() == pytest.approx(3.75)


def test_l1_strength_is_added_to_the_training_loss(tiny: TrainConfig) -> None:
    plain = next(fit(tiny))
    penalised = next(fit(tiny.replace(l1=1e-3)))
    assert penalised.train_loss > plain.train_loss + 0.1  # 5,210 weights of typical size ~0.1


def test_every_schedule_is_covered_below() -> None:
    covered = {"constant", "step", "exponential", "cosine", "plateau", "onecycle", "warmup_cosine"}
    assert covered == set(SCHEDULES)


def test_constant_schedule(tiny: TrainConfig) -> None:
    assert lrs(tiny.replace(lr=0.02, epochs=3)) == [0.02] * 3


def test_step_schedule(tiny: TrainConfig) -> None:
    config = tiny.replace(lr=0.02, lr_schedule="step", step_size=2, gamma=0.5, epochs=5)
    expected = [0.02 * 0.5 ** ((e - 1) // 2) for e in range(1, 6)]
    assert lrs(config) == pytest.approx(expected, rel=1e-12)
    assert expected == [0.02, 0.02, 0.01, 0.01, 0.005]


def test_exponential_schedule(tiny: TrainConfig) -> None:
    config = tiny.replace(lr=0.02, lr_schedule="exponential", decay_rate=0.8, epochs=4)
    assert lrs(config) == pytest.approx([0.02 * 0.8 ** (e - 1) for e in range(1, 5)], rel=1e-12)


def test_cosine_schedule_anneals_to_zero_over_the_run(tiny: TrainConfig) -> None:
    epochs = 5
    config = tiny.replace(lr=0.02, lr_schedule="cosine", epochs=epochs)
    expected = [0.02 * (1 + math.cos(math.pi * (e - 1) / epochs)) / 2 for e in range(1, epochs + 1)]
    assert lrs(config) == pytest.approx(expected, rel=1e-9)


def _warmup_cosine(epoch: int, warmup: int, epochs: int) -> float:
    """The lr factor of 1-based `epoch`: warmup linear steps of 1/(warmup+1) up to 1, then cosine to 0."""
    if epoch <= warmup:
        return epoch / (warmup + 1)
    return (1 + math.cos(math.pi * (epoch - 1 - warmup) / (epochs - warmup))) / 2


def test_warmup_cosine_schedule(tiny: TrainConfig) -> None:
    config = tiny.replace(lr=0.02, lr_schedule="warmup_cosine", warmup_epochs=2, epochs=6)
    expected = [0.02 * _warmup_cosine(e, 2, 6) for e in range(1, 7)]
    assert lrs(config) == pytest.approx(expected, rel=1e-9)
    assert expected[:3] == pytest.approx([0.02 / 3, 0.04 / 3, 0.02])  # full lr right after the warm-up


@pytest.mark.parametrize(("warmup", "epochs"), [(0, 1), (0, 5), (1, 2), (3, 10), (9, 10)])
def test_warmup_cosine_factor_matches_the_formula(warmup: int, epochs: int) -> None:
    for epoch in range(1, epochs + 1):
        assert warmup_cosine_factor(epoch - 1, warmup, epochs) == pytest.approx(_warmup_cosine(epoch, warmup, epochs))


def _one_cycle(step: int, total_steps: int, max_lr: float) -> float:
    """PyTorch's OneCycleLR defaults: lr/25 rising for 30% of steps to lr, cosine down to lr/25/1e4."""
    initial, final = max_lr / 25, max_lr / 25 / 1e4
    peak = 0.3 * total_steps - 1

    def anneal(start: float, end: float, fraction: float) -> float:
        return end + (start - end) / 2 * (1 + math.cos(math.pi * fraction))

    if step <= peak:
        return anneal(initial, max_lr, step / peak)
    return anneal(max_lr, final, (step - peak) / (total_steps - 1 - peak))


def test_onecycle_schedule_steps_per_batch(tiny: TrainConfig) -> None:
    epochs = 10
    config = tiny.replace(optimizer="momentum", lr=0.05, lr_schedule="onecycle", epochs=epochs)
    got = lrs(config)
    total = epochs * STEPS_PER_EPOCH
    expected = [_one_cycle((e - 1) * STEPS_PER_EPOCH, total, 0.05) for e in range(1, epochs + 1)]
    assert got == pytest.approx(expected, rel=1e-6)
    assert got[0] == pytest.approx(0.05 / 25)  # div_factor
    peak_epoch = 1 + got.index(max(got))
    assert peak_epoch in (3, 4, 5)  # the peak falls near 30% of the run
    assert max(got) > 0.9 * 0.05
    assert got[-1] < 0.05 / 25  # ends far below where it started


@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_onecycle_leaves_momentum_and_betas_as_configured(optimizer: str) -> None:
    # with PyTorch's default cycle_momentum=True, adagrad raised and plain sgd got momentum 0.85-0.95
    config = TrainConfig(optimizer=optimizer, lr_schedule="onecycle", epochs=2, momentum=0.6, beta1=0.7)
    optimizer_ = build_optimizer(config, nn.Linear(2, 2).parameters())
    before = {k: v for k, v in optimizer_.param_groups[0].items() if k in ("momentum", "betas")}
    schedule = Schedule(config, optimizer_, steps_per_epoch=5)
    for _ in range(7):
        optimizer_.step()
        schedule.after_step()
    after = {k: v for k, v in optimizer_.param_groups[0].items() if k in ("momentum", "betas")}
    assert after == before
    assert optimizer_.param_groups[0]["lr"] != config.lr / 25  # while the lr did move


@pytest.mark.parametrize("patience", [0, 1])
def test_plateau_schedule_reduces_lr_when_val_loss_stops_improving(tiny: TrainConfig, patience: int) -> None:
    # lr 1e-6 with plain SGD moves the val loss by far less than the 1e-4 relative improvement it needs
    lr, factor = 1e-6, 0.5
    config = tiny.replace(
        optimizer="sgd", lr=lr, lr_schedule="plateau", plateau_patience=patience, plateau_factor=factor, epochs=6
    )
    # epoch 1 sets the best val loss; after every patience+1 epochs without improvement the lr drops
    expected = [lr] + [lr * factor ** ((e - 2) // (patience + 1)) for e in range(2, 7)]
    assert lrs(config) == pytest.approx(expected, rel=1e-12)
    assert min(expected) < lr


def test_plateau_schedule_keeps_lr_while_val_loss_improves(tiny: TrainConfig) -> None:
    config = tiny.replace(optimizer="adam", lr=1e-2, lr_schedule="plateau", plateau_patience=0, epochs=4)
    records = list(fit(config))
    val_losses = [r.val_loss for r in records]
    assert val_losses == sorted(val_losses, reverse=True)  # improving every epoch...
    assert [r.lr for r in records] == [1e-2] * 4  # ...so even patience 0 never reduces the lr
