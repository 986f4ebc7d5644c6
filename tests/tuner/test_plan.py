"""The plan of a run and its one trainable-resolution point: references, functions, workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from optuna.trial import TrialState

from tests.tuner.fakes import curve_fit, failing_fit, quality
from trainables import TrainConfig
from tuner.errors import UserError
from tuner.run.execute import execute_study
from tuner.run.plan import make_plan, resolve_trainable, trainable_reference
from tuner.space import Float
from tuner.study import RunOptions, StudySpec

REPO = Path(__file__).resolve().parents[2]
SPACE = {"lr": Float(1e-4, 1.0, log=True), "epochs": 3}


def test_a_reference_resolves_to_the_function() -> None:
    assert resolve_trainable("tests.tuner.fakes:curve_fit") is curve_fit
    assert resolve_trainable("trainables:fit") is __import__("trainables").fit


@pytest.mark.parametrize(
    ("reference", "needle"),
    [
        ("no_such_module_xyz:fit", "module 'no_such_module_xyz' does not import"),
        ("tests.tuner.fakes:no_such_fit", "has no attribute 'no_such_fit'"),
        ("tests.tuner.test_plan:SPACE", "is not callable"),
        ("tests.tuner.fakes", "give an import path 'module:function'"),
    ],
)
def test_a_bad_reference_is_one_user_error(reference: str, needle: str) -> None:
    with pytest.raises(UserError, match=needle.replace("(", r"\(")):
        resolve_trainable(reference)


def test_a_function_is_named_by_its_import_path_when_it_has_one() -> None:
    assert trainable_reference(curve_fit) == "tests.tuner.fakes:curve_fit"
    assert trainable_reference("pkg.mod:train") == "pkg.mod:train"
    assert trainable_reference(failing_fit(ValueError())) is None  # defined inside another function
    assert trainable_reference(lambda config: iter(())) is None


def test_a_bad_reference_fails_before_anything_is_created(tmp_path: Path, options: RunOptions) -> None:
    spec = StudySpec(name="bad-ref", space=SPACE, n_trials=2, trainable="tests.tuner.fakes:missing")
    with pytest.raises(UserError, match="has no attribute 'missing'"):
        execute_study(spec, options)
    assert list(tmp_path.iterdir()) == []


def test_workers_refuse_a_function_they_cannot_import(tmp_path: Path, options: RunOptions) -> None:
    spec = StudySpec(name="closure", space=SPACE, n_trials=2, trainable=failing_fit(ValueError()))
    assert make_plan(spec, options).trainable_ref is None  # one process: it runs the function itself
    with pytest.raises(UserError, match="cannot be imported by worker processes"):
        make_plan(spec, RunOptions(storage=options.storage, tracking_uri=options.tracking_uri, workers=2))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_worker_processes_resolve_the_plans_trainable(options: RunOptions, monkeypatch: pytest.MonkeyPatch) -> None:
    """`--workers 2` with a function object: the workers import it by the path the plan recorded."""
    monkeypatch.setenv("PYTHONPATH", str(REPO))
    spec = StudySpec(name="by-ref", space=SPACE, sampler="random", pruner="none", n_trials=4, trainable=curve_fit)
    study = execute_study(spec, RunOptions(**{**options.__dict__, "workers": 2}))
    assert study.user_attrs["tuner:spec"]["trainable"] == "tests.tuner.fakes:curve_fit"
    trials = study.get_trials()
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:  # the values of curve_fit, not of the built-in trainable
        assert t.value == pytest.approx(quality(TrainConfig(lr=t.params["lr"], epochs=3)))
    assert all(not t.user_attrs["worker"].endswith(f":{os.getpid()}") for t in trials)  # trained by the workers
