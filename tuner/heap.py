"""Keep the cyclic garbage collector off the long-lived heap of a worker or writer process."""

from __future__ import annotations

import gc

_frozen = False


def freeze_heap() -> None:
    """Take what is alive now (torch, MLflow, SQLAlchemy, Optuna: some 500,000 objects) out of the
    cyclic garbage collector's scans, once per process.

    The garbage trials leave triggers a full collection every few dozen trials, and each one
    walked all of those long-lived objects: 140-380 ms in bench/platform_overhead.py, a few
    ms per short trial on average; in the MLflow writer process, a trial waiting for its run
    id waited for such a collection. Frozen objects are still freed by reference counting;
    garbage cycles among them are collected first.
    """
    global _frozen
    if not _frozen:  # a flag: gc.get_freeze_count() walks every frozen object (30 ms)
        _frozen = True
        gc.collect()
        gc.freeze()
