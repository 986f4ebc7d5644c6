"""PyTorch trainables: a typed config in, one record per epoch out.

Imports torch and data libraries only; nothing here knows about Optuna or MLflow.
"""

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
from trainables.data import DatasetNotFound, load_splits
from trainables.loop import Diverged, EpochResult, fit, resolve_device
from trainables.models import build_model

__all__ = [
    "ADAM_FAMILY",
    "DATASETS",
    "MODELS",
    "MOMENTUM_OPTIMIZERS",
    "OPTIMIZERS",
    "SCHEDULES",
    "SCHEDULE_FIELDS",
    "ConfigError",
    "DatasetNotFound",
    "Diverged",
    "EpochResult",
    "TrainConfig",
    "build_model",
    "fit",
    "load_splits",
    "resolve_device",
]
