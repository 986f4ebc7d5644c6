"""Writing a report: files, one inlined plotly.js, PNGs (or the line saying how to get them), MLflow artifacts."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from mlflow import MlflowClient

from tests.browser import CHROMIUM, needs_chromium
from tests.tuner.report.conftest import Store
from tuner.errors import UserError
from tuner.report import build_report, write_report
from tuner.report.page import markdown_table
from tuner.storage import open_storage


@pytest.fixture(scope="module")
def written(comparison: Store, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report")
    return write_report(["cmp"], out, comparison.storage, comparison.tracking_uri, png=False)


def test_the_page_is_self_contained_with_every_figure(written: Path) -> None:
    page = written.read_text()
    assert written.name == "report.html"
    assert page.count("* plotly.js v") == 1, "plotly.js inlined exactly once"
    assert "<script src=" not in page
    for slug in ("learning-curves", "lr-sensitivity", "tuning-budget", "seed-reruns", "cmp-sgd-parallel"):
        assert f'id="{slug}"' in page
    assert "<h1>Report: cmp (adam, momentum, sgd, seeds)</h1>" in page
    answer = page.split('<p class="answer">')[1].split("</p>")[0]
    assert answer.startswith("The optimizer adam won: mean test accuracy")
    assert "parameter importances skipped" in page


def test_the_expected_best_figure_has_its_caption_and_the_epochs_line_follows_the_summary(written: Path) -> None:
    page = written.read_text()
    figure = page.split('id="expected-best"')[1].split("</section>")[0]
    assert '<p class="caption">Expected best validation accuracy if you had tuned with only n trials' in figure
    summary = page.split("<h2>Summary</h2>")[1].split("<h2>")[0]
    assert '<p class="budget">Epochs spent tuning: sgd ' in summary
    assert "Epochs spent tuning: sgd " in (written.parent / "summary.md").read_text()


def test_summary_is_written_as_csv_and_markdown(written: Path) -> None:
    summary = pd.read_csv(written.parent / "summary.csv")
    assert list(summary["group"]) == ["adam", "momentum", "sgd"]
    markdown = (written.parent / "summary.md").read_text()
    lines = markdown.splitlines()
    assert lines[0].startswith("The optimizer adam won")
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 3 and table[2].startswith("| adam | lr=")
    assert len(pd.read_csv(written.parent / "trials.csv")) == 36


def test_every_studys_parent_run_holds_the_report(comparison: Store, written: Path) -> None:
    client = MlflowClient(comparison.tracking_uri)
    experiment = client.get_experiment_by_name("cmp.seeds")
    assert experiment is not None
    parents = client.search_runs(
        [e.experiment_id for e in client.search_experiments() if e.name.startswith("cmp.")],
        filter_string="tags.`tuner.role` = 'study'",
    )
    assert len(parents) == 4
    for run in parents:
        names = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
        assert {"report/report.html", "report/summary.csv", "report/summary.md"} <= names


def test_unknown_study_writes_nothing(comparison: Store, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no study named 'nope'"):
        write_report(["nope"], tmp_path / "out", comparison.storage, comparison.tracking_uri)
    assert not (tmp_path / "out").exists()


def test_without_a_browser_html_and_tables_are_written_and_one_line_says_how_to_get_pngs(
    comparison: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-such-chrome"))
    html = write_report(["cmp.sgd"], tmp_path / "out", comparison.storage, comparison.tracking_uri, png=True)
    assert html.is_file() and (tmp_path / "out" / "summary.csv").is_file()
    assert not list((tmp_path / "out").glob("png/*.png"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "PNG images skipped" in err[0] and "BROWSER_PATH" in err[0] and "chromium" in err[0]
    assert "PNG images skipped" in html.read_text()


@needs_chromium("no chromium: kaleido needs one for PNGs")
def test_every_figure_becomes_a_png(comparison: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BROWSER_PATH", str(CHROMIUM))
    report = build_report(["cmp.adam"], tmp_path, comparison.storage, comparison.tracking_uri, png=True)
    slugs = {p.stem for p in report.pngs}
    assert slugs == {
        "learning-curves",
        "tuning-budget",
        "expected-best",
        "lr-sensitivity",
        "cmp-adam-parallel",
        "cmp-adam-intermediate",
        "cmp-adam-timeline",
    }
    for path in report.pngs:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
    page = report.html.read_text()
    assert f'a PNG of every figure in <a href="png/">png/</a> ({len(report.pngs)} files)' in page
    assert "Best trial: validation accuracy" in page  # one optimizer: nothing to compare
    print(f"PNG export of {len(report.pngs)} figures: {report.seconds['png']:.1f} s")


def test_markdown_table_escapes_pipes() -> None:
    table = pd.DataFrame({"a": ["x|y"], "b": [1]})
    assert markdown_table(table) == "| a | b |\n|---|---|\n| x\\|y | 1 |\n"


def test_studies_without_a_complete_trial_get_notes_not_empty_figures(tmp_path: Path) -> None:
    storage = str(tmp_path / "j.journal")
    optuna.create_study(study_name="empty", storage=open_storage(storage, heartbeat=False))
    failed = optuna.create_study(study_name="failed", storage=open_storage(storage, heartbeat=False))
    for epochs in (0, 1):
        trial = failed.ask()
        trial.suggest_float("lr", 1e-3, 1.0, log=True)
        for epoch in range(1, epochs + 1):
            trial.report(0.5, epoch)
        failed.tell(trial, state=optuna.trial.TrialState.FAIL)
    failed.ask()  # still running
    report = build_report(["empty", "failed"], tmp_path / "out", storage, f"sqlite:///{tmp_path / 'm.db'}", png=False)
    assert report.answer == "No trial has completed yet, so there is no result to compare."
    page = report.html.read_text()
    assert "Tuning budget: best validation accuracy so far against trials run: nothing to draw yet" in page
    assert 'id="failed-timeline"' in page and 'id="failed-intermediate"' in page
