"""Opening Optuna storages: journal file (with heartbeats), SQLite and PostgreSQL.

The URLs and their checks are data, in `tuner.locations`; this module opens what they name.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.locations import MAX_RETRY, check_storage_url, heartbeat_seconds, redact, storage_kind


def open_storage(url: str, heartbeat: bool = True) -> Any:
    """An Optuna storage for `url`, with heartbeats so that dead workers' trials are retried.

    The stale-trial callback retries the trial; `set_stale_trial_callback` replaces it with one
    that also closes the dead attempt's MLflow run.
    """
    import warnings

    import optuna
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    check_storage_url(url)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    kind = storage_kind(url)
    interval, grace = heartbeat_seconds()
    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY) if heartbeat else None
    if kind == "journal":
        from tuner.journal import HeartbeatJournalStorage

        path = Path(url)
        path.parent.mkdir(parents=True, exist_ok=True)
        return HeartbeatJournalStorage(
            str(path),
            heartbeat_interval=interval if heartbeat else None,
            grace_period=grace,
            heartbeat_stale_trial_callback=retry,
        )
    if kind == "sqlite":
        use_wal(url)
    engine_kwargs = {"pool_pre_ping": True} if kind == "postgresql" else {"connect_args": {"timeout": 60}}
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=interval if heartbeat else None,
            grace_period=grace if heartbeat else None,
            heartbeat_stale_trial_callback=retry,
        )
    except Exception as exc:  # connection refused, bad password, missing database...
        reason = " ".join(str(getattr(exc, "orig", exc)).split())[:300]
        raise UserError(
            f"--storage {redact(url)}: cannot open it ({redact(reason)}); check host, port, database and password"
        ) from None


def set_stale_trial_callback(storage: Any, callback: Any) -> None:
    """Replace the callback run on each trial found stale (RDB and journal storages name it alike)."""
    if not hasattr(storage, "heartbeat_stale_trial_callback"):  # a study wraps RDBStorage in a cache
        storage = getattr(storage, "_backend", storage)
    if getattr(storage, "heartbeat_stale_trial_callback", None) is not None:
        storage.heartbeat_stale_trial_callback = callback


def use_wal(url: str) -> None:
    """Put the SQLite database at `url` (sqlite:///PATH, created if missing) in write-ahead-log mode.

    The mode is kept in the file. A commit then appends to the log with one fsync instead of
    writing and deleting a rollback journal with several: every MLflow call and Optuna write
    on SQLite costs about half as much (bench/platform_overhead.py, bench/storage.py). Several
    processes on one machine share the database as before; it is not for network file systems.
    """
    import sqlite3

    path = Path(url.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.closing(sqlite3.connect(path, timeout=30)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
    except sqlite3.Error:
        pass  # busy or read-only: the database works as it is, only slower
