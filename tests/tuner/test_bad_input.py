"""Bad input through the real CLI, in subprocesses: each case exits non-zero with exactly one
line on stderr that names the problem and the fix, and creates nothing (no store directory,
no journal, no MLflow database, no tables in PostgreSQL). Passwords in URLs never show
(here in errors; test_workers.py checks a whole run's output and records).

The table's cases run three at a time in a module fixture (each is a Python start-up), and
each case is then checked by its own parametrized test.
"""

from __future__ import annotations

import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.tuner.procs import postgres_tables, postgres_url, tuner, tuner_command, tuner_env

__all__ = ["postgres_url"]  # a fixture
SECRET = "s3cret-pw"

SCRIPT = """
from tuner import StudySpec
from tuner.space import Categorical, Float, Int

STUDY = StudySpec(name="bad", space={{{space}}}, n_trials=2{spec_args})
"""
GOOD_SPACE = '"lr": Float(1e-3, 1e-1, log=True), "epochs": 2, "device": "cpu"'


@dataclass(frozen=True)
class Case:
    id: str
    needles: tuple[str, ...]  # the stderr line contains all of these
    args: tuple[str, ...] = ()  # after `tuner run study.py --quiet`, unless `command` is given
    space: str = GOOD_SPACE
    spec_args: str = ""
    script: str | None = None  # the study file's whole text instead of SCRIPT
    command: tuple[str, ...] | None = None
    env: dict[str, str] = field(default_factory=dict)


CASES = [
    # study scripts: search spaces and settings
    Case("unknown-optimizer", ("choice optimizer='adamx' is invalid", "drop that choice"),
         space='"optimizer": Categorical(["adam", "adamx"]), "lr": Float(1e-3, 1e-1, log=True)'),
    Case("unknown-schedule", ("lr_schedule='linear' is invalid", "expected one of constant"),
         space=GOOD_SPACE + ', "lr_schedule": "linear"'),
    Case("unknown-sampler", ("sampler 'bayes' is unknown", "choose one of tpe"), spec_args=', sampler="bayes"'),
    Case("unknown-pruner", ("pruner 'early' is unknown", "choose one of median"), spec_args=', pruner="early"'),
    Case("unknown-dataset", ("dataset='imagenet' is invalid", "expected one of mnist1d"),
         space=GOOD_SPACE + ', "dataset": "imagenet"'),
    Case("unknown-metric", ("metric 'accuracy'", "choose one of val_acc"), spec_args=', metric="accuracy"'),
    Case("unknown-field", ("'learning_rate' is not a TrainConfig field",), space=GOOD_SPACE + ', "learning_rate": 0.1'),
    Case("inverted-range", ("search space: lr: low (0.1) must be below high (0.001)", "swap"),
         space='"lr": Float(0.1, 0.001, log=True)'),
    Case("log-range-from-zero", ("a log range needs low > 0",), space='"lr": Float(0.0, 0.1, log=True)'),
    Case("non-positive-lr-range", ("lr: low end lr=0.0 is invalid", "narrow the range"), space='"lr": Float(0.0, 0.1)'),
    Case("negative-batch-range", ("batch_size: low end batch_size=-32 is invalid",),
         space=GOOD_SPACE + ', "batch_size": Int(-32, 64)'),
    Case("epochs-0", ("epochs=0 is invalid", "an integer >= 1"), space='"lr": Float(1e-3, 1e-1, log=True), "epochs": 0'),
    Case("negative-batch-size", ("batch_size=-1 is invalid",), space=GOOD_SPACE + ', "batch_size": -1'),
    Case("fixed-values-conflict", ("fixed values do not fit together", "warmup_epochs=5"),
         space='"lr": Float(1e-3, 1e-1, log=True), "lr_schedule": "warmup_cosine", "warmup_epochs": 5, "epochs": 3'),
    Case("condition-order", ("condition on 'optimizer'", "must come before 'momentum'"),
         space='"momentum": Float(0.5, 0.9, when={"optimizer": ["momentum"]}), "optimizer": Categorical(["momentum"])'),
    Case("grid-continuous", ("sampler grid: 'lr' is continuous",), spec_args=', sampler="grid"'),
    Case("missing-dataset-dir", ("dataset mnist: 4 file(s) missing in nowhere/MNIST/raw", "download=True"),
         space=GOOD_SPACE + ', "dataset": "mnist", "data_dir": "nowhere"'),
    # study script files
    Case("missing-script", ("study script nope.py not found",), command=("run", "nope.py")),
    Case("syntax-error", ("study.py has a syntax error at line 2",), script="x = 1\ndef broken(:\n"),
    Case("no-study", ("defines no STUDY", "STUDY = StudySpec"), script="x = 1\n"),
    Case("script-raises", ("failed to load: ZeroDivisionError",), script="x = 1 / 0\n"),
    # storage and tracking URLs
    Case("malformed-postgres-url", ("needs a host and a database",), args=("--storage", "postgresql://")),
    Case("unsupported-storage", ("unsupported scheme 'mysql'",), args=("--storage", "mysql://u@h/db")),
    Case("storage-dir-missing", ("directory", "does not exist"), args=("--storage", "sqlite:///no/such/dir/o.db")),
    Case("unreachable-postgres", ("--storage postgresql://tuner:***@127.0.0.1:1/db: cannot open it", "check host"),
         args=("--storage", f"postgresql://tuner:{SECRET}@127.0.0.1:1/db")),
    Case("unreachable-tracking", ("no MLflow server answers", "mlflow server"),
         args=("--tracking-uri", f"http://tuner:{SECRET}@127.0.0.1:1")),
    Case("unsupported-tracking", ("--tracking-uri ftp://x: unsupported",), args=("--tracking-uri", "ftp://x")),
    # flags
    Case("workers-0", ("--workers 0: give 1 or more",), args=("--workers", "0")),
    Case("gpus-malformed", ("'a,b' is not a list of GPU indices",), args=("--gpus", "a,b")),
    Case("more-workers-than-gpus", ("--workers 3 with 1 GPU(s)", "one trial per GPU"), args=("--workers", "3", "--gpus", "0")),
    Case("gpus-and-device", ("--gpus and --device cpu together",), args=("--gpus", "0", "--device", "cpu")),
    Case("gpus-twice", ("a GPU is listed twice",), args=("--gpus", "0,0")),
    Case("gpu-missing", ("--gpus 99:",), args=("--gpus", "99")),  # no CUDA here, or no GPU 99
    Case("device-missing", ("--device cuda:99:",), args=("--device", "cuda:99")),
    Case("device-unknown", ("--device 'tpu' is invalid",), args=("--device", "tpu")),
    Case("n-trials-0", ("--n-trials 0: give a positive number",), args=("--n-trials", "0")),
    Case("timeout-negative", ("--timeout -1.0: give a positive, finite number of seconds",), args=("--timeout", "-1")),
    Case("checkpoint-every-negative", ("--checkpoint-every -1.0: give a number of seconds >= 0",),
         args=("--checkpoint-every", "-1")),
    Case("checkpoint-every-nan", ("--checkpoint-every nan: give a number of seconds >= 0",),
         args=("--checkpoint-every", "nan")),
    Case("seed-negative", ("--seed -1: give a whole number from 0 to 4294967295",), args=("--seed", "-1")),
    Case("unknown-flag", ("unrecognized arguments: --wrokers",), args=("--wrokers", "2")),
    Case("heartbeat-env", ("TUNER_HEARTBEAT_SECONDS='soon'", "whole number of seconds"),
         env={"TUNER_HEARTBEAT_SECONDS": "soon"}),
    Case("grace-not-longer", ("TUNER_GRACE_SECONDS (2) must be longer than TUNER_HEARTBEAT_SECONDS (2)",),
         env={"TUNER_HEARTBEAT_SECONDS": "2", "TUNER_GRACE_SECONDS": "2"}),
    # tuner worker
    Case("worker-no-storage", ("no such journal file", "tuner create"), command=("worker", "--study", "x", "--quiet")),
    Case("create-bad-space", ("low (0.1) must be below high (0.001)",), command=("create", "study.py"),
         space='"lr": Float(0.1, 0.001, log=True)'),
]  # fmt: skip


@dataclass(frozen=True)
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    files: list[str]


def _run_case(case: Case, root: Path) -> Outcome:
    cwd = root / case.id
    cwd.mkdir()
    text = case.script if case.script is not None else SCRIPT.format(space=case.space, spec_args=case.spec_args)
    (cwd / "study.py").write_text(text)
    command = case.command or ("run", "study.py", "--quiet", *case.args)
    done = subprocess.run(
        tuner_command(*command), cwd=cwd, env=tuner_env(**case.env), capture_output=True, text=True, timeout=120
    )
    files = sorted(str(p.relative_to(cwd)) for p in cwd.rglob("*") if "__pycache__" not in p.parts)
    return Outcome(done.returncode, done.stdout, done.stderr, files)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    root = tmp_path_factory.mktemp("bad-input")
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {case.id: pool.submit(_run_case, case, root) for case in CASES}
    return {case_id: future.result() for case_id, future in futures.items()}


def test_the_table_has_at_least_twenty_distinct_cases() -> None:
    assert len({case.id for case in CASES}) == len(CASES) >= 20


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_bad_input_gives_one_line_naming_the_fix_and_creates_nothing(case: Case, outcomes: dict[str, Outcome]) -> None:
    outcome = outcomes[case.id]
    assert outcome.returncode == 2, outcome.stderr
    lines = outcome.stderr.strip().splitlines()
    assert len(lines) == 1, outcome.stderr
    assert re.match(r"tuner( run| worker)?: error: ", lines[0]), lines[0]
    for needle in case.needles:
        assert needle in lines[0]
    assert "Traceback" not in outcome.stderr and SECRET not in outcome.stderr + outcome.stdout
    assert outcome.files == ["study.py"]  # no mlruns/, journal, MLflow database or checkpoints


def test_debug_shows_the_traceback_instead(tmp_path: Path) -> None:
    (tmp_path / "study.py").write_text(SCRIPT.format(space=GOOD_SPACE, spec_args=', sampler="bayes"'))
    done = tuner(tmp_path, "run", "study.py", "--quiet", "--debug")
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "UserError: sampler 'bayes' is unknown" in done.stderr


def test_bad_input_with_a_reachable_postgres_creates_no_study_there(tmp_path: Path, postgres_url: str) -> None:
    (tmp_path / "study.py").write_text(SCRIPT.format(space='"lr": Float(0.1, 0.001)', spec_args=""))
    done = tuner(tmp_path, "run", "study.py", "--quiet", "--storage", postgres_url)
    assert done.returncode == 2 and "low (0.1) must be below high (0.001)" in done.stderr
    assert postgres_tables(postgres_url) == []  # not even Optuna's schema
    assert sorted(p.name for p in tmp_path.iterdir()) == ["study.py"]
