"""Regularization strength against validation and test accuracy and the train-test gap, MNIST-1D (1D CNN).

One study, `regularization`: weight decay (L2, 1e-6..1e-1, log), L1 (1e-7..1e-3, log) and
dropout (0..0.6) sampled by quasi-random (Sobol) points, which cover the ranges evenly for
plots of accuracy against each strength. Adam at lr 1e-2 on 1,000 training samples, so
that the model overfits and regularization has something to do. No pruning: every trial
reaches its last epoch, where the test accuracy is measured; the report plots validation
and test accuracy and the train-test gap against each strength.

    --budget small:    8 trials,  8 epochs
    --budget default: 32 trials, 30 epochs

Running it again resumes: only the missing trials run.
"""

from __future__ import annotations

from tuner import Budget, Float, StudyGroup, StudySpec, main_for_script


def regularization_study(base: str, budget: Budget) -> list[StudySpec]:
    space = {
        "dataset": "mnist1d",
        "model": "cnn1d",
        "train_samples": 1000,
        "batch_size": 100,
        "epochs": budget.epochs,
        "optimizer": "adam",
        "lr": 1e-2,
        "weight_decay": Float(1e-6, 1e-1, log=True),
        "l1": Float(1e-7, 1e-3, log=True),
        "dropout": Float(0.0, 0.6),
    }
    return [
        StudySpec(
            name=base,
            space=space,
            sampler="qmc",
            pruner="none",
            n_trials=budget.n_trials,
            user_attrs={"kind": "regularization"},
        )
    ]


STUDY = StudyGroup(
    name="regularization",
    studies=regularization_study,
    budgets={"small": Budget(n_trials=8, epochs=8, pngs=False), "default": Budget(n_trials=32, epochs=30)},
)

if __name__ == "__main__":
    main_for_script(STUDY)
