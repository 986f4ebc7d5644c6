"""Where studies and runs live: Optuna storage URLs and MLflow tracking URIs.

Defaults are embedded and need no server: the journal file `mlruns/optuna.journal` for
Optuna and SQLite `mlruns/mlflow.db` (artifacts in `mlruns/artifacts/`) for MLflow.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tuner.errors import UserError

DEFAULT_STORE = Path("mlruns")
DEFAULT_STORAGE = str(DEFAULT_STORE / "optuna.journal")
DEFAULT_TRACKING_URI = f"sqlite:///{DEFAULT_STORE / 'mlflow.db'}"
HEARTBEAT_SECONDS = 10  # how often a running trial tells the storage it is alive
GRACE_SECONDS = 30  # silence after which a running trial counts as dead and is retried
MAX_RETRY = 3  # retries of a trial whose worker died
# Override both (whole seconds) for every process of a run, e.g. short ones in tests.
HEARTBEAT_ENV, GRACE_ENV = "TUNER_HEARTBEAT_SECONDS", "TUNER_GRACE_SECONDS"

_PASSWORD = re.compile(r"(?<=://)([^:/@\s]*):([^@\s]*)@")


def redact(text: str) -> str:
    """Hide passwords in any URL inside `text` (user:secret@host -> user:***@host)."""
    return _PASSWORD.sub(r"\1:***@", text)


def storage_kind(url: str) -> str:
    """journal, sqlite or postgresql; UserError for anything else."""
    if not url:
        raise UserError("--storage is empty: give a journal file path, sqlite:///PATH or postgresql://USER:PW@HOST/DB")
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme == "sqlite":
        return "sqlite"
    if scheme.startswith(("postgresql", "postgres")):
        return "postgresql"
    if scheme == "":
        return "journal"
    raise UserError(
        f"--storage {redact(url)}: unsupported scheme {scheme!r}; use a journal file path, "
        "sqlite:///PATH or postgresql://USER:PW@HOST:PORT/DB"
    )


def check_storage_url(url: str) -> None:
    """Validate a storage URL without creating anything."""
    kind = storage_kind(url)
    if kind == "journal":
        _check_parent_dir(Path(url), "--storage")
    elif kind == "sqlite":
        path = url.removeprefix("sqlite:///")
        if not path or path == url or path.startswith(":memory:"):
            raise UserError(f"--storage {url}: give a file, e.g. sqlite:///mlruns/optuna.db")
        _check_parent_dir(Path(path), "--storage")
    else:
        parsed = urllib.parse.urlparse(url)
        if not parsed.hostname or not parsed.path.strip("/"):
            raise UserError(
                f"--storage {redact(url)}: a PostgreSQL URL needs a host and a database, "
                "e.g. postgresql://USER:PW@HOST:5432/DB"
            )


def _check_parent_dir(path: Path, flag: str) -> None:
    parent = path.expanduser().resolve().parent
    if path.name == "" or path.is_dir():
        raise UserError(f"{flag} {path}: is a directory; give a file path, e.g. {path / 'optuna.journal'}")
    # the default store directory is ours to create; any other directory must exist already
    if not parent.is_dir() and parent != DEFAULT_STORE.resolve():
        raise UserError(f"{flag} {path}: directory {parent} does not exist; create it or choose another path")


def heartbeat_seconds() -> tuple[int, int]:
    """(heartbeat interval, grace period) in seconds: the defaults or the environment's."""
    values = []
    for name, default in ((HEARTBEAT_ENV, HEARTBEAT_SECONDS), (GRACE_ENV, GRACE_SECONDS)):
        text = os.environ.get(name, "").strip()
        if not text:
            values.append(default)
            continue
        if not text.isdigit() or int(text) < 1:
            raise UserError(f"{name}={text!r}: give a whole number of seconds >= 1, or unset it")
        values.append(int(text))
    interval, grace = values
    if grace <= interval:
        raise UserError(
            f"{GRACE_ENV} ({grace}) must be longer than {HEARTBEAT_ENV} ({interval}), "
            "or live trials count as dead; e.g. 3 times as long"
        )
    return interval, grace


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


def check_tracking_uri(uri: str) -> None:
    """Validate a tracking URI and, for a server, that it answers; creates nothing."""
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme == "sqlite":
        path = uri.removeprefix("sqlite:///")
        if not path or path == uri:
            raise UserError(f"--tracking-uri {uri}: give a file, e.g. sqlite:///mlruns/mlflow.db")
        _check_parent_dir(Path(path), "--tracking-uri")
    elif scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10) as response:
                response.read()
        except Exception as exc:
            raise UserError(
                f"--tracking-uri {redact(uri)}: no MLflow server answers there ({redact(str(exc))}); "
                "start one with `mlflow server` or check the address"
            ) from None
    elif scheme.startswith(("postgresql", "postgres", "mysql")):
        parsed = urllib.parse.urlparse(uri)
        if not parsed.hostname:
            raise UserError(f"--tracking-uri {redact(uri)}: a database URI needs a host")
    else:
        raise UserError(
            f"--tracking-uri {redact(uri)}: unsupported; use sqlite:///PATH, http://HOST:PORT (an MLflow server) "
            "or postgresql://USER:PW@HOST/DB"
        )


def default_artifact_root(tracking_uri: str) -> str | None:
    """For a local SQLite store, artifacts go beside the database; a server chooses its own."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        return (db.parent / "artifacts").as_uri()
    return None
