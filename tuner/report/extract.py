"""Tidy tables of studies, read from Optuna (and MLflow for what Optuna does not hold).

One row per study (`studies`), per trial (`trials`), per trial and epoch (`epochs`), per
sampled parameter (`params`) and per parameter importance (`importances`). Figures and
summaries read only these tables.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from tuner.report.mlflow_read import FINAL_KEYS, RunRecords, read_runs
from tuner.tracking import PARENT_RUN_ATTR, RUN_ID_ATTR

# Trial user attributes written by tuner.run.adapter (not imported from there: it imports torch).
REASON_ATTR = "reason"
PRUNED_AT_ATTR = "pruned_at_epoch"

DEFAULT_METRIC = "val_acc"
MIN_TRIALS_FOR_IMPORTANCE = 5  # complete trials; below this the importances are noise
NUMERIC_FIELDS = ("lr", "batch_size", "weight_decay", "l1", "dropout", "momentum", "seed")


@dataclass
class Tables:
    """Everything a report shows, as data."""

    studies: pd.DataFrame
    trials: pd.DataFrame
    epochs: pd.DataFrame
    params: pd.DataFrame
    importances: pd.DataFrame
    notes: list[str] = field(default_factory=list)

    @property
    def metric(self) -> str:
        """The objective of the studies (the first study's, when they differ)."""
        return str(self.studies["metric"].iloc[0]) if len(self.studies) else DEFAULT_METRIC

    @property
    def direction(self) -> str:
        return str(self.studies["direction"].iloc[0]) if len(self.studies) else "maximize"


def extract(studies: list[Any], tracking_uri: str | None) -> Tables:
    """Read `studies` (Optuna Study objects) and, when they have MLflow runs, their runs."""
    frozen = {s.study_name: s.get_trials(deepcopy=False) for s in studies}
    parents = {s.study_name: s.user_attrs.get(PARENT_RUN_ATTR) for s in studies}
    run_ids = [t.user_attrs[RUN_ID_ATTR] for ts in frozen.values() for t in ts if t.user_attrs.get(RUN_ID_ATTR)]
    runs = read_runs(tracking_uri, {k: v for k, v in parents.items() if v}, run_ids)
    notes = list(runs.notes)

    study_rows = [_study_row(s, frozen[s.study_name], runs) for s in studies]
    if len({r["metric"] for r in study_rows}) > 1:
        notes.append("the studies optimise different metrics; comparisons use each study's own metric")
    fronts = {s.study_name: {t.number for t in s.best_trials} if len(s.directions) > 1 else set() for s in studies}
    trial_rows = [
        {**_trial_row(s, row, t, runs), "on_front": t.number in fronts[s.study_name]}
        for s, row in zip(studies, study_rows, strict=True)
        for t in frozen[s.study_name]
    ]
    epoch_rows = [
        {"study": s.study_name, "number": t.number, "state": t.state.name, "epoch": int(step), "value": float(v)}
        for s in studies
        for t in frozen[s.study_name]
        for step, v in sorted(t.intermediate_values.items())
    ]
    epochs = _with_histories(
        pd.DataFrame(epoch_rows, columns=["study", "number", "state", "epoch", "value"]), trial_rows, runs
    )
    param_rows = [row for s in studies for row in _param_rows(s.study_name, frozen[s.study_name])]
    importance_rows: list[dict[str, Any]] = []
    for s in studies:
        rows, note = _importances(s, frozen[s.study_name])
        importance_rows += rows
        if note:
            notes.append(note)
    return Tables(
        studies=pd.DataFrame(study_rows),
        trials=_typed(pd.DataFrame(trial_rows)),
        epochs=epochs,
        params=pd.DataFrame(param_rows, columns=["study", "param", "type", "log", "choices"]),
        importances=pd.DataFrame(importance_rows, columns=["study", "param", "importance"]),
        notes=notes,
    )


def _study_row(study: Any, trials: list[Any], runs: RunRecords) -> dict[str, Any]:
    attrs = study.user_attrs
    parent = attrs.get(PARENT_RUN_ATTR)
    named = (
        ",".join(study.metric_names or [])
        or attrs.get("metric")
        or runs.parent_params.get(parent or "", {}).get("metric")
        or DEFAULT_METRIC
    )
    objectives = named.split(",")  # a multi-objective study's parent run records "a,b"
    directions = [d.name.lower() for d in study.directions]
    if len(objectives) != len(directions):
        objectives = [*objectives, *(f"objective {i}" for i in range(len(objectives), len(directions)))]
    states = [t.state.name for t in trials]
    return {
        "study": study.study_name,
        "kind": attrs.get("kind", "generic"),
        "direction": directions[0],  # of the first objective: the one curves, bests and pruning follow
        "metric": objectives[0],
        "objectives": objectives[: len(directions)],
        "directions": directions,
        "comparison": attrs.get("comparison"),
        "optimizer": attrs.get("optimizer"),
        "schedule": attrs.get("schedule"),
        "parent_run_id": parent,
        "n_trials": len(trials),
        "n_complete": states.count("COMPLETE"),
        "n_pruned": states.count("PRUNED"),
        "n_failed": states.count("FAIL"),
    }


def _trial_row(study: Any, study_row: dict[str, Any], trial: Any, runs: RunRecords) -> dict[str, Any]:
    attrs = trial.user_attrs
    run_id = attrs.get(RUN_ID_ATTR)
    run = runs.finals.get(run_id or "", {})
    config = runs.configs.get(run_id or "", {})
    steps = sorted(trial.intermediate_values)
    start, end = trial.datetime_start, trial.datetime_complete
    row: dict[str, Any] = {
        "study": study.study_name,
        "kind": study_row["kind"],
        "number": trial.number,
        "state": trial.state.name,
        # Optuna gives pruned trials their last intermediate value; that is `last_value` here
        "value": _first_value(trial),
        "values_json": json.dumps(trial.values) if trial.state.name == "COMPLETE" else None,
        "last_value": trial.intermediate_values[steps[-1]] if steps else math.nan,
        "last_epoch": steps[-1] if steps else 0,
        "epochs_run": len(steps),
        "datetime_start": start,
        "datetime_complete": end,
        "duration_seconds": (end - start).total_seconds() if start and end else math.nan,
        "reason": attrs.get(REASON_ATTR),
        "pruned_at_epoch": attrs.get(PRUNED_AT_ATTR),
        "group": attrs.get("group"),
        "mlflow_run_id": run_id,
        # what the trial trained: its own attrs, then its study's, then sampled params, then MLflow params
        "optimizer": attrs.get("optimizer")
        or study_row["optimizer"]
        or trial.params.get("optimizer")
        or config.get("optimizer"),
        "schedule": attrs.get("schedule")
        or study_row["schedule"]
        or trial.params.get("lr_schedule")
        or config.get("lr_schedule"),
        "params_json": json.dumps(trial.params, sort_keys=True, default=str),
    }
    for name in NUMERIC_FIELDS:
        value = attrs.get(name) if name == "seed" else None
        for source in (trial.params, config):
            if value is None:
                value = source.get(name)
        row[name] = _number(value)
    row.update({f"param_{k}": v for k, v in trial.params.items()})
    row.update(run)
    return row


def _first_value(trial: Any) -> float:
    """A complete trial's value (its first objective's, for several), else NaN."""
    if trial.state.name != "COMPLETE" or not trial.values:
        return math.nan
    value = float(trial.values[0])
    return value if math.isfinite(value) else math.nan


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


TRIAL_COLUMNS = (
    "study", "kind", "number", "state", "value", "values_json", "on_front", "last_value", "last_epoch", "epochs_run", "datetime_start",
    "datetime_complete", "duration_seconds", "reason", "pruned_at_epoch", "group", "mlflow_run_id", "optimizer",
    "schedule", "params_json", *NUMERIC_FIELDS, *FINAL_KEYS,
)  # fmt: skip


def _typed(trials: pd.DataFrame) -> pd.DataFrame:
    """Columns every consumer may read, present even when no trial (or no run) has them."""
    missing = {name: math.nan for name in TRIAL_COLUMNS if name not in trials}
    return trials.assign(**missing) if missing else trials


def _with_histories(epochs: pd.DataFrame, trial_rows: list[dict[str, Any]], runs: RunRecords) -> pd.DataFrame:
    """Per-epoch MLflow metrics beside the Optuna objective, joined on the trial's run."""
    if runs.histories.empty or epochs.empty:
        return epochs
    keys = pd.DataFrame(
        [(r["study"], r["number"], r["mlflow_run_id"]) for r in trial_rows if r["mlflow_run_id"]],
        columns=["study", "number", "run_id"],
    )
    wide = runs.histories.pivot_table(index=["run_id", "epoch"], columns="key", values="value", aggfunc="last")
    wide = wide.reset_index().merge(keys, on="run_id").drop(columns="run_id")
    return epochs.merge(wide, on=["study", "number", "epoch"], how="left")


def _param_rows(study_name: str, trials: list[Any]) -> list[dict[str, Any]]:
    """Each sampled parameter once, with how it was sampled (log scale, choices)."""
    seen: dict[str, Any] = {}
    for t in trials:
        for name, dist in t.distributions.items():
            seen.setdefault(name, dist)
    rows = []
    for name, dist in sorted(seen.items()):
        choices = getattr(dist, "choices", None)
        rows.append(
            {
                "study": study_name,
                "param": name,
                "type": "categorical"
                if choices is not None
                else type(dist).__name__.removesuffix("Distribution").lower(),
                "log": bool(getattr(dist, "log", False)),
                "choices": list(choices) if choices is not None else None,
            }
        )
    return rows


def _importances(study: Any, trials: list[Any]) -> tuple[list[dict[str, Any]], str | None]:
    """Optuna's parameter importances, or a note saying why they were skipped."""
    import optuna

    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    seen: dict[str, set[str]] = {}
    for t in complete:
        for n, v in t.params.items():
            seen.setdefault(n, set()).add(repr(v))
    varied = {n for n, values in seen.items() if len(values) > 1}
    name = study.study_name
    if study.user_attrs.get("kind") == "seeds":
        return [], f"{name}: parameter importances skipped: its trials re-run chosen configs, nothing was searched"
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return (
            [],
            f"{name}: parameter importances skipped: {len(complete)} complete trials, need {MIN_TRIALS_FOR_IMPORTANCE}",
        )
    if not varied:
        return [], f"{name}: parameter importances skipped: no parameter varies across complete trials"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Optuna warns about small regimes; the result is still shown
            values = optuna.importance.get_param_importances(study, params=sorted(varied))
    except (ValueError, RuntimeError, ZeroDivisionError) as exc:
        return [], f"{name}: parameter importances skipped: {' '.join(str(exc).split())[:200]}"
    return [{"study": name, "param": p, "importance": float(v)} for p, v in values.items()], None
