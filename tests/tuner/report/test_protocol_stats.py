"""Statistics of the comparison protocol v2, against brute force and hand-worked examples."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from tuner.report import protocol_stats as ps

VALUES = [0.3, 0.7, 0.7, 0.1, 0.5, 0.3]  # six trials, with ties at the top and in the middle


@pytest.mark.parametrize("maximize", [True, False])
def test_unbiased_expected_max_is_the_mean_best_over_all_subsets(maximize: bool) -> None:
    best = max if maximize else min
    brute = [np.mean([best(c) for c in itertools.combinations(VALUES, n)]) for n in range(1, 7)]
    curve = ps.expected_max(VALUES, maximize=maximize)
    assert curve == pytest.approx(brute, abs=1e-12)
    for n in range(1, 7):
        assert ps.expected_max_without_replacement(VALUES, n, maximize=maximize) == pytest.approx(
            brute[n - 1], abs=1e-12
        )


def test_unbiased_expected_max_by_hand() -> None:
    # Best of 2 of {1, 2, 3}: the subsets {1,2} {1,3} {2,3} have best 2, 3, 3 -> 8/3; worst 1, 1, 2 -> 4/3.
    assert ps.expected_max([1, 2, 3]) == pytest.approx([2.0, 8 / 3, 3.0])
    assert ps.expected_max([1, 2, 3], maximize=False) == pytest.approx([2.0, 4 / 3, 1.0])


@pytest.mark.parametrize("maximize", [True, False])
def test_dodge_expected_max_is_the_mean_best_over_all_ordered_draws(maximize: bool) -> None:
    best = max if maximize else min
    brute = [np.mean([best(d) for d in itertools.product(VALUES, repeat=n)]) for n in range(1, 4)]
    assert ps.expected_max(VALUES, n_max=3, maximize=maximize, method="dodge") == pytest.approx(brute, abs=1e-12)


def test_dodge_by_hand_is_below_the_unbiased_estimate() -> None:
    # With replacement from {1, 2, 3}, n = 2: P(best = 1) = 1/9, P(2) = 4/9 - 1/9, P(3) = 1 - 4/9 -> 22/9 < 8/3;
    # n = 3: P(1) = 1/27, P(2) = 8/27 - 1/27, P(3) = 1 - 8/27 -> 72/27.
    assert ps.expected_max([1, 2, 3], method="dodge") == pytest.approx([2.0, 22 / 9, (1 + 2 * 7 + 3 * 19) / 27])


def test_expected_max_is_the_mean_at_one_and_the_best_at_n() -> None:
    curve = ps.expected_max(VALUES)
    assert len(curve) == 6
    assert curve[0] == pytest.approx(2.6 / 6)
    assert curve[-1] == pytest.approx(0.7)
    assert ps.expected_max(VALUES, maximize=False)[-1] == pytest.approx(0.1)
    assert ps.expected_max(VALUES, method="dodge")[-1] < 0.7  # repeated draws keep it below the best


def test_expected_max_drops_nan_and_leaves_n_beyond_the_data_undefined() -> None:
    curve = ps.expected_max([*VALUES, math.nan], n_max=8)
    assert curve[:6] == pytest.approx(ps.expected_max(VALUES))
    assert np.isnan(curve[6:]).all()
    assert not np.isnan(ps.expected_max(VALUES, n_max=8, method="dodge")).any()
    assert np.isnan(ps.expected_max([math.nan], n_max=2)).all()
    with pytest.raises(ValueError):
        ps.expected_max_without_replacement(VALUES, 7)


@pytest.mark.parametrize("maximize", [True, False])
def test_bands_contain_the_estimate(maximize: bool) -> None:
    bands = ps.expected_max_bands(VALUES, maximize=maximize, n_boot=500, seed=3)
    assert list(bands["n"]) == [1, 2, 3, 4, 5, 6]
    assert bands["expected"].to_numpy() == pytest.approx(ps.expected_max(VALUES, maximize=maximize))
    assert (bands["low"] <= bands["expected"] + 1e-12).all() and (bands["expected"] <= bands["high"] + 1e-12).all()
    assert bands["low"].iloc[0] < 2.6 / 6 < bands["high"].iloc[0]  # the mean's band has width
    edge = bands["high"] if maximize else bands["low"]
    assert edge.iloc[-1] == pytest.approx(0.7 if maximize else 0.1)  # most resamples hold the best value


def test_bands_are_percentiles_of_the_brute_force_curve_over_resamples() -> None:
    # The same resamples (default_rng(seed).integers, one row of N indices each), each curve by enumeration.
    picks = np.random.default_rng(5).integers(0, 6, size=(200, 6))
    curves = [
        [np.mean([max(c) for c in itertools.combinations(np.asarray(VALUES)[row], n)]) for n in range(1, 7)]
        for row in picks
    ]
    low, high = np.quantile(np.array(curves), [0.1, 0.9], axis=0)
    bands = ps.expected_max_bands(VALUES, n_boot=200, level=0.8, seed=5)
    assert bands["low"].to_numpy() == pytest.approx(low, abs=1e-12)
    assert bands["high"].to_numpy() == pytest.approx(high, abs=1e-12)


def test_bands_are_deterministic_given_the_seed() -> None:
    first = ps.expected_max_bands(VALUES, n_boot=200, seed=7)
    pd.testing.assert_frame_equal(first, ps.expected_max_bands(VALUES, n_boot=200, seed=7))
    assert not first.equals(ps.expected_max_bands(VALUES, n_boot=200, seed=8))


def test_bands_narrow_to_a_point_when_all_values_are_equal() -> None:
    bands = ps.expected_max_bands([0.5] * 5, n_boot=100)
    for column in ("expected", "low", "high"):
        assert bands[column].to_numpy() == pytest.approx([0.5] * 5)


def test_ranking_changes_marks_where_two_curves_cross() -> None:
    rising, flat = np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.array([3.0, 3.0, 3.0, 3.0, 3.0])
    # flat leads at n = 1, 2; a tie at n = 3 is no change; rising leads from n = 4.
    assert ps.ranking_changes({"rising": rising, "flat": flat}) == [4]
    assert ps.ranking_changes({"rising": rising, "flat": flat}, maximize=False) == [4]
    assert ps.ranking_changes({"a": [1.0, 3.0, 5.0], "b": [2.0, 2.0, 6.0]}) == [2, 3]
    assert ps.ranking_changes({"a": [1.0, 2.0, 2.0], "b": [2.0, 2.0, 3.0]}) == []  # ties and parts as before
    assert ps.ranking_changes({"a": [1.0, math.nan, 3.0, 1.0], "b": [2.0, 9.0, 2.0]}) == [3]  # common length 3


# Times to target (epochs) of three optimizers on four workloads, tau_max = 4:
#              w1    w2    w3    w4
#   A          10    30     8   inf
#   B          20    15    12   inf
#   C          50   inf    16   NaN
# w4: nobody reached the target -> dropped, |W| = 3.
# Ratios to the fastest per workload (10, 15, 8):
#   A: 1,   2,   1       B: 2, 1, 1.5       C: 5 (> 4), inf, 2
# rho(tau) at tau = 1, 1.5, 2, 3, 4:
#   A: 2/3, 2/3, 1, 1, 1     B: 1/3, 2/3, 1, 1, 1     C: 0, 0, 1/3, 1/3, 1/3
# Score = mean_w max(0, 4 - r) / 3:
#   A: (3 + 2 + 3)/9 = 8/9   B: (2 + 3 + 2.5)/9 = 5/6   C: (0 + 0 + 2)/9 = 2/9
TIMES = pd.DataFrame(
    {
        "w1": [10.0, 20.0, 50.0],
        "w2": [30.0, 15.0, math.inf],
        "w3": [8.0, 12.0, 16.0],
        "w4": [math.inf, math.inf, math.nan],
    },
    index=["A", "B", "C"],
)


def test_performance_profile_by_hand() -> None:
    profile = ps.performance_profile(TIMES, tau_max=4.0, n_points=4)  # grid 1, 2, 3, 4 plus the ratio 1.5
    wide = profile.pivot(index="arm", columns="tau", values="fraction")
    assert list(wide.columns) == [1.0, 1.5, 2.0, 3.0, 4.0]
    assert wide.loc["A"].to_numpy() == pytest.approx([2 / 3, 2 / 3, 1, 1, 1])
    assert wide.loc["B"].to_numpy() == pytest.approx([1 / 3, 2 / 3, 1, 1, 1])
    assert wide.loc["C"].to_numpy() == pytest.approx([0, 0, 1 / 3, 1 / 3, 1 / 3])
    assert list(ps.performance_ratios(TIMES).columns) == ["w1", "w2", "w3"]


def test_profile_scores_by_hand_and_unchanged_by_a_workload_nobody_reached() -> None:
    scores = ps.profile_scores(TIMES)
    assert scores.to_dict() == pytest.approx({"A": 8 / 9, "B": 5 / 6, "C": 2 / 9})
    assert ps.profile_scores(TIMES.drop(columns="w4")).to_dict() == pytest.approx(scores.to_dict())


def test_profile_score_is_one_for_an_arm_fastest_everywhere() -> None:
    times = pd.concat([TIMES, pd.DataFrame({"w1": [5.0], "w2": [5.0], "w3": [5.0], "w4": [math.inf]}, index=["D"])])
    scores = ps.profile_scores(times)
    assert scores["D"] == 1.0
    # Against D (5, 5, 5): A's ratios 2, 6, 1.6 -> (2 + 0 + 2.4)/9.
    assert scores["A"] == pytest.approx(4.4 / 9)
    with pytest.raises(ValueError):
        ps.profile_scores(TIMES.replace(8.0, 0.0))


def test_time_to_target_on_a_hand_curve() -> None:
    curve = pd.DataFrame({"epoch": [3, 1, 5, 2, 4], "value": [0.45, 0.2, 0.9, 0.5, 0.7]})  # rows out of order
    assert ps.time_to_target(curve, 0.6) == 4.0
    assert ps.time_to_target(curve, 0.5) == 2.0  # reaching includes equality
    assert ps.time_to_target(curve, 0.95) == math.inf
    losses = pd.DataFrame({"epoch": [1, 2, 3, 4], "value": [1.0, 0.8, 0.9, 0.5]})
    assert ps.time_to_target(losses, 0.85, maximize=False) == 2.0


def test_workload_target_is_the_median_of_each_arms_best() -> None:
    values = pd.Series([0.7, 0.9, 0.8, 0.6, 0.5, math.nan], index=["a", "a", "b", "c", "c", "d"])
    assert ps.workload_target(values) == pytest.approx(0.8)  # bests 0.9, 0.8, 0.6
    assert ps.workload_target(values, maximize=False) == pytest.approx(0.7)  # bests 0.7, 0.8, 0.5
    assert ps.workload_target(pd.Series({"a": 0.9, "b": 0.8})) == pytest.approx(0.85)


def test_winners_curse_gap() -> None:
    assert ps.winners_curse_gap(0.9, [0.85, 0.87, 0.83, math.nan]) == pytest.approx(0.05)
    assert ps.winners_curse_gap(0.30, [0.35, 0.33]) == pytest.approx(-0.04)  # a loss: optimism is negative
    assert math.isnan(ps.winners_curse_gap(0.9, []))


def test_top_k_takes_the_best_complete_trials() -> None:
    trials = pd.DataFrame(
        {
            "number": [0, 1, 2, 3, 4, 5],
            "state": ["COMPLETE", "PRUNED", "COMPLETE", "COMPLETE", "COMPLETE", "FAIL"],
            "value": [0.80, 0.99, 0.90, 0.85, 0.90, math.nan],
        }
    )
    assert list(ps.top_k(trials, k=3)["number"]) == [2, 4, 3]  # the pruned 0.99 is not a candidate
    assert list(ps.top_k(trials, k=2, maximize=False)["number"]) == [0, 3]


def test_select_config_breaks_ties_by_tuning_value_then_id() -> None:
    reruns = pd.DataFrame(
        {
            "config": [7, 7, 3, 3, 5, 5, 9, 9],
            "seed": [0, 1] * 4,
            "value": [0.80, 0.90, 0.90, 0.80, 0.84, 0.86, 0.79, 0.81],
        }
    )  # means 0.85, 0.85, 0.85 (0.8500000000000001: a tie up to rounding), 0.80
    assert ps.select_config(reruns, {7: 0.95, 3: 0.93, 5: 0.95, 9: 0.99}) == 5  # 7 and 5 tie at 0.95: id
    assert ps.select_config(reruns, {7: 0.96, 3: 0.93, 5: 0.95}) == 7
    assert ps.select_config(reruns.assign(tuning_value=reruns["config"].map({7: 0.9, 3: 0.91, 5: 0.9, 9: 1}))) == 3
    assert ps.select_config(reruns, {7: 0.95, 3: 0.93, 5: 0.95, 9: 0.99}, maximize=False) == 9
    assert ps.select_config(reruns) == 3  # no tuning values: the smallest id of the three


def test_pruning_regret_counts_pruned_trials_that_would_have_won() -> None:
    reruns = [0.8, 0.9, math.nan, 0.95, 0.85]
    assert ps.pruning_regret(reruns, 0.85) == 2  # 0.9, 0.95; the equal 0.85 does not beat it
    assert ps.pruning_regret(reruns, 0.85, maximize=False) == 1
    assert ps.pruning_regret([], 0.85) == 0


def test_truncate_to_epoch_budget_keeps_each_arms_first_trials() -> None:
    trials = pd.DataFrame(
        {
            "arm": ["a", "b", "a", "a", "b", "a"],
            "number": [1, 1, 0, 3, 0, 2],
            "epochs": [5, 1, 3, 4, 10, 2],
        }
    )  # a by number: 3, 5, 2, 4 -> cumulative 3, 8, 10, 14; b: 10, 1 -> 10, 11
    assert ps.epochs_consumed(trials).to_dict() == {"a": 14, "b": 11}
    kept = ps.truncate_to_epoch_budget(trials, 10)
    assert sorted(zip(kept["arm"], kept["number"], strict=True)) == [("a", 0), ("a", 1), ("a", 2), ("b", 0)]
    assert ps.epochs_consumed(kept).to_dict() == {"a": 10, "b": 10}
    assert ps.epochs_consumed(ps.truncate_to_epoch_budget(trials, 9)).to_dict() == {"a": 8}
