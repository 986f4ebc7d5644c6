"""Study scripts that run several studies alike: named budgets, trial budgets that resume, seeded re-runs.

A `StudyGroup` is the STUDY of such a script. For the chosen `--budget` it builds its studies
(`BASE.<member>`), runs each until it holds its trial budget — running the script again
resumes: only the missing trials run — then, when it has re-runs, trains the chosen configs
again with seeds 1..K in one more study (`BASE.seeds`), and writes the report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.adapter import FitFn
from tuner.errors import UserError
from tuner.space import Space
from tuner.storage import redact
from tuner.study import RunOptions, StudySpec

BUDGET_NAME_ATTR = "budget"  # study user attribute: the --budget its trials were run with
RERUNS_ATTR = "reruns"  # seeds study user attribute: the re-runs planned, so a resume enqueues none twice
REPORTS_DIR = Path("reports")


@dataclass(frozen=True)
class Budget:
    """What a study script spends; the same for each of its studies."""

    n_trials: int  # trials per tuning study
    epochs: int  # per trial, tuning and re-runs alike
    seeds: int = 0  # each re-run config is trained with seeds 1..seeds; 0: no re-runs
    pngs: bool = True  # PNG copies of the report's figures (about 2.5 s each); the HTML page is always written


@dataclass(frozen=True)
class Rerun:
    """A config to train again with every seed: its values in the re-run space, and trial user attributes."""

    params: Mapping[str, Any]
    attrs: Mapping[str, Any]


@dataclass(frozen=True)
class StudyGroup:
    """The STUDY of a script that tunes several studies alike, then optionally re-runs chosen configs with seeds.

    `studies(base, budget)` builds the tuning studies. With `reruns`, the configs it picks from
    the finished tuning studies are enqueued in `BASE.seeds`, whose space (`rerun_space(budget)`)
    must hold every value they use, and a `seed` parameter.
    """

    name: str  # the base of the study names; --study-name replaces it
    studies: Callable[[str, Budget], Sequence[StudySpec]]
    budgets: Mapping[str, Budget]
    reruns: Callable[[Sequence[Any]], Sequence[Rerun]] | None = None
    rerun_space: Callable[[Budget], Space] | None = None

    def run(self, options: RunOptions, fit: FitFn | None = None) -> list[Any]:
        """Run (or resume) every study of the group; returns the Optuna studies, the seeds study last."""
        if options.budget not in self.budgets:
            raise UserError(f"--budget {options.budget}: choose one of {', '.join(self.budgets)}")
        budget = self.budgets[options.budget]
        base = options.study_name or self.name
        inner = dataclasses.replace(options, study_name=None)
        attrs = {BUDGET_NAME_ATTR: options.budget}
        specs = [dataclasses.replace(s, user_attrs={**s.user_attrs, **attrs}) for s in self.studies(base, budget)]
        seeds_spec = None
        if self.reruns is not None and budget.seeds > 0:
            if self.rerun_space is None:
                raise UserError(f"study group {base!r} has re-runs but no rerun_space")
            seeds_spec = StudySpec(
                name=f"{base}.seeds",
                space=self.rerun_space(budget),
                sampler="random",  # every parameter is enqueued: nothing is sampled
                pruner="none",
                n_trials=1,
                user_attrs={"kind": "seeds", "comparison": base, **attrs},
            )
        every = [*specs, *([seeds_spec] if seeds_spec else [])]
        for spec in every:
            spec.with_options(inner).validate(inner)
        check_budgets([s.name for s in every], options)

        import torch

        from tuner.runner import quiet_optuna

        quiet_optuna()
        threads = torch.get_num_threads()
        # One CPU thread unless told otherwise: MNIST-1D models gain little from more, and on a
        # busy two-core machine two threads trained 40x slower than one (spinning workers).
        torch.set_num_threads(options.threads or 1)
        try:
            studies = [run_to_budget(spec, inner, fit) for spec in specs]
            if seeds_spec is not None and self.reruns is not None:
                reruns = self.reruns(studies)
                studies.append(run_reruns(seeds_spec, reruns, budget.seeds, inner, fit))
        finally:
            torch.set_num_threads(threads)
        finish([s.study_name for s in studies], base, options, pngs=budget.pngs)
        return studies


def check_budgets(names: Sequence[str], options: RunOptions) -> None:
    """A study is resumed only with the budget it began with (its epochs and trial count differ otherwise)."""
    import optuna

    from tuner.storage import open_storage, storage_kind

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


def run_to_budget(spec: StudySpec, options: RunOptions, fit: FitFn | None = None) -> Any:
    """Run `spec` until its study holds `spec.n_trials` trials; run again, it runs only the missing ones."""
    spec = spec.with_options(options)
    options = dataclasses.replace(options, n_trials=None, study_name=None, n_trials_in_all=True)
    if spec.n_trials is None:  # a time budget only: every run spends it again
        from tuner.runner import run_study

        return run_study(spec, options, fit)
    return _run_unless_done(spec, options, fit)


def run_reruns(
    spec: StudySpec, reruns: Sequence[Rerun], seeds: int, options: RunOptions, fit: FitFn | None = None
) -> Any:
    """Enqueue each re-run once per seed (1..seeds) and train them all, unpruned.

    The plan is kept in the study's user attributes; a resume enqueues only planned re-runs
    that have no trial yet (an interrupted one is queued again by the adapter itself).
    """
    from tuner.runner import open_study, set_user_attrs

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
    return _run_unless_done(dataclasses.replace(spec, n_trials=len(planned)), options, fit)


def _run_unless_done(spec: StudySpec, options: RunOptions, fit: FitFn | None) -> Any:
    """run_study to `spec.n_trials` trials in all, or only open the study when it has them and none is queued."""
    from optuna.trial import TrialState

    from tuner.runner import counted_trials, open_study, run_study, set_user_attrs

    spec.validate(options)
    study = open_study(spec, options)
    trials = study.get_trials(deepcopy=False)
    queued = any(t.state == TrialState.WAITING for t in trials)
    if queued or counted_trials(trials) < (spec.n_trials or 0):
        return run_study(spec, options, fit)
    set_user_attrs(study, spec.user_attrs)
    return study


def best_params(study: Any) -> dict[str, Any] | None:
    """The best trial's params, or None when no trial completed."""
    try:
        return dict(study.best_trial.params)
    except ValueError:
        return None


def finish(study_names: list[str], base: str, options: RunOptions, pngs: bool = True) -> Path | None:
    """Write the group's report (unless --no-report) and say where it and the MLflow UI are."""
    out = None
    if options.report:
        from tuner.report import write_report

        out = write_report(
            study_names, REPORTS_DIR / base, storage=options.storage, tracking_uri=options.tracking_uri, png=pngs
        )
        print(f"report: {out}  (open it in a browser)")
    print(
        f"MLflow UI: tuner ui --tracking-uri {redact(options.tracking_uri)} --study {study_names[-1]}"
        "  (prints the runs page URL; Ctrl-C stops it)"
    )
    return out
