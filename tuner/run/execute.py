"""Run a study's trials: `execute_study` here or in local worker processes, `join` in each worker.

`run_here` runs a planned study to its budget in this process. `join` is what each worker
runs, here or on any other host: it loads an existing study, rebuilds its plan from the
spec that `prepare_study` recorded in the study (so a worker needs no study script, only
the storage and tracking URIs), and runs trials until the study's shared budget is used.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner import interrupts
from tuner.errors import UserError
from tuner.heap import freeze_heap
from tuner.locations import check_storage_url, check_tracking_uri, heartbeat_seconds, redact, storage_kind
from tuner.run.adapter import TrialFailed, TrialRunner
from tuner.run.cohort import run_cohort
from tuner.run.launch import launch, watch_launcher
from tuner.run.models import ModelKeeper
from tuner.run.open import (
    LATEST_RUN_ATTR,
    SPEC_ATTR,
    budget_left,
    close_parent_run,
    open_study,
    open_tracking,
    prepare_study,
    quiet_optuna,
)
from tuner.run.plan import Plan, make_plan
from tuner.run.pruning import CurvePruner
from tuner.storage import open_storage
from tuner.study import RunOptions, StudySpec, check_checkpoint_every, check_timeout

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    from tuner.tracking import StudyTracking


def execute_study(spec: StudySpec, options: RunOptions) -> Any:
    """Plan `spec` with `options` and run it; returns the Optuna study. Bad input fails before anything is created.

    With `options.workers` > 1 the trials run in that many worker processes (`tuner.run.launch`).
    """
    plan = make_plan(spec, options)
    quiet_optuna()
    return launch(plan) if options.workers > 1 else run_here(plan)


def run_here(plan: Plan) -> Any:
    """Run the planned study in this process until its budget is used; returns the Optuna study."""
    from tuner.progress import StudyProgress

    spec = plan.spec
    study, tracking = prepare_study(plan)
    runner = make_runner(plan, tracking)
    interrupted = True
    try:
        with StudyProgress(spec.name, spec.n_trials, spec.timeout, quiet=plan.options.quiet) as progress:
            work(study, runner, spec.timeout, callbacks=[tracking.record_best, progress])
        interrupted = False
    finally:
        close_parent_run(study, tracking, interrupted, plan.spec.metrics)
    return study


def make_runner(plan: Plan, tracking: StudyTracking) -> TrialRunner:
    """The objective: the plan's trainable, on the plan's device, keeping the best model."""
    options, spec = plan.options, plan.spec
    return TrialRunner(
        space=spec.space,
        tracking=tracking,
        fit=plan.trainable(),
        metrics=spec.metrics,
        overrides={"device": plan.device} if plan.device else {},
        takes_config=plan.takes_config,
        passes_context=plan.passes_context,
        trainable_name=plan.trainable_name,
        device=plan.device,
        data_dir=options.data_dir,
        models=ModelKeeper(plan.models_dir, spec.directions, keep_all=options.keep_models == "all"),
        curve_pruner=CurvePruner(spec.pruner, spec.resolved_direction) if spec.multi_objective else None,
        checkpoint_dir=plan.checkpoint_dir,
        # kept checkpoints are for using the trained models: each must hold its trial's last epoch
        checkpoint_every=0.0 if options.keep_checkpoints else options.checkpoint_every,
        keep_checkpoints=options.keep_checkpoints,
        run_key=options.run_key,
        cohort=spec.cohort,
        fused=plan.fused(),
    )


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
    with interrupts.deferred():  # a signal stops the trainable, never Optuna or tracking half way
        while timeout is None or time.monotonic() - started < timeout:
            interrupts.check()
            trials = study.get_trials(deepcopy=False)
            if budget_left(study, trials, objective.run_key):
                try:
                    if objective.fused is not None:
                        optuna.storages.fail_stale_trials(study)  # as study.optimize does before each trial

                        def more() -> bool:  # each member after the first: the run's budget, shared by its workers
                            return budget_left(study, study.get_trials(deepcopy=False), objective.run_key)

                        ran += run_cohort(study, objective, objective.cohort, callbacks, may_start=more) - 1
                    else:
                        study.optimize(objective, n_trials=1, catch=(TrialFailed,), callbacks=list(callbacks))
                except Exception as exc:
                    if (full := _disk_full(exc)) is not None:
                        raise UserError(
                            f"the study's storage cannot be written ({full.strerror}): this worker stops, and its "
                            "last trial, left running, is retried once space is freed; free space and run again"
                        ) from exc
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
                    with interrupts.raised():
                        time.sleep(poll)
            else:
                break
    return ran


def _disk_full(exc: BaseException) -> OSError | None:
    """The full disk (or quota) behind `exc`, as Optuna reports a failed write of a trial's end: its own
    AssertionError, raised while the storage's OSError was being handled."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in (errno.ENOSPC, errno.EDQUOT):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def join(study_name: str, options: RunOptions, worker_index: int | None = None, timeout: float | None = None) -> int:
    """`tuner worker`: run trials of an existing study until its budget is used; returns how many ran."""
    quiet_optuna()
    watch_launcher()
    if options.threads is not None and options.threads < 1:
        raise UserError(f"--threads {options.threads}: give 1 or more")
    check_storage_url(options.storage)
    check_tracking_uri(options.tracking_uri)
    check_checkpoint_every(options.checkpoint_every)
    check_timeout(timeout)
    if storage_kind(options.storage) == "journal" and not Path(options.storage).exists():
        raise UserError(
            f"--storage {options.storage}: no such journal file; create the study first with "
            "`tuner create SCRIPT` (or `tuner run SCRIPT`) on this storage"
        )
    spec, paths, latest_run = recorded_spec(study_name, options)
    # a launcher's workers count in its run; another host's, in the run of the latest `tuner create`
    options = dataclasses.replace(options, import_paths=paths, run_key=options.run_key or latest_run)
    plan = make_plan(spec, options)  # this host's devices and dataset files
    if options.threads is not None:
        import torch

        torch.set_num_threads(options.threads)
    index = worker_index if worker_index is not None else os.getpid()
    study = open_study(plan.spec, options, create=False, worker_index=index)
    tracking = open_tracking(study, plan.spec, options)
    runner = make_runner(plan, tracking)
    interrupted = True
    try:
        ran = work(
            study,
            runner,
            plan.spec.timeout if timeout is None else timeout,
            callbacks=[tracking.record_best],
        )
        interrupted = False
    finally:
        close_parent_run(study, tracking, interrupted, plan.spec.metrics, sole_writer=False)
    return ran


def recorded_spec(study_name: str, options: RunOptions) -> tuple[StudySpec, tuple[str, ...], str | None]:
    """The spec `prepare_study` kept in the study, the folders its trainable imports from, its latest run.

    UserError when there is no such study or record.
    """
    import optuna

    storage = open_storage(options.storage)
    try:
        attrs = optuna.load_study(study_name=study_name, storage=storage).user_attrs
    except KeyError:
        raise UserError(
            f"study {study_name!r} not found in {redact(options.storage)}; create it with `tuner create SCRIPT "
            "--storage ...` or list the studies there with `tuner studies --storage ...`"
        ) from None
    record = attrs.get(SPEC_ATTR)
    if record is None:
        raise UserError(
            f"study {study_name!r} was not created by `tuner run` or `tuner create`, so its search space is not "
            "recorded; create it with one of them first"
        )
    return StudySpec.from_record(record), tuple(record.get("import_paths", ())), attrs.get(LATEST_RUN_ATTR)
