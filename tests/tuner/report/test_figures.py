"""What each figure draws (its traces' data and labels), built from real studies' tables."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from tests.tuner.report.conftest import BASE_ACC, REG_TRIALS, Store
from tuner.report import aggregate as agg
from tuner.report.extract import Tables, extract
from tuner.report.load import load_studies
from tuner.report.sections import MAX_CURVES_PER_STUDY, Entry, build_entries


@pytest.fixture(scope="module")
def tables(comparison: Store) -> Tables:
    return extract(load_studies(["cmp"], comparison.storage), comparison.tracking_uri)


@pytest.fixture(scope="module")
def entries(tables: Tables) -> dict[str, Entry]:
    return {e.slug: e for e in build_entries(tables, "optimizer")}


def named(entry: Entry, name: str) -> list:
    return [t for t in entry.figure.data if t.name == name]


def test_every_figure_has_a_title_and_axis_labels(entries: dict[str, Entry]) -> None:
    for slug, entry in entries.items():
        if entry.figure is None:
            assert entry.note, slug
            continue
        layout = entry.figure.layout
        assert layout.title.text, slug
        if entry.figure.data[0].type not in ("parcoords",):
            assert layout.xaxis.title.text and layout.yaxis.title.text, slug


def test_learning_curves_draw_median_band_and_seed_reruns_per_optimizer(
    tables: Tables, entries: dict[str, Entry]
) -> None:
    fig = entries["learning-curves"].figure
    assert [a.text for a in fig.layout.annotations] == ["optimizer: sgd", "optimizer: momentum", "optimizer: adam"]
    medians = [t for t in fig.data if t.name == "median of tuning trials"]
    bands = agg.curve_bands(tables.epochs, tables.trials, "optimizer")
    adam = bands[bands["group"] == "adam"].sort_values("epoch")
    assert list(medians[2].y) == pytest.approx(list(adam["median"]))
    seeds = [t for t in fig.data if t.name == "seed re-runs of the best config"]
    assert len(seeds) == 3
    assert sum(y is None for y in seeds[2].y) == 3  # three tuned seed runs of adam, one polyline each


def test_lr_sensitivity_plots_complete_trials_on_a_log_axis(tables: Tables, entries: dict[str, Entry]) -> None:
    fig = entries["lr-sensitivity"].figure
    assert fig.layout.xaxis.type == "log"
    adam = next(t for t in fig.data if t.name == "adam")
    own = tables.trials[(tables.trials["study"] == "cmp.adam") & (tables.trials["state"] == "COMPLETE")]
    assert sorted(adam.x) == pytest.approx(sorted(own["lr"]))
    assert sorted(adam.y) == pytest.approx(sorted(own["value"]))


def test_budget_curves_end_at_each_optimizers_best(tables: Tables, entries: dict[str, Entry]) -> None:
    fig = entries["tuning-budget"].figure
    for trace in fig.data:
        own = tables.trials[tables.trials["study"] == f"cmp.{trace.name}"]
        assert trace.y[-1] == pytest.approx(own["value"].max())
        assert trace.x[-1] == len(own)
        assert list(trace.y) == sorted(trace.y)


def test_seed_figure_shows_tuned_and_default_with_mean_and_ci(entries: dict[str, Entry]) -> None:
    fig = entries["seed-reruns"].figure
    tuned, default = (
        named(entries["seed-reruns"], "tuned config: seeds")[0],
        named(entries["seed-reruns"], "default config: seeds")[0],
    )
    assert len(tuned.y) == len(default.y) == 9
    ci = named(entries["seed-reruns"], "mean and 95% CI (t-interval)")[0]
    means = dict(zip(zip(*ci.x, strict=True), ci.y, strict=True))
    assert means[("adam", "tuned")] > means[("adam", "default")]
    assert means[("adam", "tuned")] == pytest.approx(BASE_ACC["adam"] + 0.002 / 3)
    assert all(v > 0 for v in ci.error_y.array) and "test accuracy" in fig.layout.yaxis.title.text


def test_intermediate_values_mark_pruned_trials(tables: Tables, entries: dict[str, Entry]) -> None:
    entry = entries["cmp-adam-intermediate"]
    crosses = named(entry, "pruned here")[0]
    pruned = tables.trials[(tables.trials["study"] == "cmp.adam") & (tables.trials["state"] == "PRUNED")]
    assert sorted(crosses.customdata) == sorted(pruned["number"])
    assert set(crosses.x) == {2}


def test_parallel_coordinates_use_log10_for_log_parameters(entries: dict[str, Entry], tables: Tables) -> None:
    dims = entries["cmp-sgd-parallel"].figure.data[0].dimensions
    assert [d.label for d in dims] == ["log10(learning rate)", "validation accuracy"]
    own = tables.trials[(tables.trials["study"] == "cmp.sgd") & (tables.trials["state"] == "COMPLETE")]
    assert sorted(dims[0].values) == pytest.approx(sorted(own["lr"].map(math.log10)))


def test_skipped_importances_leave_a_note_and_seeds_have_no_parallel_plot(entries: dict[str, Entry]) -> None:
    assert entries["cmp-adam-importances"].figure is None
    assert "need 5" in (entries["cmp-adam-importances"].note or "")
    assert entries["cmp-seeds-parallel"].figure is None


def test_timeline_has_one_bar_per_trial(tables: Tables, entries: dict[str, Entry]) -> None:
    fig = entries["cmp-momentum-timeline"].figure
    bars = sum(sum(y is None for y in t.y) for t in fig.data)
    assert bars == (tables.trials["study"] == "cmp.momentum").sum()


def test_kind_figures(kinds: Store) -> None:
    tables = extract(load_studies(["sched", "bs", "reg"], kinds.storage), kinds.tracking_uri)
    entries = {e.slug: e for e in build_entries(tables, agg.comparison_key(tables.trials))}
    lr = entries["schedule-lr"].figure
    cosine = next(t for t in lr.data if t.name == "cosine")
    assert list(cosine.y) == pytest.approx([cosine.y[0] * 0.5**e for e in range(4)])  # the scripted schedule
    batch = entries["batch-size-bs"].figure
    assert list(batch.data[0].x) == ["32", "128"] and list(batch.data[0].y) == pytest.approx([0.003, 0.012])
    reg = entries["regularization-reg"].figure
    gaps = [t for t in reg.data if t.name == "train-test gap"]
    assert len(gaps) == 3 and sorted(gaps[2].x) == [d for _, _, d in REG_TRIALS]
    assert sorted(gaps[2].y, reverse=True) == pytest.approx([0.1, 0.08, 0.06])


def test_intermediate_values_are_capped_for_many_trials() -> None:
    rows = [("s", i, "COMPLETE" if i % 2 else "PRUNED", i / 1000 if i % 2 else math.nan) for i in range(400)]
    trials = pd.DataFrame(rows, columns=["study", "number", "state", "value"])
    shown = agg.shown_trials(trials, "maximize", MAX_CURVES_PER_STUDY)
    assert len(shown) == MAX_CURVES_PER_STUDY and 399 in set(shown["number"])
