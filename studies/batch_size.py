"""Batch size against its best learning rate on MNIST-1D (1D CNN).

One study, `batch-size`: a grid of batch sizes x learning rates (log-spaced), SGD with
momentum 0.9 and a constant lr, every trial trained to the end (no pruning: a larger batch
takes fewer steps per epoch, so early epochs would not compare fairly). The report shows,
per batch size, the accuracy over lr and where its best lr lies; the linear scaling rule
(Goyal et al. 2017) predicts the best lr to grow with the batch size.

    --budget small:   3 batch sizes x 3 lrs,  6 epochs  (9 trials)
    --budget default: 5 batch sizes x 6 lrs, 12 epochs  (30 trials)

Running it again resumes: the grid's missing points run.
"""

from __future__ import annotations

from tuner import Budget, Categorical, StudyGroup, StudySpec, main_for_script

SMALL = Budget(n_trials=9, epochs=6, pngs=False)
DEFAULT = Budget(n_trials=30, epochs=12)
GRIDS = {  # budget -> (batch sizes, learning rates): n_trials is the grid's size
    SMALL: ([32, 128, 512], [0.01, 0.1, 1.0]),
    DEFAULT: ([32, 64, 128, 256, 512], [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]),
}


def batch_size_study(base: str, budget: Budget) -> list[StudySpec]:
    batch_sizes, lrs = GRIDS[budget]
    space = {
        "dataset": "mnist1d",
        "model": "cnn1d",
        "epochs": budget.epochs,
        "optimizer": "momentum",
        "momentum": 0.9,
        "lr_schedule": "constant",
        "batch_size": Categorical(batch_sizes),
        "lr": Categorical(lrs),
    }
    return [
        StudySpec(
            name=base,
            space=space,
            sampler="grid",
            pruner="none",
            n_trials=budget.n_trials,
            user_attrs={"kind": "batch_size"},
        )
    ]


STUDY = StudyGroup(
    name="batch-size",
    studies=batch_size_study,
    budgets={"small": SMALL, "default": DEFAULT},
)

if __name__ == "__main__":
    main_for_script(STUDY)
