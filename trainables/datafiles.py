"""Which files each torchvision dataset needs, checked without importing torch.

So that a study can refuse a missing dataset before it creates anything, instead of every
trial failing on it.
"""

from __future__ import annotations

from pathlib import Path


class DatasetNotFound(FileNotFoundError):
    """A torchvision dataset's files are not in the data directory."""


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
# dataset -> (folder under data_dir, files torchvision reads there)
REQUIRED_FILES = {
    "mnist": ("MNIST/raw", _MNIST_FILES),
    "fashion_mnist": ("FashionMNIST/raw", _MNIST_FILES),
    "cifar10": ("cifar-10-batches-py", (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta")),
}


def missing_files(dataset: str, data_dir: str) -> list[Path]:
    """The files of `dataset` that are not in `data_dir` (none for generated datasets such as mnist1d)."""
    if dataset not in REQUIRED_FILES:
        return []
    folder, names = REQUIRED_FILES[dataset]
    root = Path(data_dir).expanduser() / folder
    return [root / name for name in names if not (root / name).is_file()]


def check_dataset_files(dataset: str, data_dir: str, download: bool = False) -> None:
    """Raise DatasetNotFound naming the missing files and the fix, unless torchvision may download them."""
    missing = [] if download else missing_files(dataset, data_dir)
    if missing:
        folder = REQUIRED_FILES[dataset][0]
        shown = ", ".join(p.name for p in missing[:3]) + (", ..." if len(missing) > 3 else "")
        raise DatasetNotFound(
            f"dataset {dataset}: {len(missing)} file(s) missing in {Path(data_dir).expanduser() / folder} ({shown}); "
            f"put the {dataset} files there, point --data-dir (data_dir) at them, or add --download (download=True) "
            "on a machine with internet access"
        )
