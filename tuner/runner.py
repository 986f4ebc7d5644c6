"""Run a study: validate, open storage and tracking, run trials until the budget is used, record the best.

A study's trial budget is shared by every process working on it: `prepare_study` adds the
run's `n_trials` to the budget kept in the study (or, with `n_trials_in_all`, sets it to
`n_trials`), and `work` runs trials while the study is short of it, so N workers run n_trials
between them, not N times as many.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.adapter import FitFn, StaleTrialHandler, TrialFailed, TrialRunner
from tuner.errors import UserError
from tuner.heap import freeze_heap
from tuner.storage import DEFAULT_STORE, heartbeat_seconds, open_storage, redact, set_stale_trial_callback
from tuner.study import RunOptions, StudySpec, make_pruner, make_sampler

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from tuner.tracking import StudyTracking

SPEC_ATTR = "tuner:spec"  # study user attribute: the StudySpec as data, for `tuner worker`
BUDGET_ATTR = "tuner:n_trials"  # study user attribute: how many trials the study is to have in all


def quiet_optuna() -> None:
    """Our progress line says what Optuna's per-trial INFO lines would."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("optuna").setLevel(logging.ERROR)


def open_study(spec: StudySpec, options: RunOptions, create: bool = True, worker_index: int = 0) -> Any:
    """Create the study, or load it when it exists (resume, or join from another worker).

    Workers sample with seeds `worker_index` apart, or they would all draw the same trials.
    """
    import optuna

    storage = open_storage(options.storage)
    if spec.name in optuna.get_all_study_names(storage):
        seeded = dataclasses.replace(spec, seed=spec.seed + worker_index) if spec.sampler != "qmc" else spec
        study = optuna.load_study(
            study_name=spec.name, storage=storage, sampler=make_sampler(seeded), pruner=make_pruner(spec)
        )
        if study.direction.name.lower() != spec.resolved_direction:
            raise UserError(
                f"study {spec.name!r} already exists with direction {study.direction.name.lower()}; "
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
        direction=spec.resolved_direction,
    )


def run_study(spec: StudySpec, options: RunOptions, fit: FitFn | None = None) -> Any:
    """Run `spec` with `options`; returns the Optuna study. Bad input fails before anything is created.

    With `options.workers` > 1 the trials run in that many worker processes (`tuner.workers`).
    """
    spec = spec.with_options(options)
    spec.validate(options)
    quiet_optuna()
    if options.workers > 1:
        if fit is not None:
            raise UserError("a custom fit function cannot be sent to worker processes; run with --workers 1")
        from tuner.workers import launch

        return launch(spec, options)
    study, tracking = prepare_study(spec, options)
    runner = make_runner(spec, options, tracking, fit)
    from tuner.progress import StudyProgress

    interrupted = True
    try:
        with StudyProgress(spec.name, spec.n_trials, spec.timeout, quiet=options.quiet) as progress:
            work(study, runner, spec.timeout, callbacks=[lambda s, t: tracking.record_best(s), progress])
        interrupted = False
    finally:
        close_parent_run(study, tracking, interrupted)
    return study


def prepare_study(spec: StudySpec, options: RunOptions) -> tuple[Any, StudyTracking]:
    """Create or load the study, its MLflow experiment and parent run; record the spec; add to the budget.

    Done once, by the process that launches a run, before any worker starts.
    """
    from optuna.trial import TrialState

    from tuner.tracking import StudyTracking

    study = open_study(spec, options)
    set_user_attrs(study, spec.user_attrs)
    tracking = StudyTracking(options.tracking_uri, study, spec.settings(options.storage), spec.describe_space())
    set_user_attrs(study, {SPEC_ATTR: spec.to_record()})
    budget = spec.n_trials
    if budget is not None and not options.n_trials_in_all:
        # n_trials more, queued ones (interrupted trials to resume) among them: they run first
        trials = study.get_trials(deepcopy=False)
        budget += counted_trials(trials) - sum(t.state == TrialState.WAITING for t in trials)
    study.set_user_attr(BUDGET_ATTR, budget)
    set_stale_trial_callback(study._storage, StaleTrialHandler(tracking))
    return study, tracking


def make_runner(spec: StudySpec, options: RunOptions, tracking: StudyTracking, fit: FitFn | None = None) -> TrialRunner:
    """The objective: trains on `--device`, or on the GPU a one-GPU `--gpus` names."""
    device = options.device or (f"cuda:{options.gpus[0]}" if options.gpus else None)
    runner = TrialRunner(
        space=spec.space,
        tracking=tracking,
        metric=spec.metric,
        overrides={"device": device} if device else {},
        checkpoint_dir=checkpoint_dir(options),
        # kept checkpoints are for using the trained models: each must hold its trial's last epoch
        checkpoint_every=0.0 if options.keep_checkpoints else options.checkpoint_every,
        keep_checkpoints=options.keep_checkpoints,
    )
    if fit is not None:
        runner.fit = fit
    return runner


def work(
    study: Any,
    objective: TrialRunner,
    timeout: float | None,
    callbacks: Sequence[Callable[[Any, FrozenTrial], None]] = (),
) -> int:
    """Run trials until the study's budget is used (or `timeout` seconds pass); returns how many ran.

    Trials still running in other workers at the end are waited for: each either ends, or
    goes stale because its worker died and comes back as a WAITING retry that this worker
    runs. So when the last worker stops, every trial is in a final state.
    """
    import optuna
    from optuna.trial import TrialState

    freeze_heap()
    started, ran = time.monotonic(), 0
    poll = min(2.0, heartbeat_seconds()[0])
    while timeout is None or time.monotonic() - started < timeout:
        trials = study.get_trials(deepcopy=False)
        if budget_left(study, trials):
            try:
                study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=list(callbacks))
            except Exception:
                if not objective.taken_over:
                    raise
                # Optuna refuses to close a trial that another worker failed as stale; its retry goes on
                logging.getLogger(__name__).warning(
                    "trial %d lost its heartbeat and was retried by another worker; going on",
                    objective.taken_over.pop(),
                )
            ran += 1
        elif any(t.state == TrialState.RUNNING for t in trials):
            optuna.storages.fail_stale_trials(study)  # a dead worker's trial comes back as WAITING
            if not any(t.state == TrialState.WAITING for t in study.get_trials(deepcopy=False)):
                time.sleep(poll)
        else:
            break
    return ran


def budget_left(study: Any, trials: Sequence[FrozenTrial]) -> bool:
    """Whether to start another trial: one is queued (a retry), or the study is short of its budget."""
    from optuna.trial import TrialState

    if any(t.state == TrialState.WAITING for t in trials):
        return True
    budget = study.user_attrs.get(BUDGET_ATTR)
    return budget is None or counted_trials(trials) < int(budget)


def counted_trials(trials: Sequence[FrozenTrial]) -> int:
    """Trials that count against the budget: all but attempts replaced by a retry (dead worker, interrupt)."""
    replaced = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    return sum(t.number not in replaced for t in trials)


def close_parent_run(study: Any, tracking: StudyTracking, interrupted: bool) -> None:
    """End the study's parent run, unless trials still run in other workers (the last one out ends it)."""
    from optuna.trial import TrialState

    tracking.sync()  # this process's trial records are written, whatever happens to the parent run
    if not any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
        tracking.finish_study("KILLED" if interrupted else "FINISHED")


def set_user_attrs(study: Any, attrs: Mapping[str, Any]) -> None:
    """Record the spec's study attributes (kind, ...), writing only those that changed."""
    for key, value in attrs.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


def checkpoint_dir(options: RunOptions) -> Path:
    """`--checkpoint-dir`, else beside a local store; with a remote one, under ./mlruns/checkpoints.

    A retry on another host resumes only when the checkpoint directory is on a shared file system.
    """
    if options.checkpoint_dir:
        return Path(options.checkpoint_dir).resolve()
    if options.storage.startswith("sqlite:///"):
        return Path(options.storage.removeprefix("sqlite:///")).resolve().parent / "checkpoints"
    if "://" not in options.storage:
        return Path(options.storage).resolve().parent / "checkpoints"
    return DEFAULT_STORE.resolve() / "checkpoints"
