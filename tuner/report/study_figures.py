"""Figures of one study: parallel coordinates, parameter importances, intermediate values, timeline.

Each takes rows of the tidy tables for that study only.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from tuner.report.figures import integer_ticks, style, with_gaps
from tuner.report.labels import param_label

STATE_COLORS = {
    "COMPLETE": "#1f77b4",
    "PRUNED": "#ff7f0e",
    "FAIL": "#d62728",
    "RUNNING": "#7f7f7f",
    "WAITING": "#bcbd22",
}


def parallel_coordinates(trials: pd.DataFrame, params: pd.DataFrame, study: str, metric: str) -> go.Figure | None:
    """One line per complete trial through every parameter sampled in all of them, ending at the objective.

    Log-sampled parameters are drawn as log10; categorical ones as their choices. None when no
    parameter was sampled in every complete trial.
    """
    done = trials[(trials["state"] == "COMPLETE") & trials["value"].notna()]
    dims: list[dict[str, Any]] = []
    for p in params.itertuples():
        column = f"param_{p.param}"
        if column not in done or done[column].isna().any() or done.empty:
            continue  # conditional parameters would break the lines
        values = done[column]
        if p.type == "categorical":
            choices = [str(c) for c in p.choices]
            codes = values.astype(str).map({c: i for i, c in enumerate(choices)})
            dims.append(
                {
                    "label": param_label(p.param),
                    "values": codes,
                    "tickvals": list(range(len(choices))),
                    "ticktext": choices,
                }
            )
        elif p.log:
            dims.append({"label": f"log10({param_label(p.param)})", "values": np.log10(values.astype(float))})
        else:
            dims.append({"label": param_label(p.param), "values": values.astype(float)})
    if not dims:
        return None
    dims.append({"label": metric, "values": done["value"]})
    fig = go.Figure(
        go.Parcoords(
            dimensions=dims,
            line={
                "color": done["value"],
                "colorscale": "Viridis",
                "showscale": True,
                "colorbar": {"title": {"text": metric}},
            },
        )
    )
    fig = style(fig, f"Parallel coordinates of {study}: each line is one of {len(done)} complete trials", height=460)
    fig.update_layout(margin={"t": 110, "l": 80, "r": 80})
    return fig


def pareto_front(trials: pd.DataFrame, objectives: list[str], directions: list[str], study: str) -> go.Figure:
    """The complete trials in the plane of the first two objectives, the Pareto front joined and marked."""
    import json

    done = trials[(trials["state"] == "COMPLETE") & trials["values_json"].notna()]
    values = done["values_json"].map(json.loads)
    x, y = values.map(lambda v: v[0]), values.map(lambda v: v[1])
    on_front = done["on_front"].fillna(False).astype(bool)
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=x[~on_front], y=y[~on_front], mode="markers", name="dominated", marker={"color": "#bbbbbb", "size": 8},
            text=[f"trial {n}" for n in done["number"][~on_front]],
        )
    )  # fmt: skip
    order = x[on_front].sort_values().index
    fig.add_trace(
        go.Scatter(
            x=x[order], y=y[order], mode="lines+markers", name="Pareto front",
            marker={"color": STATE_COLORS["COMPLETE"], "size": 10}, line={"shape": "hv"},
            text=[f"trial {n}" for n in done["number"][order]],
        )
    )  # fmt: skip
    fig.update_xaxes(title_text=f"{objectives[0]} ({directions[0]})")
    fig.update_yaxes(title_text=f"{objectives[1]} ({directions[1]})")
    shown = "" if len(objectives) == 2 else f" (first 2 of {len(objectives)} objectives)"
    return style(fig, f"{study}: Pareto front of {len(order)} of {len(done)} complete trials{shown}")


def importances(rows: pd.DataFrame, study: str, metric: str) -> go.Figure | None:
    """Parameter importances (Optuna, PED-ANOVA) as horizontal bars, most important on top."""
    if rows.empty:
        return None
    ordered = rows.sort_values("importance")
    fig = go.Figure(
        go.Bar(
            x=ordered["importance"],
            y=[param_label(p) for p in ordered["param"]],
            orientation="h",
            hovertemplate="%{y}: %{x:.3f}<extra></extra>",
        )
    )
    fig.update_xaxes(title_text=f"importance for {metric} (share of the total)")
    fig.update_yaxes(title_text="parameter")
    return style(fig, f"Parameter importances in {study}", height=max(300, 120 + 40 * len(rows)))


def intermediate_values(epochs: pd.DataFrame, shown: pd.DataFrame, n_total: int, study: str, metric: str) -> go.Figure:
    """The objective per epoch of the `shown` trials, one trace per state; pruned trials end in a cross."""
    fig = go.Figure()
    curves = epochs.merge(shown[["number"]], on="number").sort_values(["number", "epoch"])
    for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING"):
        part = curves[curves["state"] == state]
        if part.empty:
            continue
        xs, ys = with_gaps(part, "number", "epoch", "value")
        _, numbers = with_gaps(part, "number", "epoch", "number")
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                name=f"{state.lower()} trials",
                customdata=numbers,
                line={"color": STATE_COLORS[state], "width": 1},
                opacity=0.8 if state == "COMPLETE" else 0.5,
                hovertemplate="trial %{customdata}, epoch %{x}: %{y:.3f}<extra></extra>",
                connectgaps=False,
            )
        )
    ends = curves[curves["state"] == "PRUNED"].groupby("number").tail(1)
    if len(ends):
        fig.add_trace(
            go.Scatter(
                x=ends["epoch"],
                y=ends["value"],
                mode="markers",
                name="pruned here",
                customdata=ends["number"],
                marker={"symbol": "x", "size": 8, "color": STATE_COLORS["PRUNED"]},
                hovertemplate="trial %{customdata} pruned after epoch %{x}: %{y:.3f}<extra></extra>",
            )
        )
    shown_text = (
        f"all {n_total} trials"
        if len(shown) >= n_total
        else f"{len(shown)} of {n_total} trials (the best complete ones and a spread of the others)"
    )
    fig.update_xaxes(title_text="epoch")
    integer_ticks(fig, curves["epoch"].max() if len(curves) else math.nan)
    fig.update_yaxes(title_text=metric)
    return style(fig, f"Intermediate values of {study}: {metric} per epoch, {shown_text}")


def timeline(trials: pd.DataFrame, study: str) -> go.Figure:
    """When each trial ran: a bar from start to end per trial, coloured by its final state."""
    fig = go.Figure()
    started = trials.dropna(subset=["datetime_start"])
    now = started["datetime_complete"].max() if started["datetime_complete"].notna().any() else None
    for state, part in started.groupby("state", sort=False):
        xs: list[Any] = []
        ys: list[Any] = []
        text: list[Any] = []
        for t in part.itertuples():
            end = t.datetime_complete if not pd.isna(t.datetime_complete) else now or t.datetime_start
            xs += [t.datetime_start, end, None]
            ys += [t.number, t.number, None]
            duration = "running" if pd.isna(t.duration_seconds) else f"{t.duration_seconds:.1f} s"
            text += [duration, duration, None]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                name=str(state).lower(),
                text=text,
                line={"color": STATE_COLORS.get(str(state), "#333"), "width": 4},
                hovertemplate="trial %{y}: %{text}<extra>" + str(state).lower() + "</extra>",
            )
        )
    fig.update_xaxes(title_text="wall-clock time")
    fig.update_yaxes(title_text="trial number")
    return style(fig, f"Timeline of {study}: when each trial ran, coloured by its final state")
