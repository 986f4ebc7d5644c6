"""The summary table (one row per compared group) and the one-sentence answer at the top of the page."""

from __future__ import annotations

import json
import math
from typing import Any

import pandas as pd

from tuner.report import aggregate as agg
from tuner.report.extract import Tables
from tuner.report.labels import fmt_lr, fmt_value, metric_label, param_label, seed_metric_label, test_metric_for

GROUP_PARAM = {"optimizer": "optimizer", "schedule": "lr_schedule"}  # the sampled parameter behind a group
EPOCH_GAP = 0.10  # groups' tuning epochs differ, worth a sentence, when the most exceeds the least by more than this


def summary_table(tables: Tables, by: str | None) -> pd.DataFrame:
    """Per group: best config, mean and 95% CI of the seeds' test metric, epochs spent, trials pruned.

    Without a comparison (`by` None) one row describes all trials. Rows are ordered best first.
    """
    trials, direction = agg.in_comparison(tables.trials, by), tables.direction
    key = by or "_all"
    search = agg.tuning(trials).assign(_all="all trials")
    best = agg.best_trials(search, key, direction).set_index(key)
    metric = agg.seed_metric(trials, test_metric_for(tables.metric))
    seeds = agg.seed_summary(trials.assign(_all="all trials"), key, metric)
    rows = []
    for group in agg.group_order(search[key], by or ""):
        part = search[search[key] == group]
        row: dict[str, Any] = {
            "group": group,
            "trials": len(part),
            "complete": int((part["state"] == "COMPLETE").sum()),
            "pruned": int((part["state"] == "PRUNED").sum()),
            "failed": int((part["state"] == "FAIL").sum()),
            "epochs_spent": int(part["epochs_run"].sum()),
            "best_value": math.nan,
            "best_lr": math.nan,
            "best_config": "",
            "best_study": None,
            "best_trial": None,
        }
        if group in best.index:
            b = best.loc[group]
            params = {k: v for k, v in json.loads(b["params_json"]).items() if k != GROUP_PARAM.get(by or "")}
            row |= {
                "best_value": float(b["value"]),
                "best_lr": float(b["lr"]),
                "best_config": config_text(params),
                "best_study": b["study"],
                "best_trial": int(b["number"]),
            }
        for seed_group in ("tuned", "default"):
            s = seeds[(seeds["group"] == group) & (seeds["seed_group"] == seed_group)]
            stats = s.iloc[0] if len(s) else None
            row[f"{seed_group}_n_seeds"] = int(stats["n"]) if stats is not None else 0
            for name in ("mean", "ci_low", "ci_high"):
                row[f"{seed_group}_{name}"] = float(stats[name]) if stats is not None else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    rank = table["tuned_mean"].where(table["tuned_mean"].notna(), table["best_value"])
    order = rank.sort_values(ascending=not agg.better(direction), na_position="last").index
    table = table.loc[order].reset_index(drop=True)
    table.attrs["seed_metric"] = metric  # which metric the seed columns hold
    return table


def epoch_budget(tables: Tables, by: str | None) -> str | None:
    """The epochs each compared group spent tuning, as the line under the summary; None for fewer than two groups."""
    if by is None:
        return None
    spent = agg.tuning_epochs(agg.in_comparison(tables.trials, by), by)
    return epoch_budget_text(spent, by) if len(spent) >= 2 else None


def epoch_budget_text(spent: pd.Series, by: str) -> str:
    """`Epochs spent tuning: a 20, b 24.`, and a sentence when the most is more than EPOCH_GAP above the least.

    With pruning, equal numbers of trials per group are not equal numbers of epochs: the sentence says so.
    """
    line = "Epochs spent tuning: " + ", ".join(f"{group} {int(n)}" for group, n in spent.items()) + "."
    most, least = spent.idxmax(), spent.idxmin()
    if spent[most] <= spent[least] * (1 + EPOCH_GAP):
        return line
    gap = (
        f"{spent[most] / spent[least] - 1:.0%} more epochs than {least}"
        if spent[least]
        else f"{int(spent[most])} epochs and {least} none"
    )
    return (
        f"{line} The {param_label(by)}s did not get equal budgets in epochs: {most} trained {gap}, because pruning "
        "stops trials early, so an equal number of trials is not an equal number of epochs."
    )


def config_text(params: dict[str, Any]) -> str:
    def one(value: Any) -> str:
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    return ", ".join(f"{k}={one(v)}" for k, v in sorted(params.items()))


def headline(tables: Tables, summary: pd.DataFrame, by: str | None) -> str:
    """Which group won, by how much, with what learning rate, and how sure: one sentence."""
    trials = tables.trials
    if trials.empty or summary.empty or summary["best_value"].isna().all():
        return "No trial has completed yet, so there is no result to compare."
    if by is None or len(summary) == 1:
        kinds = set(tables.studies["kind"])
        if "batch_size" in kinds:
            return _batch_size_sentence(tables)
        if "regularization" in kinds:
            return _regularization_sentence(tables)
        return _best_trial_sentence(tables, summary.iloc[0])
    return _comparison_sentence(tables, summary, by)


def _comparison_sentence(tables: Tables, summary: pd.DataFrame, by: str) -> str:
    direction = tables.direction
    ahead = "ahead of" if agg.better(direction) else "below"
    seed_metric = str(summary.attrs.get("seed_metric", "value"))
    seeded = summary[(summary["tuned_n_seeds"] >= 2) & summary["tuned_mean"].notna()]
    what = param_label(by)
    if len(seeded) >= 2:
        win, runner = seeded.iloc[0], seeded.iloc[1]
        runs = agg.seed_runs(agg.in_comparison(tables.trials, by))
        runs = runs[runs["group"] == "tuned"]
        diff, low, high = agg.welch_difference(
            runs[runs[by] == win["group"]][seed_metric], runs[runs[by] == runner["group"]][seed_metric]
        )
        # the lead is the winner's advantage in the direction that is better
        lead, low, high = (diff, low, high) if agg.better(direction) else (-diff, -high, -low)
        if low > 0:
            sure = f"95% CI of the lead {fmt_value(low)} to {fmt_value(high)}, so the lead holds at 95%"
        elif math.isnan(low):
            sure = "too few seeds for a confidence interval of the lead"
        else:
            sure = (
                f"the 95% CI of the lead, {fmt_value(low)} to {fmt_value(high)}, includes 0, so the lead is not certain"
            )
        return (
            f"The {what} {win['group']} won: mean {seed_metric_label(tables.metric, seed_metric)} "
            f"{fmt_value(win['tuned_mean'])} over {win['tuned_n_seeds']} seeds (95% CI {fmt_value(win['tuned_ci_low'])} "
            f"to {fmt_value(win['tuned_ci_high'])}) with learning rate {_lr(win['best_lr'])}, {fmt_value(lead)} {ahead} "
            f"{runner['group']} ({fmt_value(runner['tuned_mean'])}); {sure}."
        )
    ranked = summary.dropna(subset=["best_value"])
    win = ranked.iloc[0]
    label = metric_label(tables.metric)
    single = "each is a single run of one seed, so there is no confidence interval (re-run the best configs with several seeds for one)"
    if len(ranked) < 2:
        return (
            f"Only the {what} {win['group']} has a complete trial: best {label} {fmt_value(win['best_value'])} "
            f"with learning rate {_lr(win['best_lr'])}."
        )
    runner = ranked.iloc[1]
    lead = abs(win["best_value"] - runner["best_value"])
    if fmt_value(lead) == fmt_value(0.0):
        return (
            f"The {what}s {win['group']} (learning rate {_lr(win['best_lr'])}) and {runner['group']} (learning rate "
            f"{_lr(runner['best_lr'])}) tied on best {label}, {fmt_value(win['best_value'])}; {single}."
        )
    return (
        f"The {what} {win['group']} won on best {label}: {fmt_value(win['best_value'])} with learning rate "
        f"{_lr(win['best_lr'])}, {fmt_value(lead)} {ahead} {runner['group']} ({fmt_value(runner['best_value'])}); "
        f"{single}."
    )


def _best_trial_sentence(tables: Tables, row: pd.Series) -> str:
    return (
        f"Best trial: {metric_label(tables.metric)} {fmt_value(row['best_value'])} (trial {row['best_trial']} of "
        f"{row['best_study']}) with learning rate {_lr(row['best_lr'])} ({row['best_config']}), "
        f"out of {row['trials']} trials; one run of one seed, so no confidence interval."
    )


def _batch_size_sentence(tables: Tables) -> str:
    best = agg.batch_size_best(tables.trials[tables.trials["kind"] == "batch_size"], tables.direction)
    ranked = best.sort_values("best_value", ascending=not agg.better(tables.direction))
    win = ranked.iloc[0]
    rest = "; ".join(
        f"batch size {int(r.batch_size)}: {fmt_value(r.best_value)} at lr {_lr(r.best_lr)}"
        for r in ranked.iloc[1:].itertuples()
    )
    return (
        f"Batch size {int(win['batch_size'])} reached the best {metric_label(tables.metric)}, "
        f"{fmt_value(win['best_value'])}, with learning rate {_lr(win['best_lr'])}"
        + (f" ({rest})" if rest else "")
        + "; one run per trial, so no confidence interval."
    )


def _regularization_sentence(tables: Tables) -> str:
    own = tables.trials[tables.trials["kind"] == "regularization"]
    points = agg.regularization_points(own)
    use = "test_acc" if points["test_acc"].notna().any() else None
    row = own.loc[agg.best_trials(own.assign(_all=1), "_all", tables.direction).index[0]]
    strengths = ", ".join(
        f"{param_label(k)} {row[k]:.2g}" for k in ("weight_decay", "l1", "dropout") if not math.isnan(row[k])
    )
    tail = ""
    if use:
        tail = f": test accuracy {fmt_value(row['test_acc'])}, train-test gap {fmt_value(row['train_acc'] - row['test_acc'])}"
    return (
        f"The best regularization ({strengths}) reached {metric_label(tables.metric)} {fmt_value(row['value'])}"
        f"{tail}, out of {len(points)} complete trials; one run each, so no confidence interval."
    )


def _lr(lr: float) -> str:
    return "unknown" if lr is None or math.isnan(lr) else fmt_lr(lr)
