"""Studies that train their trials in fused cohorts (`StudySpec(cohort=K)`), end to end: real
MNIST-1D training, journal storage, SQLite MLflow. Each member must stay a real trial: its own
Optuna trial and MLflow run with every epoch, pruned on its own, and training as it would alone.
"""

from __future__ import annotations

import signal
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

import trainables
from tests.tuner.procs import fake_mnist, finish, start_tuner, tuner, wait_for, write_script
from tuner.errors import UserError
from tuner.run.adapter import REASON_ATTR
from tuner.run.cohort import COHORT_ATTR
from tuner.run.execute import execute_study
from tuner.space import Categorical, Float
from tuner.study import RunOptions, StudySpec
from tuner.tracking import RUN_ID_ATTR

__all__ = ["fake_mnist"]  # a fixture

BASE = {"dataset": "mnist1d", "model": "cnn1d", "epochs": 3, "train_samples": 300, "device": "cpu"}
SPACE = {
    **BASE,
    "batch_size": Categorical([25, 50]),
    "optimizer": Categorical(["sgd", "adam"]),
    # Adam turns fp32 rounding noise into steps of the learning rate's size: at lr 0.06 a fused
    # member drifted 7% from solo in 3 epochs (in float64 they agree to 2e-7, tests/trainables/test_cohort.py)
    "lr": Float(1e-3, 1e-2, log=True),
    "weight_decay": Float(1e-6, 1e-2, log=True),
}


def val_losses(client: MlflowClient, trial: optuna.trial.FrozenTrial) -> list[float]:
    history = client.get_metric_history(trial.user_attrs[RUN_ID_ATTR], "val_loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def solo_val_losses(trial: optuna.trial.FrozenTrial, space: dict[str, object]) -> list[float]:
    """The trial's config (its space's fixed values, its sampled params) trained alone, as `--cohort 1` would."""
    fixed = {k: v for k, v in space.items() if not isinstance(v, Categorical | Float)}
    config = trainables.TrainConfig(**{**fixed, **trial.params})
    return [epoch.val_loss for epoch in trainables.fit(config)]


def test_each_member_is_a_real_trial_that_trains_as_it_would_alone(options: RunOptions) -> None:
    spec = StudySpec(name="cohorts", space=SPACE, pruner="none", n_trials=8, cohort=4, seed=3)
    study = execute_study(spec, options)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 8
    cohorts = {tuple(t.user_attrs[COHORT_ATTR]) for t in trials}
    assert sorted(cohorts) == [(0, 1, 2, 3), (4, 5, 6, 7)]  # asked 4 at a time, one shape each
    for cohort in cohorts:  # the members share the first's sampled shape, and sample the rest each
        assert len({trials[n].params["batch_size"] for n in cohort}) == 1
        assert len({(trials[n].params["optimizer"], trials[n].params["lr"]) for n in cohort}) == 4

    client = MlflowClient(options.tracking_uri)
    for trial in trials:  # its own run, every epoch, saying which trials it trained with
        run = client.get_run(trial.user_attrs[RUN_ID_ATTR])
        assert run.data.tags["optuna.trial_number"] == str(trial.number)
        assert run.data.tags["tuner.cohort"] == ",".join(map(str, trial.user_attrs[COHORT_ATTR]))
        assert len(val_losses(client, trial)) == 3
        assert sorted(trial.intermediate_values) == [1, 2, 3]
    for trial in trials:  # fused training is the same training, its fp32 sums in another order
        assert val_losses(client, trial) == pytest.approx(solo_val_losses(trial, SPACE), rel=1e-3)


def test_a_diverging_member_is_pruned_alone_and_the_others_train_on(options: RunOptions) -> None:
    space = {**BASE, "optimizer": "sgd", "batch_size": 50, "lr": Categorical([0.05, 1e6]), "seed": Categorical([0, 1])}
    spec = StudySpec(name="diverge", space=space, sampler="grid", pruner="none", n_trials=4, cohort=4)
    study = execute_study(spec, options)
    trials = study.get_trials()
    assert all(len(t.user_attrs[COHORT_ATTR]) == 4 for t in trials)  # the four trained as one cohort
    diverged = [t for t in trials if t.params["lr"] == 1e6]
    good = [t for t in trials if t.params["lr"] == 0.05]
    assert len(diverged) == len(good) == 2
    for trial in diverged:
        assert trial.state == TrialState.PRUNED and trial.user_attrs[REASON_ATTR] == "diverged at epoch 1"
    client = MlflowClient(options.tracking_uri)
    for trial in good:  # the NaN of the others never touched them
        assert trial.state == TrialState.COMPLETE
        assert val_losses(client, trial) == pytest.approx(solo_val_losses(trial, space), rel=1e-3)


def test_members_are_pruned_one_by_one(options: RunOptions) -> None:
    """Five middling trials first (the median pruner's start-up), then a cohort of better and hopeless ones."""
    space = {**BASE, "epochs": 6, "optimizer": "adam", "batch_size": 25, "seed": Categorical([0, 1, 2, 3, 4])}
    first = StudySpec(name="prune", space={**space, "lr": 0.003}, sampler="grid", n_trials=5, cohort=5)
    execute_study(first, options)
    mixed = replace(first, space={**space, "lr": Categorical([0.01, 1e-7])}, n_trials=6, cohort=6)
    study = execute_study(mixed, options)
    later = study.get_trials()[5:]
    assert {t.params["lr"] for t in later} == {0.01, 1e-7}  # 6 distinct points of a grid of 5 + 5 hold both
    assert all(len(t.user_attrs[COHORT_ATTR]) == 6 for t in later)
    client = MlflowClient(options.tracking_uri)
    for trial in later:  # each trained until it was pruned, and no further
        assert len(val_losses(client, trial)) == max(trial.intermediate_values)
        if trial.params["lr"] == 1e-7:
            assert trial.state == TrialState.PRUNED and trial.user_attrs[REASON_ATTR].startswith("pruned at epoch")
            assert max(trial.intermediate_values) < 6
    assert any(t.state == TrialState.COMPLETE and max(t.intermediate_values) == 6 for t in later)  # the rest went on


def test_a_user_trainable_without_a_fused_form_runs_its_trials_one_by_one(options: RunOptions) -> None:
    def train(params: dict[str, float]):  # type: ignore[no-untyped-def]
        for epoch in range(2):
            yield {"score": params["x"] * (epoch + 1)}

    spec = StudySpec(name="own", space={"x": Float(0, 1)}, trainable=train, metric="score", n_trials=3, cohort=4)
    study = execute_study(spec, options)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 3
    assert all(COHORT_ATTR not in t.user_attrs for t in study.get_trials())


def test_a_bad_cohort_is_one_clear_error_before_anything_is_created(options: RunOptions, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--cohort 0: give 1"):
        execute_study(StudySpec(name="bad", space=SPACE, cohort=0), options)
    assert not Path(options.storage).exists()


def test_cohorts_in_workers_and_an_interrupted_cohort_resumes(tmp_path: Path, fake_mnist: str) -> None:
    """`--cohort 3 --workers 2` on the CLI: SIGTERM mid-cohort closes every member (none left RUNNING) and
    queues it again; the next run resumes each from its own checkpoint and the budget is met exactly."""
    space = """{{
        "lr": Float(3e-3, 3e-2, log=True), "dataset": "mnist", "data_dir": {data_dir!r}, "model": "cnn",
        "epochs": 8, "train_samples": 200, "batch_size": 32, "device": "cpu",
    }}"""
    script = write_script(tmp_path / "study.py", fake_mnist, "fused", space, "n_trials=6, pruner='none'")
    args = ("run", str(script), "--workers", "2", "--cohort", "3", "--quiet", "--no-report", "--checkpoint-every", "0")
    log = tmp_path / "run.log"
    proc = start_tuner(tmp_path, *args, log=log)
    checkpoints = tmp_path / "mlruns" / "checkpoints"
    wait_for(lambda: len(list(checkpoints.rglob("trial-*.pt"))) >= 3, "a cohort to checkpoint")
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 143, log.read_text()

    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "mlruns" / "optuna.journal"))
    )
    study = optuna.load_study(study_name="fused", storage=storage)
    assert TrialState.RUNNING not in [t.state for t in study.trials]
    killed = [t for t in study.trials if t.user_attrs.get(REASON_ATTR, "").startswith("interrupted")]
    assert killed and all(t.state == TrialState.FAIL for t in killed)
    assert sum(t.state == TrialState.WAITING for t in study.trials) == len(killed)

    done = tuner(tmp_path, *args)
    assert done.returncode == 0, done.stderr
    study = optuna.load_study(study_name="fused", storage=storage)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) >= 6
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    resumed = [t for t in complete if "tuner.resumed_from_epoch" in client.get_run(t.user_attrs[RUN_ID_ATTR]).data.tags]
    assert resumed  # the interrupted members went on from their checkpoints
    for trial in complete:
        assert sorted(trial.intermediate_values)[-1] == 8


def test_workers_asking_cohorts_keep_to_the_runs_budget(options: RunOptions) -> None:
    """Two workers, cohorts of 4, a budget of 5: each member after the first is asked only while the
    shared budget allows (at most one trial over when both ask at the same moment, as one by one)."""
    spec = StudySpec(name="shared", space=SPACE, pruner="none", n_trials=5, cohort=4)
    study = execute_study(spec, replace(options, workers=2))
    trials = study.get_trials()
    assert 5 <= len(trials) <= 6  # each worker asking a whole cohort of 4 made 8
    assert all(t.state == TrialState.COMPLETE for t in trials)
