"""Helpers for the scale-out and reliability tests: the real CLI in subprocesses, a private
PostgreSQL database per test, study scripts with a tiny real config, and polling with deadlines.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

REPO = Path(__file__).resolve().parents[2]
POSTGRES_ENV = "TUNER_TEST_POSTGRES_URL"  # set by .ci/with-postgres (so by .ci/run)
REQUIRE_POSTGRES_ENV = "TUNER_REQUIRE_POSTGRES"  # set in CI: a missing server fails instead of skipping
T = TypeVar("T")

# A real trainable with a tiny budget: an MLP on a small MNIST written by `fake_mnist` (reading it
# costs less than generating MNIST-1D, which every worker process would do), 3 epochs, CPU.
TINY_SPACE = """{{
    "optimizer": Categorical(["adam", "sgd"]),
    "lr": Float(1e-3, 1e-1, log=True),
    "dataset": "mnist", "data_dir": {data_dir!r}, "model": "mlp", "epochs": 3, "train_samples": 200,
    "batch_size": 50, "device": "cpu",
}}"""
# Slow enough to catch mid-trial (0.2 to 0.5 s an epoch on one loaded core): the CNN, 6 epochs.
SLOW_SPACE = """{{
    "lr": Float(3e-3, 3e-2, log=True),
    "dataset": "mnist", "data_dir": {data_dir!r}, "model": "cnn", "epochs": 6, "train_samples": 200,
    "batch_size": 32, "device": "cpu",
}}"""


def write_fake_mnist(root: Path, n_train: int = 1000, n_test: int = 200) -> Path:
    """MNIST's four idx files, with random images carrying a learnable band per label; returns `root`."""
    import numpy as np

    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        images = (rng.random((n, 28, 28)) * 60).astype(np.uint8)
        for k in range(10):
            images[labels == k, 2 * k : 2 * k + 3, :] = 255
        header = struct.pack(">IIII", 0x803, n, 28, 28)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
    return root


@pytest.fixture(scope="session")
def fake_mnist(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(write_fake_mnist(tmp_path_factory.mktemp("data")))


SCRIPT = """
from tuner import StudySpec, main_for_script
from tuner.space import Categorical, Float, Int

STUDY = StudySpec(name={name!r}, space={space}, {spec_args})

if __name__ == "__main__":
    main_for_script(STUDY)
"""


def write_script(path: Path, data_dir: str, name: str, space: str = TINY_SPACE, spec_args: str = "n_trials=4") -> Path:
    path.write_text(SCRIPT.format(name=name, space=space.format(data_dir=data_dir), spec_args=spec_args))
    return path


def tuner_env(**extra: str) -> dict[str, str]:
    """The environment for a `tuner` subprocess: this checkout importable, short heartbeats, one thread."""
    env = {k: v for k, v in os.environ.items() if k not in ("TUNER_STORAGE", "TUNER_TRACKING_URI")}
    env.update({"PYTHONPATH": str(REPO), "COLUMNS": "200", "OMP_NUM_THREADS": "1"})
    # beats every second; a grace long enough that a loaded machine does not starve a live trial into staleness
    env.update({"TUNER_HEARTBEAT_SECONDS": "1", "TUNER_GRACE_SECONDS": "10"})
    env.update(extra)
    return env


def tuner_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "tuner.cli", *args]


def tuner(
    cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tuner_command(*args), cwd=cwd, env=env or tuner_env(), capture_output=True, text=True, timeout=timeout
    )


def start_tuner(
    cwd: Path, *args: str, env: dict[str, str] | None = None, log: Path | None = None
) -> subprocess.Popen[str]:
    """A `tuner` process in the background; its output goes to `log` (a file: pipes could fill and block)."""
    out = open(log or cwd / f"tuner-{uuid.uuid4().hex[:6]}.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen(
        tuner_command(*args), cwd=cwd, env=env or tuner_env(), stdout=out, stderr=subprocess.STDOUT, text=True
    )


def wait_for(condition: Callable[[], T], what: str, deadline_seconds: float = 120, every: float = 0.02) -> T:
    """Poll `condition` until it returns something truthy; fail naming `what` after the deadline."""
    deadline = time.monotonic() + deadline_seconds
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {deadline_seconds:.0f} s waiting for {what}")
        time.sleep(every)


def finish(proc: subprocess.Popen[str], timeout: float = 180) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"{proc.args} did not exit within {timeout} s")


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test (dropped afterwards)."""
    admin_url = os.environ.get(POSTGRES_ENV)
    if not admin_url:
        if os.environ.get(REQUIRE_POSTGRES_ENV):
            pytest.fail(f"{POSTGRES_ENV} is unset but {REQUIRE_POSTGRES_ENV} is set: run the tests via .ci/run")
        pytest.skip(f"needs PostgreSQL: set {POSTGRES_ENV} (.ci/with-postgres does) to run it")
    import sqlalchemy

    name = f"tuner_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    url = admin_url.rsplit("/", 1)[0] + f"/{name}"
    try:
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        admin.dispose()


def postgres_tables(url: str) -> list[str]:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        return sqlalchemy.inspect(engine).get_table_names()
    finally:
        engine.dispose()


def child_runs(tracking_uri: str, study_name: str) -> list[Any]:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study_name)
    assert experiment is not None, f"no MLflow experiment {study_name}"
    return client.search_runs([experiment.experiment_id], "tags.`tuner.role` = 'trial'", max_results=5000)
