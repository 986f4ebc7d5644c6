"""Derived tables, on hand-made tidy tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tuner.report import aggregate as agg

T_975_DF2 = 4.302652729911275  # Student's t quantile, 97.5%, 2 degrees of freedom


def trials(rows: list[tuple[str, int, str, float, str | None]], kind: str = "generic") -> pd.DataFrame:
    """(study, number, state, value, optimizer) rows with the columns extract gives."""
    frame = pd.DataFrame(rows, columns=["study", "number", "state", "value", "optimizer"])
    return frame.assign(kind=kind, group=None, seed=math.nan, schedule=None)


def test_curve_bands_are_median_and_quartiles_per_group_and_epoch() -> None:
    t = trials(
        [("s", 0, "COMPLETE", 0.5, "adam"), ("s", 1, "PRUNED", math.nan, "adam"), ("s", 2, "COMPLETE", 0.9, "adam")]
    )
    epochs = pd.DataFrame(
        [("s", 0, 1, 0.1), ("s", 1, 1, 0.2), ("s", 2, 1, 0.3), ("s", 0, 2, 0.5), ("s", 2, 2, 0.9)],
        columns=["study", "number", "epoch", "value"],
    )
    bands = agg.curve_bands(epochs, t, "optimizer").set_index("epoch")
    assert bands.loc[1, "median"] == pytest.approx(0.2)
    assert (bands.loc[1, "q25"], bands.loc[1, "q75"]) == pytest.approx((0.15, 0.25))
    assert bands.loc[1, "n_trials"] == 3 and bands.loc[2, "n_trials"] == 2  # the pruned trial stopped
    assert bands.loc[2, "median"] == pytest.approx(0.7)


def test_best_so_far_counts_pruned_trials_and_keeps_only_changes() -> None:
    t = trials(
        [
            ("s", 0, "PRUNED", math.nan, "sgd"),
            ("s", 1, "COMPLETE", 0.5, "sgd"),
            ("s", 2, "COMPLETE", 0.4, "sgd"),
            ("s", 3, "COMPLETE", 0.7, "sgd"),
            ("s", 4, "FAIL", math.nan, "sgd"),
        ]
    )
    best = agg.best_so_far(t, "optimizer", "maximize")
    assert list(zip(best["n_trials"], best["best_value"], strict=True)) == [(2, 0.5), (4, 0.7), (5, 0.7)]
    lowest = agg.best_so_far(t, "optimizer", "minimize")
    assert list(lowest["best_value"]) == [0.5, 0.4, 0.4]


def test_t_interval_matches_the_textbook_formula() -> None:
    mean, low, high = agg.t_interval(pd.Series([0.80, 0.82, 0.84]))
    half = T_975_DF2 * 0.02 / math.sqrt(3)
    assert (mean, low, high) == pytest.approx((0.82, 0.82 - half, 0.82 + half))
    assert math.isnan(agg.t_interval(pd.Series([0.8]))[1])  # one seed: no interval


def test_welch_difference_is_centred_on_the_difference_of_means() -> None:
    diff, low, high = agg.welch_difference(pd.Series([0.90, 0.91, 0.92]), pd.Series([0.80, 0.81, 0.82]))
    assert diff == pytest.approx(0.10)
    assert 0 < low < diff < high and (low + high) / 2 == pytest.approx(diff)


def test_shown_trials_caps_the_count_and_keeps_the_best_and_some_pruned() -> None:
    rows = [("s", i, "COMPLETE", i / 100, "adam") for i in range(50)]
    rows += [("s", 50 + i, "PRUNED", math.nan, "adam") for i in range(50)]
    shown = agg.shown_trials(trials(rows), "maximize", limit=30)
    assert len(shown) == 30
    complete = shown[shown["state"] == "COMPLETE"]
    assert complete["number"].max() == 49 and complete["number"].min() == 49 - len(complete) + 1
    assert (shown["state"] == "PRUNED").sum() == 10


def test_comparison_key_prefers_optimizers_then_schedules() -> None:
    t = trials([("a", 0, "COMPLETE", 0.5, "adam"), ("b", 0, "COMPLETE", 0.6, "sgd")])
    assert agg.comparison_key(t) == "optimizer"
    same = t.assign(optimizer="adam", schedule=["cosine", "step"])
    assert agg.comparison_key(same) == "schedule"
    assert agg.comparison_key(same.assign(schedule="step")) is None
    assert agg.group_order(pd.Series(["adam", "zeta", "sgd"]), "optimizer") == ["sgd", "adam", "zeta"]


def test_batch_size_best_picks_each_batch_sizes_best_trial() -> None:
    t = trials([("b", i, "COMPLETE", v, "adam") for i, v in enumerate((0.7, 0.8, 0.6, 0.9))])
    t = t.assign(batch_size=[32, 32, 128, 128], lr=[0.001, 0.003, 0.001, 0.01])
    best = agg.batch_size_best(t, "maximize")
    assert best.to_dict("list") == {
        "batch_size": [32, 128],
        "best_lr": [0.003, 0.01],
        "best_value": [0.8, 0.9],
        "n_trials": [2, 2],
    }


def test_regularization_points_have_the_train_test_gap() -> None:
    t = trials([("r", 0, "COMPLETE", 0.8, "adam"), ("r", 1, "PRUNED", math.nan, "adam")])
    t = t.assign(weight_decay=1e-4, l1=0.0, dropout=0.2, train_acc=[0.95, 0.5], val_acc=0.8, test_acc=[0.85, math.nan])
    points = agg.regularization_points(t)
    assert len(points) == 1 and points.loc[0, "gap"] == pytest.approx(0.10)
