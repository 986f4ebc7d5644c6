"""The journal storage's combined writes and heartbeats, read back by a fresh storage as other workers would."""

from __future__ import annotations

import os
import pickle
import threading
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.storages.journal import JournalFileBackend, JournalStorage

from tuner.journal import HEARTBEAT_ATTR, HeartbeatJournalStorage


def storage_at(path: Path) -> HeartbeatJournalStorage:
    return HeartbeatJournalStorage(
        str(path), heartbeat_interval=None, grace_period=2, heartbeat_stale_trial_callback=None
    )


def counted_appends(storage: HeartbeatJournalStorage, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of logs in each append to the journal file."""
    appends: list[int] = []
    append = storage._backend.append_logs

    def counting(logs: list[dict[str, Any]], durable: bool = True) -> None:
        appends.append(len(logs))
        append(logs, durable)

    monkeypatch.setattr(storage._backend, "append_logs", counting)
    return appends


def test_a_trials_params_and_attributes_go_in_one_append_and_read_back_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = storage_at(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="combined", storage=storage)
    trial = study.ask()
    appends = counted_appends(storage, monkeypatch)
    with storage.combined_writes():
        params = {
            "lr": trial.suggest_float("lr", 1e-4, 1.0, log=True),
            "optimizer": trial.suggest_categorical("optimizer", ["adam", "sgd"]),
            "batch_size": trial.suggest_int("batch_size", 16, 256),
        }
        trial.set_user_attr("mlflow_run_id", "abc")
        trial.set_user_attr("worker", "host:1")
        assert appends == []  # held back
        assert trial.params == params  # the trial's own copy is up to date meanwhile
    assert appends == [5]
    trial.report(0.5, 1)  # outside the block: written at once
    assert appends == [5, 1]

    other_worker = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    (read,) = optuna.load_study(study_name="combined", storage=other_worker).trials
    assert read.params == params and read.user_attrs == {"mlflow_run_id": "abc", "worker": "host:1"}
    assert read.intermediate_values == {1: 0.5}


def test_held_writes_are_appended_even_when_the_block_fails(tmp_path: Path) -> None:
    storage = storage_at(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="failing", storage=storage)
    trial = study.ask()
    with pytest.raises(ValueError, match="bad config"), storage.combined_writes():
        trial.suggest_float("lr", 1e-4, 1.0, log=True)
        raise ValueError("bad config")
    assert "lr" in storage_at(tmp_path / "optuna.journal").get_trial(trial._trial_id).params


def test_other_threads_write_at_once_during_a_combined_block(tmp_path: Path) -> None:
    storage = storage_at(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="threads", storage=storage)
    trial = study.ask()
    with storage.combined_writes():
        trial.set_user_attr("held", True)
        beat = threading.Thread(target=lambda: storage.set_trial_system_attr(trial._trial_id, "beat", 1.0))
        beat.start()
        beat.join()
        fresh = storage_at(tmp_path / "optuna.journal").get_trial(trial._trial_id)
        assert fresh.system_attrs.get("beat") == 1.0 and "held" not in fresh.user_attrs
    assert storage_at(tmp_path / "optuna.journal").get_trial(trial._trial_id).user_attrs == {"held": True}


def test_the_first_heartbeat_is_the_trials_start_and_later_ones_are_written(tmp_path: Path) -> None:
    storage = storage_at(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="beats", storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)  # Optuna's heartbeat thread beats once as the trial starts
    assert HEARTBEAT_ATTR not in storage.get_trial(trial._trial_id).system_attrs
    assert storage._get_stale_trial_ids(study._study_id) == []  # its start time counts as a beat
    storage.record_heartbeat(trial._trial_id)
    assert HEARTBEAT_ATTR in storage.get_trial(trial._trial_id).system_attrs


def test_only_a_trials_creation_and_end_are_fsynced_and_every_write_reads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = storage_at(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="fsync", storage=storage)
    synced: list[int] = []
    fsync = os.fsync

    def counting_fsync(fd: int) -> None:
        synced.append(fd)
        fsync(fd)

    monkeypatch.setattr(os, "fsync", counting_fsync)
    trial = study.ask()
    assert len(synced) == 1  # the trial exists on disk before anything is recorded elsewhere about it
    with storage.combined_writes():
        lr = trial.suggest_float("lr", 1e-4, 1.0, log=True)
        trial.set_user_attr("mlflow_run_id", "abc")
    for epoch in range(1, 4):
        trial.report(epoch / 10, epoch)
    storage.set_trial_system_attr(trial._trial_id, HEARTBEAT_ATTR, 1.0)
    assert len(synced) == 1  # params, attributes, reports and heartbeats: written, not fsynced
    study.tell(trial, 0.3)
    assert len(synced) == 2  # the end: fsynced, and with it everything before

    other_worker = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.journal")))
    (read,) = optuna.load_study(study_name="fsync", storage=other_worker).trials
    assert read.state == optuna.trial.TrialState.COMPLETE and read.value == 0.3
    assert read.params == {"lr": lr} and read.user_attrs == {"mlflow_run_id": "abc"}
    assert read.intermediate_values == {1: 0.1, 2: 0.2, 3: 0.3}


def test_a_storage_rereads_the_file_only_when_another_worker_appended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "optuna.journal"
    writer, reader = storage_at(path), storage_at(path)
    study = optuna.create_study(study_name="reread", storage=writer)
    reads: list[int] = []
    read_logs = reader._backend.read_logs
    monkeypatch.setattr(reader._backend, "read_logs", lambda start: reads.append(start) or read_logs(start))

    assert [s.study_name for s in reader.get_all_studies()] == ["reread"]
    assert len(reads) == 1
    reader.get_all_studies()
    reader.get_all_trials(study._study_id)
    assert len(reads) == 1  # nothing new in the file: not read again

    trial = study.ask()
    trial.report(0.5, 1)
    (seen,) = reader.get_all_trials(study._study_id)
    assert len(reads) == 2 and seen.intermediate_values == {1: 0.5}


def test_an_unpickled_storage_reads_the_whole_journal_again(tmp_path: Path) -> None:
    storage = storage_at(tmp_path / "optuna.journal")
    study = optuna.create_study(study_name="pickled", storage=storage)
    study.tell(study.ask(), 1.0)
    copy = pickle.loads(pickle.dumps(storage))
    assert [t.value for t in copy.get_all_trials(study._study_id)] == [1.0]


def test_a_torn_tail_is_cut_before_the_next_append_and_no_complete_record_is_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a crash or a full disk mid-append leaves: the last record without its end. Unfixed, the next
    append glues onto it and every later read of the file fails."""
    path = tmp_path / "optuna.journal"
    study = optuna.create_study(study_name="torn", storage=storage_at(path))
    for x in (1.0, 2.0, 3.0):
        study.enqueue_trial({"x": x})
        study.optimize(lambda t: t.suggest_float("x", 0, 10), n_trials=1)
    whole = path.read_bytes()
    path.write_bytes(whole[:-5])  # the last record (trial 2's end) torn

    again = optuna.load_study(study_name="torn", storage=storage_at(path))  # reading skips the fragment
    assert [t.state.name for t in again.trials] == ["COMPLETE", "COMPLETE", "RUNNING"]
    with caplog.at_level("WARNING"):
        again.optimize(lambda t: t.suggest_float("x", 0, 10), n_trials=1)  # appends: the fragment is cut first
    cut = len(whole) - 5 - whole[:-5].rfind(b"\n") - 1
    assert [r.getMessage() for r in caplog.records if "torn record" in r.getMessage()] == [
        f"tuner: the journal {path} ended in a torn record (a crash or a full disk mid-write): dropped its {cut} "
        "bytes; every complete record is kept"
    ]
    reread = optuna.load_study(study_name="torn", storage=JournalStorage(JournalFileBackend(str(path))))
    trials = reread.trials
    assert [t.params["x"] for t in trials[:2]] == [1.0, 2.0] and [t.value for t in trials[:2]] == [1.0, 2.0]
    assert trials[-1].state.name == "COMPLETE"  # the new trial's records are whole
    assert path.read_bytes().startswith(whole[: whole[:-5].rfind(b"\n") + 1])  # every complete line kept
