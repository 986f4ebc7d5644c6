"""Pruning a multi-objective study, which Optuna cannot do (optuna/optuna#3450): on the first objective's curve.

Each trial's per-epoch values of the first objective are kept in its system attributes
(`tuner:curve:<step>`), and the study's pruner rule is applied to them as Optuna's
percentile rule does: at a step past the warm-up, once enough trials completed, a trial
whose best value so far is worse than the given percentile of the completed trials'
values at that step is pruned. `median` and `percentile` keep their settings; `hyperband`
and `successive_halving` prune by the median rule here; `none` never prunes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

CURVE_ATTR = "tuner:curve:"  # + step: the first objective's value at that step
RULES = {  # pruner: (percentile, startup trials, warm-up steps), as tuner.run.open makes them for one objective
    "median": (50.0, 5, 2),
    "percentile": (25.0, 5, 2),
    "hyperband": (50.0, 5, 2),
    "successive_halving": (50.0, 5, 2),
}


@dataclass
class CurvePruner:
    pruner: str
    direction: str  # of the first objective
    _best: dict[int, float] = field(default_factory=dict)  # trial number: its best value so far

    def record(self, trial: Any, step: int, value: float) -> None:
        trial.storage.set_trial_system_attr(trial._trial_id, f"{CURVE_ATTR}{step}", value)

    def should_prune(self, trial: Any, step: int, value: float) -> bool:
        import numpy as np
        from optuna.trial import TrialState

        maximize = self.direction == "maximize"
        best = self._best.get(trial.number, value)
        best = max(best, value) if maximize else min(best, value)
        self._best[trial.number] = best
        if self.pruner not in RULES:
            return False
        percentile, startup, warmup = RULES[self.pruner]
        if step < warmup:
            return False
        completed = trial.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(completed) < startup:
            return False
        others = [t.system_attrs[f"{CURVE_ATTR}{step}"] for t in completed if f"{CURVE_ATTR}{step}" in t.system_attrs]
        if not others:
            return False
        threshold = float(np.nanpercentile(others, 100.0 - percentile if maximize else percentile))
        return best < threshold if maximize else best > threshold
