"""Open a planned study: its Optuna storage, sampler and pruner, its MLflow experiment and parent run.

`prepare_study` is done once, by the process that launches a run, before any worker starts:
it records the spec in the study (so that `tuner worker` can rebuild it from the storage
alone) and the run's trial budget. `--n-trials N` means N more trials for this run, shared
by its workers (N between them, not N each), queued retries of interrupted trials among
them. Each run's budget is its own study attribute (`RUN_BUDGET_PREFIX` + run key) and each
trial names the run that started it (`RUN_ATTR`), so two runs of one study at once run N
trials each: no run overwrites another's budget. With `n_trials_in_all` (a study group's
members) N is the study's trial count in all instead.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optuna.samplers import BaseSampler

from tuner.errors import UserError, first_line
from tuner.locations import redact
from tuner.run.adapter import RUN_ATTR, StaleTrialHandler
from tuner.run.backfill import backfill_study
from tuner.run.models import MODELS_ATTR, log_kept_models
from tuner.run.plan import Plan
from tuner.space import grid_values
from tuner.storage import open_storage, set_stale_trial_callback
from tuner.study import PRUNERS, SAMPLERS, RunOptions, StudySpec
from tuner.tracking import RUN_ID_ATTR, StudyTracking

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

SPEC_ATTR = "tuner:spec"  # study user attribute: the StudySpec as data, for `tuner worker`
SETTLED_SECONDS = 60.0  # a trial that ended longer ago has had every write of its process applied
BUDGET_ATTR = "tuner:n_trials"  # study user attribute of studies from before per-run budgets: their trials in all
RUN_BUDGET_PREFIX = "tuner:budget:"  # + run key: study user attribute, {"n_trials": N or None, "in_all": bool}
ENQUEUED_ATTR = "enqueued"  # trial user attribute: the trial ran values the spec enqueued (a baseline), not sampled
LATEST_RUN_ATTR = "tuner:latest_run"  # the run whose budget a `tuner worker` counts in unless told which


def quiet_optuna() -> None:
    """Our progress line says what Optuna's per-trial INFO lines would."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("optuna").setLevel(logging.ERROR)


def open_study(spec: StudySpec, options: RunOptions, create: bool = True, worker_index: int = 0) -> Any:
    """Create the study, or load it when it exists (resume, or join from another worker).

    Every process samples trial N from the study's seed and N (`TrialSeeded`), so a resumed or
    joined study goes on with new points instead of replaying the first ones; `worker_index` is
    kept for the callers' sake and no longer changes the sampling.
    """
    import optuna

    storage = open_storage(options.storage)
    if spec.name in optuna.get_all_study_names(storage):
        study = optuna.load_study(
            study_name=spec.name, storage=storage, sampler=make_sampler(spec), pruner=make_pruner(spec)
        )
        existing = tuple(d.name.lower() for d in study.directions)
        if existing != spec.directions:
            raise UserError(
                f"study {spec.name!r} already exists with direction {','.join(existing)}; "
                "use another --study-name or the same metric and direction"
            )
        return study
    if not create:
        raise UserError(f"study {spec.name!r} not found in {redact(options.storage)}; run `tuner studies` to list them")
    return optuna.create_study(
        study_name=spec.name,
        storage=storage,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        directions=list(spec.directions),
    )


def prepare_study(plan: Plan, trains: bool = True) -> tuple[Any, StudyTracking]:
    """Create or load the study, its MLflow experiment and parent run; record the spec and this run's budget.

    `trains`: this process runs trials (its system metrics go on the parent run), not only sets up or watches."""
    spec, options = plan.spec, plan.options
    study = open_study(spec, options)
    if spec.enqueue and not study.get_trials(deepcopy=False):  # a new study: its baselines go first, once
        for params in spec.enqueue:
            study.enqueue_trial(dict(params), user_attrs={ENQUEUED_ATTR: True})
    set_user_attrs(study, spec.user_attrs)
    tracking = open_tracking(study, spec, options, watch_system=trains)
    # what an earlier run could not record in MLflow; trials that just ended may be another run's, still writing
    backfill_study(study, tracking, spec.metrics, settled_seconds=SETTLED_SECONDS)
    record = {**spec.to_record(), "trainable": plan.trainable_ref, "import_paths": list(plan.import_paths)}
    set_user_attrs(study, {SPEC_ATTR: record, MODELS_ATTR: str(plan.models_dir)})
    budget = {"n_trials": spec.n_trials, "in_all": options.n_trials_in_all}
    set_user_attrs(study, {f"{RUN_BUDGET_PREFIX}{options.run_key}": budget, LATEST_RUN_ATTR: options.run_key})
    return study, tracking


def open_tracking(study: Any, spec: StudySpec, options: RunOptions, watch_system: bool = True) -> StudyTracking:
    """The study's MLflow experiment and parent run; a trial found stale then has its run closed, then is retried."""
    params = {**spec.fixed_values(), **spec.settings(options.storage)}  # the arm's values: the UI groups by them
    tracking = StudyTracking(
        options.tracking_uri,
        study,
        params,
        spec.describe_space(),
        experiment=spec.experiment or spec.name,
        watch_system=watch_system,
    )
    set_stale_trial_callback(study._storage, StaleTrialHandler(tracking))
    return tracking


def close_parent_run(
    study: Any, tracking: StudyTracking, interrupted: bool, metrics: Sequence[str], sole_writer: bool = True
) -> None:
    """End the study's parent run, unless trials still run in other workers (the last one out ends it),
    once MLflow holds every trial's record (`backfill_study`, for what a write lost). `sole_writer`:
    no other process may still be writing this study's runs (false for a worker that joined)."""
    from optuna.trial import TrialState

    tracking.sync()  # this process's trial records are written, whatever happens to the parent run
    tracking.stop_watching()  # this process trains no more of the study
    trials = study.get_trials(deepcopy=False)
    if not any(t.state == TrialState.RUNNING for t in trials):
        backfill_study(study, tracking, metrics, settled_seconds=0.0 if sole_writer else SETTLED_SECONDS)
        log_best_models(study, trials, tracking)
        try:
            tracking.finish_study("KILLED" if interrupted else "FINISHED")
        except Exception as exc:  # the study is recorded; the next run of it closes the parent run
            logging.getLogger(__name__).warning(
                "tuner: could not close the MLflow run of study %s (%s: %s); the next run of the study closes it",
                study.study_name,
                type(exc).__name__,
                first_line(exc),
            )


def log_best_models(study: Any, trials: Sequence[FrozenTrial], tracking: StudyTracking) -> None:
    """Log the kept best model (a front's models) to its trial's MLflow run, once; a failure is one warning."""
    folder = study.user_attrs.get(MODELS_ATTR)
    if not folder:
        return
    run_ids = {t.number: t.user_attrs[RUN_ID_ATTR] for t in trials if RUN_ID_ATTR in t.user_attrs}
    try:
        log_kept_models(Path(folder), run_ids, tracking.tracking_uri)
    except Exception as exc:  # the model file is kept: `tuner best --model-out` still has it
        logging.getLogger(__name__).warning("tuner: could not log the best model to MLflow: %s", exc)


def counted_trials(trials: Sequence[FrozenTrial], run_key: str | None = None) -> int:
    """Trials that count against a budget: all but attempts replaced by a retry (dead worker, interrupt).

    With `run_key`, those of that run, and those just started that do not say their run yet
    (counting them errs on the side of waiting a moment, never of an extra trial).
    """
    replaced = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    if run_key is not None:
        trials = [t for t in trials if t.user_attrs.get(RUN_ATTR) == run_key or _unclaimed(t)]
    return sum(t.number not in replaced for t in trials)


def _unclaimed(trial: FrozenTrial) -> bool:
    return trial.state.name == "RUNNING" and RUN_ATTR not in trial.user_attrs


def budget_left(study: Any, trials: Sequence[FrozenTrial], run_key: str | None) -> bool:
    """Whether `run_key`'s run may start another trial: one is queued (a retry), or the run is short of its budget."""
    from optuna.trial import TrialState

    if any(t.state == TrialState.WAITING for t in trials):
        return True
    budget = study.user_attrs.get(f"{RUN_BUDGET_PREFIX}{run_key}")
    if budget is None:  # a study from before per-run budgets: one budget for the study
        total = study.user_attrs.get(BUDGET_ATTR)
        return total is None or counted_trials(trials) < int(total)
    if budget["n_trials"] is None:
        return True
    return counted_trials(trials, None if budget["in_all"] else run_key) < int(budget["n_trials"])


def set_user_attrs(study: Any, attrs: Mapping[str, Any]) -> None:
    """Record the spec's study attributes (kind, ...), writing only those that changed."""
    for key, value in attrs.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


def make_sampler(spec: StudySpec) -> Any:
    return TrialSeeded(_base_sampler(spec), spec.seed)


def _base_sampler(spec: StudySpec) -> Any:
    import optuna

    s = optuna.samplers
    seed = spec.seed
    if spec.sampler == "tpe":
        # trials asked together (a cohort) see each other as running, so they spread out
        return s.TPESampler(seed=seed, constant_liar=spec.cohort > 1)
    if spec.sampler == "random":
        return s.RandomSampler(seed=seed)
    if spec.sampler == "grid":
        return s.GridSampler(grid_values(spec.space), seed=seed)
    if spec.sampler == "cmaes":
        return s.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if spec.sampler == "gp":
        return s.GPSampler(seed=seed, warn_independent_sampling=False)
    if spec.sampler == "qmc":
        return s.QMCSampler(seed=seed, scramble=True, warn_independent_sampling=False)
    raise UserError(f"sampler {spec.sampler!r} is unknown: choose one of {', '.join(SAMPLERS)}")


class TrialSeeded(BaseSampler):
    """A sampler whose random state is set, before each trial, from the study's seed and the trial's number.

    Seeding each process once (from the study's seed) made a resumed study, a second run or a
    joining worker draw the same first points again. Trial numbers are unique in a study, so
    every trial gets its own stream, and a study stays reproducible from its seed.
    """

    def __init__(self, sampler: Any, seed: int) -> None:
        self.sampler, self.seed = sampler, seed
        self._states = _random_states(sampler)

    def __getattr__(self, name: str) -> Any:  # everything else is the wrapped sampler's
        return getattr(self.sampler, name)

    def before_trial(self, study: Any, trial: Any) -> None:
        import numpy as np

        state = int(np.random.SeedSequence([self.seed, trial.number]).generate_state(1)[0])
        for rng in self._states:
            rng.seed(state)
        self.sampler.before_trial(study, trial)

    def infer_relative_search_space(self, study: Any, trial: Any) -> Any:
        return self.sampler.infer_relative_search_space(study, trial)

    def sample_relative(self, study: Any, trial: Any, search_space: Any) -> Any:
        return self.sampler.sample_relative(study, trial, search_space)

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: Any) -> Any:
        return self.sampler.sample_independent(study, trial, name, distribution)

    def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
        self.sampler.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.sampler.reseed_rng()


def _random_states(sampler: Any, depth: int = 0) -> list[Any]:
    """The numpy RandomStates of a sampler and of the samplers it holds (TPE's random one, CMA-ES's independent one)."""
    from optuna.samplers._lazy_random_state import LazyRandomState

    found = []
    for value in vars(sampler).values():
        if isinstance(value, LazyRandomState):
            found.append(value.rng)
        elif isinstance(value, BaseSampler) and depth < 2:
            found += _random_states(value, depth + 1)
    return found


def make_pruner(spec: StudySpec) -> Any:
    import optuna

    p = optuna.pruners
    if spec.pruner == "median":
        return p.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if spec.pruner == "hyperband":
        return p.HyperbandPruner(min_resource=1)
    if spec.pruner == "successive_halving":
        return p.SuccessiveHalvingPruner(min_resource=1)
    if spec.pruner == "percentile":
        return p.PercentilePruner(25.0, n_startup_trials=5, n_warmup_steps=2)
    if spec.pruner == "none":
        return p.NopPruner()
    raise UserError(f"pruner {spec.pruner!r} is unknown: choose one of {', '.join(PRUNERS)}")
