"""Where studies and runs live, as data: Optuna storage URLs, MLflow tracking URIs, their checks.

Defaults are embedded and need no server: the journal file `mlruns/optuna.journal` for
Optuna and SQLite `mlruns/mlflow.db` (artifacts in `mlruns/artifacts/`) for MLflow.
Nothing here opens a storage (that is `tuner.storage`); a tracking server's URI is checked
by asking it for `/health`.
"""

from __future__ import annotations

import os
import re
import urllib.parse
import urllib.request
from pathlib import Path

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
