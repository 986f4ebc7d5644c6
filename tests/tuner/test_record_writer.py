"""The MLflow writer process: writes applied in order, `sync`, a parent killed mid-study, a helper that dies."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.tuner.procs import REPO, wait_for
from tuner.record_writer import MODE_ENV, RecordWriter


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
    client, run_id, artifact_uri = new_run(tracking_uri)
    writer = RecordWriter()
    try:
        for epoch in range(1, 4):
            writer.write(tracking_uri, "log_batch", run_id, [("val_acc", epoch / 10, 1000 + epoch, epoch)], [], [])
        writer.write(tracking_uri, "log_batch", run_id, [], [("lr", "0.01")], [("optuna.state", "RUNNING")])
        writer.write(tracking_uri, "log_batch", run_id, [], [], [("optuna.state", "COMPLETE")])  # later wins
        writer.write(tracking_uri, "log_texts", artifact_uri, {"config.json": json.dumps({"lr": 0.01})})
        writer.write(tracking_uri, "set_terminated", run_id, "FINISHED")
        writer.sync()
        assert (writer._helper is None) == inline  # the helper runs unless asked to write inline
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.state"] == "COMPLETE" and run.data.params == {"lr": "0.01"}
        assert [m.value for m in client.get_metric_history(run_id, "val_acc")] == [0.1, 0.2, 0.3]
        assert [a.path for a in client.list_artifacts(run_id)] == ["config.json"]
    finally:
        writer.close()


def test_a_failed_write_is_reported_and_the_later_ones_still_apply(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, run_id, _ = new_run(tracking_uri)
    writer = RecordWriter()
    try:
        writer.write(tracking_uri, "set_terminated", "no-such-run", "FINISHED")
        writer.write(tracking_uri, "set_terminated", run_id, "FAILED")
        writer.sync()
    finally:
        writer.close()
    assert client.get_run(run_id).info.status == "FAILED"
    err = capfd.readouterr().err
    assert "tuner: MLflow write set_terminated ('no-such-run',)" in err and "failed" in err


def test_a_helper_that_dies_is_replaced_by_inline_writes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, run_id, _ = new_run(tracking_uri)
    writer = RecordWriter()
    writer.write(tracking_uri, "connect")
    writer.sync()
    assert writer._helper is not None
    writer._helper.kill()
    writer._helper.wait()
    writer.write(tracking_uri, "set_terminated", run_id, "KILLED")  # the pipe is broken: written here instead
    writer.sync()
    assert writer.inline and writer._helper is None
    assert client.get_run(run_id).info.status == "KILLED"
    assert "the MLflow writer process failed" in caplog.text


def test_writes_sent_by_a_parent_killed_with_sigkill_are_still_applied(tmp_path: Path) -> None:
    """The helper outlives its parent: what was sent before the SIGKILL reaches MLflow."""
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client, run_id, _ = new_run(tracking_uri)
    parent = textwrap.dedent(f"""
        import os, signal
        from tuner.record_writer import writer
        w = writer()
        w.write({tracking_uri!r}, "log_batch", {run_id!r}, [("val_acc", 0.9, 1000, 1)], [], [("optuna.state", "COMPLETE")])
        w.write({tracking_uri!r}, "set_terminated", {run_id!r}, "FINISHED")
        print(w._helper.pid, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run(
        [sys.executable, "-c", parent], cwd=REPO, capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert proc.stdout.split()[0].isdigit()  # the helper was started before the kill

    def closed() -> bool:
        return client.get_run(run_id).info.status == "FINISHED"

    wait_for(closed, "the orphaned helper to apply what it was sent", deadline_seconds=60, every=0.1)
    run = client.get_run(run_id)
    assert run.data.tags["optuna.state"] == "COMPLETE" and run.data.metrics["val_acc"] == 0.9
