"""Derived tables that figures draw: bands, best-so-far curves, seed statistics, per-kind views.

Every function takes the tidy tables of `extract` (plain DataFrames) and returns a small
DataFrame, so that what a figure shows is tested as data.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from trainables.config import OPTIMIZERS, SCHEDULES
from tuner.report import protocol_stats as ps

CANONICAL_ORDER = {"optimizer": list(OPTIMIZERS), "schedule": list(SCHEDULES)}
SEED_KIND = "seeds"
FAMILIES = {"optimizer": {"optimizer_tuning", SEED_KIND}, "schedule": {"lr_schedule"}}  # study kinds per comparison
BAND_LEVEL = 0.95  # expected-best curves: the bootstrap band's coverage
BAND_RESAMPLES = 1000  # bootstrap resamples per arm
BAND_SEED = 0  # fixed, so that the same studies give the same report


def tuning(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials of the search itself (not the seed re-runs)."""
    return trials[trials["kind"] != SEED_KIND]


def seed_runs(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[(trials["kind"] == SEED_KIND) & (trials["state"] == "COMPLETE")]


def comparison_key(trials: pd.DataFrame) -> str | None:
    """What the studies compare: their kind says so, else whatever of optimizer and schedule varies."""
    kinds = set(trials["kind"])
    for key, family in FAMILIES.items():
        if kinds & family - {SEED_KIND}:
            return key
    search = tuning(trials)
    for key in ("optimizer", "schedule"):
        if key in search and search[key].dropna().nunique() > 1:
            return key
    return None


def in_comparison(trials: pd.DataFrame, by: str | None) -> pd.DataFrame:
    """The trials of the studies that make the comparison (say, not a batch-size study reported beside it)."""
    family = FAMILIES.get(by or "", set())
    if trials["kind"].isin(family - {SEED_KIND}).any():
        return trials[trials["kind"].isin(family)]
    return trials


def group_order(values: pd.Series, by: str) -> list[str]:
    """Groups in the order people know them (OPTIMIZERS, SCHEDULES), unknown ones last."""
    present = [str(v) for v in values.dropna().unique()]
    known = [g for g in CANONICAL_ORDER.get(by, []) if g in present]
    return known + sorted(g for g in present if g not in known)


def better(direction: str) -> bool:
    """True when higher values are better."""
    return direction == "maximize"


def curve_bands(epochs: pd.DataFrame, trials: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per group and epoch: median, quartiles and count of the objective over the tuning trials."""
    columns = ["group", "epoch", "median", "q25", "q75", "n_trials"]
    keyed = epochs.merge(tuning(trials)[["study", "number", by]], on=["study", "number"]).dropna(subset=[by])
    if keyed.empty:
        return pd.DataFrame(columns=columns)
    grouped = keyed.groupby([by, "epoch"])["value"]
    bands = pd.DataFrame(
        {
            "median": grouped.median(),
            "q25": grouped.quantile(0.25),
            "q75": grouped.quantile(0.75),
            "n_trials": grouped.size(),
        }
    ).reset_index()
    return bands.rename(columns={by: "group"})[columns]


def seed_curves(epochs: pd.DataFrame, trials: pd.DataFrame, by: str, group: str = "tuned") -> pd.DataFrame:
    """The per-epoch objective of the seed re-runs of each group's best (`tuned`) config."""
    runs = seed_runs(trials)
    runs = runs[runs["group"] == group][["study", "number", by, "seed"]]
    curves = epochs.merge(runs, on=["study", "number"]).rename(columns={by: "group"})
    return curves[["group", "number", "seed", "epoch", "value"]].sort_values(["group", "number", "epoch"])


def best_so_far(trials: pd.DataFrame, by: str | None, direction: str) -> pd.DataFrame:
    """Best complete value after each trial of each group, counting every trial (pruned too) as budget.

    Only the points where the best changes, and each group's last trial, are kept: the step
    curve they draw is exact and stays small for thousands of trials.
    """
    columns = ["group", "n_trials", "best_value", "number"]
    search = tuning(trials).sort_values(["study", "number"])
    if by is None:
        search = search.assign(_group="all trials")
        by = "_group"
    rows = []
    for group, part in search.dropna(subset=[by]).groupby(by, sort=False):
        values = part["value"].where(part["state"] == "COMPLETE").to_numpy(dtype=float)
        filled = np.where(np.isnan(values), -np.inf if better(direction) else np.inf, values)
        best = np.maximum.accumulate(filled) if better(direction) else np.minimum.accumulate(filled)
        numbers = part["number"].to_numpy()
        last = math.nan
        for i, b in enumerate(best):
            if math.isfinite(b) and (b != last or i == len(best) - 1):
                rows.append((str(group), i + 1, float(b), int(numbers[i])))
                last = b
    return pd.DataFrame(rows, columns=columns)


def tried_values(trials: pd.DataFrame) -> pd.Series:
    """What each trial contributes as one config tried: a complete trial its objective, a pruned one its last
    reported value, a failed or running one NaN (it yields no model to choose, so it is not counted).

    A pruned trial spent budget, so it counts as tried. Its last value is the one to score it by: a complete
    trial's objective is also its value at the last epoch it trained, and Optuna gives a pruned trial that value
    too; its best intermediate value would credit it with a choice among epochs that complete trials do not get.
    """
    pruned = trials["last_value"].where(trials["state"] == "PRUNED")
    return trials["value"].where(trials["state"] == "COMPLETE", pruned).astype(float)


def expected_best(
    trials: pd.DataFrame,
    by: str,
    direction: str,
    level: float = BAND_LEVEL,
    n_boot: int = BAND_RESAMPLES,
    seed: int = BAND_SEED,
) -> pd.DataFrame:
    """Per group: the expected best value of n tuning trials, n = 1..N, with its bootstrap band (Dodge et al. 2019).

    The values are `tried_values` of the group's tuning trials (N counts the complete and pruned ones);
    `protocol_stats.expected_max_bands` (unbiased estimator) gives expected, low and high.
    """
    columns = ["group", "n", "expected", "low", "high"]
    frames = [
        ps.expected_max_bands(
            tried_values(part), maximize=better(direction), n_boot=n_boot, level=level, seed=seed
        ).assign(group=str(group))
        for group, part in tuning(trials).dropna(subset=[by]).groupby(by, sort=False)
    ]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True)[columns] if frames else pd.DataFrame(columns=columns)


def ranking_shifts(curves: pd.DataFrame, groups: list[str], direction: str) -> pd.DataFrame:
    """The n at which two groups' expected-best curves swap places (`protocol_stats.ranking_changes`, over the
    n that every curve reaches), each with the groups' order from there on, best first."""
    columns = ["n", "ranking"]
    wide = curves.pivot(index="n", columns="group", values="expected") if len(curves) else pd.DataFrame()
    present = [g for g in groups if g in wide]
    changes = ps.ranking_changes({g: wide[g].to_numpy() for g in present}, maximize=better(direction))
    rows = [
        (n, wide.loc[n, present].sort_values(ascending=not better(direction), kind="stable").index.tolist())
        for n in changes
    ]
    return pd.DataFrame(rows, columns=columns)


def default_means(trials: pd.DataFrame, by: str) -> pd.DataFrame:
    """Per group: the mean objective of its default config's seed re-runs, and how many there were."""
    columns = ["group", "mean", "n_seeds"]
    runs = seed_runs(trials)
    runs = runs[runs["group"] == "default"].dropna(subset=[by, "value"])
    if runs.empty:
        return pd.DataFrame(columns=columns)
    grouped = runs.groupby(by)["value"]
    table = pd.DataFrame({"mean": grouped.mean(), "n_seeds": grouped.size()}).reset_index()
    return table.rename(columns={by: "group"}).astype({"group": str})[columns]


def tuning_epochs(trials: pd.DataFrame, by: str) -> pd.Series:
    """Per group, in `group_order`: the epochs its tuning trials trained in all, pruned and failed ones included
    (`protocol_stats.epochs_consumed` over `epochs_run`, the epochs each trial reported)."""
    search = tuning(trials).dropna(subset=[by])
    spent = ps.epochs_consumed(search.assign(epochs_run=search["epochs_run"].fillna(0)), by=by, epochs="epochs_run")
    spent.index = spent.index.map(str)
    return spent.reindex(group_order(search[by], by)).astype(int).rename("epochs")


def t_interval(values: pd.Series, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the t-interval for the mean; low and high are NaN for fewer than 2 values."""
    from scipy import stats

    x = values.dropna().to_numpy(dtype=float)
    if len(x) == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if len(x) < 2:
        return mean, math.nan, math.nan
    half = float(stats.t.ppf((1 + confidence) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def welch_difference(a: pd.Series, b: pd.Series, confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean(a) - mean(b), low, high): Welch's t-interval for the difference of means."""
    from scipy import stats

    x, y = a.dropna().to_numpy(dtype=float), b.dropna().to_numpy(dtype=float)
    if len(x) < 2 or len(y) < 2:
        return (float(x.mean() - y.mean()) if len(x) and len(y) else math.nan), math.nan, math.nan
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    diff = float(x.mean() - y.mean())
    if vx + vy == 0:
        return diff, diff, diff
    dof = (vx + vy) ** 2 / (vx**2 / (len(x) - 1) + vy**2 / (len(y) - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, dof) * math.sqrt(vx + vy))
    return diff, diff - half, diff + half


def seed_metric(trials: pd.DataFrame, test_metric: str) -> str:
    """The seed re-runs' final test metric, or the objective when no run recorded one."""
    runs = seed_runs(trials)
    return test_metric if test_metric in runs and runs[test_metric].notna().any() else "value"


def seed_summary(trials: pd.DataFrame, by: str, metric: str) -> pd.DataFrame:
    """Per group and seed group (tuned/default): n, mean and 95% t-interval of `metric`."""
    columns = ["group", "seed_group", "n", "mean", "ci_low", "ci_high"]
    runs = seed_runs(trials).dropna(subset=[by, "group"])
    rows = []
    for (group, seed_group), part in runs.groupby([by, "group"]):
        mean, low, high = t_interval(part[metric])
        rows.append((str(group), str(seed_group), int(part[metric].notna().sum()), mean, low, high))
    return pd.DataFrame(rows, columns=columns)


def lr_curves_of_best(epochs: pd.DataFrame, trials: pd.DataFrame, by: str, direction: str) -> pd.DataFrame:
    """The learning rate per epoch of each group's best complete trial (what the schedule did)."""
    columns = ["group", "number", "epoch", "lr"]
    if "lr" not in epochs:
        return pd.DataFrame(columns=columns)
    best = best_trials(trials, by, direction)
    curves = epochs.merge(best[["study", "number", by]], on=["study", "number"]).dropna(subset=["lr"])
    return curves.rename(columns={by: "group"})[columns]


def best_trials(trials: pd.DataFrame, by: str, direction: str) -> pd.DataFrame:
    """Each group's best complete tuning trial (one row per group)."""
    complete = tuning(trials)
    complete = complete[(complete["state"] == "COMPLETE") & complete["value"].notna()].dropna(subset=[by])
    ordered = complete.sort_values("value", ascending=not better(direction))
    return ordered.drop_duplicates(subset=[by], keep="first")


def batch_size_best(trials: pd.DataFrame, direction: str) -> pd.DataFrame:
    """Per batch size: the learning rate and value of its best complete trial, and how many trials ran."""
    columns = ["batch_size", "best_lr", "best_value", "n_trials"]
    search = tuning(trials).dropna(subset=["batch_size"])
    best = best_trials(search, "batch_size", direction)
    counts = search.groupby("batch_size").size().rename("n_trials").reset_index()
    table = best[["batch_size", "lr", "value"]].rename(columns={"lr": "best_lr", "value": "best_value"})
    return table.merge(counts, on="batch_size").sort_values("batch_size")[columns].reset_index(drop=True)


def regularization_points(trials: pd.DataFrame) -> pd.DataFrame:
    """Per complete trial: regularization strengths, final train/val/test accuracy and the train-test gap."""
    done = tuning(trials)
    done = done[done["state"] == "COMPLETE"]
    table = done[["number", "weight_decay", "l1", "dropout", "train_acc", "val_acc", "test_acc"]].copy()
    table["gap"] = table["train_acc"] - table["test_acc"]
    return table.reset_index(drop=True)


def shown_trials(trials: pd.DataFrame, direction: str, limit: int) -> pd.DataFrame:
    """At most `limit` trials of one study for per-trial curves: the best complete ones, then pruned and
    failed ones spread evenly over the study, so that both kinds stay visible."""
    if len(trials) <= limit:
        return trials
    complete = trials[trials["state"] == "COMPLETE"].sort_values("value", ascending=not better(direction))
    others = trials[trials["state"] != "COMPLETE"].sort_values("number")
    n_others = min(len(others), limit // 3)
    n_best = min(len(complete), limit - n_others)
    n_others = min(len(others), limit - n_best)
    picks = (
        np.unique(np.linspace(0, len(others) - 1, n_others).round().astype(int))
        if n_others
        else np.array([], dtype=int)
    )
    return pd.concat([complete.head(n_best), others.iloc[picks]]).sort_values("number")
