"""Opening Optuna storages: journal file (with heartbeats), SQLite and PostgreSQL.

The URLs and their checks are data, in `tuner.locations`; this module opens what they name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.locations import MAX_RETRY, check_storage_url, heartbeat_seconds, redact, storage_kind

# Beside a new MLflow store while it is being created: the tables are made here, then moved into place.
NEW_SUFFIX = ".new"


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
        check_writable(path, f"--storage {url}")  # Optuna opens it for appending, even to read it
        return HeartbeatJournalStorage(
            str(path),
            heartbeat_interval=interval if heartbeat else None,
            grace_period=grace,
            heartbeat_stale_trial_callback=retry,
        )
    if kind == "sqlite":
        if heartbeat:  # a run's: it writes (reading a read-only database works)
            check_writable(Path(url.removeprefix("sqlite:///")), f"--storage {url}")
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
        if kind == "sqlite":
            check_writable(Path(url.removeprefix("sqlite:///")), f"--storage {url}")
            raise UserError(f"--storage {url}: cannot open it ({reason}); check the file, or give another") from None
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


def check_writable(path: Path, where: str) -> None:
    """UserError when the local store at `path`, or its folder, cannot be written.

    SQLite and the journal's lock put side files in the folder. Without this, the first write
    fails with a raw error that names no path. `where` is the flag and URL, e.g. "--storage X".
    """
    for target in (path, path.parent):
        if target.exists() and not os.access(target, os.W_OK):
            raise UserError(
                f"{where}: the store is read-only ({target} cannot be written); "
                "make it and its folder writable, or copy it to a writable place and give that path"
            )


def check_mlflow_store(tracking_uri: str) -> None:
    """What can be told of a local SQLite MLflow store without MLflow (which takes seconds to import): a
    UserError when it cannot be written, is no database or was left half set up; other URIs pass."""
    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    check_writable(path, f"--tracking-uri {tracking_uri}")
    if any(name.startswith("_alembic_tmp_") for name in _tables(path)):
        raise _half_set_up(path, "a migration step was cut short")


def prepare_mlflow_store(tracking_uri: str) -> None:
    """Check a local SQLite MLflow store, or create a new one whole; other URIs are MLflow's own.

    MLflow creates a store's tables in place, in some 60 migration steps: a crash or a full
    disk part way, or two processes doing it at once, leave a store that fails every later run
    (`duplicate column name`, `table _alembic_tmp_... already exists`). So a new store is made
    in a file beside it and moved into place when complete, and any set-up or upgrade by
    MLflow is done under a lock, by one process at a time. A complete store costs one query.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return
    path = Path(tracking_uri.removeprefix("sqlite:///"))
    path.parent.mkdir(parents=True, exist_ok=True)
    check_writable(path, f"--tracking-uri {tracking_uri}")
    if _complete_mlflow_tables(_tables(path)):
        return
    with _locked(path):  # another process may be setting it up: wait for it, then look again
        tables = _tables(path)
        if any(name.startswith("_alembic_tmp_") for name in tables):  # a migration step cut short
            raise _half_set_up(path, "a migration step was cut short")
        if _complete_mlflow_tables(tables):
            return
        if tables:  # an older MLflow's store (or one left half set up): MLflow upgrades it
            _upgrade_mlflow_store(tracking_uri, path)
        else:
            _create_mlflow_store(path)


def empty_store_template() -> Path:
    """An empty SQLite MLflow store (tables only, no experiment: MLflow adds its Default one, with this
    store's own paths, when it first opens a store), kept per MLflow version in tuner's cache."""
    import mlflow.version

    from trainables.cache import cache_dir

    return cache_dir() / f"mlflow-{mlflow.version.VERSION}-empty-store.db"


def _complete_template(template: Path) -> bool:
    """Whether `template` is there and holds every table MLflow needs (a damaged one is made again)."""
    import sqlite3

    try:
        if not template.is_file():
            return False
        with contextlib.closing(sqlite3.connect(f"{template.resolve().as_uri()}?mode=ro", uri=True)) as db:
            tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            experiments = db.execute("SELECT count(*) FROM experiments").fetchone()[0]
    except (OSError, sqlite3.Error):
        return False
    return _complete_mlflow_tables(tables) and experiments == 0


def _keep_template(created: Path, template: Path) -> None:
    """Copy a store just created, still empty, to `template`; a cache that cannot be written costs nothing."""
    tmp: Path | None = None
    try:
        template.parent.mkdir(parents=True, exist_ok=True)
        handle, name = tempfile.mkstemp(dir=template.parent, prefix=f".{template.name}.")  # unique across hosts
        os.close(handle)
        tmp = Path(name)
        shutil.copyfile(created, tmp)
        os.replace(tmp, template)  # whole or not at all: another process may be reading it
    except OSError:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _tables(path: Path) -> set[str]:
    """The tables of the SQLite database at `path` (none when missing), set to write-ahead-log mode."""
    import sqlite3

    if not path.exists():
        return set()
    try:  # mode=rw: never create the file here
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=rw", uri=True, timeout=30)) as db:
            with contextlib.suppress(sqlite3.OperationalError):  # busy: it works as it is, only slower
                db.execute("PRAGMA journal_mode=WAL")  # as `use_wal`
            return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.Error as exc:
        raise UserError(
            f"--tracking-uri sqlite:///{path}: cannot read the MLflow store ({exc}); "
            "give an MLflow store's file, or a path where none exists yet"
        ) from None


def _complete_mlflow_tables(tables: set[str]) -> bool:
    """Whether MLflow would open a store with these tables as it is (its own test), and no step was cut short."""
    import mlflow.store.db.utils  # noqa: F401  (registers every MLflow table with Base)
    from mlflow.store.db.base_sql_model import Base

    cut_short = any(name.startswith("_alembic_tmp_") for name in tables)
    return "alembic_version" in tables and set(Base.metadata.tables) <= tables and not cut_short


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on PATH.lock, kept afterwards (deleting a lock file races with its next user)."""
    import fcntl

    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, also when the process dies


def _create_mlflow_store(path: Path) -> None:
    """Create MLflow's tables in PATH.new and move it to `path`, then put it in WAL mode; under the lock.

    A crash leaves only PATH.new, removed by the next creation; a failure leaves nothing.
    """
    import sqlite3

    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables  # what MLflow's store runs on an empty database

    new = path.with_name(path.name + NEW_SUFFIX)
    side_files = [Path(f"{new}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]
    for leftover in side_files:  # a crashed creation's: under the lock, none is in use
        leftover.unlink(missing_ok=True)
    engine = sqlalchemy.create_engine(f"sqlite:///{new}")
    try:
        template = empty_store_template()
    except (OSError, RuntimeError):  # no home folder to keep a cache in: MLflow's migrations, as always
        template = None
    try:
        if template is not None and _complete_template(template):  # made before on this machine: a copy, not 3 s
            shutil.copyfile(template, new)
        else:
            _initialize_tables(engine)  # in a rollback journal: the file is the whole store when the engine closes
            engine.dispose()
            if template is not None:
                _keep_template(new, template)
        with open(new, "rb+") as created:
            os.fsync(created.fileno())
        for stale in (
            f"{path}-wal",
            f"{path}-shm",
            f"{path}-journal",
        ):  # an earlier store's: never replayed into this one
            Path(stale).unlink(missing_ok=True)
        os.replace(new, path)  # `path` is missing or has no tables (checked under the lock)
        with contextlib.closing(sqlite3.connect(path)) as db:
            db.execute("PRAGMA journal_mode=WAL")  # kept in the file; see `use_wal`
    except Exception as exc:
        reason = " ".join(str(getattr(exc, "orig", exc)).split())[:200]
        raise UserError(
            f"--tracking-uri sqlite:///{path}: cannot create the MLflow store ({reason}); nothing was left "
            "behind: free some disk space, or give another path, and run again"
        ) from None
    finally:
        engine.dispose()
        for leftover in side_files:
            leftover.unlink(missing_ok=True)


def _upgrade_mlflow_store(tracking_uri: str, path: Path) -> None:
    """Let MLflow create the tables a store lacks (its own upgrade); under the lock."""
    from mlflow import MlflowClient

    try:
        MlflowClient(tracking_uri)  # MLflow keeps the store it opens: later clients reuse it
    except Exception as exc:
        raise _half_set_up(path, " ".join(str(getattr(exc, "orig", exc)).split())[:200]) from None


def _half_set_up(path: Path, reason: str) -> UserError:
    return UserError(
        f"--tracking-uri sqlite:///{path}: the MLflow store was left half set up by a crash or a full disk "
        f"while its tables were made ({reason}); move it away (or delete it if it holds nothing you need) "
        "and run again"
    )
