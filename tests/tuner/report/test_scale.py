"""A 2,000-trial study reports completely; how long it took is recorded, not asserted."""

from __future__ import annotations

import re
import shutil
import time

import pytest

from tests.tuner.report.conftest import fast_dir
from tests.tuner.report.scale import make_big_study
from tuner.report import build_report
from tuner.report.sections import MAX_CURVES_PER_STUDY

N_TRIALS = 2000


def test_a_2000_trial_study_reports_with_capped_curves(record_property: pytest.RecordProperty) -> None:
    folder = fast_dir()
    try:
        storage = str(folder / "big.journal")
        make_big_study(storage, "big", n_trials=N_TRIALS)
        start = time.perf_counter()
        report = build_report(["big"], folder / "out", storage, f"sqlite:///{folder / 'mlflow.db'}", png=False)
        seconds = time.perf_counter() - start
        record_property("report_seconds", round(seconds, 2))
        print(f"report of {N_TRIALS} trials without PNGs: {seconds:.1f} s; steps: {report.seconds}")
        page = report.html.read_text()
        trials = (folder / "out" / "trials.csv").read_text().count("\n") - 1
        assert trials == N_TRIALS
        assert not (folder / "mlflow.db").exists()  # no runs to read or log to
        shown = re.search(r"Intermediate values of big: validation accuracy per epoch, (\d+) of (\d+) trials", page)
        assert shown and (int(shown[1]), int(shown[2])) == (MAX_CURVES_PER_STUDY, N_TRIALS)
        assert "optimizer" in report.answer and "best validation accuracy" in report.answer
        assert "big: parameter importances" not in " ".join(report.notes)  # enough trials: computed
    finally:
        shutil.rmtree(folder, ignore_errors=True)
