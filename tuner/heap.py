"""Keep the cyclic garbage collector off the long-lived heap of a worker or writer process.

Such a process loads torch, MLflow, SQLAlchemy and Optuna (some 500,000 objects), all
alive until it exits. Left alone, the collector walks them all in a full collection ten
times as they load (1.2 s of a `tuner run` start) and every few dozen trials after.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

_frozen = False  # a flag: gc.get_freeze_count() walks every frozen object (30 ms)
_held = False  # automatic collection is off until freeze_heap


@contextlib.contextmanager
def collections_held() -> Iterator[None]:
    """No automatic collection while the process starts up, until `freeze_heap` (or the end of the block)."""
    global _held
    if _frozen or not gc.isenabled():
        yield
        return
    gc.disable()
    _held = True
    try:
        yield
    finally:
        if _held:
            _held = False
            gc.enable()


def freeze_heap() -> None:
    """Take what is alive now out of the collector's scans, once per process, and let it collect again.

    The garbage trials leave triggers a full collection every few dozen trials, and each one
    walked all of the long-lived objects: 140-380 ms in bench/platform_overhead.py, a few ms
    per short trial on average; in the MLflow writer process, a trial waiting for its run id
    waited for such a collection. Frozen objects are still freed by reference counting;
    garbage cycles among them are collected first.
    """
    global _frozen, _held
    if not _frozen:
        _frozen = True
        gc.collect()
        gc.freeze()
    if _held:
        _held = False
        gc.enable()
