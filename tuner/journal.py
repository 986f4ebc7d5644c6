"""The journal-file storage with heartbeats.

Optuna's RDBStorage has heartbeats; its JournalStorage has none. This adds them the same
way (the BaseHeartbeat interface that `Study.optimize` already drives), so that a trial
whose worker was killed is failed and retried on the embedded default storage too. A
heartbeat is a timestamp in the trial's system attributes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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

    def record_heartbeat(self, trial_id: int) -> None:
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
