"""Assertions shared by the trainables tests."""

from __future__ import annotations

import dataclasses
import math

from trainables import EpochResult

TIMING_FIELDS = ("seconds", "samples_per_second")  # depend on the clock, not on the computation


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
