"""The summary table and the one-sentence answer, computed from real studies."""

from __future__ import annotations

import math
import statistics

import pytest

from tests.tuner.report.conftest import BASE_ACC, SEED_OFFSETS, Store
from tests.tuner.report.test_aggregate import T_975_DF2
from tuner.report import aggregate as agg
from tuner.report.extract import Tables, extract
from tuner.report.labels import fmt_lr
from tuner.report.load import load_studies
from tuner.report.summary import headline, summary_table


@pytest.fixture(scope="module")
def tables(comparison: Store) -> Tables:
    return extract(load_studies(["cmp"], comparison.storage), comparison.tracking_uri)


def test_summary_has_one_row_per_optimizer_best_first(tables: Tables) -> None:
    summary = summary_table(tables, "optimizer")
    assert list(summary["group"]) == ["adam", "momentum", "sgd"]  # by mean test accuracy of the tuned seeds
    tuning = agg.tuning(tables.trials)
    for row in summary.itertuples():
        own = tuning[tuning["optimizer"] == row.group]
        assert row.trials == len(own) and row.pruned == (own["state"] == "PRUNED").sum()
        assert row.epochs_spent == own["epochs_run"].sum()
        best = own.loc[own["value"].idxmax()]
        assert (row.best_value, row.best_lr) == (best["value"], best["lr"])
        assert row.best_config == f"lr={best['lr']:.3g}"
        half = T_975_DF2 * statistics.stdev(SEED_OFFSETS) / math.sqrt(3)
        mean = BASE_ACC[row.group] + sum(SEED_OFFSETS) / 3
        assert row.tuned_mean == pytest.approx(mean)
        assert (row.tuned_ci_low, row.tuned_ci_high) == pytest.approx((mean - half, mean + half), abs=1e-9)
        assert row.tuned_n_seeds == row.default_n_seeds == 3


def test_the_answer_names_winner_margin_learning_rate_and_certainty(tables: Tables) -> None:
    summary = summary_table(tables, "optimizer")
    answer = headline(tables, summary, "optimizer")
    adam = summary.iloc[0]
    assert answer.startswith("The optimizer adam won: mean test accuracy 0.901 over 3 seeds (95% CI 0.888 to 0.913)")
    assert f"with learning rate {fmt_lr(adam['best_lr'])}" in answer
    assert "0.040 ahead of momentum (0.861)" in answer
    assert "so the lead holds at 95%" in answer


def test_without_seeds_the_answer_says_there_is_no_interval(comparison: Store) -> None:
    tables = extract(load_studies(["cmp.sgd", "cmp.adam"], comparison.storage), comparison.tracking_uri)
    summary = summary_table(tables, "optimizer")
    answer = headline(tables, summary, "optimizer")
    best = summary.iloc[0]
    assert answer.startswith(f"The optimizer adam won on best validation accuracy: {best['best_value']:.3f}")
    assert "no confidence interval" in answer
    assert summary["tuned_n_seeds"].sum() == 0


def test_kind_answers_name_batch_size_and_regularization(kinds: Store) -> None:
    bs = extract(load_studies(["bs"], kinds.storage), kinds.tracking_uri)
    answer = headline(bs, summary_table(bs, None), None)
    assert answer.startswith("Batch size 32 reached the best validation accuracy") and "learning rate 0.003" in answer
    assert "batch size 128" in answer and "lr 0.012" in answer
    reg = extract(load_studies(["reg"], kinds.storage), kinds.tracking_uri)
    answer = headline(reg, summary_table(reg, None), None)
    assert "dropout rate 0.4" in answer and "test accuracy 0.790, train-test gap 0.060" in answer
    sched = extract(load_studies(["sched"], kinds.storage), kinds.tracking_uri)
    assert agg.comparison_key(sched.trials) == "schedule"
    assert "learning-rate schedule" in headline(sched, summary_table(sched, "schedule"), "schedule")
