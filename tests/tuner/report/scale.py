"""A 2,000-trial study made through ask/tell with scripted values (no training, no MLflow)."""

from __future__ import annotations

import math
import random

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution

from tuner.storage import open_storage

SPACE = {
    "optimizer": CategoricalDistribution(["sgd", "momentum", "adam"]),
    "lr": FloatDistribution(1e-4, 1.0, log=True),
    "batch_size": CategoricalDistribution([32, 64, 128]),
    "dropout": FloatDistribution(0.0, 0.5),
}
BEST_LR = {"sgd": 0.1, "momentum": 0.03, "adam": 0.003}


def make_big_study(storage: str, name: str, n_trials: int = 2000, epochs: int = 20, seed: int = 0) -> None:
    """Ask/tell in memory, then copy to `storage`: each journal write takes a file lock and a re-read, the copy one write per trial."""
    rng = random.Random(seed)
    study = optuna.create_study(study_name=name, direction="maximize", sampler=optuna.samplers.RandomSampler(seed))
    for i in range(n_trials):
        trial = study.ask(SPACE)
        top = 0.9 - 0.08 * (math.log10(trial.params["lr"]) - math.log10(BEST_LR[trial.params["optimizer"]])) ** 2
        n_epochs = epochs if i % 3 == 0 else rng.randint(2, epochs // 2)  # two trials in three are pruned early
        value = 0.0
        for epoch in range(1, n_epochs + 1):
            value = top * (1 - math.exp(-epoch / 4)) + rng.uniform(-0.01, 0.01)
            trial.report(value, epoch)
        if n_epochs == epochs:
            study.tell(trial, value)
        else:
            trial.set_user_attr("reason", f"pruned at epoch {n_epochs}")
            trial.set_user_attr("pruned_at_epoch", n_epochs)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    optuna.copy_study(
        from_study_name=name, from_storage=study._storage, to_storage=open_storage(storage, heartbeat=False)
    )
