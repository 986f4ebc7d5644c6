"""tuner: Optuna studies over PyTorch trainables, tracked in MLflow.

The pieces, one module each: `space` (search spaces as data), `study` (a study's spec and
sampler/pruner), `adapter` (trainable <-> Optuna/MLflow, trial states), `tracking` (MLflow),
`runner` (runs a study), `group` (scripts that run several studies alike), `cli` (the `tuner` command).

Names are imported on first use, so that `tuner --help` does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Budget": "tuner.group",
    "Rerun": "tuner.group",
    "StudyGroup": "tuner.group",
    "Categorical": "tuner.space",
    "Float": "tuner.space",
    "Int": "tuner.space",
    "default_space": "tuner.space",
    "RunOptions": "tuner.study",
    "StudySpec": "tuner.study",
    "UserError": "tuner.errors",
    "main_for_script": "tuner.cli",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")
