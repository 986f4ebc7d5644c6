"""Our training loop for your model and your data: `fit_model(params, model_factory, train, val)`.

For a user who has an `nn.Module` and tensors, not a loop. The trial's params split in two:
those that are `TrainConfig` fields (optimizer, lr, batch_size, epochs, lr_schedule,
weight_decay, l1, dropout, momentum, betas, seed, precision, ...) go to the built-in loop;
every other one goes to `model_factory` as a keyword argument. `dropout` sets the rate of
every `nn.Dropout` in the model. The loss is cross-entropy over class indices.

    def train(params, context):
        return (yield from fit_model(params, MyNet, train=(x, y), val=(x_val, y_val), context=context))
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from trainables.config import TrainConfig
from trainables.data import Splits
from trainables.loop import CheckpointStore, fit_splits

Data = tuple[Any, Any] | Dataset[Any]  # (x, y) as tensors or numpy arrays, or a Dataset of (x, y) pairs


def fit_model(
    params: Mapping[str, Any],
    model_factory: Callable[..., nn.Module],
    train: Data,
    val: Data,
    test: Data | None = None,
    context: Any = None,
    num_classes: int | None = None,
) -> Generator[dict[str, float], None, nn.Module]:
    """Train `model_factory(**model_params)` on `train`, yielding each epoch's metrics; returns the trained model.

    Metrics: train_loss, train_acc, val_loss, val_acc, lr, seconds, samples_per_second, and on
    the last epoch test_loss and test_acc when `test` is given. With the tuner's `context`, the
    model trains on the device the run assigned and checkpoints through `context.save`/`load`,
    so a retried trial resumes where its checkpoint was. `num_classes` defaults to max(label) + 1.
    """
    fields = set(TrainConfig.field_names())
    train_params = {k: v for k, v in params.items() if k in fields}
    model_params = {k: v for k, v in params.items() if k not in fields}
    device = getattr(context, "device", None)
    if device is not None:
        train_params["device"] = str(device)
    config = TrainConfig(**train_params)
    x_train, y_train = as_tensors(train, "train")
    x_val, y_val = as_tensors(val, "val")
    x_test, y_test = as_tensors(test, "test") if test is not None else (x_train[:0], y_train[:0])
    classes = num_classes or int(max(int(y_train.max()), int(y_val.max())) + 1)
    splits = Splits(x_train, y_train, x_val, y_val, x_test, y_test, classes)
    torch.manual_seed(config.seed)  # the model's initial weights, as for the built-in models
    model = model_factory(**model_params)
    if "dropout" in params:
        for module in model.modules():
            if isinstance(module, nn.Dropout):
                module.p = float(params["dropout"])
    store: CheckpointStore | None = context if hasattr(context, "save") and hasattr(context, "load") else None
    every = getattr(context, "checkpoint_every", 0.0)
    epochs = fit_splits(config, splits, checkpoint=store, checkpoint_every=every, model=model)
    try:
        for result in epochs:
            yield result.metrics()
    finally:
        epochs.close()  # stopped early (pruned): the loop stops at once
    return model


def as_tensors(data: Data, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x as float32, y as int64) on the CPU, from a pair of arrays/tensors or a Dataset of pairs."""
    if isinstance(data, Sequence) and len(data) == 2 and not isinstance(data, Dataset):
        x, y = data
    elif isinstance(data, Dataset):
        items = [data[i] for i in range(len(data))]  # type: ignore[arg-type]
        if not items:
            raise ValueError(f"{name} data is empty")
        x = torch.stack([torch.as_tensor(item[0]) for item in items])
        y = torch.as_tensor([int(item[1]) for item in items])
    else:
        raise TypeError(
            f"{name} data: give (x, y) tensors or arrays, or a torch Dataset of (x, y); got {type(data).__name__}"
        )
    x_t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).float()
    y_t = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).long()
    if len(x_t) != len(y_t) or len(x_t) == 0:
        raise ValueError(f"{name} data: x has {len(x_t)} samples and y {len(y_t)}; give as many of each, at least one")
    return x_t, y_t
