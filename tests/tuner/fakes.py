"""Fake trainables: generator functions with `fit`'s signature that yield scripted curves.

They let the tuner be tested (adapter, pruning, states, tracking) without training.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from pathlib import Path

from trainables import Diverged, EpochResult, TrainConfig, takes_train_config


def scripted_result(epoch: int, val_acc: float, last: bool) -> EpochResult:
    return EpochResult(
        epoch=epoch,
        train_loss=1.0 - val_acc,
        train_acc=min(1.0, val_acc + 0.05),
        val_loss=1.0 - val_acc,
        val_acc=val_acc,
        lr=0.01,
        seconds=0.001,
        samples_per_second=1000.0,
        test_loss=(1.0 - val_acc) if last else None,
        test_acc=val_acc if last else None,
    )


def quality(config: TrainConfig) -> float:
    """Final accuracy of a config: best at lr = 1e-2, worse the further lr is (in decades)."""
    return max(0.1, 0.9 - 0.25 * abs(math.log10(config.lr) + 2.0))


@takes_train_config
def curve_fit(
    config: TrainConfig, checkpoint: str | Path | None = None, checkpoint_every: float = 0.0
) -> Generator[EpochResult, None, None]:
    """Accuracy rises towards `quality(config)`, so bad learning rates show early."""
    q = quality(config)
    for epoch in range(1, config.epochs + 1):
        yield scripted_result(epoch, q * epoch / config.epochs, epoch == config.epochs)


def failing_fit(error: BaseException, at_epoch: int = 2) -> Callable[..., Generator[EpochResult, None, None]]:
    @takes_train_config
    def fit(
        config: TrainConfig, checkpoint: str | Path | None = None, checkpoint_every: float = 0.0
    ) -> Generator[EpochResult, None, None]:
        for epoch in range(1, config.epochs + 1):
            if epoch == at_epoch:
                raise error
            yield scripted_result(epoch, 0.5, epoch == config.epochs)

    return fit


@takes_train_config
def diverging_fit(
    config: TrainConfig, checkpoint: str | Path | None = None, checkpoint_every: float = 0.0
) -> Generator[EpochResult, None, None]:
    """Diverges at epoch 2 when lr > 0.1, else a normal curve."""
    for epoch in range(1, config.epochs + 1):
        if config.lr > 0.1 and epoch == 2:
            raise Diverged(epoch, 7, float("nan"))
        yield scripted_result(epoch, quality(config) * epoch / config.epochs, epoch == config.epochs)
