"""Assertions and helpers shared by the trainables tests."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator
from typing import TypeVar

from trainables import EpochResult

T = TypeVar("T")
R = TypeVar("R")

# depend on the clock and the process (its peak memory so far), not on the computation
TIMING_FIELDS = ("seconds", "samples_per_second", "peak_memory_mb")


def computed(record: EpochResult) -> dict[str, object]:
    """A record's fields without the timing ones, for exact comparisons between runs."""
    return {k: v for k, v in dataclasses.asdict(record).items() if k not in TIMING_FIELDS}


def assert_finite(records: list[EpochResult]) -> None:
    """Every epoch's metrics are finite numbers, accuracies lie in [0, 1], time was measured."""
    assert records, "fit yielded no epoch"
    for r in records:
        for name, value in r.metrics().items():
            assert math.isfinite(value), f"epoch {r.epoch}: {name}={value}"
        assert 0.0 <= r.train_acc <= 1.0
        assert 0.0 <= r.val_acc <= 1.0
        assert r.seconds > 0
        assert r.samples_per_second > 0


def run_to_end(epochs: Generator[T, None, R]) -> tuple[list[T], R]:
    """Every record a training generator yields, and what it returns (the trained model)."""
    records = []
    while True:
        try:
            records.append(next(epochs))
        except StopIteration as done:
            return records, done.value
