"""Setting up the local SQLite MLflow store (`prepare_mlflow_store`): real SQLite, real MLflow migrations.

Each test has a cache of its own (no empty-store template yet), so that its first store is made
by MLflow's migrations, the path where things can go wrong; the template's own test is last.

A full disk is SQLite's own: `PRAGMA max_page_count` on each connection makes SQLite fail a
write with "database or disk is full" once the database reaches that many pages, part way
through MLflow's migrations.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from mlflow import MlflowClient
from sqlalchemy import event
from sqlalchemy.engine import Engine

from tests.tuner.procs import REPO
from trainables.cache import CACHE_ENV
from tuner.errors import UserError
from tuner.storage import NEW_SUFFIX, empty_store_template, prepare_mlflow_store

FULL_AT_PAGES = 60  # a complete store has some 230 pages: this is part way through its migrations
LIMIT_PAGES = """
from sqlalchemy import event
from sqlalchemy.engine import Engine
event.listen(Engine, "connect", lambda connection, record: connection.execute("PRAGMA max_page_count={pages}"))
"""


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache: no template of an empty store, in this process and the ones it starts."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


def _limit_pages(connection: sqlite3.Connection, record: object) -> None:
    connection.execute(f"PRAGMA max_page_count={FULL_AT_PAGES}")


@contextmanager
def full_disk() -> Iterator[None]:
    """Every SQLAlchemy connection opened meanwhile fails its writes beyond FULL_AT_PAGES pages."""
    event.listen(Engine, "connect", _limit_pages)
    try:
        yield
    finally:
        event.remove(Engine, "connect", _limit_pages)


def head_revision(path: Path) -> str:
    from mlflow.store.db.utils import _get_latest_schema_revision

    with sqlite3.connect(path) as db:
        (version,) = db.execute("SELECT version_num FROM alembic_version").fetchone()
    assert version == _get_latest_schema_revision()
    return str(version)


def leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.glob(f"{path.name}{NEW_SUFFIX}*"))


def test_two_processes_set_up_a_new_store_at_once_and_both_use_it(tmp_path: Path) -> None:
    """Without the lock both ran MLflow's migrations on one file: `_alembic_tmp_... already exists`."""
    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    script = (
        "import sys, time, pathlib\n"
        "from mlflow import MlflowClient\n"
        "from tuner.storage import prepare_mlflow_store\n"
        "here = pathlib.Path(sys.argv[2])\n"
        "(here / f'ready-{sys.argv[3]}').touch()\n"
        "while not (here / 'go').exists():\n"  # both start at once, their imports done
        "    time.sleep(0.005)\n"
        "prepare_mlflow_store(sys.argv[1])\n"
        "print(MlflowClient(sys.argv[1]).create_experiment(f'worker {sys.argv[3]}'))\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", script, uri, str(tmp_path), str(n)],
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in (1, 2)
    ]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready-{n}").exists() for n in (1, 2)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), "workers did not start"
        time.sleep(0.01)
    (tmp_path / "go").touch()
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    client = MlflowClient(uri)
    assert {client.get_experiment_by_name(f"worker {n}") is not None for n in (1, 2)} == {True}
    head_revision(db)
    assert leftovers(db) == []


def test_a_full_disk_during_creation_leaves_nothing_and_the_next_run_creates_the_store(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    with full_disk(), pytest.raises(UserError) as failed:
        prepare_mlflow_store(f"sqlite:///{db}")
    message = str(failed.value)
    assert "\n" not in message and str(db) in message and "database or disk is full" in message
    assert not db.exists() and leftovers(db) == []  # no half-set-up file at the store's path, nor beside it
    prepare_mlflow_store(f"sqlite:///{db}")
    assert MlflowClient(f"sqlite:///{db}").create_experiment("after") is not None
    head_revision(db)


def test_a_creation_killed_part_way_leaves_no_store_and_the_next_run_creates_it(tmp_path: Path) -> None:
    db = tmp_path / "mlflow.db"
    started = tmp_path / "migrating"
    script = (  # after 100 statements of the migrations, say so and wait to be killed
        "import sys, time, pathlib\n"
        "from sqlalchemy import event\n"
        "from sqlalchemy.engine import Engine\n"
        "from tuner.storage import prepare_mlflow_store\n"
        "count = 0\n"
        "def step(*args):\n"
        "    global count\n"
        "    count += 1\n"
        "    if count == 100:\n"
        "        pathlib.Path(sys.argv[2]).touch()\n"
        "        time.sleep(600)\n"
        "event.listen(Engine, 'after_cursor_execute', step)\n"
        "prepare_mlflow_store(sys.argv[1])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", script, f"sqlite:///{db}", str(started)], env=_env())
    try:
        deadline = time.monotonic() + 120
        while not started.exists():
            assert time.monotonic() < deadline and proc.poll() is None, "the creation did not start"
            time.sleep(0.01)
        assert leftovers(db) != []  # it was working beside the store
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not db.exists()
    prepare_mlflow_store(f"sqlite:///{db}")
    assert leftovers(db) == []  # the dead creation's file was removed
    assert MlflowClient(f"sqlite:///{db}").create_experiment("after") is not None


def test_a_store_mlflow_left_half_set_up_on_a_full_disk_is_reported_in_one_line(tmp_path: Path) -> None:
    """The store an earlier version left (MLflow creating its tables in place on a full disk):
    every later run failed with `table ... already exists` or `duplicate column name`."""
    db = tmp_path / "mlflow.db"
    script = (
        LIMIT_PAGES.format(pages=FULL_AT_PAGES)
        + "from mlflow import MlflowClient\nMlflowClient(__import__('sys').argv[1])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, f"sqlite:///{db}"], env=_env(), capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0 and "database or disk is full" in done.stderr
    size = db.stat().st_size
    with pytest.raises(UserError) as failed:
        prepare_mlflow_store(f"sqlite:///{db}")
    message = str(failed.value)
    assert "\n" not in message and str(db) in message
    assert "half set up" in message and "move it away" in message
    assert db.stat().st_size == size  # left as it was, for the user to move


def test_a_migration_step_cut_short_is_reported_without_touching_the_store(tmp_path: Path) -> None:
    """Two processes migrating at once left `_alembic_tmp_<table>` behind (made here by hand: the race is not
    deterministic); MLflow then failed every run with `table _alembic_tmp_... already exists`."""
    db = tmp_path / "mlflow.db"
    prepare_mlflow_store(f"sqlite:///{db}")
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE _alembic_tmp_experiments (experiment_id INTEGER)")
    with pytest.raises(UserError, match="half set up") as failed:
        prepare_mlflow_store(f"sqlite:///{db}")
    assert str(db) in str(failed.value) and "\n" not in str(failed.value)


def test_an_older_mlflow_store_is_upgraded_by_mlflow_and_keeps_its_experiments(tmp_path: Path) -> None:
    import sqlalchemy
    from alembic import command
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config
    from mlflow.store.tracking.dbmodels.initial_models import Base as InitialBase

    db = tmp_path / "mlflow.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{db}")
    InitialBase.metadata.create_all(engine)
    config = _get_alembic_config(str(engine.url))
    revisions = list(ScriptDirectory.from_config(config).walk_revisions())  # newest first
    with engine.begin() as connection:  # as an MLflow of half the migrations ago left it
        config.attributes["connection"] = connection
        command.upgrade(config, revisions[len(revisions) // 2].revision)
        connection.execute(
            sqlalchemy.text(
                "INSERT INTO experiments (name, artifact_location, lifecycle_stage) VALUES ('old', 'x', 'active')"
            )
        )
    engine.dispose()
    prepare_mlflow_store(f"sqlite:///{db}")
    client = MlflowClient(f"sqlite:///{db}")
    assert client.get_experiment_by_name("old") is not None
    assert client.create_experiment("new") is not None
    head_revision(db)


def test_a_new_store_after_the_first_is_a_copy_of_the_empty_template_and_a_damaged_one_is_made_again(
    tmp_path: Path,
) -> None:
    """MLflow's migrations take some 3 s: the first store on a machine keeps an empty copy of itself,
    which later new stores start from; MLflow then adds its Default experiment as it does to any new store."""
    first, second, third = (tmp_path / name / "mlflow.db" for name in ("a", "b", "c"))
    prepare_mlflow_store(f"sqlite:///{first}")
    template = empty_store_template()
    assert template.is_file()
    template_bytes = template.read_bytes()
    prepare_mlflow_store(f"sqlite:///{second}")
    client = MlflowClient(f"sqlite:///{second}")
    assert client.create_experiment("after") is not None
    assert client.get_experiment("0").name == "Default"  # made by MLflow on opening the copy, as on a new store
    head_revision(second)
    assert template.read_bytes() == template_bytes  # the template itself stays empty

    template.write_bytes(b"not a database")  # damaged: MLflow's migrations again, and a whole template
    prepare_mlflow_store(f"sqlite:///{third}")
    assert MlflowClient(f"sqlite:///{third}").create_experiment("after") is not None
    head_revision(third)
    with sqlite3.connect(template) as db:
        assert db.execute("SELECT count(*) FROM experiments").fetchone()[0] == 0
