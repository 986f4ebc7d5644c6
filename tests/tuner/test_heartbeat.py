"""Heartbeats on every storage: a dead worker's trial goes stale, its MLflow run is closed as
FAILED ("worker died"), and it comes back as a WAITING retry that resumes and links to it.

The dead worker is played in-process: a trial that is started, beats once and is never
touched again is exactly what a SIGKILLed worker leaves behind (the chaos test in
test_workers.py does it with real processes).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.tuner.fakes import curve_fit
from tests.tuner.procs import postgres_url, wait_for
from trainables import EpochResult, TrainConfig, takes_train_config
from tuner.run.adapter import ATTEMPT_OF_ATTR, TrialRunner
from tuner.run.execute import make_runner, work
from tuner.run.open import counted_trials, prepare_study
from tuner.run.plan import make_plan
from tuner.space import Float
from tuner.study import RunOptions, StudySpec
from tuner.tracking import RUN_ID_ATTR

__all__ = ["postgres_url"]  # a fixture
# the test plays the dead worker with ask/tell, which Optuna warns is not how heartbeats are used
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One MLflow store for the module: creating its tables costs seconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _storage_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "journal":
        return str(tmp_path / "optuna.journal")
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'optuna.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.mark.parametrize("kind", ["journal", "sqlite", "postgresql"])
def test_dead_workers_trial_is_detected_closed_retried_and_resumed(
    kind: str, tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    monkeypatch.setenv("TUNER_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("TUNER_GRACE_SECONDS", "2")
    options = RunOptions(storage=_storage_url(kind, tmp_path, request), tracking_uri=tracking_uri, quiet=True)
    spec = StudySpec(name=f"stale-{kind}", space={"lr": Float(1e-3, 1e-1, log=True), "epochs": 3}, n_trials=1)
    plan = make_plan(spec, options)
    study, tracking = prepare_study(plan)

    # the worker that dies: starts trial 0, records its run and one heartbeat, then nothing
    dead = study.ask()
    lr = dead.suggest_float("lr", 1e-3, 1e-1, log=True)
    dead_run = tracking.start_trial(dead.number, dead.params, TrainConfig(lr=lr, epochs=3))
    dead.set_user_attr(RUN_ID_ATTR, dead_run.run_id)
    dead.set_user_attr(ATTEMPT_OF_ATTR, dead.number)
    study._storage.record_heartbeat(dead._trial_id)
    optuna.storages.fail_stale_trials(study)
    assert study.trials[0].state == TrialState.RUNNING  # within the grace period it counts as alive

    def stale_and_failed() -> bool:
        optuna.storages.fail_stale_trials(study)  # what every worker does before each trial
        return study.trials[0].state == TrialState.FAIL

    wait_for(stale_and_failed, "the dead trial to be failed as stale", deadline_seconds=60, every=0.2)
    _, retry_trial = study.trials
    assert retry_trial.state == TrialState.WAITING
    assert retry_trial.params == {"lr": lr}
    assert retry_trial.user_attrs[RUN_ID_ATTR] == dead_run.run_id and retry_trial.user_attrs[ATTEMPT_OF_ATTR] == 0
    assert retry_trial.system_attrs["failed_trial"] == 0
    assert counted_trials(study.trials) == 1  # the retry replaces the dead attempt in the budget

    client = MlflowClient(options.tracking_uri)
    closed = client.get_run(dead_run.run_id)
    assert closed.info.status == "FAILED"
    assert closed.data.tags["tuner.reason"].startswith("worker died")
    assert closed.data.tags["optuna.state"] == "FAIL"

    # the retry, just popped, has not beaten yet: the heartbeat it inherited must not make it stale
    retry = study.ask()
    assert retry.number == retry_trial.number and retry.params == {"lr": lr}
    optuna.storages.fail_stale_trials(study)
    assert study.trials[1].state == TrialState.RUNNING
    runner = make_runner(make_plan(dataclasses.replace(spec, trainable=curve_fit), plan.options), tracking)
    assert isinstance(runner, TrialRunner)
    study.tell(retry, runner(retry))
    tracking.sync()  # the trial's records are written by the helper process

    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE]
    retry_run = client.get_run(study.trials[1].user_attrs[RUN_ID_ATTR])
    assert retry_run.data.tags["tuner.retry_of_run"] == dead_run.run_id
    assert retry_run.data.tags["tuner.attempt_of_trial"] == "0"
    assert retry_run.info.status == "FINISHED"
    assert work(study, runner, timeout=None) == 0  # the budget (1 trial) is used: no further trial


def test_a_worker_that_died_before_its_first_report_has_its_run_found_by_its_tags(
    tmp_path: Path, tracking_uri: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run id joins the trial's first report, so a worker killed in its first epoch never recorded
    it: the worker that finds the trial stale closes the run it finds by its tags, and the retry links to it."""
    monkeypatch.setenv("TUNER_HEARTBEAT_SECONDS", "1")
    monkeypatch.setenv("TUNER_GRACE_SECONDS", "2")
    options = RunOptions(storage=str(tmp_path / "optuna.journal"), tracking_uri=tracking_uri, quiet=True)
    spec = StudySpec(name="died-early", space={"lr": Float(1e-3, 1e-1, log=True), "epochs": 2}, n_trials=1)
    plan = make_plan(spec, options)
    study, tracking = prepare_study(plan)
    dead = study.ask()
    lr = dead.suggest_float("lr", 1e-3, 1e-1, log=True)
    dead_run = tracking.start_trial(dead.number, dead.params, TrainConfig(lr=lr, epochs=2))
    dead.set_user_attr(ATTEMPT_OF_ATTR, dead.number)
    tracking.sync()
    assert RUN_ID_ATTR not in study.trials[0].user_attrs

    def stale_and_failed() -> bool:
        optuna.storages.fail_stale_trials(study)
        return study.trials[0].state == TrialState.FAIL

    wait_for(stale_and_failed, "the dead trial to be failed as stale", deadline_seconds=60, every=0.2)
    client = MlflowClient(tracking_uri)
    assert dead_run.run_id is not None
    closed = client.get_run(dead_run.run_id)
    assert closed.info.status == "FAILED" and closed.data.tags["tuner.reason"].startswith("worker died")
    _, retry_trial = study.trials
    assert retry_trial.user_attrs[RUN_ID_ATTR] == dead_run.run_id  # found by the trial number tag

    retry = study.ask()
    runner = make_runner(make_plan(dataclasses.replace(spec, trainable=curve_fit), plan.options), tracking)
    study.tell(retry, runner(retry))
    tracking.sync()
    retry_run = client.get_run(study.trials[1].user_attrs[RUN_ID_ATTR])
    assert retry_run.data.tags["tuner.retry_of_run"] == dead_run.run_id and retry_run.info.status == "FINISHED"


def test_a_live_trial_failed_as_stale_under_its_worker_stops_and_the_worker_goes_on(
    tmp_path: Path, tracking_uri: str
) -> None:
    """A worker whose heartbeats did not reach the storage in time (a long pause) finds its trial
    failed and retried by another: it stops that attempt, keeps its checkpoint and runs on."""
    options = RunOptions(storage=str(tmp_path / "optuna.journal"), tracking_uri=tracking_uri, quiet=True)
    spec = StudySpec(name="taken-over", space={"lr": Float(1e-3, 1e-1, log=True), "epochs": 4}, n_trials=2)
    plan = make_plan(spec, options)
    study, tracking = prepare_study(plan)
    handler = study._storage.get_heartbeat_stale_trial_callback()

    @takes_train_config
    def paused_fit(
        config: TrainConfig, checkpoint: Path | None = None, checkpoint_every: float = 0.0
    ) -> Iterator[EpochResult]:
        for result in curve_fit(config, checkpoint):
            if checkpoint is not None:
                checkpoint.parent.mkdir(parents=True, exist_ok=True)
                checkpoint.write_text(str(result.epoch))
            (running,) = study.get_trials(states=(TrialState.RUNNING,))
            if running.number == 0 and result.epoch == 2:  # what another worker does when beats stop
                study._storage.set_trial_state_values(running._trial_id, TrialState.FAIL)
                handler(study, study._storage.get_trial(running._trial_id))
            yield result

    runner = make_runner(make_plan(dataclasses.replace(spec, trainable=paused_fit), plan.options), tracking)
    assert work(study, runner, timeout=None) == 3  # trial 0, its retry, and trial 2
    states = [t.state for t in study.trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert study.trials[1].system_attrs["failed_trial"] == 0 and study.trials[1].params == study.trials[0].params
    client = MlflowClient(tracking_uri)
    first = client.get_run(study.trials[0].user_attrs[RUN_ID_ATTR])
    assert first.info.status == "FAILED" and first.data.tags["tuner.reason"].startswith("heartbeat lost at epoch 2")
    retry = client.get_run(study.trials[1].user_attrs[RUN_ID_ATTR])
    assert retry.data.tags["tuner.retry_of_run"] == first.info.run_id and retry.info.status == "FINISHED"
    assert not list(tmp_path.rglob("trial-*.pt"))  # the retry's completion removed the shared checkpoint
