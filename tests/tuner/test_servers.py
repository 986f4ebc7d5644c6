"""`tuner ui` and `tuner dashboard` against a real tiny study: real servers on 127.0.0.1, a real headless browser."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from tests.browser import CHROMIUM, needs_chromium
from tests.tuner.fakes import curve_fit
from tuner.errors import UserError
from tuner.run.execute import execute_study
from tuner.servers import HOST, TRAINING_VIEWS, check_port, start_dashboard, start_mlflow
from tuner.space import Float
from tuner.study import RunOptions, StudySpec
from tuner.tracking import PARENT_RUN_ATTR

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
STUDY = "ui-study"
N_TRIALS = 3


@dataclass
class Store:
    options: RunOptions
    experiment_id: str
    parent_run_id: str
    child_runs: dict[str, str]  # run name -> run id


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A finished study with scripted curves: its parent run and one child run per trial."""
    tmp = tmp_path_factory.mktemp("store")
    options = RunOptions(
        storage=str(tmp / "optuna.journal"), tracking_uri=f"sqlite:///{tmp / 'mlflow.db'}", quiet=True, report=False
    )
    spec = StudySpec(name=STUDY, space={"lr": Float(1e-4, 1e-1, log=True), "epochs": 3}, n_trials=N_TRIALS)
    study = execute_study(dataclasses.replace(spec, trainable=curve_fit), options)
    client = MlflowClient(options.tracking_uri)
    experiment = client.get_experiment_by_name(STUDY)
    parent = study.user_attrs[PARENT_RUN_ATTR]
    children = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    return Store(options, experiment.experiment_id, parent, {r.info.run_name: r.info.run_id for r in children})


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def listening_addresses(port: int) -> set[str]:
    """Local addresses (hex, as in /proc/net/tcp*) with a socket listening on `port`."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def live_group_members(pgid: int) -> list[int]:
    """Processes of the group that still run (an exited one may wait a moment as a zombie for init to reap it)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _, group = stat.read_text().rsplit(")", 1)[1].split()[:3]
        except OSError:
            continue  # exited meanwhile
        if int(group) == pgid and state != "Z":
            members.append(int(stat.parent.name))
    return members


def child_processes(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if parent == pid:
            children.append(int(stat.parent.name))
    return children


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=30) as response:
        return bytes(response.read())


def answers(url: str) -> bool:
    try:
        get(url)
        return True
    except OSError:
        return False


EXPAND = 'button[data-component-id$="runnamecellrenderer.tsx_46"]'  # the expand control of a parent run's row


async def collapsed_and_expanded(url: str, parent_link: str, timeout: float = 180) -> tuple[str, str]:
    """The runs page in headless Chromium: its DOM once the parent row shows, then after clicking its expand control.

    Driven over the DevTools protocol (choreographer, which kaleido uses): the MLflow UI shows
    nested runs only after a click, which a plain `--dump-dom` cannot make.
    """
    import choreographer

    async with choreographer.Browser(path=CHROMIUM, headless=True) as browser:
        tab = await browser.create_tab(url)

        async def evaluate(expression: str) -> Any:
            response = await tab.send_command("Runtime.evaluate", {"expression": expression, "returnByValue": True})
            return response["result"]["result"].get("value")

        async def dom_when(condition: str) -> str:
            deadline = time.monotonic() + timeout
            while not await evaluate(condition):
                if time.monotonic() > deadline:
                    pytest.fail(f"the page never satisfied {condition}: {await evaluate('document.body.innerText')}")
                await asyncio.sleep(0.25)  # poll interval, bounded by the deadline
            return str(await evaluate("document.documentElement.outerHTML"))

        collapsed = await dom_when(
            f"!!document.querySelector('a[{parent_link}]') && !!document.querySelector('{EXPAND}')"
        )
        await evaluate(f"document.querySelector('{EXPAND}').click()")
        expanded = await dom_when(f"document.querySelectorAll('a[href*=\"/runs/\"]').length > {N_TRIALS}")
        return collapsed, expanded


def run_link(dom: str, href: str, name: str) -> bool:
    """Whether the DOM links to `href` with the text `name` (a row of the runs table)."""
    return re.search(re.escape(f'href="{href}"') + r"[^>]*><span[^>]*>" + re.escape(name) + "<", dom) is not None


def test_children_are_nested_under_the_parent_run(store: Store) -> None:
    client = MlflowClient(store.options.tracking_uri)
    assert sorted(store.child_runs) == [f"trial {i}" for i in range(N_TRIALS)]
    for run_id in store.child_runs.values():
        assert client.get_run(run_id).data.tags["mlflow.parentRunId"] == store.parent_run_id
    assert client.get_run(store.parent_run_id).info.run_name == STUDY


def test_dashboard_lists_the_study_and_stops(store: Store) -> None:
    port = free_port()
    with start_dashboard(store.options.storage, port) as server:
        assert listening_addresses(port) == {"0100007F"}
        studies = json.loads(get(f"{server.url}/api/studies"))["study_summaries"]
        assert [s["study_name"] for s in studies] == [STUDY]
        process = server.process
    assert process.poll() is not None
    assert not answers(f"http://{HOST}:{port}/api/meta")


def test_a_port_in_use_is_refused(store: Store) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=f"--port {port}: {HOST}:{port} is in use"):
            check_port(port)
        with pytest.raises(UserError, match="is in use"):
            start_dashboard(store.options.storage, port)


def test_missing_stores_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no MLflow store"):
        start_mlflow(f"sqlite:///{tmp_path / 'none.db'}", free_port())
    with pytest.raises(UserError, match="no Optuna storage"):
        start_dashboard(str(tmp_path / "none.journal"), free_port())
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.fixture
def cli() -> Iterator[list[subprocess.Popen[str]]]:
    """`tuner` subprocesses, each in its own session; any left running are killed after the test."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def start_cli(procs: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen(
        [sys.executable, "-m", "tuner.cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    procs.append(p)
    return p


def read_until(p: subprocess.Popen[str], pattern: str, timeout: float = 240) -> str:
    """The first stdout line matching `pattern`; fails with stderr when it does not come in time."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert p.stdout is not None
        for line in p.stdout:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + timeout
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            line = None
        if line is None:
            p.kill()
            pytest.fail(f"no line matching {pattern!r}; stderr: {p.stderr.read() if p.stderr else ''}")
        if re.search(pattern, line):
            return line.strip()


@needs_chromium("no chromium to open the MLflow UI in")
def test_tuner_ui_serves_the_study_to_a_browser_and_stops_on_sigterm(store: Store, cli: list) -> None:
    port = free_port()
    p = start_cli(cli, "ui", "--port", str(port), "--tracking-uri", store.options.tracking_uri)
    page = read_until(p, r"^http://")
    runs = f"#/experiments/{store.experiment_id}/runs"
    assert page == f"http://{HOST}:{port}/{runs}?{TRAINING_VIEWS}"  # the newest study's runs table, training views
    assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1 only
    (server,) = child_processes(p.pid)  # mlflow server, leading its own process group

    parent = f"{runs}/{store.parent_run_id}"
    collapsed, expanded = asyncio.run(collapsed_and_expanded(page, f'href="{parent}"'))
    assert run_link(collapsed, parent, STUDY)
    assert not any(run_link(collapsed, f"{runs}/{i}", n) for n, i in store.child_runs.items())  # nested, folded
    for name, run_id in store.child_runs.items():
        assert run_link(expanded, f"{runs}/{run_id}", name), name

    # Given a tracking server instead of a local store, `tuner ui` only prints the page on it.
    remote = start_cli(cli, "ui", "--tracking-uri", f"http://{HOST}:{port}", "--study", STUDY)
    out, err = remote.communicate(timeout=120)
    assert remote.returncode == 0, err
    assert out.strip() == page

    os.kill(p.pid, signal.SIGTERM)
    assert p.wait(timeout=60) == 0
    assert live_group_members(server) == []  # the server and its web workers
    assert listening_addresses(port) == set()


def test_tuner_dashboard_stops_on_ctrl_c(store: Store, cli: list) -> None:
    port = free_port()
    p = start_cli(cli, "dashboard", "--port", str(port), "--storage", store.options.storage)
    assert read_until(p, r"^http://") == f"http://{HOST}:{port}/dashboard/"
    assert STUDY in get(f"http://{HOST}:{port}/api/studies").decode()
    os.kill(p.pid, signal.SIGINT)
    assert p.wait(timeout=60) == 130
    assert not answers(f"http://{HOST}:{port}/api/meta")


def test_tuner_ui_errors_are_one_line(store: Store, cli: list) -> None:
    p = start_cli(
        cli, "ui", "--tracking-uri", store.options.tracking_uri, "--study", "nope", "--port", str(free_port())
    )
    _, err = p.communicate(timeout=120)
    assert p.returncode == 2
    assert err.strip().splitlines() == [
        f"tuner: error: --study nope: no MLflow experiment or study of that name in {store.options.tracking_uri}"
    ]
