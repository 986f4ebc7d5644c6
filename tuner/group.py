"""Study scripts that run several studies alike, as data: named budgets, the studies, seeded re-runs.

A `StudyGroup` is the STUDY of such a script. `tuner.run.group` runs it: for the chosen
`--budget` it builds its studies (`BASE.<member>`), runs each until it holds its trial
budget — running the script again resumes: only the missing trials run — then, when it has
re-runs, trains the chosen configs again with seeds 1..K in one more study (`BASE.seeds`),
and writes the report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tuner.space import Space
from tuner.study import StudySpec

BUDGET_NAME_ATTR = "budget"  # study user attribute: the --budget its trials were run with
RERUNS_ATTR = "reruns"  # seeds study user attribute: the re-runs planned, so a resume enqueues none twice


@dataclass(frozen=True)
class Budget:
    """What a study script spends; the same for each of its studies."""

    n_trials: int  # trials per tuning study
    epochs: int  # per trial, tuning and re-runs alike
    seeds: int = 0  # each re-run config is trained with seeds 1..seeds; 0: no re-runs
    pngs: bool = True  # PNG copies of the report's figures (about 2.5 s each); the HTML page is always written
    cohort: int = 1  # trials trained together as one fused model, in every study of the group (StudySpec.cohort)


@dataclass(frozen=True)
class Rerun:
    """A config to train again with every seed: its values in the re-run space, and trial user attributes."""

    params: Mapping[str, Any]
    attrs: Mapping[str, Any]


@dataclass(frozen=True)
class StudyGroup:
    """The STUDY of a script that tunes several studies alike, then optionally re-runs chosen configs with seeds.

    `studies(base, budget)` builds the tuning studies. With `reruns`, the configs it picks from
    the finished tuning studies are enqueued in `BASE.seeds`, whose space (`rerun_space(budget)`)
    must hold every value they use, and a `seed` parameter.
    """

    name: str  # the base of the study names; --study-name replaces it
    studies: Callable[[str, Budget], Sequence[StudySpec]]
    budgets: Mapping[str, Budget]
    reruns: Callable[[Sequence[Any]], Sequence[Rerun]] | None = None
    rerun_space: Callable[[Budget], Space] | None = None
    trainable: str | Callable[..., Any] | None = None  # trains every study of the group; None: each spec's own


def best_params(study: Any) -> dict[str, Any] | None:
    """The best trial's params, or None when no trial completed."""
    try:
        return dict(study.best_trial.params)
    except ValueError:
        return None
