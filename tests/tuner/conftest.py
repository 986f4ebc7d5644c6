from __future__ import annotations

from pathlib import Path

import pytest

from tuner.study import RunOptions


@pytest.fixture
def options(tmp_path: Path) -> RunOptions:
    """A private local store: journal storage and SQLite MLflow in a temp dir."""
    return RunOptions(
        storage=str(tmp_path / "optuna.journal"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        quiet=True,
        report=False,
    )
