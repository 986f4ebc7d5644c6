"""Datasets as in-memory tensors, loaded once per process.

MNIST-1D is generated locally (no network). MNIST, FashionMNIST and CIFAR-10 are read
through torchvision's own dataset classes from `data_dir`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from trainables.datafiles import DatasetNotFound


@dataclass(frozen=True)
class Splits:
    """Train/validation/test tensors on the CPU; `x` is float, `y` is int64."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])


def load_splits(dataset: str, data_dir: str, download: bool, val_fraction: float, seed: int = 0) -> Splits:
    """Train/validation/test splits; validation is carved from the training part.

    The validation split is chosen by a fixed seed so that every trial of a study
    validates on the same samples, whatever the trial's own seed.
    """
    x, y, x_test, y_test, num_classes = _load_arrays(dataset, str(Path(data_dir).resolve()), download)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(len(x) * val_fraction))
    val, train = order[:n_val], order[n_val:]
    return Splits(x[train], y[train], x[val], y[val], x_test, y_test, num_classes)


@functools.lru_cache(maxsize=4)
def _load_arrays(
    dataset: str, data_dir: str, download: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    if dataset == "mnist1d":
        return _mnist1d()
    return _torchvision(dataset, data_dir, download)


def _mnist1d() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    from mnist1d.data import get_dataset_args, make_dataset

    data = make_dataset(get_dataset_args())  # generated locally; get_dataset would try the network

    def as_x(a: object) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.float32).unsqueeze(1)  # (N, 1 channel, 40)

    def as_y(a: object) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.int64)

    return as_x(data["x"]), as_y(data["y"]), as_x(data["x_test"]), as_y(data["y_test"]), 10


# (mean, std) per channel, the usual constants for each dataset
_NORMALIZATION = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}

_HOW_TO_GET = {
    "mnist": "MNIST/raw/ (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-*)",
    "fashion_mnist": "FashionMNIST/raw/ (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-*)",
    "cifar10": "cifar-10-batches-py/ (data_batch_1..5, test_batch, batches.meta)",
}


def _torchvision(
    dataset: str, data_dir: str, download: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    from torchvision import datasets

    cls = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "cifar10": datasets.CIFAR10}[dataset]
    try:
        train = cls(root=data_dir, train=True, download=download)
        test = cls(root=data_dir, train=False, download=download)
    except (RuntimeError, OSError) as exc:
        raise DatasetNotFound(
            f"{dataset} files not found in {data_dir}: put {_HOW_TO_GET[dataset]} there, "
            f"or pass download=True on a machine with internet access ({exc})"
        ) from None
    mean, std = (torch.tensor(v).view(-1, 1, 1) for v in _NORMALIZATION[dataset])

    def images(ds: object) -> torch.Tensor:
        data = torch.as_tensor(ds.data)  # type: ignore[attr-defined]
        if data.ndim == 3:  # (N, H, W) grey
            data = data.unsqueeze(1)
        else:  # CIFAR keeps (N, H, W, C)
            data = data.permute(0, 3, 1, 2)
        return ((data.float() / 255.0) - mean) / std

    def labels(ds: object) -> torch.Tensor:
        return torch.as_tensor(ds.targets, dtype=torch.int64)  # type: ignore[attr-defined]

    return images(train), labels(train), images(test), labels(test), 10
