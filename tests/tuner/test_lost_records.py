"""Nothing recorded is lost when MLflow cannot write: a full disk, a process killed by SIGKILL.

The training result stays in the Optuna study as it ended; the user sees one line per run
that lost writes; the next run of the study restores the MLflow record from the study
(`tuner.run.backfill`). The full disk is injected: `OSError(ENOSPC)` / SQLite's
"database or disk is full" raised by MLflow's own store and artifact calls while a flag is
on (a real small filesystem needs a mount, which CI machines may not allow).
"""

from __future__ import annotations

import errno
import logging
import signal
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.tuner.procs import child_runs, finish, start_tuner, tuner, tuner_env, wait_for
from tuner.run.adapter import TRACKING_LOST_ATTR
from tuner.run.backfill import BACKFILLED_TAG
from tuner.run.execute import execute_study
from tuner.space import Float
from tuner.storage import open_storage
from tuner.study import RunOptions, StudySpec
from tuner.tracking import RUN_ID_ATTR


class Disk:
    full = False
    fills = True  # a trial fills it after its first epoch


def fills_the_disk(params: dict[str, Any]) -> Iterator[dict[str, float]]:
    """Trains 4 epochs; the disk fills up after the first."""
    for epoch in range(1, 5):
        yield {"val_f1": params["lr"] * epoch, "val_loss": 1.0 / epoch}
        Disk.full = Disk.full or Disk.fills


@pytest.fixture
def full_disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[type[Disk]]:
    """MLflow's SQLite store and local artifact repository fail as on a full disk while `Disk.full` is set."""
    import sqlalchemy.exc
    from mlflow.store.artifact.local_artifact_repo import LocalArtifactRepository
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    def failing(original: Any, error: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            if Disk.full:
                raise error()
            return original(*args, **kwargs)

        return call

    def sql_full() -> Exception:
        return sqlalchemy.exc.OperationalError("INSERT ...", {}, sqlite3.OperationalError("database or disk is full"))

    for name in ("create_run", "log_batch", "update_run_info", "set_tag"):
        monkeypatch.setattr(SqlAlchemyStore, name, failing(getattr(SqlAlchemyStore, name), sql_full))
    for name in ("log_artifact", "log_artifacts"):
        monkeypatch.setattr(
            LocalArtifactRepository,
            name,
            failing(getattr(LocalArtifactRepository, name), lambda: OSError(errno.ENOSPC, "No space left on device")),
        )
    monkeypatch.setenv("TUNER_RECORD_WRITER", "inline")  # the writes fail in this process, where the patches are
    Disk.full, Disk.fills = False, True
    yield Disk
    Disk.full = False


def test_a_full_disk_keeps_trials_complete_and_the_next_run_restores_their_runs(
    options: RunOptions,
    full_disk: type[Disk],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    spec = StudySpec(name="full", trainable=fills_the_disk, space={"lr": Float(0.01, 0.1)}, metric="val_f1", n_trials=2)
    options = RunOptions(**{**vars(options), "n_trials": 2})
    with caplog.at_level(logging.WARNING):
        study = execute_study(spec, options)

    # the training results are the study's, whatever MLflow could not write
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    assert all(len(t.intermediate_values) == 4 for t in study.trials)
    assert all(t.user_attrs[TRACKING_LOST_ATTR] >= 1 for t in study.trials)  # the note in the study
    lost = [r.getMessage() for r in caplog.records if "could not record" in r.getMessage()]
    assert len([m for m in lost if "'trial 0'" in m]) == 1 and len([m for m in lost if "'trial 1'" in m]) == 1
    assert len([m for m in lost if "'study full'" in m]) == 1  # the best value on the parent run
    assert all("database or disk is full" in m for m in lost)
    assert "Traceback" not in capsys.readouterr().err
    assert "Traceback" not in caplog.text

    full_disk.full = full_disk.fills = False  # space freed: the next run (one more trial) restores what MLflow lacks
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        study = execute_study(spec, RunOptions(**{**vars(options), "n_trials": 1}))
    assert "restored the MLflow records of 2 trial(s)" in caplog.text

    client = MlflowClient(options.tracking_uri)
    runs = {int(r.data.tags["optuna.trial_number"]): r for r in child_runs(options.tracking_uri, "full")}
    assert sorted(runs) == [t.number for t in study.trials] == [0, 1, 2]  # one run per trial
    for trial in study.trials:
        run = runs[trial.number]
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
        history = client.get_metric_history(run.info.run_id, "val_f1")
        assert {m.step: m.value for m in history} == pytest.approx(trial.intermediate_values)
        assert {k: float(v) for k, v in run.data.params.items()} == pytest.approx(trial.params)
        assert (BACKFILLED_TAG in run.data.tags) == (trial.number < 2)
    # trial 0's run was created before the disk filled, trial 1's was not: both are one run now, none twice
    assert runs[0].info.run_id == study.trials[0].user_attrs[RUN_ID_ATTR]
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.info.status == "FINISHED"


QUICK_SCRIPT = """
import time

from tuner import StudySpec, main_for_script
from tuner.space import Float


def many_quick_epochs(params):
    for epoch in range(1, 301):
        time.sleep(0.02)
        yield {{"val_f1": params["lr"] * epoch, "val_loss": 1.0 / epoch}}


STUDY = StudySpec(
    name={name!r}, trainable=many_quick_epochs, space={{"lr": Float(0.01, 0.1)}}, metric="val_f1",
    pruner="none", n_trials=1,
)

if __name__ == "__main__":
    main_for_script(STUDY)
"""


def test_metrics_a_sigkill_lost_are_restored_from_the_study(tmp_path: Path) -> None:
    """A SIGKILLed run loses the metrics it had buffered (at most a second's); the next run of the study
    restores every epoch the killed trial had reported, so its MLflow history has no gap."""
    script = tmp_path / "quick.py"
    script.write_text(QUICK_SCRIPT.format(name="quick"))
    storage = str(tmp_path / "mlruns" / "optuna.journal")
    tracking_uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"

    def trial_zero() -> optuna.trial.FrozenTrial:
        study = optuna.load_study(study_name="quick", storage=open_storage(storage, heartbeat=False))
        return study.trials[0]

    def reported() -> int:
        if not Path(storage).exists():
            return 0
        opened = open_storage(storage, heartbeat=False)
        if "quick" not in optuna.get_all_study_names(opened):
            return 0
        trials = optuna.load_study(study_name="quick", storage=opened).trials
        return len(trials[0].intermediate_values) if trials else 0

    env = tuner_env(TUNER_GRACE_SECONDS="2")
    proc = start_tuner(tmp_path, "run", str(script), "--quiet", "--no-report", log=tmp_path / "run.log", env=env)
    wait_for(lambda: reported() >= 100, "trial 0 to report 100 epochs")
    proc.send_signal(signal.SIGKILL)
    assert finish(proc) == -signal.SIGKILL
    killed = trial_zero()
    curve = dict(killed.intermediate_values)

    done = tuner(tmp_path, "run", str(script), "--quiet", "--no-report", env=env)  # finds trial 0 stale
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr

    client = MlflowClient(tracking_uri)
    run = client.get_run(killed.user_attrs[RUN_ID_ATTR])
    assert run.info.status == "FAILED" and run.data.tags["tuner.reason"].startswith("worker died")
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "val_f1")}
    assert history == pytest.approx(curve)  # every reported epoch, the lost second's too
    study = optuna.load_study(study_name="quick", storage=open_storage(storage, heartbeat=False))
    runs = child_runs(tracking_uri, "quick")
    assert sorted(int(r.data.tags["optuna.trial_number"]) for r in runs) == [t.number for t in study.trials]


def test_a_full_disk_under_the_optuna_journal_stops_the_worker_with_one_line(
    options: RunOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The study's own storage cannot record the trial's end: the worker stops with one line instead of
    Optuna's "AssertionError: Should not reach.", and every record already written stays readable."""
    from tuner.errors import UserError
    from tuner.journal import JournalFile

    append = JournalFile.append_logs

    def append_unless_full(self: JournalFile, logs: list[dict[str, Any]], durable: bool = True) -> None:
        if Disk.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        append(self, logs, durable=durable)

    monkeypatch.setattr(JournalFile, "append_logs", append_unless_full)
    monkeypatch.setattr(Disk, "full", False)
    monkeypatch.setattr(Disk, "fills", True)
    spec = StudySpec(name="journal-full", trainable=fills_the_disk, space={"lr": Float(0.01, 0.1)}, metric="val_f1")
    options = RunOptions(**{**vars(options), "n_trials": 2})
    with pytest.raises(UserError, match=r"storage cannot be written \(No space left on device\)") as raised:
        execute_study(spec, options)
    assert "\n" not in str(raised.value)
    monkeypatch.setattr(Disk, "full", False)
    study = optuna.load_study(study_name="journal-full", storage=open_storage(options.storage, heartbeat=False))
    (trial,) = study.trials
    assert trial.state == TrialState.RUNNING  # left for the stale-trial retry
    assert len(trial.intermediate_values) == 1  # what was written before the disk filled is kept


def test_a_groups_studies_share_an_experiment_and_backfill_finds_each_trials_own_run(options: RunOptions) -> None:
    """Every arm of a group numbers its trials from 0 in one experiment: a trial whose run is gone is restored
    under its own study's parent run, never taken for another arm's run of the same number."""
    from tests.tuner.fakes import curve_fit
    from tuner.run.backfill import backfill_study
    from tuner.run.open import open_tracking
    from tuner.tracking import PARENT_RUN_ATTR

    def nested(client: MlflowClient, parent: str) -> list[Any]:
        (group,) = [e.experiment_id for e in client.search_experiments() if e.name == "g"]
        return list(client.search_runs([group], f"tags.`mlflow.parentRunId` = '{parent}'"))

    space = {"lr": Float(0.01, 0.1), "epochs": 3}
    specs = [StudySpec(name=f"g.{arm}", space=space, n_trials=2, trainable=curve_fit, experiment="g") for arm in "ab"]
    a, b = (execute_study(spec, options) for spec in specs)
    client = MlflowClient(options.tracking_uri)
    lost = a.trials[1].user_attrs[RUN_ID_ATTR]
    client.delete_run(lost)  # as if its writes had all failed
    b_runs = {r.info.run_id for r in nested(client, b.user_attrs[PARENT_RUN_ATTR])}

    tracking = open_tracking(a, specs[0], options)
    assert backfill_study(a, tracking, specs[0].metrics) == 1
    tracking.sync()
    restored = [r for r in nested(client, a.user_attrs[PARENT_RUN_ATTR]) if r.info.run_id != lost]
    assert sorted(r.data.tags["optuna.trial_number"] for r in restored) == ["0", "1"]
    assert BACKFILLED_TAG in next(r for r in restored if r.data.tags["optuna.trial_number"] == "1").data.tags
    assert {r.info.run_id for r in nested(client, b.user_attrs[PARENT_RUN_ATTR])} == b_runs  # b's untouched
