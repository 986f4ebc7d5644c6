"""Datasets as in-memory tensors, loaded once per process.

MNIST-1D is generated locally (no network), once per machine: the arrays are kept in the
dataset cache (`cache_dir()`: $TUNER_CACHE_DIR, else $XDG_CACHE_HOME/tuner, else
~/.cache/tuner), in a file named by a hash of the generation arguments and the mnist1d
version, so every later process loads them in milliseconds instead of generating them
(seconds, and importing mnist1d imports scipy and matplotlib). MNIST, FashionMNIST and
CIFAR-10 are read through torchvision's own dataset classes from `data_dir`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainables.cache import cache_dir
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


@functools.lru_cache(maxsize=8)
def describe_dataset(
    dataset: str, data_dir: str, download: bool, val_fraction: float, train_samples: int = 0
) -> dict[str, Any]:
    """What a run trained on, for experiment tracking: name, digest, source, schema and split sizes.

    The digest is a hash of the arrays' shapes, their first and last rows and all labels, and
    the split (as MLflow digests its own datasets: a sample, not every byte), so runs on the
    same data share it and a different file, generation or split gets another. Loads the
    arrays as a trial does (once per process).
    """
    x, y, x_test, y_test, num_classes = _load_arrays(dataset, str(Path(data_dir).resolve()), download)  # as trained
    n_val = max(1, round(len(x) * val_fraction))
    n_train = len(x) - n_val if not train_samples else min(train_samples, len(x) - n_val)
    digest = hashlib.sha256(
        json.dumps([dataset, list(x.shape), list(x_test.shape), val_fraction, train_samples]).encode()
    )
    for array in (x[:1000], x[-1000:], y, x_test[:1000], y_test):
        digest.update(array.contiguous().numpy().tobytes())
    source: dict[str, Any] = (
        {"generator": "mnist1d.data.make_dataset", "args": {k: v for k, v in MNIST1D_ARGS.items() if k != "url"}}
        if dataset == "mnist1d"
        else {"path": str(Path(data_dir).resolve())}
    )
    return {
        "name": dataset,
        "digest": digest.hexdigest()[:16],
        "source_type": "code" if dataset == "mnist1d" else "local",
        "source": source,
        "schema": {"features": list(x.shape[1:]), "classes": num_classes},
        "profile": {"train": n_train, "validation": n_val, "test": len(x_test)},
    }


@functools.lru_cache(maxsize=4)
def _load_arrays(
    dataset: str, data_dir: str, download: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    if dataset == "mnist1d":
        return _mnist1d()
    return _torchvision(dataset, data_dir, download)


# mnist1d's own defaults (`mnist1d.data.get_dataset_args()`, checked by a test), spelled out so
# that the cache key is known without importing mnist1d
MNIST1D_ARGS: dict[str, Any] = {
    "num_samples": 5000,
    "train_split": 0.8,
    "template_len": 12,
    "padding": [36, 60],
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2,
    "shear_scale": 0.75,
    "shuffle_seq": False,
    "final_seq_length": 40,
    "seed": 42,
    "url": "https://github.com/greydanus/mnist1d/raw/master/mnist1d_data.pkl",
}
_ARRAYS = ("x", "y", "x_test", "y_test")


def mnist1d_cache_file(args: dict[str, Any] | None = None) -> Path:
    """The cache file of MNIST-1D generated with `args`: named by a hash of them and of the mnist1d version."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        generator = version("mnist1d")
    except PackageNotFoundError:
        generator = "unknown"
    key = json.dumps({"args": args or MNIST1D_ARGS, "mnist1d": generator, "format": 1}, sort_keys=True)
    return cache_dir() / f"mnist1d-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def mnist1d_arrays(args: dict[str, Any] | None = None) -> dict[str, Any]:
    """MNIST-1D's numpy arrays (x, y, x_test, y_test) from the cache, generated and cached when missing or unreadable.

    The file is written whole to a temporary file beside it and moved into place, so several
    processes generating at once each leave a complete file and a reader never sees a partial
    one; a file that is damaged all the same is generated again. A cache that cannot be written
    costs the generation, never the run.
    """
    import numpy as np

    args = dict(args or MNIST1D_ARGS)
    try:
        path: Path | None = mnist1d_cache_file(args)
    except (OSError, RuntimeError):  # no home folder to keep a cache in: generated, as without one
        path = None
    arrays = _read_cached(path) if path is not None else None
    if arrays is not None:
        return arrays
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    data = make_dataset(ObjectView(args))  # generated locally; get_dataset would try the network
    arrays = {name: np.asarray(data[name]) for name in _ARRAYS}
    if path is None:
        return arrays
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as f:
            tmp = Path(f.name)
            try:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                f.close()
                tmp.unlink(missing_ok=True)
                raise
        os.replace(tmp, path)
    except OSError as exc:
        logging.getLogger(__name__).warning("dataset cache %s not written (%s); generating it each time", path, exc)
    return arrays


def _read_cached(path: Path) -> dict[str, Any] | None:
    """The arrays in a cache file; None when it is missing, damaged or not what was cached."""
    import zipfile

    import numpy as np

    try:
        with np.load(path, allow_pickle=False) as cached:
            arrays = {name: cached[name] for name in _ARRAYS}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        logging.getLogger(__name__).info("dataset cache %s unreadable (%s); generating it again", path, exc)
        return None
    x, y, x_test, y_test = (arrays[name] for name in _ARRAYS)
    if x.ndim != 2 or x_test.ndim != 2 or len(x) != len(y) or len(x_test) != len(y_test) or y.ndim != 1:
        return None
    return arrays


def _mnist1d() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int]:
    data = mnist1d_arrays()

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
