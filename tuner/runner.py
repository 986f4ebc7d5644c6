"""Run a study: validate, open storage and tracking, optimize, record the best."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuner.adapter import FitFn, TrialFailed, TrialRunner
from tuner.errors import UserError
from tuner.storage import DEFAULT_STORE, open_storage
from tuner.study import RunOptions, StudySpec, make_pruner, make_sampler


def quiet_optuna() -> None:
    """Our progress line says what Optuna's per-trial INFO lines would."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    logging.getLogger("optuna").setLevel(logging.ERROR)


def open_study(spec: StudySpec, options: RunOptions, create: bool = True) -> Any:
    """Create the study, or load it when it exists (resume, or join from another worker)."""
    import optuna

    storage = open_storage(options.storage)
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    if spec.name in existing:
        study = optuna.load_study(
            study_name=spec.name, storage=storage, sampler=make_sampler(spec), pruner=make_pruner(spec)
        )
        if study.direction.name.lower() != spec.resolved_direction:
            raise UserError(
                f"study {spec.name!r} already exists with direction {study.direction.name.lower()}; "
                "use another --study-name or the same metric and direction"
            )
        return study
    if not create:
        raise UserError(f"study {spec.name!r} not found in {options.storage}; run `tuner studies` to list them")
    return optuna.create_study(
        study_name=spec.name,
        storage=storage,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        direction=spec.resolved_direction,
    )


def run_study(spec: StudySpec, options: RunOptions, fit: FitFn | None = None) -> Any:
    """Run `spec` with `options`; returns the Optuna study. Bad input fails before anything is created."""
    from tuner.tracking import StudyTracking

    spec = spec.with_options(options)
    spec.validate(options)
    quiet_optuna()
    study = open_study(spec, options)
    set_user_attrs(study, spec.user_attrs)
    tracking = StudyTracking(options.tracking_uri, study, spec.settings(options.storage), spec.describe_space())
    runner = TrialRunner(
        space=spec.space,
        tracking=tracking,
        metric=spec.metric,
        overrides={"device": options.device} if options.device else {},
        checkpoint_dir=checkpoint_dir(options),
        keep_checkpoints=options.keep_checkpoints,
    )
    if fit is not None:
        runner.fit = fit
    from tuner.progress import StudyProgress

    status = "FINISHED"
    try:
        with StudyProgress(spec.name, spec.n_trials, spec.timeout, quiet=options.quiet) as progress:
            study.optimize(
                runner,
                n_trials=spec.n_trials,
                timeout=spec.timeout,
                catch=(TrialFailed,),
                callbacks=[lambda s, t: tracking.record_best(s), progress],
            )
    except BaseException:
        status = "KILLED"
        raise
    finally:
        tracking.finish_study(status)
    return study


def set_user_attrs(study: Any, attrs: Mapping[str, Any]) -> None:
    """Record the spec's study attributes (kind, ...), writing only those that changed."""
    for key, value in attrs.items():
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


def checkpoint_dir(options: RunOptions) -> Path:
    """Checkpoints sit beside a local store; with a remote one, under ./mlruns/checkpoints."""
    if options.storage.startswith("sqlite:///"):
        return Path(options.storage.removeprefix("sqlite:///")).resolve().parent / "checkpoints"
    if "://" not in options.storage:
        return Path(options.storage).resolve().parent / "checkpoints"
    return DEFAULT_STORE.resolve() / "checkpoints"
