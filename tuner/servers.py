"""`tuner ui` and `tuner dashboard`: the MLflow UI and optuna-dashboard on the local store.

Each server runs as a child process in its own process group, bound to 127.0.0.1. We wait
until it answers (polling with a deadline), print the page to open, and on Ctrl-C or SIGTERM
stop the whole group (mlflow server runs its web workers as children of its own).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from tuner.errors import UserError
from tuner.locations import check_storage_url, check_tracking_uri, default_artifact_root, redact, storage_kind

HOST = "127.0.0.1"
# MLflow 3's UI opens in its GenAI views (traces, sessions) unless the browser chose otherwise: ask for the
# model-training ones (runs, charts, models), which its sidebar toggle also offers
TRAINING_VIEWS = "workflowType=machine_learning"
START_SECONDS = 180.0  # mlflow server answers after about 10 s on two idle cores; far later on busy ones
STOP_SECONDS = 10.0  # after SIGTERM, before SIGKILL


@dataclass
class Server:
    """A started server: the process leading its group, where it answers, and its log file."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def stop(self) -> None:
        """SIGTERM to the whole group, SIGKILL to what is left after STOP_SECONDS; idempotent."""
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            pass
        try:  # children the leader left behind (uvicorn workers)
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def check_port(port: int) -> None:
    """UserError when the port is out of range or something already listens on it."""
    if not 1 <= port <= 65535:
        raise UserError(f"--port {port}: give a port between 1 and 65535")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers bind
        try:
            probe.bind((HOST, port))
        except OSError:
            raise UserError(f"--port {port}: {HOST}:{port} is in use; choose another port with --port") from None


def start(name: str, command: list[str], port: int, ready_path: str, timeout: float = START_SECONDS) -> Server:
    """Start `command` in a new process group and wait until GET `ready_path` answers 200."""
    check_port(port)
    log = Path(tempfile.mkstemp(prefix=f"tuner-{name.replace(' ', '-')}-", suffix=".log")[1])
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(name, process, f"http://{HOST}:{port}", log)
    try:
        wait_ready(server, ready_path, timeout)
    except BaseException:
        server.stop()
        raise
    return server


def wait_ready(server: Server, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        code = server.process.poll()
        if code is not None:
            raise UserError(f"{server.name} exited with code {code} before answering: {last_line(server.log)}")
        try:
            with urllib.request.urlopen(server.url + path, timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet
        if time.monotonic() > deadline:
            raise UserError(f"{server.name} did not answer on {server.url} within {timeout:.0f} s; see {server.log}")
        time.sleep(0.25)  # poll interval, bounded by the deadline above


def last_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else f"no output (log {log})"


def executable(name: str) -> str:
    """A console script of this environment (beside its python), else from PATH."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.is_file() else shutil.which(name)
    if found is None:
        raise UserError(f"{name} is not installed in this environment; pip install the project's dependencies")
    return found


def local_store(tracking_uri: str) -> Path:
    """The SQLite file of a local MLflow store; UserError when it is no such URI or does not exist."""
    if not tracking_uri.startswith("sqlite:///"):
        raise UserError(
            f"--tracking-uri {redact(tracking_uri)}: give the local sqlite:///PATH store, or an http(s) tracking server"
        )
    db = Path(tracking_uri.removeprefix("sqlite:///"))
    if not db.is_file():
        raise UserError(
            f"--tracking-uri {tracking_uri}: no MLflow store at {db}; run a study first (tuner run studies/quickstart.py)"
        )
    return db


def mlflow_command(tracking_uri: str, port: int) -> list[str]:
    """`mlflow server` on a local SQLite store; artifacts where tuner.tracking puts them (beside the db)."""
    artifacts = default_artifact_root(tracking_uri)
    assert artifacts is not None, "only SQLite stores are served locally"
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", tracking_uri,
        "--default-artifact-root", artifacts,
        "--artifacts-destination", artifacts,
        "--host", HOST, "--port", str(port), "--workers", "1",
    ]  # fmt: skip


def start_mlflow(tracking_uri: str, port: int, timeout: float = START_SECONDS) -> Server:
    local_store(tracking_uri)
    return start("mlflow server", mlflow_command(tracking_uri, port), port, "/health", timeout)


def start_dashboard(storage: str, port: int, timeout: float = START_SECONDS) -> Server:
    check_storage_url(storage)
    kind = storage_kind(storage)
    path = Path(storage.removeprefix("sqlite:///")) if kind in ("journal", "sqlite") else None
    if path is not None and not path.is_file():
        raise UserError(
            f"--storage {storage}: no Optuna storage at {path}; run a study first (tuner run studies/quickstart.py)"
        )
    command = [executable("optuna-dashboard"), "--host", HOST, "--port", str(port), "--server", "wsgiref", storage]
    return start("optuna-dashboard", command, port, "/api/meta", timeout)


def runs_page(tracking_uri: str, base_url: str, study: str | None = None) -> str:
    """The runs table of the study's experiment (the newest study's when none is named)."""
    from mlflow import MlflowClient

    from tuner.record_writer import quiet_mlflow

    quiet_mlflow()
    client = MlflowClient(tracking_uri)
    if study is not None:
        experiment = client.get_experiment_by_name(study) or _experiment_of_study(client, study)
        if experiment is None:
            raise UserError(f"--study {study}: no MLflow experiment or study of that name in {redact(tracking_uri)}")
    else:
        newest = [e for e in client.search_experiments(order_by=["creation_time DESC"]) if e.name != "Default"]
        if not newest:
            return f"{base_url}/#/experiments"
        experiment = newest[0]
    return f"{base_url}/#/experiments/{experiment.experiment_id}/runs?{TRAINING_VIEWS}"


def _experiment_of_study(client: Any, study: str) -> Any:
    """The experiment holding the parent run of `study` (a study group's studies share the group's experiment)."""
    ids = [e.experiment_id for e in client.search_experiments()]
    runs = (
        client.search_runs(ids, f"tags.`tuner.role` = 'study' and tags.`mlflow.runName` = '{study}'", max_results=1)
        if ids and "'" not in study
        else []
    )
    return client.get_experiment(runs[0].info.experiment_id) if runs else None


class _Terminated(Exception):
    """SIGTERM while starting or serving."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise _Terminated()


def serve(start_server: Callable[[], Server], page: Callable[[Server], str]) -> int:
    """Start the server, print its page, wait: 0 after SIGTERM, 130 after Ctrl-C, 1 if the server dies."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    server = None
    try:
        server = start_server()
        print(f"{server.name} on {server.url} (Ctrl-C stops it)")
        print(page(server), flush=True)
        code = server.process.wait()
        print(f"tuner: error: {server.name} stopped (exit code {code}): {last_line(server.log)}", file=sys.stderr)
        return 1
    except _Terminated:
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        if server is not None:
            server.stop()
        signal.signal(signal.SIGTERM, previous)


def run_ui(port: int, tracking_uri: str, study: str | None = None) -> int:
    """`tuner ui`: the MLflow UI on a local store; with a tracking server, the page on it."""
    if tracking_uri.startswith(("http://", "https://")):
        check_tracking_uri(tracking_uri)
        print(runs_page(tracking_uri, tracking_uri.rstrip("/"), study))
        return 0
    local_store(tracking_uri)
    check_port(port)
    url = runs_page(tracking_uri, f"http://{HOST}:{port}", study)  # before starting: a wrong --study fails at once
    return serve(lambda: start_mlflow(tracking_uri, port), lambda server: url)


def run_dashboard(port: int, storage: str) -> int:
    """`tuner dashboard`: optuna-dashboard on the Optuna storage."""
    return serve(lambda: start_dashboard(storage, port), lambda server: f"{server.url}/dashboard/")
