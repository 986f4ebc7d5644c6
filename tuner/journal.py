"""The journal-file storage with heartbeats, and cheaper writes and reads per trial.

Optuna's RDBStorage has heartbeats; its JournalStorage has none. This adds them the same
way (the BaseHeartbeat interface that `Study.optimize` already drives), so that a trial
whose worker was killed is failed and retried on the embedded default storage too. A
heartbeat is a timestamp in the trial's system attributes.

Every journal write is an append under a file lock, and Optuna fsyncs each one; a storage
call first re-reads the file for other workers' appends. Per trial that was some 19 appends
and 36 re-reads (bench/platform_overhead.py), so:
- `combined_writes` appends a trial's sampled params and user attributes as one write;
- only the appends that create or end something (a study, a trial, a trial's state) are
  fsynced (`DURABLE_OPS`): that fsync also makes the trial's earlier appends (params,
  reports, attributes, heartbeats) durable, so a power cut can lose at most the running
  trials' latest reports, never a finished trial; a killed process loses nothing, as its
  appends are in the page cache and other workers read them at once;
- a re-read is skipped when the file has not grown since the last one.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.storages.journal._file import get_lock_file
from optuna.storages.journal._storage import JournalOperation
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT_ATTR = "tuner:heartbeat"
# The appends that are fsynced: each one creates or ends something.
DURABLE_OPS = frozenset(
    {
        JournalOperation.CREATE_STUDY,
        JournalOperation.DELETE_STUDY,
        JournalOperation.SET_STUDY_USER_ATTR,
        JournalOperation.SET_STUDY_SYSTEM_ATTR,
        JournalOperation.CREATE_TRIAL,
        JournalOperation.SET_TRIAL_STATE_VALUES,
        JournalOperation.DISCARD_TRIALS,
    }
)


class JournalFile(JournalFileBackend):
    """Optuna's journal file, lock and format, with the fsync left to the caller.

    Before each append it cuts a torn last record (what a crash or a full disk mid-append
    leaves: a line without its newline), so that the new record does not glue onto it and
    make the whole file unreadable; only that fragment is lost, never a complete record.
    """

    def append_logs(self, logs: list[dict[str, Any]], durable: bool = True) -> None:
        data = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
        with get_lock_file(self._lock), open(self._file_path, "a+b") as f:  # appends; reads for the check
            cut_torn_tail(f, self._file_path)  # under the lock: no other writer is mid-append
            f.write(data.encode("utf-8"))
            f.flush()
            if durable:
                os.fsync(f.fileno())


def cut_torn_tail(f: BinaryIO, path: str) -> int:
    """Truncate the open file `f` after its last newline when it does not end with one; returns the bytes dropped."""
    size = f.seek(0, os.SEEK_END)
    if size == 0:
        return 0
    f.seek(size - 1)
    if f.read(1) == b"\n":
        return 0
    end = size
    while end > 0:  # back to the last newline, a block at a time
        start = max(0, end - 65536)
        f.seek(start)
        block = f.read(end - start)
        newline = block.rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    else:
        keep = 0
    f.truncate(keep)
    f.flush()
    os.fsync(f.fileno())
    dropped = size - keep
    logging.getLogger(__name__).warning(
        "tuner: the journal %s ended in a torn record (a crash or a full disk mid-write): dropped its %d bytes; "
        "every complete record is kept",
        path,
        dropped,
    )
    return dropped


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    def __init__(
        self,
        path: str,
        heartbeat_interval: int | None,
        grace_period: int,
        heartbeat_stale_trial_callback: Callable[[Any, FrozenTrial], None] | None,
    ) -> None:
        self.path = path
        self._read_size = -1  # the file's size at the last re-read
        self._file = JournalFile(path)  # Optuna's `_backend`, typed as ours
        super().__init__(self._file)
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback  # RDBStorage's name
        self._combined: list[dict[str, Any]] | None = None  # logs held back by `combined_writes`
        self._combining_thread: int | None = None
        self._beating: set[int] = set()  # trials whose heartbeat thread has started

    @contextlib.contextmanager
    def combined_writes(self) -> Iterator[None]:
        """Hold back this thread's journal writes and append them as one at the end.

        For a trial's start (its sampled params, its user attributes): nothing reads this
        trial back from the storage meanwhile, since `optuna.Trial` keeps its own copy. Other
        threads (the heartbeat) and processes write as usual.
        """
        with self._thread_lock:
            self._combined, self._combining_thread = [], threading.get_ident()
        try:
            yield
        finally:
            with self._thread_lock:
                logs, self._combined, self._combining_thread = self._combined or [], None, None
                if logs:
                    self._append(logs)
                    self._sync_with_backend()

    def _write_log(self, op_code: int, extra_fields: dict[str, Any]) -> None:
        log = {"op_code": op_code, "worker_id": self._replay_result.worker_id, **extra_fields}
        if self._combined is not None and threading.get_ident() == self._combining_thread:
            self._combined.append(log)
        else:
            self._append([log])

    def _append(self, logs: list[dict[str, Any]]) -> None:
        self._file.append_logs(logs, durable=any(log["op_code"] in DURABLE_OPS for log in logs))

    def _sync_with_backend(self) -> None:
        size = os.stat(self.path).st_size  # the journal only grows: the same size, nothing new
        if size != self._read_size:
            super()._sync_with_backend()
            self._read_size = size  # read at least this far: a line still being written is read next time

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._read_size = -1  # the copy starts without what was read: read it all again

    def record_heartbeat(self, trial_id: int) -> None:
        if trial_id not in self._beating:  # the first beat, at the trial's start: its start time says as much
            self._beating.add(trial_id)
            return
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except UpdateFinishedTrialError:
            pass  # another worker failed the trial as stale: the trial notices at its next report

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for trial in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            # A retry inherits its dead attempt's system attributes, old heartbeat included: it is
            # alive since it started, whatever that inherited beat says.
            beats = [float(trial.system_attrs.get(HEARTBEAT_ATTR, 0.0))]
            if trial.datetime_start is not None:
                beats.append(trial.datetime_start.timestamp())
            if now - max(beats) > self.grace_period:
                stale.append(trial._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> Callable[[Any, FrozenTrial], None] | None:
        return self.heartbeat_stale_trial_callback
