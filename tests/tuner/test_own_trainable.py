"""Tuning a user's own trainable: a package written to tmp_path, real Optuna, real MLflow, real processes.

The package knows nothing of tuner: `train(params[, context])` yields a mapping of metrics per
epoch (and may return a model); the study names it by import path, samples its own keys and
optimises its own metric.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.tuner.procs import child_runs, finish, start_tuner, tuner, tuner_env, wait_for
from tuner import load_best_model
from tuner.errors import UserError
from tuner.report.extract import extract
from tuner.report.sections import build_entries
from tuner.run.adapter import ATTEMPT_OF_ATTR
from tuner.run.api import run_study
from tuner.run.execute import execute_study
from tuner.run.open import counted_trials
from tuner.scripts import load_study_script
from tuner.space import Float, Int
from tuner.storage import open_storage
from tuner.study import RunOptions, StudySpec
from tuner.tracking import RUN_ID_ATTR

PACKAGE = '''
import math
import time


def quality(params):
    """The final F1 of a config: best at lr 1e-2 and width 32."""
    return max(0.05, 0.95 - 0.2 * abs(math.log10(params["lr"]) + 2) - abs(params["width"] - 32) / 200)


def train(params):
    q = quality(params)
    for epoch in range(1, params["epochs"] + 1):
        yield {"val_f1": q * epoch / params["epochs"], "val_loss": 1 - q}


def two_goals(params):
    """Several objectives: F1 up, size down; a bad lr shows at once."""
    q = quality(params)
    for epoch in range(1, params["epochs"] + 1):
        yield {"val_f1": q * epoch / params["epochs"], "size": params["width"] / 100}


def slow(params, context):
    """Resumable: checkpoints every epoch through context, a second an epoch."""
    state = context.load()
    start = 0 if state is None else state["epoch"]
    for epoch in range(start + 1, params["epochs"] + 1):
        time.sleep(1.0)
        yield {"epoch": epoch, "val_f1": quality(params) * epoch / params["epochs"]}
        context.save({"epoch": epoch})


def yields_list(params):
    yield [0.5, 0.6]


def yields_other_metric(params):
    yield {"loss": 0.3}


def raises_at_two(params):
    for epoch in range(1, 4):
        if epoch == 2 and params["lr"] > 0.01:
            raise ValueError("boom at epoch 2")
        yield {"val_f1": 0.5}


def not_a_generator(params):
    return {"val_f1": 0.5}


NOT_CALLABLE = 3
'''

SCRIPT = """
from tuner import Float, Int, StudySpec, main_for_script

STUDY = StudySpec(
    name={name!r},
    trainable={trainable!r},
    space={{"lr": Float(1e-4, 1.0, log=True), "width": Int(4, 128, log=True), "epochs": {epochs}}},
    metric="val_f1",
    direction="maximize",
    sampler="random",
    pruner="none",
    n_trials={n_trials},
)

if __name__ == "__main__":
    main_for_script(STUDY)
"""
SPACE = {"lr": Float(1e-4, 1.0, log=True), "width": Int(4, 128, log=True), "epochs": 3}


def quality(params: dict[str, float]) -> float:
    return max(0.05, 0.95 - 0.2 * abs(math.log10(params["lr"]) + 2) - abs(params["width"] - 32) / 200)


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Path]:
    """A user project: `mypkg/train.py` beside the study scripts, in its own folder.

    Each test's `mypkg` is its own: this process forgets the one an earlier test imported.
    """
    root = tmp_path / "project"
    (root / "mypkg").mkdir(parents=True)
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "train.py").write_text(PACKAGE)
    forget_mypkg()
    yield root
    forget_mypkg()


def forget_mypkg() -> None:
    for name in [n for n in sys.modules if n == "mypkg" or n.startswith("mypkg.")]:
        del sys.modules[name]


def write_study(project: Path, name: str, trainable: str, n_trials: int = 4, epochs: int = 3) -> Path:
    path = project / f"{name}.py"
    path.write_text(SCRIPT.format(name=name, trainable=trainable, n_trials=n_trials, epochs=epochs))
    return path


def local_options(root: Path, **changes: object) -> RunOptions:
    options = RunOptions(storage=str(root / "optuna.journal"), tracking_uri=f"sqlite:///{root / 'mlflow.db'}")
    return replace(options, quiet=True, report=False, **changes)  # type: ignore[arg-type]


def load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage, heartbeat=False))


def check_runs(study: optuna.Study, tracking_uri: str, fixed: dict[str, object]) -> None:
    """One MLflow run per trial, its params exactly the trial's (sampled and fixed), the custom metric logged."""
    runs = child_runs(tracking_uri, study.study_name)
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in runs}
    assert len(by_number) == len(runs) == len(study.trials)
    for trial in study.trials:
        run = by_number[trial.number]
        assert run.data.params == {k: str(v) for k, v in {**trial.params, **fixed}.items()}
        if trial.state == TrialState.COMPLETE:
            assert trial.value == pytest.approx(quality(trial.params))  # the objective is the custom metric
            assert run.data.metrics["val_f1"] == pytest.approx(trial.value)


def test_a_custom_trainable_tunes_its_own_keys_and_metric(project: Path) -> None:
    options = local_options(project, import_paths=(str(project),))
    spec = StudySpec(name="mine", trainable="mypkg.train:train", space=SPACE, metric="val_f1", n_trials=5)
    study = execute_study(replace(spec, sampler="random"), options)
    assert len(study.trials) == 5 and all(t.state == TrialState.COMPLETE for t in study.trials)
    assert all(set(t.params) == {"lr", "width"} for t in study.trials)
    check_runs(study, options.tracking_uri, {"epochs": 3})
    client = MlflowClient(options.tracking_uri)
    run = client.get_run(study.trials[0].user_attrs[RUN_ID_ATTR])
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_f1")]
    assert sorted(steps) == [1, 2, 3]  # the yield index is the step
    assert "model" not in run.data.params and "optimizer" not in run.data.params  # nothing of the built-in config
    assert study.trials[0].intermediate_values == {
        s: pytest.approx(quality(study.trials[0].params) * s / 3) for s in (1, 2, 3)
    }


@pytest.mark.parametrize(
    ("trainable", "needle"),
    [
        ("nomodule_xyz.train:train", "module 'nomodule_xyz.train' does not import"),
        ("mypkg.train:missing", "has no attribute 'missing'"),
        ("mypkg.train:NOT_CALLABLE", "is not callable"),
        ("mypkg.train:not_a_generator", "is not a generator function"),
    ],
)
def test_a_trainable_that_cannot_run_fails_before_anything_exists(project: Path, trainable: str, needle: str) -> None:
    script = write_study(project, "bad", trainable)
    elsewhere = project.parent / "elsewhere"
    elsewhere.mkdir()
    done = tuner(elsewhere, "run", str(script), "--quiet")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    assert list(elsewhere.iterdir()) == []  # no mlruns/, no study, no experiment
    assert sorted(p.name for p in project.iterdir() if not p.name.startswith("__")) == ["bad.py", "mypkg"]


@pytest.mark.parametrize(
    ("trainable", "needle"),
    [
        ("mypkg.train:yields_list", "yielded [0.5, 0.6] at epoch 1: expected a mapping of metric name to number"),
        ("mypkg.train:yields_other_metric", "yielded {'loss': 0.3} at epoch 1, without the study's metric 'val_f1'"),
    ],
)
def test_a_trainable_that_breaks_the_contract_stops_the_study_at_its_first_trial(
    project: Path, trainable: str, needle: str
) -> None:
    script = write_study(project, "contract", trainable, n_trials=5)
    done = tuner(project, "run", str(script), "--quiet", "--no-report")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], done.stderr
    study = load(str(project / "mlruns" / "optuna.journal"), "contract")
    assert [t.state for t in study.trials] == [TrialState.FAIL]  # stopped there, not 5 failures alike
    assert needle in study.trials[0].user_attrs["reason"]
    (run,) = child_runs(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}", "contract")
    assert run.info.status == "FAILED" and needle in run.data.tags["tuner.reason"]


def test_a_trainable_that_raises_fails_that_trial_and_the_study_goes_on(project: Path) -> None:
    options = local_options(project, import_paths=(str(project),))
    spec = StudySpec(name="raises", trainable="mypkg.train:raises_at_two", space=SPACE, metric="val_f1", n_trials=8)
    study = execute_study(replace(spec, sampler="random", pruner="none"), options)
    states = Counter(t.state for t in study.trials)
    assert len(study.trials) == 8 and states[TrialState.FAIL] >= 1 and states[TrialState.COMPLETE] >= 1
    client = MlflowClient(options.tracking_uri)
    for trial in study.trials:
        assert (trial.state == TrialState.FAIL) == (trial.params["lr"] > 0.01)
        if trial.state == TrialState.FAIL:
            assert trial.user_attrs["reason"] == "ValueError: boom at epoch 2"
            run_id = trial.user_attrs[RUN_ID_ATTR]
            files = {a.path for a in client.list_artifacts(run_id)}
            assert "traceback.txt" in files
            text = Path(client.download_artifacts(run_id, "traceback.txt")).read_text()
            assert "boom at epoch 2" in text and "raises_at_two" in text


def test_several_objectives_prune_on_the_first_and_best_prints_the_pareto_front(project: Path) -> None:
    options = local_options(project, import_paths=(str(project),))
    spec = StudySpec(
        name="goals",
        trainable="mypkg.train:two_goals",
        space={**SPACE, "epochs": 6},
        metric=("val_f1", "size"),
        direction=("maximize", "minimize"),
        sampler="random",
        pruner="median",
        n_trials=24,
    )
    study = execute_study(spec, options)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    states = Counter(t.state for t in study.trials)
    assert states[TrialState.PRUNED] >= 1 and states[TrialState.COMPLETE] >= 5, states
    for trial in study.trials:
        if trial.state == TrialState.PRUNED:  # pruned by the median rule on the first objective's curve
            assert trial.user_attrs["reason"].startswith("pruned at epoch")
            assert 2 <= trial.user_attrs["pruned_at_epoch"] < 6
        else:
            assert trial.values == [pytest.approx(quality(trial.params)), pytest.approx(trial.params["width"] / 100)]

    done = tuner(project, "best", "goals", "--storage", options.storage)
    assert done.returncode == 0, done.stderr
    front = json.loads(done.stdout)
    assert sorted(f["trial"] for f in front) == sorted(t.number for t in study.best_trials)
    for entry in front:
        trial = study.trials[entry["trial"]]
        assert entry["values"] == trial.values and entry["params"] == trial.params
    listed = tuner(project, "studies", "--storage", options.storage)
    assert "maximize,minimize" in listed.stdout and f"front of {len(front)}" in listed.stdout

    tables = extract([study], options.tracking_uri)  # the report draws the front
    assert list(tables.studies["objectives"].iloc[0]) == ["val_f1", "size"]
    (pareto,) = [e for e in build_entries(tables, None) if e.slug.endswith("-pareto")]
    drawn = sorted(zip(pareto.figure.data[1].x, pareto.figure.data[1].y, strict=True))
    assert drawn == sorted((t.values[0], t.values[1]) for t in study.best_trials)


MODEL_PACKAGE = """
import torch
from torch import nn
from trainables import fit_model


def data(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(300, 8, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return x, y


class Net(nn.Module):
    def __init__(self, hidden):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Dropout(0.0), nn.Linear(hidden, 3))

    def forward(self, x):
        return self.body(x)


def train(params, context):
    return (yield from fit_model(params, Net, train=data(0), val=data(1), context=context))
"""


def test_the_best_model_is_kept_and_gives_back_its_recorded_value(project: Path) -> None:
    """`trainables.fit_model` trains the user's nn.Module with our loop; the best trial's model is kept."""
    (project / "mypkg" / "net.py").write_text(MODEL_PACKAGE)
    options = local_options(project, import_paths=(str(project),))
    space = {"lr": Float(1e-3, 1e-1, log=True), "hidden": Int(4, 32), "optimizer": "adam", "epochs": 4}
    spec = StudySpec(name="nets", trainable="mypkg.net:train", space=space, metric="val_acc", n_trials=4)
    study = execute_study(replace(spec, sampler="random", pruner="none"), options)
    best = study.best_trial
    assert all(t.state == TrialState.COMPLETE for t in study.trials)

    model = load_best_model("nets", storage=options.storage)
    sys.path.insert(0, str(project))
    try:
        from mypkg.net import Net, data  # type: ignore[import-not-found]
    finally:
        sys.path.remove(str(project))
    assert isinstance(model, Net) and model.body[0].out_features == best.params["hidden"]
    x, y = data(1)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    assert accuracy == pytest.approx(best.value)  # the same value the trial recorded

    out = project / "out" / "best.pt"
    env = tuner_env(PYTHONPATH=f"{project}{os.pathsep}{tuner_env()['PYTHONPATH']}")
    done = tuner(project, "best", "nets", "--storage", options.storage, "--model-out", str(out), env=env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == best.params
    assert torch.load(out, weights_only=False).state_dict().keys() == model.state_dict().keys()

    client = MlflowClient(options.tracking_uri)  # logged to the best trial's run as an MLflow model
    experiment = client.get_experiment_by_name("nets")
    assert experiment is not None
    logged = client.search_logged_models(experiment_ids=[experiment.experiment_id])
    assert [m.source_run_id for m in logged] == [best.user_attrs[RUN_ID_ATTR]]


def test_a_study_script_runs_from_any_directory_and_runs_a_function_defined_in_it(project: Path) -> None:
    """The script's folder goes first on sys.path; a function defined in the script is a trainable too."""
    script = project / "inline.py"
    script.write_text(
        "from mypkg.train import quality\nfrom tuner import Float, StudySpec, main_for_script\n\n"
        "def train(params):\n    for epoch in range(1, 3):\n        yield {'score': quality(params) * epoch}\n\n"
        "STUDY = StudySpec(name='inline', trainable=train, space={'lr': Float(1e-3, 1e-1, log=True), 'width': 32},"
        " metric='score', sampler='random', pruner='none', n_trials=3)\n"
    )
    elsewhere = project.parent / "elsewhere"
    elsewhere.mkdir()
    study_spec = load_study_script(str(script))
    options = local_options(elsewhere)
    study = run_study(study_spec, replace(options, import_paths=(str(project),)))
    assert study.user_attrs["tuner:spec"]["trainable"] == "inline:train"
    assert [t.value for t in study.trials] == [
        pytest.approx(2 * quality({**t.params, "width": 32})) for t in study.trials
    ]


@pytest.mark.slow
def test_workers_and_remote_workers_run_a_custom_trainable(project: Path) -> None:
    """`--workers 2`, and `tuner create` + two `tuner worker` processes, from another directory."""
    elsewhere = project.parent / "elsewhere"
    elsewhere.mkdir()
    script = write_study(project, "spread", "mypkg.train:train", n_trials=6)
    done = tuner(elsewhere, "run", str(script), "--workers", "2", "--quiet", "--no-report")
    assert done.returncode == 0, done.stderr
    store = elsewhere / "mlruns"
    study = load(str(store / "optuna.journal"), "spread")
    assert len(study.trials) >= 6 and all(t.state == TrialState.COMPLETE for t in study.trials)
    check_runs(study, f"sqlite:///{store / 'mlflow.db'}", {"epochs": 3})

    script = write_study(project, "joined", "mypkg.train:train", n_trials=6)
    done = tuner(elsewhere, "create", str(script))
    assert done.returncode == 0, done.stderr
    env = tuner_env()  # the workers import mypkg from the folder the study recorded, not from PYTHONPATH
    workers = [start_tuner(elsewhere, "worker", "--study", "joined", "--worker-index", str(i), env=env) for i in (0, 1)]
    assert [finish(w) for w in workers] == [0, 0]
    study = load(str(store / "optuna.journal"), "joined")
    assert len(study.trials) >= 6 and all(t.state == TrialState.COMPLETE for t in study.trials)
    check_runs(study, f"sqlite:///{store / 'mlflow.db'}", {"epochs": 3})


@pytest.mark.slow
def test_a_killed_workers_trial_resumes_from_the_context_checkpoint(project: Path) -> None:
    script = write_study(project, "resumes", "mypkg.train:slow", n_trials=2, epochs=6)
    storage = str(project / "mlruns" / "optuna.journal")
    done = tuner(project, "create", str(script))
    assert done.returncode == 0, done.stderr

    def worker(index: int) -> object:
        return start_tuner(
            project, "worker", "--study", "resumes", "--worker-index", str(index), "--checkpoint-every", "0",
            log=project / f"worker{index}.log", env=tuner_env(TUNER_GRACE_SECONDS="5"),
        )  # fmt: skip

    victim = worker(0)
    checkpoints = project / "mlruns" / "checkpoints"
    checkpoint = wait_for(lambda: next(checkpoints.rglob("trial-0.pt"), None), "trial 0 to checkpoint")
    wait_for(lambda: RUN_ID_ATTR in load(storage, "resumes").trials[0].user_attrs, "trial 0's first report")
    victim.send_signal(signal.SIGKILL)  # type: ignore[attr-defined]
    assert finish(victim) == -signal.SIGKILL  # type: ignore[arg-type]
    saved_epochs = torch.load(checkpoint, weights_only=False)["epochs"]
    assert 1 <= saved_epochs < 6

    assert finish(worker(1)) == 0, (project / "worker1.log").read_text()  # finds trial 0 stale, retries it
    study = load(storage, "resumes")
    assert counted_trials(study.trials) == 2
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 0)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs[ATTEMPT_OF_ATTR] == 0
    assert min(retry.intermediate_values) == saved_epochs + 1  # resumed where the checkpoint was, not restarted
    client = MlflowClient(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    run = client.get_run(retry.user_attrs[RUN_ID_ATTR])
    assert run.data.tags["tuner.resumed_from_epoch"] == str(saved_epochs)
    assert "tuner.restarted_from_scratch" not in run.data.tags
    steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_f1"))
    assert steps == list(range(saved_epochs + 1, 7))


def test_bad_metric_and_direction_settings_are_one_line(project: Path) -> None:
    options = local_options(project, import_paths=(str(project),))
    base = StudySpec(name="bad", trainable="mypkg.train:train", space=SPACE, n_trials=2)
    for changes, needle in [
        ({"metric": ("val_f1", "val_f1")}, "a metric is named twice"),
        ({"metric": ("val_f1", "size"), "direction": ("maximize",)}, "give one direction per metric"),
        ({"direction": "up"}, "direction 'up' is invalid"),
        ({"metric": ("val_f1", "size"), "sampler": "cmaes"}, "has one objective"),
    ]:
        with pytest.raises(UserError, match=needle):
            execute_study(replace(base, **changes), options)  # type: ignore[arg-type]
    assert not (project / "optuna.journal").exists()
