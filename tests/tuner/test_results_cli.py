"""Reading studies back through the CLI: `tuner studies`, the progress lines of `tuner run`, and
`tuner best --register` into the MLflow Model Registry. Real Optuna journals, real MLflow on SQLite.
"""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import mlflow
import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState, create_trial
from rich.console import Console

from tests.tuner.procs import tuner, tuner_env
from tuner.cli import main
from tuner.progress import StudyProgress
from tuner.registry import TAG_METRIC, TAG_STUDY, TAG_TRIAL, TAG_VALUE
from tuner.results import list_studies
from tuner.run.execute import execute_study
from tuner.run.models import MODELS_ATTR, kept_models
from tuner.space import Float, Int
from tuner.study import RunOptions, StudySpec
from tuner.tracking import RUN_ID_ATTR

LONG_NAME = "a-study-with-a-name-long-enough-to-be-cut-" + "x" * 74 + "-end"  # 120 characters


def journal_with_long_name(path: Path) -> str:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    optuna.create_study(study_name=LONG_NAME, storage=JournalStorage(JournalFileBackend(str(path))))
    return str(path)


def test_studies_prints_a_long_name_whole_on_one_line_when_piped(tmp_path: Path) -> None:
    assert len(LONG_NAME) == 120
    storage = journal_with_long_name(tmp_path / "optuna.journal")
    done = tuner(tmp_path, "studies", "--storage", storage, env=tuner_env(COLUMNS="40"))
    assert done.returncode == 0, done.stderr
    (row,) = [line for line in done.stdout.splitlines() if "a-study" in line]
    assert row.split("│")[1].strip() == LONG_NAME


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_studies_folds_a_long_name_on_a_narrow_terminal(tmp_path: Path) -> None:
    storage = journal_with_long_name(tmp_path / "optuna.journal")
    screen = _Terminal()
    list_studies(storage, console=Console(file=screen, width=100, force_terminal=True, color_system=None))
    lines = screen.getvalue().splitlines()
    assert max(len(line) for line in lines) == 100
    pieces = [line.split("│")[1].strip() for line in lines if line.startswith("│")]
    assert len(pieces) > 1 and "".join(pieces) == LONG_NAME


PROGRESS_SCRIPT = """
from tuner import StudySpec, Float, main_for_script

STUDY = StudySpec(
    name="piped",
    space={"lr": Float(1e-5, 1.0, log=True), "epochs": 2, "device": "cpu"},
    n_trials=3,
    trainable="tests.tuner.fakes:curve_fit",
)
"""


def test_progress_to_a_pipe_is_one_plain_line_per_trial(tmp_path: Path) -> None:
    """FORCE_COLOR, as CI systems set it, makes rich treat the pipe as a terminal: still no redrawn frames."""
    (tmp_path / "study.py").write_text(PROGRESS_SCRIPT)
    done = tuner(tmp_path, "run", "study.py", "--no-report", env=tuner_env(FORCE_COLOR="1"))
    assert done.returncode == 0, done.stderr
    for output in (done.stdout, done.stderr):
        assert "\r" not in output and "\x1b" not in output
        assert output.endswith("\n")
    lines = done.stderr.splitlines()
    ended = [re.match(r"piped  trial (\d) complete, value \d\.\d{4};  trials (\d)/3  ", line) for line in lines]
    assert len(lines) == 3 and all(ended), lines  # one line per trial, and nothing else
    assert [(m.group(1), m.group(2)) for m in ended if m] == [("0", "1"), ("1", "2"), ("2", "3")]
    assert "study piped: 3 trials (3 complete" in done.stdout


def test_progress_names_each_trials_end_on_a_stream() -> None:
    stream = io.StringIO()
    study = optuna.create_study(directions=["maximize"])
    with StudyProgress("s", 3, None, stream=stream) as progress:
        for number, state in enumerate([TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL]):
            trial = create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None)
            study.add_trial(trial)
            trial.number = number
            progress(study, trial)
    lines = stream.getvalue().splitlines()
    assert [line.split(";")[0] for line in lines] == [
        "s  trial 0 complete, value 0.5000",
        "s  trial 1 pruned",
        "s  trial 2 failed",
    ]
    assert "trials 3/3  complete 1  pruned 1  failed 1  best 0.5000" in lines[-1]
    assert stream.getvalue().endswith("\n")


PACKAGE = """
import torch
from torch import nn
from trainables import fit_model


def data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(120, 8, generator=g)
    return x, (x[:, 0] + x[:, 1] > 0).long()


class Net(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, x):
        return self.body(x)


def train(params, context):
    return (yield from fit_model(params, Net, train=data(0), val=data(1), context=context))


def no_model(params):
    yield {"val_acc": 0.5}
"""
SPACE = {"lr": Float(1e-3, 1e-1, log=True), "hidden": Int(4, 16), "optimizer": "adam", "epochs": 2}


@dataclass(frozen=True)
class Stores:
    root: Path  # the user's project folder: `regpkg` is importable from it
    storage: str
    tracking_uri: str


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stores]:
    """Three studies in one store: `nets` (keeps every trial's model), `goals` (two objectives), `plain` (no model)."""
    root = tmp_path_factory.mktemp("project")
    (root / "regpkg").mkdir()
    (root / "regpkg" / "__init__.py").write_text("")
    (root / "regpkg" / "net.py").write_text(PACKAGE)
    options = RunOptions(
        storage=str(root / "optuna.journal"),
        tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
        quiet=True,
        report=False,
        import_paths=(str(root),),
    )
    base = StudySpec(name="nets", trainable="regpkg.net:train", space=SPACE, metric="val_acc", n_trials=3)
    base = replace(base, sampler="random", pruner="none")
    try:
        execute_study(base, replace(options, keep_models="all"))
        execute_study(replace(base, name="goals", metric=("val_acc", "val_loss")), options)
        execute_study(replace(base, name="plain", trainable="regpkg.net:no_model", n_trials=1), options)
        yield Stores(root, options.storage, options.tracking_uri)
    finally:
        for name in [n for n in sys.modules if n == "regpkg" or n.startswith("regpkg.")]:
            del sys.modules[name]
        if str(root) in sys.path:
            sys.path.remove(str(root))


def load(stores: Stores, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=JournalStorage(JournalFileBackend(stores.storage)))


def cli_args(stores: Stores, *args: str) -> list[str]:
    return ["best", *args, "--storage", stores.storage, "--tracking-uri", stores.tracking_uri]


def register(stores: Stores, *args: str) -> tuple[int, str, str]:
    """`tuner best ... --register` in a subprocess, from outside the project: (exit code, stdout, stderr)."""
    done = tuner(stores.root.parent, *cli_args(stores, *args))
    return done.returncode, done.stdout, done.stderr


def registry(stores: Stores) -> MlflowClient:
    return MlflowClient(stores.tracking_uri, registry_uri=stores.tracking_uri)


def registered_names(stores: Stores) -> list[str]:
    return sorted(m.name for m in registry(stores).search_registered_models())


def test_register_the_best_model_and_again_as_version_2(
    stores: Stores, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    study = load(stores, "nets")
    best = study.best_trial
    run_id = best.user_attrs[RUN_ID_ATTR]
    code, out, err = register(stores, "nets", "--register", "mymodel")
    assert code == 0, err
    assert json.loads(out) == best.params  # stdout stays the params' JSON
    assert err.strip().splitlines()[-1].endswith(": models:/mymodel/1") and "version 1" in err

    client = registry(stores)
    version = client.get_model_version("mymodel", "1")
    assert version.tags == {
        TAG_STUDY: "nets",
        TAG_TRIAL: str(best.number),
        TAG_METRIC: "val_acc",
        TAG_VALUE: str(best.value),
    }
    experiment = client.get_run(run_id).info.experiment_id
    (logged,) = [m for m in client.search_logged_models([experiment]) if m.source_run_id == run_id]
    assert version.run_id == run_id and version.source == f"models:/{logged.model_id}"  # the model the run logged

    folder = Path(study.user_attrs[MODELS_ATTR])
    kept = torch.load(folder / "best.pt", weights_only=False)
    monkeypatch.syspath_prepend(str(stores.root))  # unpickling needs regpkg.net.Net
    # the URIs `models:/` resolves through, for this test only (set_*_uri would pin them for the session)
    monkeypatch.setattr(mlflow.tracking._tracking_service.utils, "_tracking_uri", stores.tracking_uri)
    monkeypatch.setattr(mlflow.tracking._model_registry.utils, "_registry_uri", stores.tracking_uri)
    loaded = mlflow.pytorch.load_model("models:/mymodel/1")
    assert type(loaded).__name__ == "Net"
    assert loaded.state_dict().keys() == kept.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in kept.state_dict().items())

    # again, in this process: a second subprocess would test nothing more
    assert main(cli_args(stores, "nets", "--register", "mymodel")) == 0
    err = capsys.readouterr().err
    assert "version 2" in err and "models:/mymodel/2" in err
    assert sorted(int(v.version) for v in client.search_model_versions("name = 'mymodel'")) == [1, 2]


def test_register_logs_a_kept_model_that_mlflow_never_had(stores: Stores) -> None:
    """`--keep-models all` keeps each trial's file but logs only the best's: registering another logs it first."""
    study = load(stores, "nets")
    (best,) = kept_models(Path(study.user_attrs[MODELS_ATTR]))
    other = next(t for t in study.trials if t.number != best["trial"])
    client = MlflowClient(stores.tracking_uri)
    experiment = client.get_run(other.user_attrs[RUN_ID_ATTR]).info.experiment_id
    logged_before = {m.model_id for m in client.search_logged_models([experiment])}

    code, _, err = register(stores, "nets", "--register", "other", "--trial", str(other.number))
    assert code == 0, err  # from outside the project: the study's recorded import path finds regpkg
    (new,) = [m for m in client.search_logged_models([experiment]) if m.model_id not in logged_before]
    assert new.source_run_id == other.user_attrs[RUN_ID_ATTR] and new.name == "model"
    version = registry(stores).get_model_version("other", "1")
    assert version.source == f"models:/{new.model_id}" and version.tags[TAG_TRIAL] == str(other.number)


def test_register_one_trial_of_a_pareto_front(stores: Stores) -> None:
    study = load(stores, "goals")
    chosen = min(t.number for t in study.best_trials)
    code, _, err = register(stores, "goals", "--register", "front-model", "--trial", str(chosen))
    assert code == 0, err
    version = registry(stores).get_model_version("front-model", "1")
    values = study.trials[chosen].values
    assert version.tags[TAG_METRIC] == "val_acc,val_loss" and version.tags[TAG_VALUE] == f"{values[0]},{values[1]}"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["plain", "--register", "m"], "no model was kept for study 'plain': its trainable returned none"),
        (["goals", "--register", "m"], "has several objectives, so which trial's model to register is ambiguous"),
        (["nets", "--register", "a/b"], "--register 'a/b': MLflow rejects this model name"),
        (["nets", "--register", "m", "--trial", "99"], "--trial 99: study 'nets' has trials 0 to 2"),
        (["nets", "--trial", "0"], "--trial N chooses the model for --register or --model-out"),
    ],
)
def test_bad_registrations_are_one_line_and_register_nothing(
    stores: Stores, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = registered_names(stores)
    code = main(cli_args(stores, *args))
    out, err = capsys.readouterr()
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and err.startswith("tuner: error: ") and needle in err, err
    assert registered_names(stores) == before


def test_register_into_a_tracking_store_that_does_not_exist_creates_none(
    stores: Stores, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    elsewhere = tmp_path / "mlflow.db"
    code = main(
        ["best", "nets", "--register", "m", "--storage", stores.storage, "--tracking-uri", f"sqlite:///{elsewhere}"]
    )
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "no MLflow store there" in err, err
    assert not elsewhere.exists()
