"""Comparison figures, each drawn from one table of `aggregate` (or the trials table) and nothing else."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from tuner.report.labels import param_label

TEMPLATE = "plotly_white"
MAX_GRID_COLUMNS = 4
SUBPLOT_HEIGHT_PX = 300


def palette(groups: list[str]) -> dict[str, str]:
    """One colour per group, the same in every figure of a report."""
    colors = qualitative.Plotly + qualitative.D3
    return {g: colors[i % len(colors)] for i, g in enumerate(groups)}


def style(fig: go.Figure, title: str, height: int = 480) -> go.Figure:
    fig.update_layout(
        title={"text": title, "x": 0.01, "xanchor": "left"},
        template=TEMPLATE,
        height=height,
        margin={"t": 80, "l": 70, "r": 30, "b": 60},
        legend={"orientation": "h", "y": -0.18},
    )
    fig.update_xaxes(exponentformat="power")  # 10^-4, not 100µ, for learning rates and strengths
    fig.update_yaxes(exponentformat="power")
    return fig


def integer_ticks(fig: go.Figure, largest: float) -> None:
    """Epochs and trial counts are whole numbers: no ticks at 1.5."""
    few = not math.isnan(largest) and largest <= 15
    fig.update_xaxes(tickformat="d", **({"tick0": 1, "dtick": 1} if few else {}))


def with_gaps(frame: pd.DataFrame, by: str, x: str, y: str) -> tuple[list[Any], list[Any]]:
    """x and y of many polylines as one trace, separated by gaps: one trace instead of thousands."""
    xs: list[Any] = []
    ys: list[Any] = []
    for _, part in frame.groupby(by, sort=False):
        xs += [*part[x].tolist(), None]
        ys += [*part[y].tolist(), None]
    return xs, ys


def learning_curves(bands: pd.DataFrame, seeds: pd.DataFrame, groups: list[str], by: str, metric: str) -> go.Figure:
    """Median and interquartile band of the objective per epoch, one panel per group, seed re-runs on top."""
    n_cols = min(len(groups), MAX_GRID_COLUMNS)
    n_rows = math.ceil(len(groups) / n_cols)
    fig = make_subplots(
        rows=n_rows, cols=n_cols, subplot_titles=[f"{param_label(by)}: {g}" for g in groups], shared_yaxes=True
    )
    colors = palette(groups)
    for i, group in enumerate(groups):
        row, col = i // n_cols + 1, i % n_cols + 1
        band = bands[bands["group"] == group].sort_values("epoch")
        color = colors[group]
        first = i == 0
        fig.add_trace(
            go.Scatter(
                x=band["epoch"],
                y=band["q75"],
                mode="lines",
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                legendgroup="iqr",
            ),
            row=row,
            col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=band["epoch"],
                y=band["q25"],
                mode="lines",
                line={"width": 0},
                fill="tonexty",
                fillcolor=_transparent(color),
                name="interquartile range of tuning trials",
                legendgroup="iqr",
                showlegend=first,
                hoverinfo="skip",
            ),
            row=row,
            col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=band["epoch"],
                y=band["median"],
                mode="lines",
                line={"color": color, "width": 2},
                name="median of tuning trials",
                legendgroup="median",
                showlegend=first,
                customdata=band["n_trials"],
                hovertemplate="epoch %{x}: median %{y:.3f} over %{customdata} trials",
            ),
            row=row,
            col=col,
        )
        runs = seeds[seeds["group"] == group]
        if len(runs):
            xs, ys = with_gaps(runs, "number", "epoch", "value")
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    mode="lines",
                    line={"color": "black", "width": 1},
                    opacity=0.7,
                    name="seed re-runs of the best config",
                    legendgroup="seeds",
                    showlegend="seeds" not in _legend(fig),
                ),
                row=row,
                col=col,
            )
    fig.update_xaxes(title_text="epoch")
    integer_ticks(fig, bands["epoch"].max() if len(bands) else math.nan)
    fig.update_yaxes(title_text=metric, col=1)
    fig.update_yaxes(matches="y")  # one scale for every panel, so that panels compare at a glance
    return style(
        fig, f"Learning curves: {metric} per epoch by {param_label(by)}", height=120 + SUBPLOT_HEIGHT_PX * n_rows
    )


def _legend(fig: go.Figure) -> set[str]:
    return {t.legendgroup for t in fig.data if t.showlegend}


def _transparent(color: str, alpha: float = 0.25) -> str:
    r, g, b = (int(color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def lr_sensitivity(trials: pd.DataFrame, groups: list[str], by: str | None, metric: str) -> go.Figure:
    """Final objective of every complete tuning trial against its learning rate (log axis), per group."""
    done = trials[(trials["state"] == "COMPLETE") & trials["lr"].notna() & trials["value"].notna()]
    fig = go.Figure()
    colors = palette(groups)
    for group in groups if by else ["all trials"]:
        part = done[done[by] == group] if by else done
        fig.add_trace(
            go.Scatter(
                x=part["lr"],
                y=part["value"],
                mode="markers",
                name=group,
                marker={"color": colors.get(group), "size": 7, "opacity": 0.75},
                customdata=np.stack([part["study"], part["number"]], axis=-1) if len(part) else None,
                hovertemplate="lr %{x:.2e}: %{y:.3f}<br>%{customdata[0]} trial %{customdata[1]}<extra></extra>",
            )
        )
    fig.update_xaxes(type="log", title_text="learning rate (log scale)")
    fig.update_yaxes(title_text=f"final {metric}")
    what = f" by {param_label(by)}" if by else ""
    return style(fig, f"Learning-rate sensitivity{what}: final {metric} of complete trials")


def budget_curves(best: pd.DataFrame, groups: list[str], by: str | None, metric: str) -> go.Figure:
    """Best-so-far objective against the number of trials run (pruned ones count), one line per group."""
    fig = go.Figure()
    colors = palette(groups)
    for group in groups if by else ["all trials"]:
        part = best[best["group"] == group]
        fig.add_trace(
            go.Scatter(
                x=part["n_trials"],
                y=part["best_value"],
                mode="lines+markers",
                line_shape="hv",
                name=group,
                line={"color": colors.get(group)},
                marker={"size": 4},
                hovertemplate="after %{x} trials: best %{y:.3f}<extra>" + group + "</extra>",
            )
        )
    fig.update_xaxes(title_text="number of trials run (pruned included)")
    integer_ticks(fig, best["n_trials"].max() if len(best) else math.nan)
    fig.update_yaxes(title_text=f"best {metric} so far")
    what = f" by {param_label(by)}" if by else ""
    return style(fig, f"Tuning budget{what}: best {metric} so far against trials run")


def expected_best(
    curves: pd.DataFrame,
    defaults: pd.DataFrame,
    shifts: pd.DataFrame,
    groups: list[str],
    by: str,
    metric: str,
    level: float,
) -> go.Figure:
    """Expected best value against trials tried, one line and bootstrap band per group; the defaults at n = 1.

    `curves`: aggregate.expected_best; `defaults`: aggregate.default_means (empty: no markers);
    `shifts`: aggregate.ranking_shifts, drawn as dotted vertical lines across the data's range; `level`: the
    bands' coverage.
    """
    fig = go.Figure()
    colors = palette(groups)
    for group in groups:
        part = curves[curves["group"] == group].sort_values("n")
        if part.empty:
            continue
        color = colors[group]
        for edge, fill in (("high", None), ("low", "tonexty")):
            fig.add_trace(
                go.Scatter(
                    x=part["n"],
                    y=part[edge],
                    mode="lines",
                    line={"width": 0},
                    fill=fill,
                    fillcolor=_transparent(color, 0.15) if fill else None,
                    name=f"{group}: bootstrap band ({edge})",
                    legendgroup=group,
                    showlegend=False,
                    hoverinfo="skip",
                )
            )
        fig.add_trace(
            go.Scatter(
                x=part["n"],
                y=part["expected"],
                mode="lines",
                name=group,
                legendgroup=group,
                line={"color": color, "width": 2},
                customdata=np.stack([part["low"], part["high"]], axis=-1),
                hovertemplate="%{x} trials: expected best %{y:.3f} (band %{customdata[0]:.3f} to %{customdata[1]:.3f})"
                + f"<extra>{group}</extra>",
            )
        )
    shown = defaults[defaults["group"].isin(groups)].sort_values("group", key=lambda s: s.map(groups.index))
    if len(shown):
        fig.add_trace(
            go.Scatter(
                x=[1] * len(shown),
                y=shown["mean"],
                mode="markers",
                name="default config at n = 1 (mean of its seed re-runs)",
                marker={
                    "symbol": "circle-open",
                    "size": 12,
                    "line": {"width": 2},
                    "color": [colors[g] for g in shown["group"]],
                },
                customdata=np.stack([shown["group"], shown["n_seeds"]], axis=-1),
                hovertemplate="%{customdata[0]} default config: mean %{y:.3f} over %{customdata[1]} seeds<extra></extra>",
            )
        )
    if len(shifts):
        values = pd.concat([curves["low"], curves["high"], curves["expected"], shown["mean"]]).dropna()
        xs: list[Any] = []
        ys: list[Any] = []
        text: list[Any] = []
        for n, ranking in zip(shifts["n"], shifts["ranking"], strict=True):
            order = " > ".join(ranking)
            xs += [n, n, None]
            ys += [values.min(), values.max(), None]
            text += [order, order, None]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                name="ranking changes",
                line={"color": "#555", "width": 1, "dash": "dot"},
                text=text,
                hovertemplate="from %{x} trials on: %{text}<extra>ranking changes</extra>",
            )
        )
    fig.update_xaxes(title_text="number of trials tried, n (pruned ones included)")
    integer_ticks(fig, curves["n"].max() if len(curves) else math.nan)
    fig.update_yaxes(title_text=f"expected best {metric}")
    return style(fig, f"Expected best {metric} after n trials, by {param_label(by)}, with {level:.0%} bootstrap bands")


def seed_distribution(runs: pd.DataFrame, stats: pd.DataFrame, groups: list[str], metric: str) -> go.Figure:
    """Final metric of every seed re-run, tuned next to default per group, with mean and 95% t-interval.

    `runs`: group, seed_group, seed, value; `stats`: aggregate.seed_summary.
    """
    fig = go.Figure()
    order = {g: i for i, g in enumerate(groups)}
    seed_groups = [g for g in ("tuned", "default") if g in set(runs["seed_group"])]
    colors = {"tuned": "#1f77b4", "default": "#ff7f0e"}
    for seed_group in seed_groups:
        part = runs[runs["seed_group"] == seed_group].sort_values("group", key=lambda s: s.map(order))
        fig.add_trace(
            go.Box(
                x=[part["group"].tolist(), part["seed_group"].tolist()],
                y=part["value"],
                name=f"{seed_group} config: seeds",
                boxpoints="all",
                jitter=0.3,
                pointpos=0,
                marker={"color": colors[seed_group], "size": 6},
                line={"color": colors[seed_group]},
                fillcolor="rgba(0,0,0,0)",
                customdata=part["seed"],
                hovertemplate="seed %{customdata}: %{y:.3f}",
            )
        )
    ci = stats[stats["seed_group"].isin(seed_groups)].sort_values(
        ["group", "seed_group"], key=lambda s: s.map(order) if s.name == "group" else s
    )
    fig.add_trace(
        go.Scatter(
            x=[ci["group"].tolist(), ci["seed_group"].tolist()],
            y=ci["mean"],
            mode="markers",
            name="mean and 95% CI (t-interval)",
            marker={"symbol": "diamond", "size": 11, "color": "black"},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": ci["ci_high"] - ci["mean"],
                "arrayminus": ci["mean"] - ci["ci_low"],
            },
            customdata=np.stack([ci["n"], ci["ci_low"], ci["ci_high"]], axis=-1) if len(ci) else None,
            hovertemplate="mean %{y:.3f}, 95% CI %{customdata[1]:.3f} to %{customdata[2]:.3f} (%{customdata[0]} seeds)<extra></extra>",
        )
    )
    fig.update_xaxes(title_text="optimizer and config (tuned: its best config; default: its default config)")
    fig.update_yaxes(title_text=metric)
    if "accuracy" in metric and len(runs):
        # with few seeds a t-interval can reach past 0 or 1; keep the axis on possible accuracies
        low = min(runs["value"].min(), ci["ci_low"].min(skipna=True) if ci["ci_low"].notna().any() else 1.0)
        high = max(runs["value"].max(), ci["ci_high"].max(skipna=True) if ci["ci_high"].notna().any() else 0.0)
        fig.update_yaxes(range=[max(0.0, low) - 0.02, min(1.0, high) + 0.02])
    return style(fig, f"Seed re-runs: {metric} per optimizer, tuned next to default, mean with 95% CI", height=520)


def lr_of_best(curves: pd.DataFrame, groups: list[str], by: str) -> go.Figure:
    """The learning rate per epoch of each group's best trial: what each schedule did."""
    fig = go.Figure()
    colors = palette(groups)
    for group in groups:
        part = curves[curves["group"] == group].sort_values("epoch")
        fig.add_trace(
            go.Scatter(x=part["epoch"], y=part["lr"], mode="lines+markers", name=group, line={"color": colors[group]})
        )
    fig.update_xaxes(title_text="epoch")
    integer_ticks(fig, curves["epoch"].max() if len(curves) else math.nan)
    fig.update_yaxes(type="log", title_text="learning rate (log scale)")
    return style(fig, f"Learning rate per epoch of the best trial of each {param_label(by)}")


def batch_size_figure(best: pd.DataFrame, metric: str) -> go.Figure:
    """Per batch size: the learning rate of its best trial (left, log) and that trial's value (right)."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = best["batch_size"].astype(int).astype(str)
    fig.add_trace(
        go.Scatter(
            x=x,
            y=best["best_lr"],
            mode="lines+markers",
            name="best learning rate",
            customdata=best["n_trials"],
            hovertemplate="batch size %{x}: lr %{y:.2e} (best of %{customdata} trials)<extra></extra>",
        ),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=best["best_value"],
            mode="lines+markers",
            name=f"best {metric}",
            line={"dash": "dot"},
            marker={"symbol": "square"},
            hovertemplate="batch size %{x}: %{y:.3f}<extra></extra>",
        ),
        secondary_y=True,
    )
    fig.update_xaxes(title_text="batch size", type="category")
    fig.update_yaxes(title_text="learning rate of the best trial (log scale)", type="log", secondary_y=False)
    fig.update_yaxes(title_text=f"best {metric}", secondary_y=True, showgrid=False, tickmode="auto")
    return style(fig, f"Batch size against its best learning rate and best {metric}")


REG_FIELDS = (("weight_decay", True), ("l1", True), ("dropout", False))  # field, log axis


def regularization_figure(points: pd.DataFrame) -> go.Figure:
    """Accuracy (train, validation, test) and the train-test gap against each regularization strength."""
    fields = [(f, log) for f, log in REG_FIELDS if points[f].nunique() > 1]  # the strengths that were varied
    fig = make_subplots(
        rows=2,
        cols=len(fields),
        shared_yaxes="rows",
        vertical_spacing=0.16,
        subplot_titles=[param_label(f) for f, _ in fields] + [f"train-test gap vs {param_label(f)}" for f, _ in fields],
    )
    series = (
        ("train_acc", "training accuracy", "#2ca02c"),
        ("val_acc", "validation accuracy", "#1f77b4"),
        ("test_acc", "test accuracy", "#d62728"),
    )
    for col, (f, log) in enumerate(fields, start=1):
        part = points[points[f] > 0] if log else points
        for name, label, color in series:
            if part[name].notna().any():
                fig.add_trace(
                    go.Scatter(
                        x=part[f],
                        y=part[name],
                        mode="markers",
                        name=label,
                        legendgroup=name,
                        showlegend=col == 1,
                        marker={"color": color, "size": 6, "opacity": 0.7},
                        customdata=part["number"],
                        hovertemplate="%{x:.2g}: %{y:.3f} (trial %{customdata})<extra>" + label + "</extra>",
                    ),
                    row=1,
                    col=col,
                )
        if part["gap"].notna().any():
            fig.add_trace(
                go.Scatter(
                    x=part[f],
                    y=part["gap"],
                    mode="markers",
                    name="train-test gap",
                    legendgroup="gap",
                    showlegend=col == 1,
                    marker={"color": "#7f7f7f", "size": 6},
                    customdata=part["number"],
                    hovertemplate="%{x:.2g}: gap %{y:.3f} (trial %{customdata})<extra></extra>",
                ),
                row=2,
                col=col,
            )
        axis_type = "log" if log else "linear"
        suffix = " (log scale)" if log else ""
        fig.update_xaxes(type=axis_type, title_text=param_label(f) + suffix, row=1, col=col)
        fig.update_xaxes(type=axis_type, title_text=param_label(f) + suffix, row=2, col=col)
    fig.update_yaxes(title_text="final accuracy", row=1, col=1)
    fig.update_yaxes(title_text="training minus test accuracy", row=2, col=1)
    return style(
        fig, "Regularization strength against final accuracy and the train-test gap (complete trials)", height=720
    )
