"""`tuner train`: one TrainConfig from command-line flags, per-epoch metrics printed."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One `--field-name` flag per TrainConfig field, typed like its default."""
    from trainables import TrainConfig

    for field in dataclasses.fields(TrainConfig):
        default = field.default
        flag = "--" + field.name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, dest=field.name, type=type(default), default=None, metavar=field.name.upper())


def config_from_args(args: argparse.Namespace) -> Any:
    from trainables import TrainConfig

    given = {f: getattr(args, f) for f in TrainConfig.field_names() if getattr(args, f, None) is not None}
    return TrainConfig(**given)


def run_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    import trainables

    config = config_from_args(args)
    console = Console(soft_wrap=True)  # one line per epoch, even when piped
    console.print(
        f"training {config.model} on {config.dataset} with {config.optimizer} (lr {config.lr:g}, "
        f"batch {config.batch_size}, schedule {config.lr_schedule}) on {trainables.resolve_device(config.device)}"
    )
    for r in trainables.fit(config):
        console.print(
            f"epoch {r.epoch:3d}  train_loss {r.train_loss:.4f}  train_acc {r.train_acc:.3f}  "
            f"val_loss {r.val_loss:.4f}  val_acc {r.val_acc:.3f}  lr {r.lr:.3g}  "
            f"{r.seconds:.2f}s  {r.samples_per_second:,.0f} samples/s",
            highlight=False,
        )
        if r.test_acc is not None:
            console.print(f"test_acc {r.test_acc:.3f}  test_loss {r.test_loss:.4f}", highlight=False)
    return 0
