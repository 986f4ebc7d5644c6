"""The fair-comparison protocol in the report: expected best value against trials tried, epochs spent tuning."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from tests.tuner.report.conftest import EPOCHS, Store
from tuner.report import aggregate as agg
from tuner.report import protocol_stats as ps
from tuner.report.extract import Tables, extract
from tuner.report.load import load_studies
from tuner.report.render import captioned
from tuner.report.sections import Entry, build_entries
from tuner.report.summary import epoch_budget, epoch_budget_text

ARMS = ["sgd", "momentum", "adam"]  # the fixture's optimizers, in the report's order
DEFAULTS = "default config at n = 1 (mean of its seed re-runs)"


@pytest.fixture(scope="module")
def tables(comparison: Store) -> Tables:
    return extract(load_studies(["cmp"], comparison.storage), comparison.tracking_uri)


@pytest.fixture(scope="module")
def figure(tables: Tables) -> Entry:
    return next(e for e in build_entries(tables, "optimizer") if e.slug == "expected-best")


def tried_by_hand(tables: Tables, arm: str) -> list[float]:
    """A complete tuning trial's value, a pruned one's last reported value, in trial order."""
    own = tables.trials[tables.trials["study"] == f"cmp.{arm}"].sort_values("number")
    return [r.value if r.state == "COMPLETE" else r.last_value for r in own.itertuples() if r.state != "FAIL"]


def test_one_line_and_band_per_optimizer_and_a_default_marker_each(tables: Tables, figure: Entry) -> None:
    fig = figure.figure
    lines = [t for t in fig.data if t.name in ARMS]
    assert [t.name for t in lines] == ARMS
    for line in lines:
        band = [t for t in fig.data if t.legendgroup == line.name and t is not line]
        assert [t.fill for t in band] == [None, "tonexty"]  # upper edge, then the lower edge filled up to it
        assert list(band[0].x) == list(line.x) == list(range(1, len(line.x) + 1))
    defaults = [t for t in fig.data if t.name == DEFAULTS]
    assert len(defaults) == 1 and list(defaults[0].x) == [1, 1, 1]
    assert list(defaults[0].marker.color) == [t.line.color for t in lines]
    assert defaults[0].marker.symbol == "circle-open"
    runs = tables.trials[(tables.trials["kind"] == "seeds") & (tables.trials["group"] == "default")]
    by_hand = [runs[runs["optimizer"] == arm]["value"].mean() for arm in ARMS]
    assert list(defaults[0].y) == pytest.approx(by_hand)
    assert "hollow markers at n = 1" in (figure.caption or "")


def test_each_line_is_the_mean_best_over_every_subset_of_the_trials_tried(tables: Tables, figure: Entry) -> None:
    for arm in ARMS:
        values = tried_by_hand(tables, arm)
        assert len(values) == 6  # the pruned trials count
        line = next(t for t in figure.figure.data if t.name == arm)
        brute = [np.mean([max(c) for c in itertools.combinations(values, n)]) for n in range(1, 7)]
        assert list(line.y) == pytest.approx(brute, abs=1e-12)
        bands = ps.expected_max_bands(values, n_boot=agg.BAND_RESAMPLES, level=agg.BAND_LEVEL, seed=agg.BAND_SEED)
        upper, lower = (t for t in figure.figure.data if t.legendgroup == arm and t.name != arm)
        assert list(upper.y) == pytest.approx(list(bands["high"]))
        assert list(lower.y) == pytest.approx(list(bands["low"]))
    pruned = tables.trials[tables.trials["state"] == "PRUNED"]
    assert len(pruned) and pruned["value"].isna().all()  # what makes the test above count pruned trials by hand


def test_dotted_lines_mark_where_the_ranking_of_the_lines_changes(figure: Entry) -> None:
    lines = {t.name: list(t.y) for t in figure.figure.data if t.name in ARMS}
    orders = [sorted(ARMS, key=lambda arm: -lines[arm][n]) for n in range(6)]
    by_hand = [n + 1 for n in range(1, 6) if orders[n] != orders[n - 1]]
    assert by_hand  # the fixture's curves do cross
    marks = next(t for t in figure.figure.data if t.name == "ranking changes")
    assert marks.line.dash == "dot"
    assert [x for x in marks.x if x is not None][::2] == by_hand
    assert [t for t in marks.text if t is not None][::2] == [" > ".join(orders[n - 1]) for n in by_hand]


def test_without_a_seeds_study_there_are_no_default_markers(comparison: Store) -> None:
    tables = extract(load_studies(["cmp.sgd", "cmp.adam"], comparison.storage), comparison.tracking_uri)
    entry = next(e for e in build_entries(tables, "optimizer") if e.slug == "expected-best")
    assert [t.name for t in entry.figure.data if t.legendgroup == t.name] == ["sgd", "adam"]
    assert not [t for t in entry.figure.data if t.name == DEFAULTS]
    assert "hollow" not in (entry.caption or "") and "where lines cross" in (entry.caption or "")


def test_tried_values_score_pruned_trials_by_their_last_value_and_drop_failed_ones() -> None:
    trials = pd.DataFrame(
        {
            "state": ["COMPLETE", "PRUNED", "FAIL", "RUNNING"],
            "value": [0.8, math.nan, math.nan, math.nan],
            "last_value": [0.8, 0.4, 0.3, 0.2],
        }
    )
    values = agg.tried_values(trials).tolist()
    assert values[:2] == [0.8, 0.4] and all(math.isnan(v) for v in values[2:])


def test_the_png_carries_the_caption_and_keeps_the_plots_size(figure: Entry) -> None:
    png = captioned(figure)
    assert png.layout.title.subtitle.text.replace("<br>", " ") == figure.caption
    original = figure.figure.layout
    assert png.layout.height - png.layout.margin.t == original.height - original.margin.t
    assert original.title.subtitle.text is None  # the page's figure is left as it was


def test_epochs_spent_tuning_per_optimizer(tables: Tables) -> None:
    tuning = tables.trials[tables.trials["kind"] == "optimizer_tuning"]
    spent = {
        arm: EPOCHS * ((part["state"] == "COMPLETE").sum()) + 2 * ((part["state"] == "PRUNED").sum())
        for arm, part in tuning.groupby("optimizer")
    }  # the fixture prunes after epoch 2
    line = epoch_budget(tables, "optimizer") or ""
    assert line.startswith("Epochs spent tuning: " + ", ".join(f"{arm} {spent[arm]}" for arm in ARMS) + ".")
    most, least = max(spent, key=spent.__getitem__), min(spent, key=spent.__getitem__)
    assert spent[most] > 1.1 * spent[least]  # so the line must say the budgets differ
    assert f"{most} trained {spent[most] / spent[least] - 1:.0%} more epochs than {least}" in line


def test_the_epochs_line_warns_only_past_ten_percent() -> None:
    even = epoch_budget_text(pd.Series({"sgd": 100, "adam": 110}), "optimizer")
    assert even == "Epochs spent tuning: sgd 100, adam 110."
    uneven = epoch_budget_text(pd.Series({"sgd": 100, "adam": 111}), "optimizer")
    assert uneven.startswith(even.replace("110", "111") + " The optimizers did not get equal budgets in epochs:")
    assert "adam trained 11% more epochs than sgd" in uneven
    assert "adam trained 5 epochs and sgd none" in epoch_budget_text(pd.Series({"sgd": 0, "adam": 5}), "optimizer")
    assert epoch_budget(Tables(*(pd.DataFrame(),) * 5), None) is None
