"""Statistics of the fair optimizer comparison protocol (v2): pure functions over numbers and small tables.

Expected best validation score after n trials (Dodge et al. 2019) with bootstrap bands and the
n at which arms swap places; AlgoPerf-style performance profiles over workloads (Dolan & Moré
2002, Dahl et al. 2023) with the time-to-target and target rules they rest on; the selection of
a config from re-runs of the top k (winner's curse, pruning regret); equal budgets in epochs.
Nothing here reads storage or draws: a report's figures and tables call these on the tidy tables
of `extract`, so what they show is tested as data.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from itertools import combinations
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

Method = Literal["unbiased", "dodge"]
FloatArray = npt.NDArray[np.float64]

ALGOPERF_TAU_MAX = 4.0  # AlgoPerf's r_max: the profile, and the score, stop at 4x the fastest time
COMPLETE = "COMPLETE"


def _clean(values: npt.ArrayLike) -> FloatArray:
    """The values as a flat float array, NaNs dropped."""
    array = np.asarray(values, dtype=float).ravel()
    return array[~np.isnan(array)]


def _max_weights(n_values: int, n_max: int, method: Method) -> FloatArray:
    """(n_max, N) weights w[n-1, i-1] = P(the best of n draws is the i-th smallest value).

    From the CDF of the rank of the best, F_n(i) = P(best rank <= i): (i/N)^n for draws with
    replacement ("dodge"), C(i, n)/C(N, n) = prod_j (i-j)/(N-j) for distinct ones ("unbiased"),
    the product taken factor by factor so that nothing overflows. Rows for n > N are NaN there.
    """
    ranks = np.arange(n_values + 1, dtype=float)
    if method == "dodge":
        cdf = (ranks / n_values)[None, :] ** np.arange(1, n_max + 1, dtype=float)[:, None]
    elif method == "unbiased":
        steps = min(n_max, n_values)
        j = np.arange(steps, dtype=float)[:, None]
        cdf = np.full((n_max, n_values + 1), math.nan)
        cdf[:steps] = np.cumprod(np.clip(ranks[None, :] - j, 0.0, None) / (n_values - j), axis=0)
    else:
        raise ValueError(f"unknown method {method!r}: 'unbiased' or 'dodge'")
    return np.diff(cdf, axis=1)


def expected_max(
    values: npt.ArrayLike, n_max: int | None = None, maximize: bool = True, method: Method = "unbiased"
) -> FloatArray:
    """Expected best value of n trials, for n = 1..n_max (default N, the number of non-NaN values).

    With v_(1) <= ... <= v_(N) the sorted values:

    - "unbiased" (the default, what the report draws): the mean of the best over all C(N, n)
      subsets of n trials, sum_i v_(i) C(i-1, n-1)/C(N, n). This U-statistic is the unbiased
      estimator of E[best of n trials] for n <= N; at n = 1 it is the mean, at n = N the best
      observed value, and it is NaN for n > N (no subset of that size was observed).
    - "dodge": Dodge et al. 2019 ("Show Your Work", their eq. 1), draws with replacement from
      the empirical CDF, sum_i v_(i) ((i/N)^n - ((i-1)/N)^n). It is what their paper plots and
      is defined for any n, but repeated draws of one trial bias it low: below the best observed
      value at n = N, where the unbiased curve reaches it.

    `maximize=False` gives the expected lowest value (that of the negated values, negated).
    NaN values (pruned or failed trials) are dropped; with none left every entry is NaN.
    """
    sign = 1.0 if maximize else -1.0
    ordered = np.sort(sign * _clean(values))
    n_max = len(ordered) if n_max is None else n_max
    if n_max < 0:
        raise ValueError(f"n_max must be >= 0, not {n_max}")
    if len(ordered) == 0:
        return np.full(n_max, math.nan)
    return sign * (_max_weights(len(ordered), n_max, method) @ ordered)


def expected_max_without_replacement(values: npt.ArrayLike, n: int, maximize: bool = True) -> float:
    """The unbiased expected best of n trials in closed form, sum_i v_(i) C(i-1, n-1)/C(N, n).

    The same number as `expected_max(values)[n - 1]`, computed with exact binomials for one n.
    """
    sign = 1.0 if maximize else -1.0
    ordered = np.sort(sign * _clean(values))
    if not 1 <= n <= len(ordered):
        raise ValueError(f"n must be in 1..{len(ordered)} (the non-NaN values), not {n}")
    total = math.comb(len(ordered), n)
    return sign * math.fsum(float(v) * (math.comb(i - 1, n - 1) / total) for i, v in enumerate(ordered, 1))


def expected_max_bands(
    values: npt.ArrayLike,
    n_max: int | None = None,
    maximize: bool = True,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: Method = "unbiased",
) -> pd.DataFrame:
    """Columns n, expected, low, high: the `expected_max` curve and its bootstrap percentile band.

    Each of `n_boot` resamples draws the N values with replacement and recomputes the curve;
    low and high are its (1 - level)/2 and (1 + level)/2 quantiles per n (deterministic given
    `seed`). A resample never holds a value beyond the observed best, so for large n the band
    sits below the estimate more than above it; with all values equal it is a single point.
    """
    sign = 1.0 if maximize else -1.0
    clean = sign * _clean(values)
    n_max = len(clean) if n_max is None else n_max
    expected = expected_max(clean, n_max, method=method)
    low = high = np.full(n_max, math.nan)
    if len(clean) and n_max:
        rng = np.random.default_rng(seed)
        resamples = np.sort(clean[rng.integers(0, len(clean), size=(n_boot, len(clean)))], axis=1)
        curves = resamples @ _max_weights(len(clean), n_max, method).T
        tail = (1.0 - level) / 2.0
        low, high = np.quantile(curves, [tail, 1.0 - tail], axis=0)
    if not maximize:
        expected, low, high = -expected, -high, -low
    return pd.DataFrame({"n": np.arange(1, n_max + 1), "expected": expected, "low": low, "high": high})


def ranking_changes(curves: Mapping[str, npt.ArrayLike], maximize: bool = True) -> list[int]:
    """The n (1-based) at which some two arms swap places in the order of their curves' values.

    Curves are compared over their common length, skipping any n where one is NaN. A pair that
    ties and then parts the same way it was ordered before is no change; a pair that crosses
    (through a tie or not) is marked at the first n of its new order. The n are the same for
    either direction, so `maximize` does not change the answer.
    """
    if len(curves) < 2:
        return []
    arrays = [np.asarray(curve, dtype=float).ravel() for curve in curves.values()]
    length = min(len(a) for a in arrays)
    stacked = np.vstack([a[:length] for a in arrays])
    last: dict[tuple[int, int], int] = {}
    changes = []
    for column in range(length):
        current = stacked[:, column]
        if np.isnan(current).any():
            continue
        changed = False
        for a, b in combinations(range(len(arrays)), 2):
            order = int(current[a] > current[b]) - int(current[a] < current[b])
            if order == 0:
                continue
            changed |= last.get((a, b), order) != order
            last[(a, b)] = order
        if changed:
            changes.append(column + 1)
    return changes


def performance_ratios(times: pd.DataFrame) -> pd.DataFrame:
    """r[s, w] = t[s, w] / min_s t[s, w] for a table of times to target (rows arms, columns workloads).

    A time of inf or NaN (target never reached) gives r = inf. A workload that no arm reached is
    dropped: it has no fastest time, so it says nothing about relative speed. Times must be > 0.
    """
    table = times.astype(float).fillna(math.inf)
    if (table <= 0).to_numpy().any():
        raise ValueError("times to target must be positive (inf or NaN for never)")
    reached = table.loc[:, np.isfinite(table.to_numpy()).any(axis=0)]
    return reached / reached.min(axis=0)


def performance_profile(times: pd.DataFrame, tau_max: float = ALGOPERF_TAU_MAX, n_points: int = 100) -> pd.DataFrame:
    """Columns arm, tau, fraction: each arm's performance profile rho_s(tau) for tau in [1, tau_max].

    As AlgoPerf defines it (Dahl et al. 2023, "Benchmarking Neural Network Training Algorithms",
    section 4.5; after Dolan & Moré 2002): r[s, w] = t[s, w] / min_s t[s, w] on the time to
    target, and rho_s(tau) = |{w : r[s, w] <= tau}| / |W|, the fraction of workloads on which arm
    s reached the target within tau times the fastest arm's time (never reached: r = inf).
    `times` has one row per arm (its index) and one column per workload. Workloads that no arm
    reached are dropped (see `performance_ratios`), so |W| counts the others only (AlgoPerf's
    code keeps them in the denominator). The grid is `n_points` evenly spaced taus plus every
    ratio in [1, tau_max]: drawn as a step that holds until the next tau, the curve is exact.
    """
    columns = ["arm", "tau", "fraction"]
    ratios = performance_ratios(times)
    if ratios.shape[1] == 0:
        return pd.DataFrame(columns=columns)
    matrix = ratios.to_numpy()
    inside = matrix[(matrix >= 1.0) & (matrix <= tau_max)]
    taus = np.union1d(np.linspace(1.0, tau_max, n_points), inside)
    fractions = (matrix[:, :, None] <= taus[None, None, :]).mean(axis=1)
    return pd.DataFrame(
        {
            "arm": np.repeat(ratios.index.to_numpy(), len(taus)),
            "tau": np.tile(taus, len(ratios)),
            "fraction": fractions.ravel(),
        }
    )[columns]


def profile_scores(times: pd.DataFrame, tau_max: float = ALGOPERF_TAU_MAX) -> pd.Series:
    """Per arm, the AlgoPerf benchmark score: (1 / (tau_max - 1)) * integral_1^tau_max rho_s(tau) dtau.

    In [0, 1]: 1 for an arm that is fastest on every workload, 0 for one never within tau_max
    times the fastest. The integral of the step function is exact, mean_w max(0, tau_max -
    r[s, w]) / (tau_max - 1), which AlgoPerf's trapezoid over a grid of taus approximates.
    NaN for every arm when no workload was reached by any arm.
    """
    if tau_max <= 1.0:
        raise ValueError(f"tau_max must be > 1, not {tau_max}")
    ratios = performance_ratios(times)
    if ratios.shape[1] == 0:
        return pd.Series(math.nan, index=times.index, name="score")
    area = (tau_max - ratios).clip(lower=0.0)
    return (area.mean(axis=1) / (tau_max - 1.0)).rename("score")


def time_to_target(curve: pd.DataFrame, target: float, maximize: bool = True) -> float:
    """The first epoch at which a per-epoch curve (columns epoch, value) reaches `target`; inf if never.

    Reaching means value >= target when maximizing, <= target when minimizing.
    """
    ordered = curve.dropna(subset=["value"]).sort_values("epoch")
    values = ordered["value"].to_numpy(dtype=float)
    hit = values >= target if maximize else values <= target
    return float(ordered["epoch"].to_numpy()[hit.argmax()]) if hit.any() else math.inf


def workload_target(best_by_arm: pd.Series, maximize: bool = True) -> float:
    """The protocol's target of a workload: the median over arms of each arm's best validation value.

    `best_by_arm` is indexed by arm; an arm that appears more than once (say, one value per
    trial) counts with its best value. NaN values are ignored; NaN when nothing is left.
    """
    values = best_by_arm.dropna()
    if values.empty:
        return math.nan
    grouped = values.groupby(level=0)
    best = grouped.max() if maximize else grouped.min()
    return float(best.median())


def winners_curse_gap(tuning_value: float, rerun_values: npt.ArrayLike) -> float:
    """The chosen config's validation value at tuning time minus its mean over re-runs (other seeds).

    For a metric to maximize, a positive gap means the selection was optimistic (the tuning run
    was a lucky draw); for one to minimize, optimism shows as a negative gap. NaN re-runs are
    ignored; NaN with none left.
    """
    reruns = _clean(rerun_values)
    return float(tuning_value - reruns.mean()) if len(reruns) else math.nan


def top_k(trials: pd.DataFrame, k: int = 3, maximize: bool = True) -> pd.DataFrame:
    """The k best COMPLETE trials (columns state, value, number) by value, best first; ties by trial number.

    Pruned trials are never chosen: their value is from an epoch before the end.
    """
    complete = trials[(trials["state"] == COMPLETE) & trials["value"].notna()]
    return complete.sort_values(["value", "number"], ascending=[not maximize, True], kind="stable").head(k)


def _tied(values: pd.Series, maximize: bool) -> pd.Series:
    """The entries equal to the best up to rounding (relative 1e-9); NaN never ties."""
    best = values.max() if maximize else values.min()
    return values[[math.isclose(v, best, rel_tol=1e-9, abs_tol=1e-12) for v in values]]


def select_config(
    candidates: pd.DataFrame,
    tuning_values: Mapping[Any, float] | pd.Series | None = None,
    maximize: bool = True,
) -> Hashable:
    """The config whose re-runs (columns config, seed, value) have the best mean value.

    Means equal up to rounding are broken by the better tuning-time value (`tuning_values`,
    keyed by config; else a `tuning_value` column of `candidates`, if any), then by the smallest id.
    """
    runs = candidates.dropna(subset=["value"])
    if runs.empty:
        raise ValueError("no re-run values to select from")
    means = runs.groupby("config")["value"].mean()
    tied = _tied(means, maximize)
    if len(tied) > 1:
        source = tuning_values
        if source is None:
            known = "tuning_value" in candidates
            source = candidates.groupby("config")["tuning_value"].first() if known else {}
        tuning = pd.Series({c: source.get(c, math.nan) for c in tied.index}, dtype=float)
        if tuning.notna().any():
            tied = _tied(tuning, maximize)
    return min(tied.index)


def pruning_regret(pruned_rerun_values: npt.ArrayLike, chosen_value: float, maximize: bool = True) -> int:
    """How many pruned trials, re-run to the end, beat the chosen config's value (strictly; NaN ignored)."""
    values = _clean(pruned_rerun_values)
    return int((values > chosen_value).sum() if maximize else (values < chosen_value).sum())


def epochs_consumed(trials: pd.DataFrame, by: str = "arm", epochs: str = "epochs") -> pd.Series:
    """Per arm (column `by`), the epochs its trials ran in all, pruned ones included (NaN as 0)."""
    return trials.groupby(by)[epochs].sum()


def truncate_to_epoch_budget(
    trials: pd.DataFrame, budget: float, by: str = "arm", epochs: str = "epochs"
) -> pd.DataFrame:
    """Each arm's first trials in trial-number order while their epochs add up to at most `budget`.

    So arms are compared at the same number of epochs consumed. The trial that would take an arm
    past the budget is left out, and so is every later one (had the budget stopped the search,
    it would have been cut short). One study per arm: `number` orders the trials within it.
    Rows come back ordered by trial number.
    """
    ordered = trials.sort_values("number", kind="stable")
    used = ordered[epochs].fillna(0).groupby(ordered[by]).cumsum() <= budget
    return ordered[used]
