"""Datasets: MNIST-1D generated locally; MNIST, FashionMNIST and CIFAR-10 read by torchvision's own
classes from small files written here in the real on-disk formats."""

from __future__ import annotations

import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import datasets

from tests.trainables.helpers import assert_finite
from trainables import DatasetNotFound, TrainConfig, fit, load_splits

N_TRAIN, N_TEST = 64, 20
# The usual per-channel (mean, std) of each dataset, as published.
MNIST_NORM = ((0.1307,), (0.3081,))
FASHION_NORM = ((0.2860,), (0.3530,))
CIFAR_NORM = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file as LeCun's MNIST files are: big-endian magic (0, 0, 0x08 = ubyte, ndim), then dims."""
    assert array.dtype == np.uint8
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist_like(root: Path, folder: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (N_TRAIN, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, N_TRAIN, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (N_TEST, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, N_TEST, dtype=np.uint8),
    }
    for name, array in arrays.items():
        write_idx(raw / name, array)
    return arrays


def write_cifar10(root: Path, rng: np.random.Generator) -> dict[str, dict[str, object]]:
    """Pickled python batches as in cifar-10-python.tar.gz: rows of 3072 bytes (R plane, G, B)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    sizes = np.array_split(np.arange(N_TRAIN), 5)  # 64 images over data_batch_1..5
    batches: dict[str, dict[str, object]] = {}
    for i, part in enumerate(sizes, start=1):
        batches[f"data_batch_{i}"] = _cifar_batch(f"training batch {i} of 5", len(part), rng)
    batches["test_batch"] = _cifar_batch("testing batch 1 of 1", N_TEST, rng)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    batches["batches.meta"] = {"num_cases_per_batch": 10000, "label_names": names, "num_vis": 3072}
    for name, content in batches.items():
        (folder / name).write_bytes(pickle.dumps(content, protocol=2))
    return batches


def _cifar_batch(label: str, n: int, rng: np.random.Generator) -> dict[str, object]:
    return {
        "batch_label": label,
        "labels": rng.integers(0, 10, n).tolist(),
        "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
        "filenames": [f"img_{i}.png" for i in range(n)],
    }


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture
def cifar10_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Write CIFAR-10 files and point torchvision's md5 lists at them; its loading code stays real."""
    write_cifar10(tmp_path, np.random.default_rng(1))
    folder = tmp_path / "cifar-10-batches-py"
    monkeypatch.setattr(
        datasets.CIFAR10, "train_list", [[f"data_batch_{i}", md5(folder / f"data_batch_{i}")] for i in range(1, 6)]
    )
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    meta = {"filename": "batches.meta", "key": "label_names", "md5": md5(folder / "batches.meta")}
    monkeypatch.setattr(datasets.CIFAR10, "meta", meta)
    return tmp_path


def test_mnist1d_splits_have_the_documented_shapes() -> None:
    splits = load_splits("mnist1d", "unused", download=False, val_fraction=0.2)
    assert splits.x_train.shape == (3200, 1, 40)
    assert splits.x_val.shape == (800, 1, 40)
    assert splits.x_test.shape == (1000, 1, 40)
    assert splits.input_shape == (1, 40)
    assert splits.num_classes == 10
    assert splits.x_train.dtype == torch.float32
    assert splits.y_train.dtype == torch.int64
    assert set(splits.y_train.tolist()) == set(range(10))


def test_validation_split_is_fixed_by_its_seed_and_sized_by_val_fraction() -> None:
    a = load_splits("mnist1d", "unused", download=False, val_fraction=0.25)
    b = load_splits("mnist1d", "unused", download=False, val_fraction=0.25)
    other = load_splits("mnist1d", "unused", download=False, val_fraction=0.25, seed=1)
    assert len(a.y_val) == 1000
    assert len(a.y_train) == 3000
    assert torch.equal(a.x_val, b.x_val)
    assert not torch.equal(a.x_val, other.x_val)
    assert torch.equal(a.x_test, other.x_test)  # the test split is never shuffled into validation


@pytest.mark.parametrize(
    ("dataset", "folder", "norm"),
    [("mnist", "MNIST", MNIST_NORM), ("fashion_mnist", "FashionMNIST", FASHION_NORM)],
)
def test_mnist_and_fashion_mnist_load_from_raw_idx_files(
    tmp_path: Path, dataset: str, folder: str, norm: tuple[tuple[float], tuple[float]]
) -> None:
    arrays = write_mnist_like(tmp_path, folder, np.random.default_rng(0))
    splits = load_splits(dataset, str(tmp_path), download=False, val_fraction=0.25)

    assert splits.input_shape == (1, 28, 28)
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (48, 16, N_TEST)
    (mean,), (std,) = norm
    pixels = torch.from_numpy(arrays["t10k-images-idx3-ubyte"]).float().unsqueeze(1)
    torch.testing.assert_close(splits.x_test, (pixels / 255 - mean) / std)
    assert splits.y_test.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()
    train_labels = torch.cat([splits.y_train, splits.y_val]).sort().values
    assert train_labels.tolist() == sorted(arrays["train-labels-idx1-ubyte"].tolist())


@pytest.mark.parametrize(("dataset", "folder"), [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_cnn_trains_one_epoch_on_mnist_like_files(tmp_path: Path, dataset: str, folder: str) -> None:
    write_mnist_like(tmp_path, folder, np.random.default_rng(2))
    config = TrainConfig(dataset=dataset, model="cnn", data_dir=str(tmp_path), epochs=1, batch_size=16, device="cpu")
    records = list(fit(config))
    assert [r.epoch for r in records] == [1]
    assert_finite(records)
    assert records[0].test_acc is not None


def test_cifar10_loads_from_pickled_python_batches(cifar10_root: Path) -> None:
    root = cifar10_root
    written = pickle.loads((root / "cifar-10-batches-py" / "test_batch").read_bytes())
    splits = load_splits("cifar10", str(root), download=False, val_fraction=0.2)

    assert splits.input_shape == (3, 32, 32)
    assert len(splits.y_train) + len(splits.y_val) == N_TRAIN
    assert len(splits.y_test) == N_TEST
    # each row is 1024 red, then 1024 green, then 1024 blue bytes, row-major 32x32 planes
    planes = torch.from_numpy(written["data"]).float().view(N_TEST, 3, 32, 32)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in CIFAR_NORM)
    torch.testing.assert_close(splits.x_test, (planes / 255 - mean) / std)
    assert splits.y_test.tolist() == written["labels"]


@pytest.mark.slow
def test_resnet_trains_one_epoch_on_cifar10_files(cifar10_root: Path) -> None:
    root = cifar10_root
    config = TrainConfig(dataset="cifar10", model="resnet", data_dir=str(root), epochs=1, batch_size=32, device="cpu")
    records = list(fit(config))
    assert [r.epoch for r in records] == [1]
    assert_finite(records)
    assert records[0].test_acc is not None


def test_cifar10_with_a_corrupted_file_is_not_found(cifar10_root: Path) -> None:
    # torchvision checks every file's md5: a changed byte means the data set is not there
    batch = cifar10_root / "cifar-10-batches-py" / "data_batch_3"
    content = bytearray(batch.read_bytes())
    content[-10] ^= 0xFF
    batch.write_bytes(bytes(content))
    with pytest.raises(DatasetNotFound):
        load_splits("cifar10", str(cifar10_root), download=False, val_fraction=0.2)


@pytest.mark.parametrize(
    ("dataset", "expected_files"),
    [
        ("mnist", "MNIST/raw/"),
        ("fashion_mnist", "FashionMNIST/raw/"),
        ("cifar10", "cifar-10-batches-py/"),
    ],
)
def test_missing_data_directory_raises_dataset_not_found(tmp_path: Path, dataset: str, expected_files: str) -> None:
    missing = tmp_path / "no-such-dir"
    config = TrainConfig(dataset=dataset, model="cnn", data_dir=str(missing), device="cpu")
    records = fit(config)
    with pytest.raises(DatasetNotFound) as caught:
        next(records)
    message = str(caught.value)
    assert str(missing.resolve()) in message  # names the directory it looked in
    assert expected_files in message  # says which files to put there
    assert "download=True" in message  # or how to fetch them
    assert isinstance(caught.value, FileNotFoundError)
    assert not missing.exists()  # nothing was created while looking
