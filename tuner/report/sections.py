"""Which figures a report holds, decided from its tables: comparison, seeds, per-kind, per-study."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import pandas as pd

from tuner.report import aggregate as agg
from tuner.report import figures, study_figures
from tuner.report.extract import Tables
from tuner.report.labels import metric_label, seed_metric_label, test_metric_for

MAX_CURVES_PER_STUDY = 60  # intermediate-values figure: more lines are unreadable and slow to draw


@dataclass
class Entry:
    """One figure of the page, or the note that stands in for it."""

    slug: str  # unique; the PNG's file name and the plot div's id
    section: str
    figure: Any  # plotly Figure, or None when a note stands in for it
    note: str | None = None
    caption: str | None = None  # one sentence under the figure: what it shows and how to read it


def build_entries(tables: Tables, by: str | None) -> list[Entry]:
    trials, epochs, direction = agg.in_comparison(tables.trials, by), tables.epochs, tables.direction
    metric = metric_label(tables.metric)
    search = agg.tuning(trials)
    groups = agg.group_order(search[by], by) if by else ["all trials"]
    entries: list[Entry] = []
    what = f"Comparison by {by}" if by else "All trials"
    if by:
        bands = agg.curve_bands(epochs, trials, by)
        # seed re-runs repeat each optimizer's best config; other comparisons have none to draw
        seeds = agg.seed_curves(epochs, trials if by == "optimizer" else trials.iloc[0:0], by)
        entries.append(Entry("learning-curves", what, figures.learning_curves(bands, seeds, groups, by, metric)))
    if search["lr"].notna().any() and (by or search["lr"].nunique() > 1):
        entries.append(Entry("lr-sensitivity", what, figures.lr_sensitivity(search, groups, by, metric)))
    if len(search):
        best = agg.best_so_far(trials, by, direction)
        entries.append(Entry("tuning-budget", what, figures.budget_curves(best, groups, by, metric)))
    if by and len(search):
        entries.append(_expected_best_entry(trials, by, groups, metric, direction, what))
    entries += _seed_entries(trials, tables.metric, by or "optimizer")
    entries += _kind_entries(tables, by)
    for study in tables.studies["study"]:
        entries += _study_entries(tables, str(study))
    return [_or_note(e) for e in entries]


def _or_note(entry: Entry) -> Entry:
    """A figure with nothing to draw (say, no trial complete yet) becomes a note."""
    if entry.figure is None or any(_has_points(t) for t in entry.figure.data):
        return entry
    return Entry(entry.slug, entry.section, None, f"{entry.figure.layout.title.text}: nothing to draw yet")


def _has_points(trace: Any) -> bool:
    for name in ("x", "y", "dimensions"):
        values = getattr(trace, name, None)
        if values is not None and any(v is not None for v in values):
            return True
    return False


def _expected_best_entry(
    trials: pd.DataFrame, by: str, groups: list[str], metric: str, direction: str, section: str
) -> Entry:
    """Expected best value against trials tried per group; the defaults at n = 1 where seed re-runs hold them."""
    curves = agg.expected_best(trials, by, direction)
    # only the optimizer comparison re-runs each group's default config
    defaults = agg.default_means(trials if by == "optimizer" else trials.iloc[0:0], by)
    shifts = agg.ranking_shifts(curves, groups, direction)
    figure = figures.expected_best(curves, defaults, shifts, groups, by, metric, agg.BAND_LEVEL)
    return Entry("expected-best", section, figure, caption=expected_best_caption(metric, direction, len(defaults) > 0))


def expected_best_caption(metric: str, direction: str, with_defaults: bool) -> str:
    """The expected-best figure's caption: what a point is, how to compare lines, what the hollow markers are."""
    ahead = "higher" if agg.better(direction) else "lower"
    defaults = (
        "; the hollow markers at n = 1 are the default configs (mean of their seed re-runs)" if with_defaults else ""
    )
    return (
        f"Expected best {metric} if you had tuned with only n trials (the mean, over every set of n of the trials "
        f"run, of their best; pruned ones scored by their last reported value; shaded: {agg.BAND_LEVEL:.0%} "
        f"bootstrap band): the {ahead} line is ahead at that budget, and where lines cross (dotted verticals) the "
        f"ranking depends on the budget{defaults}."
    )


def _seed_entries(trials: pd.DataFrame, objective: str, by: str) -> list[Entry]:
    runs = agg.seed_runs(trials)
    if runs.empty:
        return []
    metric = agg.seed_metric(trials, test_metric_for(objective))
    label = seed_metric_label(objective, metric)
    stats = agg.seed_summary(trials, by, metric)
    table = runs.dropna(subset=[by, "group"]).rename(columns={"group": "seed_group"})
    table = table.assign(group=table[by], value=table[metric])[["group", "seed_group", "seed", "value"]]
    groups = agg.group_order(table["group"], by)
    return [Entry("seed-reruns", "Seed re-runs", figures.seed_distribution(table, stats, groups, label))]


def _kind_entries(tables: Tables, by: str | None) -> list[Entry]:
    entries: list[Entry] = []
    trials, metric = tables.trials, metric_label(tables.metric)
    schedules = trials[trials["kind"] == "lr_schedule"]
    if schedules["schedule"].nunique() > 1 or by == "schedule":
        section = "Learning-rate schedules"
        groups = agg.group_order(schedules["schedule"], "schedule")
        if by != "schedule":  # the comparison above is of something else: the schedules get their own curves
            bands = agg.curve_bands(tables.epochs, schedules, "schedule")
            no_seeds = agg.seed_curves(tables.epochs, schedules.iloc[0:0], "schedule")
            curves_fig = figures.learning_curves(bands, no_seeds, groups, "schedule", metric)
            entries.append(Entry("schedule-learning-curves", section, curves_fig))
        curves = agg.lr_curves_of_best(tables.epochs, schedules, "schedule", tables.direction)
        if len(curves):
            entries.append(Entry("schedule-lr", section, figures.lr_of_best(curves, groups, "schedule")))
    for study, kind in zip(tables.studies["study"], tables.studies["kind"], strict=True):
        own = trials[trials["study"] == study]
        if kind == "batch_size":
            best = agg.batch_size_best(own, tables.direction)
            if len(best):
                entries.append(
                    Entry(_slug(f"batch-size-{study}"), "Batch size", figures.batch_size_figure(best, metric))
                )
        if kind == "regularization":
            points = agg.regularization_points(own)
            if len(points):
                entries.append(
                    Entry(_slug(f"regularization-{study}"), "Regularization", figures.regularization_figure(points))
                )
    return entries


def _study_entries(tables: Tables, study: str) -> list[Entry]:
    trials = tables.trials[tables.trials["study"] == study]
    epochs = tables.epochs[tables.epochs["study"] == study]
    metric = metric_label(tables.metric)
    section = f"Study {study}"
    slug = _slug(study)
    params = tables.params[tables.params["study"] == study]
    entries = []
    parallel = study_figures.parallel_coordinates(trials, params, study, metric)
    entries.append(
        Entry(
            f"{slug}-parallel",
            section,
            parallel,
            None
            if parallel
            else f"{study}: no parameter was sampled in every complete trial, so no parallel coordinates",
        )
    )
    row = tables.studies[tables.studies["study"] == study].iloc[0]
    if len(row["objectives"]) > 1:
        front = study_figures.pareto_front(trials, list(row["objectives"]), list(row["directions"]), study)
        entries.append(Entry(f"{slug}-pareto", section, front))
    rows = tables.importances[tables.importances["study"] == study]
    skipped = next((n for n in tables.notes if n.startswith(f"{study}: parameter importances")), None)
    entries.append(Entry(f"{slug}-importances", section, study_figures.importances(rows, study, metric), skipped))
    if len(epochs):
        shown = agg.shown_trials(trials, tables.direction, MAX_CURVES_PER_STUDY)
        entries.append(
            Entry(
                f"{slug}-intermediate",
                section,
                study_figures.intermediate_values(epochs, shown, len(trials), study, metric),
            )
        )
    if len(trials):
        entries.append(Entry(f"{slug}-timeline", section, study_figures.timeline(trials, study)))
    return entries


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-").lower()
