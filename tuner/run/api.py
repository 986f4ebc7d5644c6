"""The top of the run path: what `tuner run`, `tuner create` and `tuner worker` call, and a Python caller too.

from tuner import RunOptions, run_study
study = run_study(STUDY, RunOptions(n_trials=10))
"""

from __future__ import annotations

from typing import Any

from tuner.errors import UserError
from tuner.group import StudyGroup
from tuner.run import execute, launch
from tuner.run.finish import finish
from tuner.run.group import run_group
from tuner.run.open import quiet_optuna
from tuner.run.plan import make_plan
from tuner.study import RunOptions, StudySpec


def run_study(study: StudySpec | StudyGroup, options: RunOptions | None = None) -> Any:
    """Run (or resume) a study or a study group, then write the report; returns the Optuna study (a group: a list)."""
    options = options or RunOptions()
    if isinstance(study, StudyGroup):
        return run_group(study, options)
    if not isinstance(study, StudySpec):
        raise UserError(f"STUDY is a {type(study).__name__}: make it a StudySpec or a StudyGroup")
    if options.budget != "default":
        raise UserError(f"--budget {options.budget}: study {study.name!r} has only the default budget; drop --budget")
    optuna_study = execute.execute_study(study, options)
    finish([optuna_study.study_name], optuna_study.study_name, options)  # the report, and where to browse
    return optuna_study


def create(study: StudySpec | StudyGroup, options: RunOptions) -> int:
    """`tuner create`: the study, its MLflow experiment and parent run and its budget, for `tuner worker`s to join."""
    if not isinstance(study, StudySpec):
        raise UserError("the study script's STUDY is not a StudySpec, so workers could not rebuild it; use tuner run")
    plan = make_plan(study, options)
    if plan.trainable_ref is None:
        raise UserError(
            f"trainable {study.trainable!r} cannot be imported by workers: define it at the top level of a module "
            "and name it as 'module:function'"
        )
    quiet_optuna()
    return launch.create(plan)


def join(study_name: str, options: RunOptions, worker_index: int | None = None, timeout: float | None = None) -> int:
    """`tuner worker`: run trials of a study made by `run` or `create` until its budget is used; returns how many."""
    return execute.join(study_name, options, worker_index=worker_index, timeout=timeout)
