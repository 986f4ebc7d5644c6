"""Optimizer comparison on MNIST-1D (1D CNN): SGD, momentum, Nesterov, RMSprop, Adagrad, Adam, AdamW.

Fair the way optimizer benchmarks make it (Choi et al. 2019; Schmidt et al. 2021): every
optimizer gets the same tuning budget over the same search space, then its best config and
its standard default are trained again with several seeds, so that differences can be told
from seed noise.

1. Tuning: one study per optimizer, `optimizer-comparison.<optimizer>`, all with the same TPE
   seed (so every optimizer starts from the same random candidates), trial count, epochs and
   median pruner, over lr (1e-4..1, log), lr_schedule (constant, cosine, onecycle),
   weight_decay (1e-6..1e-1, log) and, for momentum and nesterov, momentum (0.5..0.99).
   Each optimizer's first trial is its default config (below), so the tuned config never loses
   to the default by how the search went. Tuning trials train with seed 0; the pruner stops the
   ones that fall behind.
2. Re-runs, in study `optimizer-comparison.seeds`, never pruned and as long as the tuning
   trials: each optimizer's best tuned config (`group` tuned) and its standard default
   (`group` default: PyTorch's defaults — lr 0.01 for rmsprop and adagrad, 1e-3 for adam and
   adamw with adamw's weight decay 0.01 — and lr 0.01 for sgd, momentum and nesterov, with
   momentum 0.9; constant lr) trained with seeds 1..K, none of them the tuning seed.

Budget split, the same for every optimizer (tuning trials, then 2 x K re-runs):

    --budget small:    4 trials,  5 epochs, K=2:  28 tuning + 28 re-runs, HTML report only
                       (80 s on 2 busy CPU cores, 36 s of CPU)
    --budget default: 16 trials, 15 epochs, K=5: 112 tuning + 70 re-runs, report with PNGs
                       (4.1 min on 2 CPU cores: trials train in fused cohorts of 8)

Running it again resumes: tuning studies run only their missing trials, planned re-runs are
not enqueued twice. `--n-trials` sets the tuning trials per optimizer; `--study-name` the base.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from trainables import MOMENTUM_OPTIMIZERS, OPTIMIZERS
from tuner import Budget, Categorical, Float, Int, Rerun, StudyGroup, StudySpec, main_for_script
from tuner.group import best_params

FIXED = {"dataset": "mnist1d", "model": "cnn1d", "batch_size": 100}
SCHEDULES = ["constant", "cosine", "onecycle"]
DEFAULTS: dict[str, dict[str, Any]] = {  # each optimizer's standard config: PyTorch's defaults unless noted
    "sgd": {"lr": 0.01},  # PyTorch's 1e-3 barely moves in a few epochs; 0.01 is Keras's and common
    "momentum": {"lr": 0.01, "momentum": 0.9},
    "nesterov": {"lr": 0.01, "momentum": 0.9},
    "rmsprop": {"lr": 0.01},
    "adagrad": {"lr": 0.01},
    "adam": {"lr": 1e-3},
    "adamw": {"lr": 1e-3, "weight_decay": 0.01},
}


def tuning_studies(base: str, budget: Budget) -> list[StudySpec]:
    def space(optimizer: str) -> dict[str, Any]:
        momentum = {"momentum": Float(0.5, 0.99)} if optimizer in MOMENTUM_OPTIMIZERS else {}
        return {
            **FIXED,
            "epochs": budget.epochs,
            "optimizer": optimizer,
            "lr": Float(1e-4, 1.0, log=True),
            "lr_schedule": Categorical(SCHEDULES),
            "weight_decay": Float(1e-6, 1e-1, log=True),
            **momentum,
        }

    return [
        StudySpec(
            name=f"{base}.{optimizer}",
            space=space(optimizer),
            sampler="tpe",
            pruner="median",
            n_trials=budget.n_trials,
            seed=0,
            cohort=budget.cohort,
            enqueue=(default_candidate(optimizer),),
            user_attrs={"kind": "optimizer_tuning", "comparison": base, "optimizer": optimizer},
        )
        for optimizer in OPTIMIZERS
    ]


def default_candidate(optimizer: str) -> dict[str, Any]:
    """The optimizer's default config as its first tuning trial: the search starts from it, so the tuned config
    cannot lose to the default by how the search went. No weight decay is outside the log range searched: its
    low end (1e-6, no measurable effect in these epochs) stands for it; the re-runs train the default as it is."""
    default = DEFAULTS[optimizer]
    return {"lr_schedule": "constant", "weight_decay": 1e-6, **default}


def reruns(tuned: Sequence[Any]) -> list[Rerun]:
    runs = []
    for study in tuned:
        optimizer = study.user_attrs["optimizer"]
        best = best_params(study)
        if best is not None:  # no completed trial: nothing tuned to re-run
            runs.append(Rerun({"optimizer": optimizer, **best}, {"group": "tuned", "optimizer": optimizer}))
        default = {"lr_schedule": "constant", "weight_decay": 0.0, **DEFAULTS[optimizer]}
        runs.append(Rerun({"optimizer": optimizer, **default}, {"group": "default", "optimizer": optimizer}))
    return runs


def rerun_space(budget: Budget) -> dict[str, Any]:
    """Wide enough for every tuned and default value; nothing in it is sampled."""
    return {
        **FIXED,
        "epochs": budget.epochs,
        "optimizer": Categorical(list(OPTIMIZERS)),
        "lr": Float(1e-6, 10.0, log=True),
        "lr_schedule": Categorical(SCHEDULES),
        "weight_decay": Float(0.0, 1.0),
        "momentum": Float(0.01, 0.999, when={"optimizer": list(MOMENTUM_OPTIMIZERS)}),
        "seed": Int(0, 1_000_000),
    }


STUDY = StudyGroup(
    name="optimizer-comparison",
    studies=tuning_studies,
    budgets={
        "small": Budget(n_trials=4, epochs=5, seeds=2, pngs=False, cohort=4),
        "default": Budget(n_trials=16, epochs=15, seeds=5, cohort=8),
    },
    reruns=reruns,
    rerun_space=rerun_space,
)

if __name__ == "__main__":
    main_for_script(STUDY)
