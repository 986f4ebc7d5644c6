"""The scripts in studies/: each runs with a tiny budget; the optimizer comparison's studies, attributes and resume."""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from tests.tuner.fakes import curve_fit
from trainables import OPTIMIZERS, EpochResult, TrainConfig, takes_train_config
from tuner import load_best_model
from tuner.cli import main
from tuner.errors import UserError
from tuner.group import RERUNS_ATTR, StudyGroup
from tuner.run.api import run_study
from tuner.scripts import load_study_script
from tuner.storage import open_storage
from tuner.study import RunOptions

STUDIES = Path(__file__).resolve().parents[2] / "studies"
SCRIPTS = sorted(STUDIES.glob("*.py"))
TINY = {"epochs": 4, "train_samples": 200, "device": "cpu"}  # 4 epochs: the longest warm-up (3) must fit


@pytest.fixture
def options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> RunOptions:
    monkeypatch.chdir(tmp_path)  # reports/ is written under the working directory
    return RunOptions(
        storage=str(tmp_path / "optuna.journal"),
        tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        quiet=True,
        report=False,
        n_trials=2,
        fixed=TINY,
    )


def studies_in(options: RunOptions) -> dict[str, Any]:
    storage = open_storage(options.storage, heartbeat=False)
    return {name: optuna.load_study(study_name=name, storage=storage) for name in optuna.get_all_study_names(storage)}


def test_there_are_study_scripts() -> None:
    names = {p.stem for p in SCRIPTS}
    assert {"optimizer_comparison", "lr_schedules", "batch_size", "regularization", "quickstart"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_every_script_runs_with_a_tiny_budget(script: Path, options: RunOptions) -> None:
    """Real training on 200 MNIST-1D samples for 4 epochs; every script ends by writing its report."""
    study = load_study_script(str(script))
    is_group = isinstance(study, StudyGroup)
    options = dataclasses.replace(options, report=True)
    if is_group:
        options = dataclasses.replace(options, budget="small")
    result = run_study(study, options)
    ran = result if isinstance(result, list) else [result]

    assert ran and set(studies_in(options)) == {s.study_name for s in ran}
    for s in ran:
        states = [t.state for t in s.get_trials()]
        assert states and TrialState.FAIL not in states, f"{s.study_name}: {states}"
        assert TrialState.COMPLETE in states
        assert all(t.state != TrialState.COMPLETE or len(t.intermediate_values) == 4 for t in s.get_trials())
    if is_group:
        assert all(s.user_attrs.get("kind") for s in ran)
        assert all(s.user_attrs.get("budget") == "small" for s in ran)
    report = Path("reports") / study.name
    assert (report / "report.html").is_file(), sorted(p.name for p in report.glob("*"))


def fake_fit_interrupted_at(call: int) -> Any:
    """curve_fit, but the `call`-th trial is interrupted (Ctrl-C) in its second epoch."""
    calls = itertools.count(1)

    @takes_train_config
    def fit(
        config: TrainConfig, checkpoint: Any = None, checkpoint_every: float = 0.0
    ) -> Generator[EpochResult, None, None]:
        interrupt = next(calls) == call
        for result in curve_fit(config, checkpoint):
            if interrupt and result.epoch == 2:
                raise KeyboardInterrupt
            yield result

    return fit


@pytest.fixture
def comparison() -> StudyGroup:
    study = load_study_script(str(STUDIES / "optimizer_comparison.py"))
    assert isinstance(study, StudyGroup)
    return study


def default_candidate(optimizer: str) -> dict[str, Any]:
    """The flagship's first tuning trial of `optimizer`: its default config."""
    script = load_study_script(str(STUDIES / "optimizer_comparison.py"))
    assert isinstance(script, StudyGroup)
    (spec,) = [s for s in script.studies("x", script.budgets["small"]) if s.user_attrs["optimizer"] == optimizer]
    (params,) = spec.enqueue
    assert params["lr_schedule"] == "constant"
    assert params["weight_decay"] == (0.01 if optimizer == "adamw" else 1e-6)  # PyTorch's; none: the range's low end
    return dict(params)


def seeds_keys(study: Any) -> list[tuple[str, str, int]]:
    return sorted((t.user_attrs["optimizer"], t.user_attrs["group"], t.user_attrs["seed"]) for t in study.get_trials())


def test_comparison_makes_a_study_per_optimizer_and_a_seeds_study_and_resumes_to_its_budget(
    comparison: StudyGroup, options: RunOptions
) -> None:
    options = dataclasses.replace(options, budget="small", study_name="cmp")
    run_study(dataclasses.replace(comparison, trainable=curve_fit), options)
    studies = studies_in(options)

    assert set(studies) == {f"cmp.{o}" for o in OPTIMIZERS} | {"cmp.seeds"}
    first_lrs = set()
    for optimizer in OPTIMIZERS:
        study = studies[f"cmp.{optimizer}"]
        assert {k: study.user_attrs[k] for k in ("kind", "comparison", "optimizer")} == {
            "kind": "optimizer_tuning",
            "comparison": "cmp",
            "optimizer": optimizer,
        }
        assert len(study.get_trials()) == 2  # --n-trials: the same budget for every optimizer
        default, first_sampled = study.trials
        assert default.params == default_candidate(optimizer) and default.user_attrs["enqueued"] is True
        assert ("momentum" in first_sampled.params) == (optimizer in ("momentum", "nesterov"))
        first_lrs.add(first_sampled.params["lr"])
    assert len(first_lrs) == 1  # the same sampler seed: every optimizer's search starts from the same candidate

    seeds = studies["cmp.seeds"]
    assert seeds.user_attrs["kind"] == "seeds" and seeds.user_attrs["comparison"] == "cmp"
    trials = seeds.get_trials()
    assert all(t.state == TrialState.COMPLETE and len(t.intermediate_values) == 4 for t in trials)  # never pruned
    assert seeds_keys(seeds) == sorted(itertools.product(OPTIMIZERS, ("default", "tuned"), (1, 2)))
    for t in trials:
        optimizer = t.user_attrs["optimizer"]
        assert t.params["optimizer"] == optimizer and t.params["seed"] == t.user_attrs["seed"]
        rest = {k: v for k, v in t.params.items() if k not in ("optimizer", "seed")}
        if t.user_attrs["group"] == "tuned":
            assert rest == studies[f"cmp.{optimizer}"].best_params
        else:
            assert rest["lr_schedule"] == "constant"
            assert rest["lr"] == (1e-3 if optimizer in ("adam", "adamw") else 0.01)
            assert rest["weight_decay"] == (0.01 if optimizer == "adamw" else 0.0)

    run_study(
        dataclasses.replace(comparison, trainable=curve_fit), options
    )  # resumed with nothing missing: nothing runs
    assert {name: len(s.get_trials()) for name, s in studies_in(options).items()} == {
        **{f"cmp.{o}": 2 for o in OPTIMIZERS},
        "cmp.seeds": 28,
    }
    run_study(
        dataclasses.replace(comparison, trainable=curve_fit), dataclasses.replace(options, n_trials=3)
    )  # a larger budget: one more each
    assert {name: len(s.get_trials()) for name, s in studies_in(options).items()} == {
        **{f"cmp.{o}": 3 for o in OPTIMIZERS},
        "cmp.seeds": 28,  # the re-runs planned the first time were run once; the plan is kept
    }
    assert len(studies_in(options)["cmp.seeds"].user_attrs[RERUNS_ATTR]) == 28

    with pytest.raises(UserError, match="was run with --budget small"):  # other epochs: not the same study
        run_study(dataclasses.replace(comparison, trainable=curve_fit), dataclasses.replace(options, budget="default"))
    assert len(studies_in(options)["cmp.adam"].get_trials()) == 3


def test_an_interrupted_comparison_resumes_each_rerun_once(comparison: StudyGroup, options: RunOptions) -> None:
    two = dataclasses.replace(comparison, studies=lambda base, budget: comparison.studies(base, budget)[:2])
    options = dataclasses.replace(options, budget="small")
    with pytest.raises(KeyboardInterrupt):  # the 4 tuning trials run, then the 5th re-run is interrupted
        run_study(dataclasses.replace(two, trainable=fake_fit_interrupted_at(4 + 5)), options)
    seeds = studies_in(options)["optimizer-comparison.seeds"]
    states = [t.state for t in seeds.get_trials()]
    assert states.count(TrialState.COMPLETE) == 4 and states.count(TrialState.FAIL) == 1

    run_study(dataclasses.replace(two, trainable=curve_fit), options)
    seeds = studies_in(options)["optimizer-comparison.seeds"]
    complete = [t for t in seeds.get_trials() if t.state == TrialState.COMPLETE]
    assert len(seeds.get_trials()) == 2 * 2 * 2 + 1  # the plan, and the interrupted one's retry
    assert sorted((t.user_attrs["optimizer"], t.user_attrs["group"], t.user_attrs["seed"]) for t in complete) == sorted(
        itertools.product(OPTIMIZERS[:2], ("default", "tuned"), (1, 2))
    )


def test_an_unknown_budget_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(STUDIES / "optimizer_comparison.py"), "--budget", "huge"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--budget" in err and "'huge'" in err


def test_a_single_study_script_refuses_a_small_budget(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", str(STUDIES / "quickstart.py"), "--budget", "small", "--storage", str(tmp_path / "j")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        "tuner: error: --budget small: study 'quickstart' has only the default budget; drop --budget"
    )
    assert not (tmp_path / "j").exists()  # refused before anything was created


@pytest.mark.slow
def test_the_own_model_example_runs_from_any_directory_and_learns(tmp_path: Path) -> None:
    """`tuner run studies/own_model/study.py`: a user package beside the script, its own metric and model."""
    env = {**os.environ, "PYTHONPATH": str(STUDIES.parent), "OMP_NUM_THREADS": "1"}
    script = STUDIES / "own_model" / "study.py"
    done = subprocess.run(
        [sys.executable, "-m", "tuner.cli", "run", str(script), "--n-trials", "3", "--quiet"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "reports" / "own-model" / "report.html").is_file()
    study = optuna.load_study(
        study_name="own-model", storage=open_storage(str(tmp_path / "mlruns" / "optuna.journal"), heartbeat=False)
    )
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    best = study.best_trial
    curve = [best.intermediate_values[step] for step in sorted(best.intermediate_values)]
    assert len(curve) == 12 and curve[-1] > max(0.5, curve[0])  # it learns: macro-F1 of 3 classes, chance 0.33
    sys.path.insert(0, str(script.parent))
    try:
        from spirals.data import splits  # type: ignore[import-not-found]
        from spirals.train import evaluate  # type: ignore[import-not-found]

        model = load_best_model("own-model", storage=str(tmp_path / "mlruns" / "optuna.journal"))
        assert evaluate(model, *splits()["val"])[0] == pytest.approx(study.best_value)
    finally:
        sys.path.remove(str(script.parent))
