"""Where tuner keeps what a machine can make again: generated datasets, an empty MLflow store.

Importing this module costs nothing (no torch), so the CLI's store set-up can use it too.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "TUNER_CACHE_DIR"


def cache_dir() -> Path:
    """$TUNER_CACHE_DIR, else $XDG_CACHE_HOME/tuner, else ~/.cache/tuner."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "tuner"
