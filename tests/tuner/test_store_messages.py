"""One clear line for a store that cannot be used as given: read-only, not the kind of file the URL
says, or a PostgreSQL URL whose hint should show the user's own host."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.tuner.procs import tuner, tuner_env
from tuner.cli import one_line
from tuner.errors import UserError
from tuner.locations import check_storage_url, check_tracking_uri, redact
from tuner.storage import open_storage, prepare_mlflow_store


def shown(error: pytest.ExceptionInfo[UserError]) -> str:
    """The line the CLI prints for the error."""
    return redact(one_line(error.value))


def sqlite_file(path: Path) -> Path:
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE kept (a)")
        db.execute("INSERT INTO kept VALUES (1)")
    return path


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """`path` read-only: by its mode, or for root (whom modes do not stop) with the immutable attribute."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode != 0:
        pytest.skip("running as root without `chattr +i`: no way to make a file read-only")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_read_only_mlflow_store_names_its_path_and_says_it_is_read_only(tmp_path: Path) -> None:
    """It printed MLflow's raw `attempt to write a readonly database [SQL: INSERT INTO runs ...]`."""
    db = tmp_path / "mlflow.db"
    prepare_mlflow_store(f"sqlite:///{db}")
    with read_only(db), pytest.raises(UserError) as failed:
        prepare_mlflow_store(f"sqlite:///{db}")
    line = shown(failed)
    assert "\n" not in line and f"sqlite:///{db}" in line and "is read-only" in line and "writable" in line
    assert "SQL" not in line


def test_a_read_only_journal_names_its_path_and_says_it_is_read_only(tmp_path: Path) -> None:
    """It printed `OSError: [Errno 30] Read-only file system: ...` (or EACCES) from inside Optuna."""
    journal = tmp_path / "optuna.journal"
    open_storage(str(journal))
    with read_only(journal), pytest.raises(UserError) as failed:
        open_storage(str(journal))
    line = shown(failed)
    assert f"--storage {journal}: the store is read-only" in line and "writable" in line


def test_a_run_on_a_read_only_optuna_database_says_so_but_reading_it_works(tmp_path: Path) -> None:
    """It failed at the first write with `StorageInternalError: An exception is raised during the commit`."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    open_storage(url)
    with read_only(tmp_path / "optuna.db"):
        with pytest.raises(UserError, match="the store is read-only"):
            open_storage(url)
        open_storage(url, heartbeat=False)  # `tuner studies`, `tuner best`, `tuner report`


@pytest.mark.parametrize(
    ("make", "looks_like"),
    [(sqlite_file, "an SQLite database"), (lambda p: p.write_text("notes\n") and p, "a text file")],
    ids=["sqlite", "text"],
)
def test_a_journal_path_to_another_kind_of_file_says_what_it_is_and_leaves_it_alone(
    tmp_path: Path, make: object, looks_like: str
) -> None:
    """A SQLite file given as a journal was cut to nothing by the torn-tail check and overwritten;
    a text file failed with `JSONDecodeError: Expecting value`."""
    path = tmp_path / "mlflow.db"
    make(path)  # type: ignore[operator]
    before = path.read_bytes()
    with pytest.raises(UserError) as failed:
        open_storage(str(path))
    line = shown(failed)
    assert f"--storage {path}: is not an Optuna journal file (it looks like {looks_like})" in line
    assert "give a .journal file or a database URL" in line
    assert path.read_bytes() == before


def test_the_cli_refuses_an_mlflow_database_as_journal_in_one_line_and_keeps_it(tmp_path: Path) -> None:
    db = sqlite_file(tmp_path / "mlflow.db")
    before = db.read_bytes()
    done = tuner(tmp_path, "studies", "--storage", "mlflow.db", env=tuner_env())
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "tuner: error: --storage mlflow.db: is not an Optuna journal file (it looks like an SQLite database); "
        "give a .journal file or a database URL (sqlite:///PATH.db, postgresql://...)"
    ]
    assert db.read_bytes() == before


def test_a_sqlite_url_to_a_file_that_is_no_database_says_so_in_one_line(tmp_path: Path) -> None:
    """It said `cannot open it (file is not a database); check host, port, database and password`, or
    printed SQLAlchemy's raw `DatabaseError ... [SQL: SELECT name FROM sqlite_master ...]` for MLflow.
    SQLite itself says what the file is not (the checks never open a database file behind its back)."""
    notes = tmp_path / "notes.txt"
    notes.write_text("notes\n")
    check_storage_url(f"sqlite:///{notes}")  # the URL is well formed: opening it is what fails
    with pytest.raises(UserError) as failed:
        open_storage(f"sqlite:///{notes}")
    assert f"--storage sqlite:///{notes}: cannot open it (file is not a database); check the file" in shown(failed)
    with pytest.raises(UserError) as failed:
        prepare_mlflow_store(f"sqlite:///{notes}")
    assert f"--tracking-uri sqlite:///{notes}: cannot read the MLflow store (file is not a database)" in shown(failed)
    assert "\n" not in shown(failed)
    assert notes.read_text() == "notes\n"


def test_the_checks_never_break_sqlites_locks_of_a_store_in_use(tmp_path: Path) -> None:
    """Opening and closing an SQLite file outside SQLite drops the POSIX locks this process's connections
    hold on it: another process then resets the write-ahead log and this one's later writes are lost to it
    (a `tuner report` run beside in-process studies lost their MLflow metrics this way)."""
    import textwrap

    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    prepare_mlflow_store(uri)
    client = MlflowClient(uri)
    experiment = client.create_experiment("in-use")

    def seen_elsewhere() -> int:
        code = textwrap.dedent(f"""
            from mlflow import MlflowClient
            print(len(MlflowClient({uri!r}).search_runs([{experiment!r}])))
        """)
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=tuner_env(), check=True)
        return int(done.stdout.split()[-1])

    for expected in (1, 2, 3):
        check_tracking_uri(uri)  # what every run and `tuner report` does first
        check_storage_url(uri)
        prepare_mlflow_store(uri)
        client.log_metric(client.create_run(experiment).info.run_id, "m", 1.0)
        assert seen_elsewhere() == expected


def test_a_path_inside_an_existing_file_says_that_file_is_no_directory(tmp_path: Path) -> None:
    """It said `directory .../notes.txt does not exist`, though it does, as a file."""
    notes = tmp_path / "notes.txt"
    notes.write_text("notes\n")
    with pytest.raises(UserError) as failed:
        check_storage_url(str(notes / "optuna.journal"))
    line = shown(failed)
    assert f"{notes} is a file, not a directory" in line and "does not exist" not in line


def test_hints_show_the_users_own_user_and_host_with_the_password_hidden() -> None:
    """The example in the hint was `postgresql://USER:PW@HOST...`, which the CLI's redaction then
    printed as `USER:***@HOST`."""
    with pytest.raises(UserError) as failed:
        check_storage_url("postgresql://alice:s3cret@db.example.com:5433")
    line = shown(failed)
    assert line.endswith("e.g. postgresql://alice:***@db.example.com:5433/optuna")
    assert "s3cret" not in line and "USER" not in line and "HOST" not in line
    with pytest.raises(UserError) as failed:
        check_storage_url("mysql://alice:s3cret@db.example.com/optuna")
    assert shown(failed).endswith("or postgresql://alice:***@db.example.com/optuna")
    with pytest.raises(UserError) as failed:
        check_tracking_uri("ftp://alice@db.example.com/mlflow")
    assert "or postgresql://alice@db.example.com/mlflow" in shown(failed)
