"""PyTorch trainables: a typed config in, one record per epoch out.

Imports torch and data libraries only; nothing here knows about Optuna or MLflow.
Names are imported on first use, so that reading `TrainConfig` does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trainables.cohort import Cohort, checkpoint_epoch, cohort_key
    from trainables.config import (
        ADAM_FAMILY,
        DATASETS,
        MODELS,
        MOMENTUM_OPTIMIZERS,
        OPTIMIZERS,
        SCHEDULE_FIELDS,
        SCHEDULES,
        ConfigError,
        TrainConfig,
    )
    from trainables.data import describe_dataset, load_splits
    from trainables.datafiles import DatasetNotFound, check_dataset_files
    from trainables.loop import (
        CheckpointStore,
        Diverged,
        EpochResult,
        FileCheckpoint,
        fit,
        fit_splits,
        resolve_device,
        takes_train_config,
    )
    from trainables.models import build_model
    from trainables.own_model import fit_model

_EXPORTS = {
    **dict.fromkeys(
        ["ADAM_FAMILY", "DATASETS", "MODELS", "MOMENTUM_OPTIMIZERS", "OPTIMIZERS", "SCHEDULES", "SCHEDULE_FIELDS"],
        "trainables.config",
    ),
    "Cohort": "trainables.cohort",
    "checkpoint_epoch": "trainables.cohort",
    "cohort_key": "trainables.cohort",
    "ConfigError": "trainables.config",
    "TrainConfig": "trainables.config",
    "DatasetNotFound": "trainables.datafiles",
    "check_dataset_files": "trainables.datafiles",
    "load_splits": "trainables.data",
    "describe_dataset": "trainables.data",
    "CheckpointStore": "trainables.loop",
    "Diverged": "trainables.loop",
    "FileCheckpoint": "trainables.loop",
    "takes_train_config": "trainables.loop",
    "fit_model": "trainables.own_model",
    "EpochResult": "trainables.loop",
    "fit": "trainables.loop",
    "fit_splits": "trainables.loop",
    "resolve_device": "trainables.loop",
    "build_model": "trainables.models",
}
__all__ = [  # spelled out, not sorted(_EXPORTS): linters read the public names from a literal list
    "ADAM_FAMILY",
    "DATASETS",
    "MODELS",
    "MOMENTUM_OPTIMIZERS",
    "OPTIMIZERS",
    "SCHEDULES",
    "SCHEDULE_FIELDS",
    "CheckpointStore",
    "Cohort",
    "ConfigError",
    "DatasetNotFound",
    "Diverged",
    "EpochResult",
    "FileCheckpoint",
    "TrainConfig",
    "build_model",
    "check_dataset_files",
    "checkpoint_epoch",
    "cohort_key",
    "describe_dataset",
    "fit",
    "fit_model",
    "fit_splits",
    "load_splits",
    "resolve_device",
    "takes_train_config",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainables' has no attribute {name!r}")
