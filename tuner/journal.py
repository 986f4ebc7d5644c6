"""The journal-file storage with heartbeats, and fewer appends per trial.

Optuna's RDBStorage has heartbeats; its JournalStorage has none. This adds them the same
way (the BaseHeartbeat interface that `Study.optimize` already drives), so that a trial
whose worker was killed is failed and retried on the embedded default storage too. A
heartbeat is a timestamp in the trial's system attributes.

Every journal write is an append under a file lock with an fsync (about 0.4 ms), and a
trial's start wrote one per sampled parameter and per user attribute. `combined_writes`
appends those as one write (bench/platform_overhead.py).
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from optuna.exceptions import UpdateFinishedTrialError
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import FrozenTrial, TrialState

HEARTBEAT_ATTR = "tuner:heartbeat"


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    def __init__(
        self,
        path: str,
        heartbeat_interval: int | None,
        grace_period: int,
        heartbeat_stale_trial_callback: Callable[[Any, FrozenTrial], None] | None,
    ) -> None:
        super().__init__(JournalFileBackend(path))
        self.path = path
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
                    self._backend.append_logs(logs)
                    self._sync_with_backend()

    def _write_log(self, op_code: int, extra_fields: dict[str, Any]) -> None:
        if self._combined is not None and threading.get_ident() == self._combining_thread:
            self._combined.append({"op_code": op_code, "worker_id": self._replay_result.worker_id, **extra_fields})
        else:
            super()._write_log(op_code, extra_fields)

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
