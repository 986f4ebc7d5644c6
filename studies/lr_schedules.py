"""Learning-rate schedules on MNIST-1D (1D CNN), each with its own tuned learning rate.

One study per schedule, `lr-schedules.<schedule>` (constant, step, exponential, cosine,
plateau, onecycle, warmup_cosine), all with the same TPE seed, trial count, epochs and
median pruner. Each tunes lr (1e-3..1, log) and the schedule's own knobs (step size and
decay, decay rate, patience, warm-up length); the optimizer is SGD with momentum 0.9, where
schedules matter most. Comparing the studies' best values compares the schedules at their
best learning rates, not at one lr that suits some of them.

    --budget small:    4 trials per schedule,  6 epochs  (28 trials)
    --budget default: 12 trials per schedule, 15 epochs  (84 trials)

Running it again resumes: each study runs only its missing trials.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from trainables import SCHEDULE_FIELDS, SCHEDULES
from tuner import Budget, Float, StudyGroup, StudySpec, default_space, main_for_script


def schedule_studies(base: str, budget: Budget) -> list[StudySpec]:
    joint = default_space()  # the schedules' own knobs and their ranges

    def space(schedule: str) -> dict[str, Any]:
        knobs = {name: joint[name] for name in SCHEDULE_FIELDS.get(schedule, ())}
        return {
            "dataset": "mnist1d",
            "model": "cnn1d",
            "batch_size": 100,
            "epochs": budget.epochs,
            "optimizer": "momentum",
            "momentum": 0.9,
            "lr_schedule": schedule,
            "lr": Float(1e-3, 1.0, log=True),
            **{name: _unconditional(dist) for name, dist in knobs.items()},
        }

    return [
        StudySpec(
            name=f"{base}.{schedule}",
            space=space(schedule),
            n_trials=budget.n_trials,
            user_attrs={"kind": "lr_schedule", "schedule": schedule},
        )
        for schedule in SCHEDULES
    ]


def _unconditional(dist: Any) -> Any:
    """The joint space's knob without its `when` (the schedule is fixed in each study)."""
    return dataclasses.replace(dist, when={})


STUDY = StudyGroup(
    name="lr-schedules",
    studies=schedule_studies,
    budgets={"small": Budget(n_trials=4, epochs=6, pngs=False), "default": Budget(n_trials=12, epochs=15)},
)

if __name__ == "__main__":
    main_for_script(STUDY)
