"""SIGTERM and SIGINT, sent to a real `tuner run` process while a trial trains: the trial's
run is closed as KILLED, the trial is re-queued with its params, the exit code is 143 / 130,
and running the same command again resumes the trial from its checkpoint.
"""

from __future__ import annotations

import os
import signal
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.tuner.fakes import curve_fit
from tests.tuner.procs import SLOW_SPACE, fake_mnist, finish, start_tuner, wait_for, write_script
from tuner import interrupts
from tuner.errors import TerminatedError
from tuner.run.adapter import ATTEMPT_OF_ATTR, REASON_ATTR
from tuner.run.api import run_study
from tuner.run.execute import make_runner, work
from tuner.run.open import close_parent_run, prepare_study
from tuner.run.plan import make_plan
from tuner.scripts import load_study_script
from tuner.space import Float
from tuner.storage import open_storage
from tuner.study import RunOptions, StudySpec
from tuner.tracking import PARENT_RUN_ATTR, RUN_ID_ATTR

__all__ = ["fake_mnist"]  # a fixture

SPACE = {"lr": Float(1e-5, 1.0, log=True), "epochs": 3}


def load(tmp_path: Path, name: str) -> optuna.Study:
    storage = open_storage(str(tmp_path / "mlruns" / "optuna.journal"), heartbeat=False)
    return optuna.load_study(study_name=name, storage=storage)


def test_sigterm_closes_the_trial_requeues_it_and_the_next_run_resumes_it(tmp_path: Path, fake_mnist: str) -> None:
    script = write_script(tmp_path / "study.py", fake_mnist, "term", SLOW_SPACE, "n_trials=2, pruner='none'")
    log = tmp_path / "run.log"
    proc = start_tuner(tmp_path, "run", str(script), "--quiet", "--no-report", "--checkpoint-every", "0", log=log)
    checkpoint = wait_for(
        lambda: next((tmp_path / "mlruns" / "checkpoints").rglob("trial-0.pt"), None), "trial 0 to checkpoint"
    )
    proc.send_signal(signal.SIGTERM)
    assert finish(proc) == 143, log.read_text()
    assert "terminated; the study can be resumed" in log.read_text()
    assert "Traceback" not in log.read_text()

    study = load(tmp_path, "term")
    killed, queued = study.trials
    assert killed.state == TrialState.FAIL and killed.user_attrs[REASON_ATTR].startswith("interrupted at epoch")
    assert queued.state == TrialState.WAITING and queued.params == killed.params
    assert queued.user_attrs[ATTEMPT_OF_ATTR] == 0 and queued.user_attrs[RUN_ID_ATTR] == killed.user_attrs[RUN_ID_ATTR]
    assert REASON_ATTR not in queued.user_attrs
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    killed_run = client.get_run(killed.user_attrs[RUN_ID_ATTR])
    assert killed_run.info.status == "KILLED" and killed_run.data.tags["optuna.state"] == "KILLED"
    assert client.get_run(study.user_attrs[PARENT_RUN_ATTR]).info.status == "KILLED"
    assert checkpoint.exists()  # kept for the retry
    resumed_after = torch.load(checkpoint, weights_only=False)["epoch"]

    store = tmp_path / "mlruns"  # run again (in this process), with a budget of one trial
    options = RunOptions(
        n_trials=1, storage=str(store / "optuna.journal"), tracking_uri=f"sqlite:///{store / 'mlflow.db'}"
    )
    run_study(load_study_script(str(script)), replace(options, quiet=True, report=False))
    study = load(tmp_path, "term")
    assert len(study.trials) == 2  # the re-queued trial was the one trial of this run
    retry = study.trials[1]
    assert retry.state == TrialState.COMPLETE
    assert sorted(retry.intermediate_values) == list(range(resumed_after + 1, 7))  # resumed from its checkpoint
    retry_run = client.get_run(retry.user_attrs[RUN_ID_ATTR])
    assert retry_run.data.tags["tuner.retry_of_run"] == killed_run.info.run_id
    assert retry_run.data.tags["tuner.resumed_from_epoch"] == str(resumed_after)
    assert client.get_run(killed_run.info.run_id).info.status == "KILLED"  # the first attempt's record is kept
    assert not checkpoint.exists()
    assert client.get_run(study.user_attrs[PARENT_RUN_ATTR]).info.status == "FINISHED"


def test_sigint_to_the_launcher_stops_every_worker_cleanly(tmp_path: Path, fake_mnist: str) -> None:
    script = write_script(tmp_path / "study.py", fake_mnist, "int", SLOW_SPACE, "n_trials=6, pruner='none'")
    log = tmp_path / "run.log"
    proc = start_tuner(
        tmp_path, "run", str(script), "--workers", "2", "--quiet", "--no-report", "--checkpoint-every", "0", log=log
    )
    wait_for(lambda: next((tmp_path / "mlruns" / "checkpoints").rglob("trial-*.pt"), None), "a trial to checkpoint")
    proc.send_signal(signal.SIGINT)  # as Ctrl-C would; the launcher passes it on to its workers
    assert finish(proc) == 130, log.read_text()
    assert "interrupted; the study can be resumed" in log.read_text()

    study = load(tmp_path, "int")
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states  # every worker closed its trial before exiting
    interrupted = [t for t in study.trials if t.user_attrs.get(REASON_ATTR, "").startswith("interrupted")]
    assert interrupted
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    for trial in interrupted:
        assert trial.state == TrialState.FAIL
        assert client.get_run(trial.user_attrs[RUN_ID_ATTR]).info.status == "KILLED"
        queued = [t for t in study.trials if t.system_attrs.get("failed_trial") == trial.number]
        assert [t.state for t in queued] == [TrialState.WAITING]
    assert client.get_run(study.user_attrs[PARENT_RUN_ATTR]).info.status == "KILLED"


def worker_pids(study_name: str) -> list[int]:
    """The `tuner worker` processes of a study, found by their command lines."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:  # not a process, or gone
            continue
        if b"worker" in command and study_name.encode() in command and entry.name.isdigit():
            pids.append(int(entry.name))
    return pids


def test_workers_stop_when_their_launcher_is_killed(tmp_path: Path, fake_mnist: str) -> None:
    """SIGKILL leaves the launcher no chance to stop its workers: they notice it is gone and stop themselves,
    each closing and re-queueing its trial, so the next run resumes them instead of doubling the workers."""
    script = write_script(tmp_path / "study.py", fake_mnist, "orphans", SLOW_SPACE, "n_trials=8, pruner='none'")
    log = tmp_path / "run.log"
    proc = start_tuner(tmp_path, "run", str(script), "--workers", "2", "--quiet", "--no-report", log=log)
    wait_for(lambda: len(worker_pids("orphans")) == 2, "two workers")
    wait_for(lambda: any(t.state == TrialState.RUNNING for t in load(tmp_path, "orphans").trials), "a trial to run")
    proc.send_signal(signal.SIGKILL)
    assert finish(proc) == -signal.SIGKILL
    wait_for(lambda: not worker_pids("orphans"), "the orphaned workers to stop", deadline_seconds=60)
    study = load(tmp_path, "orphans")
    assert TrialState.RUNNING not in [t.state for t in study.trials]  # each closed its trial on the way out
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) < 8  # they stopped, short of the budget
    queued = [t for t in study.trials if t.state == TrialState.WAITING]  # a trial cut mid-way is queued again
    assert all(t.system_attrs.get("failed_trial") is not None for t in queued)

    done = start_tuner(tmp_path, "run", str(script), "--workers", "2", "--quiet", "--no-report", log=log)
    assert finish(done) == 0, log.read_text()
    study = load(tmp_path, "orphans")
    assert all(t.state in (TrialState.COMPLETE, TrialState.FAIL) for t in study.trials)
    assert sum(t.state == TrialState.COMPLETE for t in study.trials) >= 8  # the budget, queued trials resumed


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop is what is tested
def test_an_interrupt_a_finalizer_swallowed_is_raised_at_the_next_check() -> None:
    """Python drops an exception raised inside a finalizer or weakref callback ("Exception ignored"): a signal
    handler's TerminatedError landing there was lost, and a worker told to stop trained on (seen in CI)."""

    class Finalized:
        def __del__(self) -> None:
            interrupts.interrupt(TerminatedError())

    Finalized()  # the handler's exception is raised inside __del__, and dropped
    with pytest.raises(TerminatedError):
        interrupts.check()
    interrupts.check()  # once only


class SignalsWhenATrialIsCreated(optuna.samplers.RandomSampler):
    """Sends this process SIGTERM from inside `study.ask`, after Optuna has created the trial."""

    def before_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        super().before_trial(study, trial)
        if trial.number == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_signal_before_the_objective_starts_still_closes_and_requeues_the_trial(options: RunOptions) -> None:
    """A SIGTERM landing between Optuna creating a trial and the objective's `try` left that trial RUNNING
    with nobody to close it (seen in CI: a stopped worker's trial stayed RUNNING). It is held until the
    objective can close the trial, then stops the run the same way as during an epoch."""
    plan = make_plan(StudySpec(name="window", space=SPACE, n_trials=3, trainable=curve_fit), options)
    study, tracking = prepare_study(plan)
    study.sampler = SignalsWhenATrialIsCreated(seed=0)
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    interrupts.install()
    try:
        with pytest.raises(TerminatedError):
            work(study, make_runner(plan, tracking), None)
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
        interrupts.clear()
        close_parent_run(study, tracking, True, plan.spec.metrics)
    killed, queued = study.get_trials()
    assert killed.state == TrialState.FAIL and killed.user_attrs[REASON_ATTR].startswith("interrupted")
    assert queued.state == TrialState.WAITING and queued.params == killed.params
    run = MlflowClient(options.tracking_uri).get_run(killed.user_attrs[RUN_ID_ATTR])
    assert run.info.status == "KILLED"
