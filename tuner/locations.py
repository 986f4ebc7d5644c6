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
_SQLITE_HEADER = b"SQLite format 3\x00"
_JOURNAL_START = b'{"op_code"'  # every journal record, Optuna's and tuner.journal's
_LOOKS_LIKE = {
    "sqlite": "an SQLite database",
    "journal": "an Optuna journal",
    "text": "a text file",
    "binary": "binary data",
}


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
        f"sqlite:///PATH or {postgres_example(url)}"
    )


def postgres_example(url: str, database: str = "DB") -> str:
    """A PostgreSQL URL for a hint: the user's own user, host and port where `url` has them, the password hidden."""
    parsed = urllib.parse.urlparse(url)
    userinfo, at, host = parsed.netloc.rpartition("@")
    if not host:
        return "postgresql://USER:PW@HOST:PORT/DB"
    user, colon, _ = userinfo.partition(":")
    return f"postgresql://{user}{':***' if colon else ''}{at}{host}/{parsed.path.strip('/') or database}"


def check_storage_url(url: str) -> None:
    """Validate a storage URL without creating anything."""
    kind = storage_kind(url)
    if kind == "journal":
        _check_parent_dir(Path(url), "--storage")
        found = file_kind(Path(url))
        if found not in (None, "journal"):  # appending to it would destroy it
            raise UserError(
                f"--storage {url}: is not an Optuna journal file (it looks like {_LOOKS_LIKE[found]}); "
                "give a .journal file or a database URL (sqlite:///PATH.db, postgresql://...)"
            )
    elif kind == "sqlite":
        path = url.removeprefix("sqlite:///")
        if not path or path == url or path.startswith(":memory:"):
            raise UserError(f"--storage {url}: give a file, e.g. sqlite:///mlruns/optuna.db")
        _check_parent_dir(Path(path), "--storage")  # not its content: see `file_kind`
    else:
        parsed = urllib.parse.urlparse(url)
        if not parsed.hostname or not parsed.path.strip("/"):
            raise UserError(
                f"--storage {redact(url)}: a PostgreSQL URL needs a host and a database, "
                f"e.g. {postgres_example(url, 'optuna')}"
            )


def file_kind(path: Path) -> str | None:
    """What the file at `path` holds, by its first bytes: sqlite, journal, text or binary; None when missing or empty.

    Only for a path given as a journal. Never for an SQLite URL's file: closing any descriptor of
    a database file drops the POSIX locks this process's SQLite connections hold on it, and other
    processes then checkpoint and reset the write-ahead log under them (their writes vanish);
    SQLite's own "file is not a database" is the message there.
    """
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    if not head:
        return None
    if head.startswith(_SQLITE_HEADER):
        return "sqlite"
    if _JOURNAL_START.startswith(head[: len(_JOURNAL_START)]):  # also a first record cut short
        return "journal"
    return "binary" if b"\x00" in head else "text"


def _check_parent_dir(path: Path, flag: str) -> None:
    parent = path.expanduser().resolve().parent
    if path.name == "" or path.is_dir():
        raise UserError(f"{flag} {path}: is a directory; give a file path, e.g. {path / 'optuna.journal'}")
    if parent.exists() and not parent.is_dir():
        raise UserError(f"{flag} {path}: {parent} is a file, not a directory; choose another path")
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
        _check_parent_dir(Path(path), "--tracking-uri")  # not its content: see `file_kind`
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
            f"or {postgres_example(uri)}"
        )


def default_artifact_root(tracking_uri: str) -> str | None:
    """For a local SQLite store, artifacts go beside the database; a server chooses its own."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri.removeprefix("sqlite:///")).resolve()
        return (db.parent / "artifacts").as_uri()
    return None
