"""The MLflow writer process: writes applied in order, `sync`, a parent killed mid-study, a helper that dies."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.tuner.fakes import curve_fit
from tests.tuner.procs import REPO, wait_for
from tuner.record_writer import MODE_ENV, NEW_RUN, RecordWriter, writer
from tuner.run.execute import execute_study
from tuner.servers import start_mlflow
from tuner.space import Float
from tuner.study import RunOptions, StudySpec
from tuner.tracking import PARENT_RUN_ATTR

SPACE = {"lr": Float(1e-4, 1e-1, log=True), "epochs": 3}


def test_by_default_the_helper_takes_server_writes_and_local_ones_when_a_cpu_is_spare(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import torch

    monkeypatch.delenv(MODE_ENV, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(4)  # training may use every CPU: local writes are done in the trial's process
        writer = RecordWriter()
        assert writer.uses_helper("http://127.0.0.1:5000") and writer.uses_helper("https://mlflow.example.com")
        assert not writer.uses_helper("sqlite:///mlruns/mlflow.db")
        torch.set_num_threads(2)
        assert not writer.uses_helper("sqlite:///mlruns/mlflow.db")  # decided once per store
        assert RecordWriter().uses_helper("sqlite:///mlruns/mlflow.db")  # a spare CPU: the helper
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv(MODE_ENV, "process")
    assert RecordWriter().uses_helper("sqlite:///mlruns/mlflow.db")
    monkeypatch.setenv(MODE_ENV, "inline")
    assert not RecordWriter().uses_helper("http://127.0.0.1:5000")


def test_a_study_tracked_on_a_tracking_server_is_written_whole_through_the_helper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(MODE_ENV, raising=False)
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    MlflowClient(store).search_experiments()  # creates the store the server serves
    with start_mlflow(store, free_port()) as server:
        options = RunOptions(
            storage=str(tmp_path / "optuna.journal"), tracking_uri=server.url, quiet=True, report=False
        )
        study = execute_study(
            StudySpec(name="served", space=SPACE, pruner="none", n_trials=3, trainable=curve_fit), options
        )
        assert writer()._helper is not None  # the server's writes went through the helper
        client = MlflowClient(server.url)
        experiment = client.get_experiment_by_name("served")
        assert experiment is not None
        runs = {
            r.data.tags["optuna.trial_number"]: r
            for r in client.search_runs([experiment.experiment_id], "tags.`tuner.role` = 'trial'")
        }
        assert sorted(runs) == [str(t.number) for t in study.trials]
        for trial in study.trials:
            run = runs[str(trial.number)]
            assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
            assert run.data.params["lr"] == str(trial.params["lr"])
            assert [m.step for m in client.get_metric_history(run.info.run_id, "val_acc")] == [1, 2, 3]
            assert sorted(a.path for a in client.list_artifacts(run.info.run_id)) == ["config.json", "history.csv"]
        parent = client.get_run(study.user_attrs[PARENT_RUN_ATTR])
        assert parent.info.status == "FINISHED" and parent.data.metrics["best_value"] == study.best_value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def new_run(tracking_uri: str) -> tuple[MlflowClient, str, str]:
    client = MlflowClient(tracking_uri)
    experiment_id = client.create_experiment("writes")
    run = client.create_run(experiment_id, run_name="trial 0")
    return client, run.info.run_id, run.info.artifact_uri


@pytest.mark.parametrize("inline", [False, True], ids=["helper process", "inline"])
def test_writes_are_applied_in_order_and_sync_waits_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, inline: bool
) -> None:
    monkeypatch.setenv(MODE_ENV, "inline" if inline else "process")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, parent_id, _ = new_run(tracking_uri)
    experiment_id = client.get_run(parent_id).info.experiment_id
    writer = RecordWriter()
    try:
        run = writer.create_run(tracking_uri, experiment_id, "trial 0", {"optuna.state": "RUNNING"})
        assert run.startswith(NEW_RUN)  # a key, known at once: the helper creates the run meanwhile
        for epoch in range(1, 4):
            writer.write(tracking_uri, "log_batch", run, [("val_acc", epoch / 10, 1000 + epoch, epoch)], [], [])
        writer.write(tracking_uri, "log_batch", run, [], [("lr", "0.01")], [("optuna.state", "RUNNING")])
        writer.write(tracking_uri, "log_batch", run, [], [], [("optuna.state", "COMPLETE")])  # later wins
        writer.write(tracking_uri, "log_texts", run, {"config.json": json.dumps({"lr": 0.01})})
        run_id = writer.run_id(tracking_uri, run)
        writer.write(tracking_uri, "set_terminated", run, "FINISHED")
        writer.write(tracking_uri, "log_texts", parent_id, {"space.json": "{}"})  # runs named by their MLflow id
        writer.write(tracking_uri, "set_terminated", parent_id, "KILLED")
        writer.sync()
        assert (writer._helper is None) == inline  # the helper runs unless asked to write inline
        assert run_id is not None
        created = client.get_run(run_id)
        assert created.info.status == "FINISHED" and created.info.run_name == "trial 0"
        assert created.info.experiment_id == experiment_id
        assert created.data.tags["optuna.state"] == "COMPLETE" and created.data.params == {"lr": "0.01"}
        assert [m.value for m in client.get_metric_history(run_id, "val_acc")] == [0.1, 0.2, 0.3]
        assert [a.path for a in client.list_artifacts(run_id)] == ["config.json"]
        assert writer.run_id(tracking_uri, run) is None  # forgotten once the run ended
        parent = client.get_run(parent_id)
        assert parent.info.status == "KILLED" and [a.path for a in client.list_artifacts(parent_id)] == ["space.json"]
    finally:
        writer.close()


def test_failed_writes_and_creations_are_reported_and_the_later_writes_still_apply(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, run_id, _ = new_run(tracking_uri)
    writer = RecordWriter(inline=False)
    try:
        writer.write(tracking_uri, "set_terminated", "no-such-run", "FINISHED")
        run = writer.create_run(tracking_uri, "12345", "trial 0", {})  # no such experiment
        writer.write(tracking_uri, "log_batch", run, [("val_acc", 0.5, 1000, 1)], [], [])
        writer.write(tracking_uri, "set_terminated", run_id, "FAILED")
        assert writer.run_id(tracking_uri, run) is None  # the creation failed: no id
        writer.sync()
    finally:
        writer.close()
    assert client.get_run(run_id).info.status == "FAILED"
    err = capfd.readouterr().err  # the helper's: one line per run that lost writes, none raised into the trial
    assert err.count("could not record run 'no-such-run'") == 1
    assert err.count("could not record run 'trial 0'") == 1  # its creation; its log_batch then lost silently
    assert "Traceback" not in err


def test_a_helper_that_dies_is_replaced_by_inline_writes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, run_id, _ = new_run(tracking_uri)
    writer = RecordWriter(inline=False)
    lost = writer.create_run(tracking_uri, client.get_run(run_id).info.experiment_id, "trial 0", {})
    writer.sync()
    assert writer._helper is not None
    writer._helper.kill()
    writer._helper.wait()
    writer.write(tracking_uri, "set_terminated", run_id, "KILLED")  # the pipe is broken: written here instead
    writer.sync()
    assert writer.inline and writer._helper is None
    assert client.get_run(run_id).info.status == "KILLED"
    assert "the MLflow writer process failed" in caplog.text
    assert writer.run_id(tracking_uri, lost) is None  # the helper took the run's id with it
    writer.write(tracking_uri, "set_terminated", lost, "FINISHED")  # lost: one line, nothing raised
    assert writer.lost[lost] == 1
    assert "could not record run 'trial 0' (RunLost: MLflow run" in caplog.text and "was not created" in caplog.text


def test_writes_sent_by_a_parent_killed_with_sigkill_are_still_applied(tmp_path: Path) -> None:
    """The helper outlives its parent: what was sent before the SIGKILL reaches MLflow, the run's creation too."""
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, parent_id, _ = new_run(tracking_uri)
    experiment_id = client.get_run(parent_id).info.experiment_id
    parent = textwrap.dedent(f"""
        import os, signal
        from tuner.record_writer import writer
        w = writer()
        run = w.create_run({tracking_uri!r}, {experiment_id!r}, "trial 1", {{"optuna.state": "RUNNING"}})
        w.write({tracking_uri!r}, "log_batch", run, [("val_acc", 0.9, 1000, 1)], [], [("optuna.state", "COMPLETE")])
        w.write({tracking_uri!r}, "set_terminated", run, "FINISHED")
        print(w._helper.pid, flush=True)
        w._send(None, "sync", ())  # a question whose answer no one will read
        w._helper.stdin.write(b"\\x40\\x00\\x00\\x00torn")  # a message cut short by the kill
        w._helper.stdin.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", parent],
        cwd=REPO,
        env={**os.environ, MODE_ENV: "process"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.split()[0].isdigit()  # the helper was started before the kill
    assert "Traceback" not in proc.stderr  # the helper's, which held the pipe until it exited: quiet

    def closed() -> list[object]:
        return client.search_runs([experiment_id], "attributes.run_name = 'trial 1' and attributes.status = 'FINISHED'")

    (run,) = wait_for(closed, "the orphaned helper to apply what it was sent", deadline_seconds=60, every=0.1)
    assert run.data.tags["optuna.state"] == "COMPLETE" and run.data.metrics["val_acc"] == 0.9


def test_the_helper_freezes_its_heap_once_after_its_first_write(tmp_path: Path) -> None:
    """A full garbage collection of MLflow's heap in the helper would stall the trial waiting for its run id."""
    script = textwrap.dedent(f"""
        import gc, io, pickle
        from tuner.record_writer import _HEADER, serve

        def messages(*ops):
            data = [pickle.dumps(({f"sqlite:///{tmp_path / 'mlflow.db'}"!r}, op, ())) for op in ops]
            return io.BytesIO(b"".join(_HEADER.pack(len(d)) + d for d in data))

        before = gc.get_freeze_count()
        serve(messages("connect"), io.BytesIO())
        first = gc.get_freeze_count()
        serve(messages("connect", "connect"), io.BytesIO())
        print(before, first, gc.get_freeze_count())
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 0, proc.stderr
    before, first, later = map(int, proc.stdout.split())
    assert before == 0 and first > 10_000  # MLflow and SQLAlchemy, loaded by the first write, are frozen
    assert later == first  # and only once
