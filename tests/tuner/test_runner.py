"""The tuner end to end on real storages (journal file, SQLite MLflow) with scripted trainables."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.tuner.fakes import curve_fit, diverging_fit, failing_fit
from tuner.run.execute import execute_study
from tuner.space import Float
from tuner.study import RunOptions, StudySpec
from tuner.tracking import PARENT_RUN_ATTR, RUN_ID_ATTR

SPACE = {"lr": Float(1e-5, 1.0, log=True), "epochs": 6}


def child_runs(options: RunOptions, study: optuna.Study) -> list:
    client = MlflowClient(options.tracking_uri)
    experiment = client.get_experiment_by_name(study.study_name)
    parent = study.user_attrs[PARENT_RUN_ATTR]
    return client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'", max_results=5000)


def test_every_trial_has_one_child_run_with_matching_state(options: RunOptions) -> None:
    spec = StudySpec(name="fake", space=SPACE, pruner="median", n_trials=24, seed=1)
    study = execute_study(replace(spec, trainable=curve_fit), options)
    trials = study.get_trials()
    runs = child_runs(options, study)

    assert len(trials) == 24 and len(runs) == 24
    by_run_id = {r.info.run_id: r for r in runs}
    assert {t.user_attrs[RUN_ID_ATTR] for t in trials} == set(by_run_id)
    states = {t.state for t in trials}
    assert TrialState.PRUNED in states and TrialState.COMPLETE in states  # bad lrs show early and are pruned

    client = MlflowClient(options.tracking_uri)
    for trial in trials:
        run = by_run_id[trial.user_attrs[RUN_ID_ATTR]]
        assert run.info.run_name == f"trial {trial.number}"
        assert run.data.tags["optuna.trial_number"] == str(trial.number)
        assert run.data.tags["optuna.state"] == trial.state.name
        assert run.info.status == "FINISHED"
        assert float(run.data.params["lr"]) == pytest.approx(trial.params["lr"])
        assert run.data.params["epochs"] == "6"
        history = client.get_metric_history(run.info.run_id, "val_acc")
        steps = sorted(m.step for m in history)
        assert steps == list(range(1, len(steps) + 1))
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx(
            [trial.intermediate_values[s] for s in steps]
        )
        if trial.state == TrialState.PRUNED:
            assert len(steps) < 6
            assert run.data.tags["tuner.pruned_at_epoch"] == str(max(steps))
            assert trial.user_attrs["pruned_at_epoch"] == max(steps)
        else:
            assert len(steps) == 6
            assert run.data.metrics["test_acc"] == pytest.approx(trial.value)
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "history.csv"} <= artifacts


def test_parent_run_records_settings_and_best(options: RunOptions) -> None:
    study = execute_study(StudySpec(name="best", space=SPACE, n_trials=8, trainable=curve_fit), options)
    client = MlflowClient(options.tracking_uri)
    parent = client.get_run(study.user_attrs[PARENT_RUN_ATTR])
    assert parent.info.status == "FINISHED"
    assert parent.data.params["sampler"] == "tpe" and parent.data.params["pruner"] == "median"
    assert parent.data.tags["best.trial_number"] == str(study.best_trial.number)
    assert json.loads(parent.data.tags["best.params"]) == study.best_params
    assert float(parent.data.tags["best.lr"]) == pytest.approx(study.best_params["lr"])
    assert parent.data.metrics["best_value"] == pytest.approx(study.best_value)
    assert parent.data.tags["torch.version"] == torch.__version__
    assert "search_space.json" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_running_again_resumes_the_same_study_and_parent_run(options: RunOptions) -> None:
    spec = StudySpec(name="resume", space=SPACE, n_trials=3)
    first = execute_study(replace(spec, trainable=curve_fit), options)
    parent_id = first.user_attrs[PARENT_RUN_ATTR]
    second = execute_study(replace(spec, trainable=curve_fit), replace(options, n_trials=2))
    assert second.user_attrs[PARENT_RUN_ATTR] == parent_id
    assert len(second.get_trials()) == 5
    assert len(child_runs(options, second)) == 5
    client = MlflowClient(options.tracking_uri)
    assert len(client.search_experiments(filter_string="name = 'resume'")) == 1
    assert (
        len(client.search_runs([client.get_experiment_by_name("resume").experiment_id], "tags.`tuner.role` = 'study'"))
        == 1
    )


def test_a_study_of_the_old_layout_keeps_its_experiment_when_its_group_shares_one(options: RunOptions) -> None:
    """Before study groups shared an experiment, each study had its own: run again as a member of a group
    (`experiment="cmp"`), it goes on in its own experiment under its parent run, tagged for the training views,
    and the report reads it; a new member goes into the group's experiment."""
    from tuner.report.extract import extract

    old = StudySpec(name="cmp.sgd", space=SPACE, n_trials=2, trainable=curve_fit)
    first = execute_study(old, options)  # experiment "cmp.sgd": the layout of before
    parent_id = first.user_attrs[PARENT_RUN_ATTR]
    again = execute_study(replace(old, experiment="cmp"), replace(options, n_trials=1))
    new = execute_study(replace(old, name="cmp.adam", experiment="cmp"), options)

    client = MlflowClient(options.tracking_uri)
    own, group = client.get_experiment_by_name("cmp.sgd"), client.get_experiment_by_name("cmp")
    assert again.user_attrs[PARENT_RUN_ATTR] == parent_id
    assert client.get_run(parent_id).info.experiment_id == own.experiment_id
    children = client.search_runs([own.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'")
    assert len(children) == 3  # the new trial nested under the old parent, in the old experiment
    assert client.get_run(new.user_attrs[PARENT_RUN_ATTR]).info.experiment_id == group.experiment_id
    for experiment in (own, group):
        assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    tables = extract([again, new], options.tracking_uri)
    assert not [n for n in tables.notes if "MLflow" in n or "parent run" in n]  # every run found
    rows = tables.trials.set_index(["study", "number"])
    assert rows["val_acc"].notna().all()  # a metric read from each trial's MLflow run, in either layout
    assert len(rows) == 5


def test_enqueued_baselines_run_first_once_and_bad_ones_are_refused_before_anything_exists(
    options: RunOptions,
) -> None:
    from tuner.errors import UserError

    spec = StudySpec(name="baseline", space=SPACE, n_trials=3, trainable=curve_fit, enqueue=({"lr": 0.05},))
    first = execute_study(spec, options)
    again = execute_study(spec, replace(options, n_trials=2))  # resumed: the baseline is not queued again
    trials = again.get_trials()
    assert [t.user_attrs.get("enqueued", False) for t in trials] == [True, False, False, False, False]
    assert trials[0].params == {"lr": 0.05} and first.trials[0].state == TrialState.COMPLETE

    for bad, needle in (({"lr": 5.0}, "enqueued lr=5.0 is outside"), ({"epochs": 3}, "'epochs' is not a sampled")):
        other = replace(options, storage=str(Path(options.storage).with_name("other.journal")))
        with pytest.raises(UserError, match=needle):
            execute_study(replace(spec, name="bad", enqueue=(bad,)), other)
        assert not Path(other.storage).exists()


def test_failing_trial_is_recorded_and_the_study_goes_on(options: RunOptions) -> None:
    study = execute_study(
        StudySpec(name="fails", space=SPACE, n_trials=3, trainable=failing_fit(ValueError("boom at epoch 2"))), options
    )
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL] * 3  # all three ran: one failure did not stop the study
    client = MlflowClient(options.tracking_uri)
    for trial in trials:
        assert trial.user_attrs["reason"] == "ValueError: boom at epoch 2"
        run = client.get_run(trial.user_attrs[RUN_ID_ATTR])
        assert run.info.status == "FAILED"
        assert run.data.tags["tuner.reason"] == "ValueError: boom at epoch 2"
        assert run.data.metrics["val_acc"] == 0.5  # the epoch before the failure is kept
        traceback = Path(client.download_artifacts(run.info.run_id, "traceback.txt")).read_text()
        assert "ValueError: boom at epoch 2" in traceback and "Traceback" in traceback


def test_diverged_trial_is_pruned_with_its_reason(options: RunOptions) -> None:
    space = {"lr": Float(0.2, 0.9, log=True), "epochs": 4}
    study = execute_study(StudySpec(name="diverge", space=space, n_trials=2, trainable=diverging_fit), options)
    client = MlflowClient(options.tracking_uri)
    for trial in study.get_trials():
        assert trial.state == TrialState.PRUNED
        assert trial.user_attrs["reason"] == "diverged at epoch 2"
        run = client.get_run(trial.user_attrs[RUN_ID_ATTR])
        assert run.data.tags["tuner.reason"] == "diverged at epoch 2" and run.info.status == "FINISHED"


def test_cuda_out_of_memory_fails_the_trial_naming_batch_size_and_model(options: RunOptions) -> None:
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    space = {"lr": Float(1e-3, 1e-1, log=True), "epochs": 3, "batch_size": 512, "model": "mlp"}
    study = execute_study(StudySpec(name="oom", space=space, n_trials=2, trainable=failing_fit(oom)), options)
    for trial in study.get_trials():
        assert trial.state == TrialState.FAIL
        assert trial.user_attrs["reason"].startswith("CUDA out of memory with batch_size 512 and model mlp")


def test_interrupt_closes_the_trial_as_killed(options: RunOptions) -> None:
    with pytest.raises(KeyboardInterrupt):
        execute_study(
            StudySpec(name="interrupt", space=SPACE, n_trials=3, trainable=failing_fit(KeyboardInterrupt())), options
        )
    client = MlflowClient(options.tracking_uri)
    experiment = client.get_experiment_by_name("interrupt")
    runs = client.search_runs([experiment.experiment_id], "tags.`tuner.role` = 'trial'")
    assert [r.info.status for r in runs] == ["KILLED"]
    parent = client.search_runs([experiment.experiment_id], "tags.`tuner.role` = 'study'")[0]
    assert parent.info.status == "KILLED"


def test_real_training_study_end_to_end(options: RunOptions) -> None:
    """A real tiny study: MNIST-1D subset, real fit, journal storage, SQLite MLflow."""
    space = {
        "optimizer": "adam",
        "lr": Float(1e-3, 3e-2, log=True),
        "epochs": 3,
        "train_samples": 400,
        "batch_size": 100,
        "device": "cpu",
    }
    options = replace(options, checkpoint_every=0)  # a checkpoint every epoch, removed at the end
    study = execute_study(StudySpec(name="real", space=space, pruner="none", n_trials=3), options)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3
    runs = child_runs(options, study)
    assert len(runs) == 3
    for run in runs:
        assert 0.0 < run.data.metrics["val_acc"] <= 1.0 and run.data.metrics["test_acc"] > 0.1
        assert run.data.params["optimizer"] == "adam"
    assert not any(Path(options.storage).parent.joinpath("checkpoints").rglob("*.pt"))  # removed when trials end


def test_kept_checkpoints_hold_each_trials_trained_model(options: RunOptions) -> None:
    """--keep-checkpoints: saved after every epoch whatever --checkpoint-every says, so each holds the last."""
    space = {"lr": Float(1e-3, 3e-2, log=True), "epochs": 2, "train_samples": 200, "device": "cpu"}
    options = replace(options, keep_checkpoints=True)  # checkpoint_every stays at its 30 s default
    study = execute_study(StudySpec(name="kept", space=space, pruner="none", n_trials=2), options)
    kept = sorted(Path(options.storage).parent.joinpath("checkpoints").rglob("trial-*.pt"))
    assert [p.name for p in kept] == [f"trial-{t.number}.pt" for t in study.trials]
    for path in kept:
        assert torch.load(path, weights_only=False)["epoch"] == 2


@pytest.mark.parametrize("sampler", ["random", "tpe"])
def test_a_resumed_study_samples_new_points_and_a_seed_reproduces_a_study(
    options: RunOptions, tmp_path: Path, sampler: str
) -> None:
    """Seeding each process once made every run of a study (and every joining worker) replay its first points."""
    spec = StudySpec(name="seeded", space=SPACE, sampler=sampler, pruner="none", n_trials=3, trainable=curve_fit)
    execute_study(spec, options)
    study = execute_study(spec, options)  # run again: 3 more trials
    lrs = [t.params["lr"] for t in study.trials]
    assert len(lrs) == 6 and len(set(lrs)) == 6  # nothing sampled twice

    other = replace(options, storage=str(tmp_path / "other.journal"))
    again = execute_study(replace(spec, n_trials=6), other)  # the same seed, in one go
    assert [t.params["lr"] for t in again.trials][:3] == lrs[:3]
    if sampler == "random":  # independent of history: trial N's point is the seed's and N's
        assert [t.params["lr"] for t in again.trials] == lrs
    reseeded = execute_study(replace(spec, seed=1), replace(options, storage=str(tmp_path / "third.journal")))
    assert [t.params["lr"] for t in reseeded.trials] != lrs[:3]
