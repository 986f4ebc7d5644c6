"""Ctrl-C or SIGTERM during `tuner report`: no partial file is left, and one line says what was written.

Every file goes to a temporary name and is renamed into place; kaleido writes PNGs into a private
folder. An interrupt is injected in-process while a table is half written, and a real SIGINT /
SIGTERM is sent to a `tuner report` process held while kaleido writes its first PNG.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.browser import CHROMIUM, needs_chromium
from tests.tuner.fakes import curve_fit
from tests.tuner.procs import finish, tuner_env, wait_for
from tuner import Categorical, Float, RunOptions, StudySpec
from tuner.cli import main
from tuner.errors import TerminatedError
from tuner.report import build_report
from tuner.run.execute import execute_study

TABLES = ["epochs.csv", "summary.csv", "summary.md", "trials.csv"]
# `tuner report` whose kaleido thread, once it has written the first PNG, waits until the report's
# temporary PNG folder is gone: the test signals the process while the report is inside kaleido.
HELD_AT_FIRST_PNG = """
import os, pathlib, sys, time
from tuner.cli import main

marker = pathlib.Path(os.environ["FIRST_PNG_MARKER"])
real_write_bytes = pathlib.Path.write_bytes

def write_bytes(self, data):
    written = real_write_bytes(self, data)
    if self.suffix == ".png" and not marker.exists():
        marker.write_text(str(self))
        deadline = time.monotonic() + 60
        while self.parent.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
    return written

pathlib.Path.write_bytes = write_bytes
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> RunOptions:
    folder = tmp_path_factory.mktemp("store")
    return RunOptions(
        storage=str(folder / "optuna.journal"),
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        quiet=True,
        report=False,
    )


def new_study(options: RunOptions, name: str) -> str:
    """A small study of its own per test, so that what one report logs to MLflow is its own."""
    space = {"optimizer": Categorical(["sgd", "adam"]), "lr": Float(1e-4, 1.0, log=True), "epochs": 3, "device": "cpu"}
    execute_study(StudySpec(name=name, space=space, sampler="random", n_trials=6, trainable=curve_fit), options)
    return name


def flags(options: RunOptions) -> list[str]:
    return ["--storage", options.storage, "--tracking-uri", options.tracking_uri]


def every_file(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def contents(folder: Path) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in every_file(folder)}


def report_artifacts(options: RunOptions, study: str) -> list[str]:
    client = MlflowClient(options.tracking_uri)
    experiment = client.get_experiment_by_name(study)
    assert experiment is not None
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`tuner.role` = 'study'")
    return sorted(a.path for a in client.list_artifacts(parent.info.run_id, "report"))


@pytest.mark.parametrize(("interrupt", "code"), [(KeyboardInterrupt, 130), (TerminatedError, 143)])
def test_an_interrupt_while_a_table_is_half_written_leaves_only_complete_files(
    store: RunOptions,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    interrupt: type[KeyboardInterrupt],
    code: int,
) -> None:
    study = new_study(store, f"half-{code}")
    out = tmp_path / "out"
    real_to_csv = pd.DataFrame.to_csv

    def to_csv(self: pd.DataFrame, path: Any = None, **kwargs: Any) -> Any:
        if str(path).endswith("trials.csv"):  # the third file: half of it, then the interrupt
            text = real_to_csv(self, None, **kwargs)
            Path(path).write_text(text[: len(text) // 2])
            raise interrupt()
        return real_to_csv(self, path, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pd.DataFrame, "to_csv", to_csv)
        assert main(["report", study, "--out", str(out), "--no-png", *flags(store)]) == code

    assert every_file(out) == ["summary.csv", "summary.md"]  # no temporary file, no half trials.csv
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        f"tuner: report interrupted: wrote 2 of 5 files to {out} (not written: trials.csv, epochs.csv, report.html); "
        "run the same command again to write the whole report\n"
    )
    assert report_artifacts(store, study) == []  # nothing logged to MLflow
    interrupted = contents(out)

    assert main(["report", study, "--out", str(out), "--no-png", *flags(store)]) == 0  # as the line advises
    assert every_file(out) == ["epochs.csv", "report.html", *interrupted, "trials.csv"]
    assert {name: (out / name).read_bytes() for name in interrupted} == interrupted  # they were complete
    assert report_artifacts(store, study) == [f"report/{name}" for name in every_file(out)]


def test_a_complete_report_leaves_no_temporary_file(
    store: RunOptions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = new_study(store, "complete")
    if CHROMIUM:  # real PNGs through kaleido; without a browser its failure path must leave nothing either
        monkeypatch.setenv("BROWSER_PATH", CHROMIUM)
    report = build_report([study], tmp_path, store.storage, store.tracking_uri, png=True)
    assert every_file(tmp_path) == sorted(p.relative_to(tmp_path).as_posix() for p in report.files)
    assert not list(tmp_path.rglob(".*"))
    assert all(len(data) > 0 for data in contents(tmp_path).values())
    if CHROMIUM:
        assert len(report.pngs) > 1 and all(p.read_bytes()[:4] == b"\x89PNG" for p in report.pngs)


@needs_chromium("no chromium: kaleido needs one for PNGs")
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_while_kaleido_writes_pngs_removes_them_and_says_what_was_written(
    store: RunOptions, tmp_path: Path, signum: signal.Signals, code: int
) -> None:
    study = new_study(store, f"png-{code}")
    out, marker = tmp_path / "out", tmp_path / "first-png"
    env = tuner_env(FIRST_PNG_MARKER=str(marker), BROWSER_PATH=str(CHROMIUM))
    proc = subprocess.Popen(
        [sys.executable, "-c", HELD_AT_FIRST_PNG, "report", study, "--out", str(out), *flags(store)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: marker.exists() or proc.poll() is not None, "kaleido to write the first PNG")
        assert proc.poll() is None, proc.communicate()
        os.kill(proc.pid, signum)
        assert finish(proc) == code
    finally:
        if proc.poll() is None:
            proc.kill()
    stdout, stderr = proc.communicate()

    assert every_file(out) == TABLES  # no PNG, no temporary folder or file, no page
    assert not list(out.rglob(".*"))
    assert Path(marker.read_text()).parent.parent == out / "png"  # kaleido wrote into a temporary folder there
    assert report_artifacts(store, study) == []
    interrupted = contents(out)
    assert main(["report", study, "--out", str(out), "--no-png", *flags(store)]) == 0
    assert {name: (out / name).read_bytes() for name in TABLES} == interrupted  # they were complete
    figures = (out / "report.html").read_text().count('class="plotly-graph-div"')  # one PNG each
    assert stdout == ""
    said = [line for line in stderr.splitlines() if line.startswith("tuner:")]
    assert said == [
        f"tuner: report interrupted: wrote 4 of {4 + figures + 1} files to {out} "
        f"(not written: report.html, {figures} PNG(s) in png/); run the same command again to write the whole report"
    ], stderr
    assert "Traceback" not in stderr
