"""Run a study group (`tuner.group.StudyGroup`): each study to its trial budget, then the seeded re-runs.

Each study runs through `execute_study`, as a single study does; a resume runs only what is
missing, and the re-runs planned once are never enqueued twice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.group import BUDGET_NAME_ATTR, RERUNS_ATTR, Rerun, StudyGroup
from tuner.locations import storage_kind
from tuner.run.execute import execute_study
from tuner.run.finish import finish
from tuner.run.open import counted_trials, open_study, quiet_optuna, set_user_attrs
from tuner.run.plan import with_trainable
from tuner.storage import open_storage
from tuner.study import RunOptions, StudySpec


def run_group(group: StudyGroup, options: RunOptions) -> list[Any]:
    """Run (or resume) every study of the group; returns the Optuna studies, the seeds study last."""
    if options.budget not in group.budgets:
        raise UserError(f"--budget {options.budget}: choose one of {', '.join(group.budgets)}")
    budget = group.budgets[options.budget]
    base = options.study_name or group.name
    inner = dataclasses.replace(options, study_name=None)
    attrs = {BUDGET_NAME_ATTR: options.budget}
    specs = [
        # one MLflow experiment for the group: a parent run per study (an arm), its trials nested under it
        with_trainable(
            dataclasses.replace(s, user_attrs={**s.user_attrs, **attrs}, experiment=s.experiment or base),
            group.trainable,
        )
        for s in group.studies(base, budget)
    ]
    seeds_spec = None
    if group.reruns is not None and budget.seeds > 0:
        if group.rerun_space is None:
            raise UserError(f"study group {base!r} has re-runs but no rerun_space")
        seeds_spec = with_trainable(
            StudySpec(
                name=f"{base}.seeds",
                space=group.rerun_space(budget),
                sampler="random",  # every parameter is enqueued: nothing is sampled
                pruner="none",
                n_trials=1,
                cohort=budget.cohort,
                user_attrs={"kind": "seeds", "comparison": base, **attrs},
                experiment=base,
            ),
            group.trainable,
        )
    every = [*specs, *([seeds_spec] if seeds_spec else [])]
    for spec in every:
        spec.with_options(inner).validate(inner)
    check_budgets([s.name for s in every], options)

    import torch

    quiet_optuna()
    threads = torch.get_num_threads()
    # One CPU thread per trial unless told otherwise: one MNIST-1D model gains little from more,
    # and on a busy two-core machine two threads trained 40x slower than one (spinning workers).
    # A fused cohort's batched products do use them (bench/RESULTS.md: 2.3x on two threads, 1.4x on one).
    cohort = options.cohort or budget.cohort
    torch.set_num_threads(options.threads or (threads if cohort > 1 and options.workers == 1 else 1))
    try:
        studies = [run_to_budget(spec, inner) for spec in specs]
        if seeds_spec is not None and group.reruns is not None:
            reruns = group.reruns(studies)
            studies.append(run_reruns(seeds_spec, reruns, budget.seeds, inner))
    finally:
        torch.set_num_threads(threads)
    finish([s.study_name for s in studies], base, options, pngs=budget.pngs)
    return studies


def check_budgets(names: Sequence[str], options: RunOptions) -> None:
    """A study is resumed only with the budget it began with (its epochs and trial count differ otherwise)."""
    import optuna

    kind = storage_kind(options.storage)
    if kind in ("journal", "sqlite") and not Path(options.storage.removeprefix("sqlite:///")).is_file():
        return  # a new store: nothing to resume
    storage = open_storage(options.storage, heartbeat=False)
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        was = summary.user_attrs.get(BUDGET_NAME_ATTR)
        if summary.study_name in names and was is not None and was != options.budget:
            raise UserError(
                f"study {summary.study_name!r} was run with --budget {was}; resume it with --budget {was}, "
                f"or give this budget its own names with --study-name"
            )


def run_to_budget(spec: StudySpec, options: RunOptions) -> Any:
    """Run `spec` until its study holds `spec.n_trials` trials; run again, it runs only the missing ones."""
    spec = spec.with_options(options)
    options = dataclasses.replace(options, n_trials=None, study_name=None, n_trials_in_all=True)
    if spec.n_trials is None:  # a time budget only: every run spends it again
        return execute_study(spec, options)
    return _run_unless_done(spec, options)


def run_reruns(spec: StudySpec, reruns: Sequence[Rerun], seeds: int, options: RunOptions) -> Any:
    """Enqueue each re-run once per seed (1..seeds) and train them all, unpruned.

    The plan is kept in the study's user attributes; a resume enqueues only planned re-runs
    that have no trial yet (an interrupted one is queued again by the adapter itself).
    """
    spec = spec.with_options(options)
    options = dataclasses.replace(options, n_trials=None, study_name=None, n_trials_in_all=True)
    spec.validate(options)
    study = open_study(spec, options)
    set_user_attrs(study, spec.user_attrs)
    planned = study.user_attrs.get(RERUNS_ATTR)
    if planned is None:
        planned = [
            {"params": {**r.params, "seed": seed}, "attrs": {**r.attrs, "seed": seed}}
            for r in reruns
            for seed in range(1, seeds + 1)
        ]
        study.set_user_attr(RERUNS_ATTR, planned)  # before enqueuing: an interrupted enqueue resumes the same plan
    have = [t.user_attrs for t in study.get_trials(deepcopy=False)]
    for entry in planned:
        if not any(all(attrs.get(k) == v for k, v in entry["attrs"].items()) for attrs in have):
            study.enqueue_trial(dict(entry["params"]), user_attrs=dict(entry["attrs"]))
    return _run_unless_done(dataclasses.replace(spec, n_trials=len(planned)), options)


def _run_unless_done(spec: StudySpec, options: RunOptions) -> Any:
    """execute_study to `spec.n_trials` trials in all, or only open the study when it has them and none is queued."""
    from optuna.trial import TrialState

    spec.validate(options)
    study = open_study(spec, options)
    trials = study.get_trials(deepcopy=False)
    queued = any(t.state == TrialState.WAITING for t in trials)
    if queued or counted_trials(trials) < (spec.n_trials or 0):
        return execute_study(spec, options)
    set_user_attrs(study, spec.user_attrs)
    return study
