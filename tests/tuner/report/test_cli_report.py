"""`tuner report` end to end: a real (tiny, scripted) study run by the runner, then its report."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from tests.tuner.fakes import curve_fit
from tuner import Categorical, Float, RunOptions, StudySpec
from tuner.cli import main
from tuner.run.execute import execute_study


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> RunOptions:
    folder = tmp_path_factory.mktemp("store")
    options = RunOptions(
        storage=str(folder / "optuna.journal"),
        tracking_uri=f"sqlite:///{folder / 'mlflow.db'}",
        quiet=True,
        report=False,
    )
    space = {"optimizer": Categorical(["sgd", "adam"]), "lr": Float(1e-4, 1.0, log=True), "epochs": 4, "device": "cpu"}
    execute_study(StudySpec(name="tiny", space=space, sampler="random", n_trials=8, trainable=curve_fit), options)
    return options


def flags(options: RunOptions) -> list[str]:
    return ["--storage", options.storage, "--tracking-uri", options.tracking_uri]


def test_report_of_a_run_study(ran: RunOptions, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "tiny-report"
    assert main(["report", "tiny", "--out", str(out), "--no-png", *flags(ran)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {out / 'report.html'}"
    page = (out / "report.html").read_text()
    assert '<p class="answer">The optimizer ' in page and " won on best validation accuracy: " in page
    assert 'id="learning-curves"' in page and 'id="tiny-timeline"' in page
    assert not (out / "png").exists()
    client = MlflowClient(ran.tracking_uri)
    experiment = client.get_experiment_by_name("tiny")
    assert experiment is not None
    (parent,) = client.search_runs([experiment.experiment_id], filter_string="tags.`tuner.role` = 'study'")
    assert "report/summary.md" in {a.path for a in client.list_artifacts(parent.info.run_id, "report")}


def test_unknown_study_is_one_error_line_and_writes_nothing(
    ran: RunOptions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)  # the default --out is reports/<name> under the working directory
    assert main(["report", "tiny", "missing", *flags(ran)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1 and captured.err.startswith("tuner: error: no study named 'missing'")
    assert not (tmp_path / "reports").exists()


def test_out_must_be_a_folder(ran: RunOptions, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("")
    assert main(["report", "tiny", "--out", str(tmp_path / "file"), *flags(ran)]) == 2
    assert "is a file; give a folder" in capsys.readouterr().err
