"""Real Optuna journals and a real MLflow store holding small, scripted studies (no training).

The optimizer comparison is laid out as the study scripts lay it out (see tuner.report's data
contract): one study per optimizer `cmp.<optimizer>`, a `cmp.seeds` study of re-runs, each
trial with an MLflow child run logged through tuner.tracking, the way the runner logs it.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import optuna
import pytest

from trainables import EpochResult, TrainConfig
from tuner.storage import open_storage
from tuner.tracking import RUN_ID_ATTR, StudyTracking

EPOCHS = 4
BASE_ACC = {"sgd": 0.80, "momentum": 0.86, "adam": 0.90}  # peak validation accuracy at the best lr
BEST_LR = {"sgd": 0.1, "momentum": 0.03, "adam": 0.003}
DEFAULT_LR = {"sgd": 0.01, "momentum": 0.01, "adam": 0.001}
SEED_OFFSETS = (-0.004, 0.0, 0.006)  # test accuracy of seed k = base + offset[k]
DEFAULT_PENALTY = 0.05  # a default config's test accuracy is this much below the tuned one
TRIALS_PER_OPTIMIZER = 6
PRUNE_BELOW = 0.6  # scripted pruning: a trial whose peak is below this stops after epoch 2


def peak(optimizer: str, lr: float) -> float:
    return BASE_ACC[optimizer] - 0.08 * (math.log10(lr) - math.log10(BEST_LR[optimizer])) ** 2


def curve(optimizer: str, lr: float, epochs: int = EPOCHS, test_acc: float | None = None) -> list[EpochResult]:
    """Validation accuracy rises towards the peak of (optimizer, lr); train accuracy a bit above it."""
    top = peak(optimizer, lr)
    out = []
    for e in range(1, epochs + 1):
        val = top * (1 - math.exp(-e))
        last = e == epochs
        out.append(
            EpochResult(
                epoch=e, train_loss=1 - val, train_acc=min(1.0, val + 0.03), val_loss=1.1 - val, val_acc=val,
                lr=lr * 0.5 ** (e - 1), seconds=0.1, samples_per_second=1000.0,
                test_loss=(1 - test_acc) if last and test_acc is not None else None,
                test_acc=test_acc if last else None,
            )
        )  # fmt: skip
    return out


def fast_dir() -> Path:
    """A temp dir on tmpfs when there is one: the journal fsyncs every write, which tmpfs makes cheap."""
    shm = Path("/dev/shm")
    return Path(tempfile.mkdtemp(prefix="tuner-report-", dir=shm if shm.is_dir() else None))


@pytest.fixture(scope="session")
def store_dir() -> Iterator[Path]:
    path = fast_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@dataclass(frozen=True)
class Store:
    storage: str
    tracking_uri: str


def tracked_trial(
    study: optuna.Study, tracking: StudyTracking, trial: optuna.Trial, config: TrainConfig, results: list[EpochResult]
) -> None:
    """Report `results` to the trial and its MLflow run; prune it after epoch 2 when its peak is low."""
    run = tracking.start_trial(trial.number, trial.params, config)
    trial.set_user_attr(RUN_ID_ATTR, run.run_id)
    pruned = results[-1].val_acc < PRUNE_BELOW * (1 - math.exp(-EPOCHS))
    kept = results[:2] if pruned else results
    for r in kept:
        run.log_epoch(r.epoch, r.metrics(), r.resumed)
        trial.report(r.val_acc, r.epoch)
    if pruned:
        trial.set_user_attr("reason", "pruned at epoch 2")
        trial.set_user_attr("pruned_at_epoch", 2)
        run.finish("PRUNED", "pruned at epoch 2")
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        run.finish("COMPLETE")
        study.tell(trial, kept[-1].val_acc)


def new_study(storage: str, tracking_uri: str, name: str, **attrs: str) -> tuple[optuna.Study, StudyTracking]:
    study = optuna.create_study(
        study_name=name,
        storage=open_storage(storage, heartbeat=False),
        direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=len(name)),
    )
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    settings = {"study_name": name, "metric": "val_acc", "direction": "maximize"}
    tracking = StudyTracking(tracking_uri, study, settings, {})
    tracking.settle()  # the parent run's id in the study, as a run's first trial puts it
    return study, tracking


@pytest.fixture(scope="session")
def comparison(store_dir: Path) -> Store:
    """`cmp.<optimizer>` tuning studies (lr sampled, low ones pruned) and `cmp.seeds` re-runs."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store = Store(str(store_dir / "studies.journal"), f"sqlite:///{store_dir / 'mlflow.db'}")
    best_lr = {}
    for optimizer in BASE_ACC:
        study, tracking = new_study(
            store.storage, store.tracking_uri, f"cmp.{optimizer}", kind="optimizer_tuning", comparison="cmp", optimizer=optimizer
        )  # fmt: skip
        for _ in range(TRIALS_PER_OPTIMIZER):
            trial = study.ask()
            lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
            tracked_trial(
                study, tracking, trial, TrainConfig(optimizer=optimizer, lr=lr, epochs=EPOCHS), curve(optimizer, lr)
            )
        tracking.finish_study()
        best_lr[optimizer] = study.best_params["lr"]
    study, tracking = new_study(store.storage, store.tracking_uri, "cmp.seeds", kind="seeds", comparison="cmp")
    for optimizer in BASE_ACC:
        for group, lr, penalty in (
            ("tuned", best_lr[optimizer], 0.0),
            ("default", DEFAULT_LR[optimizer], DEFAULT_PENALTY),
        ):
            for seed, offset in enumerate(SEED_OFFSETS):
                trial = study.ask()
                for key, value in {"group": group, "optimizer": optimizer, "seed": seed}.items():
                    trial.set_user_attr(key, value)
                test_acc = BASE_ACC[optimizer] - penalty + offset
                config = TrainConfig(optimizer=optimizer, lr=lr, seed=seed, epochs=EPOCHS)
                tracked_trial(study, tracking, trial, config, curve(optimizer, BEST_LR[optimizer], test_acc=test_acc))
    tracking.finish_study()
    return store


@pytest.fixture(scope="session")
def kinds(store_dir: Path) -> Store:
    """`sched.<schedule>` (lr tuned per schedule), `bs` (batch size x lr) and `reg` (regularization) studies."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store = Store(str(store_dir / "studies.journal"), f"sqlite:///{store_dir / 'mlflow.db'}")
    for schedule, decay in (("constant", 1.0), ("cosine", 0.5)):
        study, tracking = new_study(
            store.storage, store.tracking_uri, f"sched.{schedule}", kind="lr_schedule", schedule=schedule
        )
        for _ in range(3):
            trial = study.ask()
            lr = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
            results = [replace(r, lr=lr * decay ** (r.epoch - 1)) for r in curve("momentum", lr)]
            config = TrainConfig(optimizer="momentum", lr=lr, lr_schedule=schedule, epochs=EPOCHS)
            tracked_trial(study, tracking, trial, config, results)
        tracking.finish_study()
    study, tracking = new_study(store.storage, store.tracking_uri, "bs", kind="batch_size")
    for batch_size in BATCH_SIZES:
        for lr in (0.001, 0.003 * batch_size / 32):
            study.enqueue_trial({"batch_size": batch_size, "lr": lr})
            trial = study.ask()
            trial.suggest_categorical("batch_size", list(BATCH_SIZES))
            trial.suggest_float("lr", 1e-4, 1.0, log=True)
            config = TrainConfig(optimizer="adam", lr=lr, batch_size=batch_size, epochs=EPOCHS)
            # the best lr grows with the batch size (0.003 at 32); larger batches end a little lower
            results = [replace(r, val_acc=r.val_acc - 1e-4 * batch_size) for r in curve("adam", lr * 32 / batch_size)]
            tracked_trial(study, tracking, trial, config, results)
    tracking.finish_study()
    study, tracking = new_study(store.storage, store.tracking_uri, "reg", kind="regularization")
    for weight_decay, l1, dropout in REG_TRIALS:
        study.enqueue_trial({"weight_decay": weight_decay, "l1": l1, "dropout": dropout})
        trial = study.ask()
        trial.suggest_float("weight_decay", 1e-6, 1e-2, log=True)
        trial.suggest_float("l1", 1e-7, 1e-3, log=True)
        trial.suggest_float("dropout", 0.0, 0.5)
        gap = 0.1 - dropout / 10  # more dropout, less overfitting
        results = [replace(r, val_acc=r.val_acc - gap / 4) for r in curve("adam", 0.003, test_acc=0.85 - gap)]
        results[-1] = replace(results[-1], train_acc=0.85)
        config = TrainConfig(optimizer="adam", weight_decay=weight_decay, l1=l1, dropout=dropout, epochs=EPOCHS)
        tracked_trial(study, tracking, trial, config, results)
    tracking.finish_study()
    return store


BATCH_SIZES = (32, 128)
REG_TRIALS = ((1e-5, 1e-6, 0.0), (1e-4, 1e-5, 0.2), (1e-3, 1e-4, 0.4))
