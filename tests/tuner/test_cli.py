"""The `tuner` command in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

SCRIPT = """
from tuner import StudySpec, Float, main_for_script

STUDY = StudySpec(
    name="cli-study",
    space={{"lr": Float(1e-5, 1.0, log=True), "epochs": 4{extra}}},
    n_trials=5,
    trainable="tests.tuner.fakes:curve_fit"{spec_extra},
)

if __name__ == "__main__":
    main_for_script(STUDY)
"""


def tuner(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "tuner.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def write_script(tmp_path: Path, extra: str = "", spec_extra: str = "") -> Path:
    path = tmp_path / "study.py"
    path.write_text(SCRIPT.format(extra=extra, spec_extra=spec_extra))
    return path


def test_run_then_list_and_best(tmp_path: Path) -> None:
    script = write_script(tmp_path)
    done = tuner(tmp_path, "run", str(script), "--quiet", "--no-report")
    assert done.returncode == 0, done.stderr
    assert "study cli-study: 5 trials" in done.stdout
    assert "tuner ui" in done.stdout  # says how to browse the results
    assert (tmp_path / "mlruns" / "optuna.journal").exists() and (tmp_path / "mlruns" / "mlflow.db").exists()

    listed = tuner(tmp_path, "studies")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "cli-study" in line)
    cells = [c.strip() for c in row.strip("│┃ ").replace("┃", "│").split("│")]
    assert cells[:3] == ["cli-study", "maximize", "5"]

    best = tuner(tmp_path, "best", "cli-study")
    assert best.returncode == 0, best.stderr
    params = json.loads(best.stdout)
    assert set(params) == {"lr"} and 1e-5 <= params["lr"] <= 1.0


def test_same_flags_work_when_the_script_runs_directly(tmp_path: Path) -> None:
    script = write_script(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(script), "--n-trials", "2", "--study-name", "direct", "--quiet", "--no-report"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "study direct: 2 trials" in done.stdout


@pytest.mark.parametrize(
    ("extra", "spec_extra", "args", "needle"),
    [
        (', "dropout": Float(0.5, 0.1)', "", [], "search space: dropout: low (0.5) must be below high (0.1)"),
        (', "optimizer": "adamm"', "", [], "optimizer='adamm' is invalid: expected one of sgd"),
        ("", ', sampler="bayes"', [], "sampler 'bayes' is unknown: choose one of tpe"),
        ("", ', pruner="early"', [], "pruner 'early' is unknown"),
        ("", "", ["--n-trials", "0"], "--n-trials 0: give a positive number of trials"),
        ("", "", ["--storage", "mysql://x/y"], "unsupported scheme 'mysql'"),
        ("", "", ["--storage", "nowhere/deep/optuna.journal"], "does not exist"),
        ("", "", ["--device", "gpu"], "--device 'gpu' is invalid"),
        ("", "", ["--timeout", "nan"], "--timeout nan: give a positive, finite number of seconds"),
        ("", "", ["--timeout", "inf"], "--timeout inf: give a positive, finite number of seconds"),
        ("", "", ["--seed", "99999999999"], "--seed 99999999999: give a whole number from 0 to 4294967295"),
        ("", "", ["--checkpoint-every", "nan"], "--checkpoint-every nan"),
        (', "dataset": "mnist"', "", ["--data-dir", "nowhere"], "missing in nowhere/MNIST/raw"),
        ("", "", ["--tracking-uri", "ftp://x"], "--tracking-uri ftp://x: unsupported"),
        ("", "", ["--n-trials", "many"], "invalid int value: 'many'"),
    ],
)
def test_bad_input_fails_with_one_line_and_creates_nothing(
    tmp_path: Path, extra: str, spec_extra: str, args: list[str], needle: str
) -> None:
    script = write_script(tmp_path, extra, spec_extra)
    done = tuner(tmp_path, "run", str(script), "--quiet", *args)
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert needle in lines[0]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.py"]  # no mlruns/, no study, no experiment
