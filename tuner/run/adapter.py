"""The one place where a trainable meets Optuna and MLflow.

`TrialRunner` consumes `fit(config)` epoch by epoch, reports to the trial, asks the pruner,
stops the generator when pruned, feeds tracking, and maps every outcome to a trial state
in `classify`.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import os
import socket
import traceback
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

import trainables
from tuner.locations import MAX_RETRY
from tuner.space import Space, suggest
from tuner.tracking import RUN_ID_ATTR, StudyTracking, TrialRun

FitFn = Callable[..., Generator["trainables.EpochResult", None, None]]  # a string: torch loads with the first trial
REASON_ATTR = "reason"  # trial user attribute: why a trial was pruned or failed
PRUNED_AT_ATTR = "pruned_at_epoch"
# The first attempt's trial number. Optuna copies user attributes into the retry of a trial
# whose worker died, so a retry finds here which checkpoint to resume and, in RUN_ID_ATTR,
# the MLflow run of the attempt it replaces.
ATTEMPT_OF_ATTR = "attempt_of_trial"
WORKER_ATTR = "worker"  # host:pid of the process running the trial


class TrialFailed(Exception):
    """Raised to Optuna so that it records the trial as FAIL; the study goes on."""


class TrialTakenOver(Exception):
    """This worker's trial was failed as stale by another worker (its heartbeats stopped reaching the
    storage for the grace period: a long pause, a network cut) and retried there; this attempt stops."""


def classify(exc: BaseException, config: trainables.TrainConfig | None, epochs_done: int) -> tuple[str, str]:
    """(state, reason) for how a trial ended: the only mapping from outcomes to states."""
    if isinstance(exc, optuna.exceptions.UpdateFinishedTrialError):  # before RuntimeError: it is one
        return (
            "FAIL",
            f"heartbeat lost at epoch {epochs_done}: another worker failed this trial as stale and retried it",
        )
    if isinstance(exc, optuna.TrialPruned):
        return "PRUNED", f"pruned at epoch {epochs_done}"
    if isinstance(exc, trainables.Diverged):
        return "PRUNED", f"diverged at epoch {exc.epoch}"
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return "KILLED", f"interrupted at epoch {epochs_done} ({type(exc).__name__})"
    if _is_cuda_oom(exc):
        where = f" with batch_size {config.batch_size} and model {config.model}" if config else ""
        return "FAIL", f"CUDA out of memory{where}: lower the batch size or use a smaller model"
    text = " ".join(str(exc).split())
    return "FAIL", f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_cuda_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


@dataclass
class TrialRunner:
    """The objective handed to `study.optimize`."""

    space: Space
    tracking: StudyTracking
    fit: FitFn  # the plan's trainable (`tuner.run.plan`)
    metric: str = "val_acc"
    overrides: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_dir: Path | None = None
    checkpoint_every: float = 0.0  # seconds between a trial's checkpoints (0: every epoch)
    keep_checkpoints: bool = False
    taken_over: list[int] = field(default_factory=list)  # trials failed as stale under us: see `work`

    def __call__(self, trial: optuna.Trial) -> float:
        first_number = int(trial.user_attrs.get(ATTEMPT_OF_ATTR, trial.number))
        retry_of_run = trial.user_attrs.get(RUN_ID_ATTR)  # set only when this trial is a retry
        checkpoint = self._checkpoint_path(first_number)
        config: trainables.TrainConfig | None = None
        run = None
        recorded_run = False
        epochs_done = 0
        try:
            with combined_writes(trial):  # the params and attributes below: one storage write, not a dozen
                config = suggest(trial, self.space, self.overrides)
                if retry_of_run is not None:  # normally closed by the worker that found it stale
                    self.tracking.close_dead_attempt(first_number, retry_of_run, WORKER_DIED)
                worker = worker_id()
                run = self.tracking.start_trial(
                    trial.number, trial.params, config, retry_of_run, attempt_of_trial=first_number, worker=worker
                )
                trial.set_user_attr(ATTEMPT_OF_ATTR, first_number)
                trial.set_user_attr(WORKER_ATTR, worker)
            value = None
            epochs = self.fit(config, checkpoint=checkpoint, checkpoint_every=self.checkpoint_every)
            try:
                for result in epochs:
                    run.log_epoch(result)
                    epochs_done = result.epoch
                    value = float(getattr(result, self.metric))
                    with combined_writes(trial):  # the run id goes with the first report: the run exists by now
                        if not recorded_run:
                            record_run_id(trial, run)
                        trial.report(value, result.epoch)
                    recorded_run = True
                    if trial.should_prune():
                        raise optuna.TrialPruned()
            finally:
                epochs.close()  # stops the trainable at once when pruned or failing
            if value is None:
                raise RuntimeError("the trainable yielded no epoch")
            run.finish("COMPLETE")
            self._remove_checkpoint(checkpoint)
            return value
        except BaseException as exc:
            state, reason = classify(exc, config, epochs_done)
            taken_over = isinstance(exc, optuna.exceptions.UpdateFinishedTrialError)
            if not taken_over:  # a taken-over trial is finished: Optuna refuses any write to it
                with combined_writes(trial):
                    if run is not None and not recorded_run:
                        record_run_id(trial, run)
                    self._record(trial, state, reason, epochs_done)
            if run is not None:
                run.finish(state, reason, error=exc if state == "FAIL" and not taken_over else None)
            if state == "KILLED":  # queued again; its retry resumes from the checkpoint kept here
                requeue(trial)
            elif not taken_over:  # the retry of a taken-over trial resumes from its checkpoint too
                self._remove_checkpoint(checkpoint)
            if taken_over:
                self.taken_over.append(trial.number)
                raise TrialTakenOver(reason) from exc
            if state == "FAIL" and _is_cuda_oom(exc):
                _release_cuda_memory(exc)
            if state == "PRUNED":
                raise optuna.TrialPruned(reason) from exc
            if state == "FAIL":
                raise TrialFailed(reason) from exc
            raise

    def _record(self, trial: optuna.Trial, state: str, reason: str, epochs_done: int) -> None:
        trial.set_user_attr(REASON_ATTR, reason)
        if state == "PRUNED":
            trial.set_user_attr(PRUNED_AT_ATTR, epochs_done)

    def _checkpoint_path(self, key: int) -> Path | None:
        if self.checkpoint_dir is None:
            return None
        return self.checkpoint_dir / self.tracking.experiment_id / f"trial-{key}.pt"

    def _remove_checkpoint(self, path: Path | None) -> None:
        if path is not None and not self.keep_checkpoints:
            path.unlink(missing_ok=True)


def record_run_id(trial: optuna.Trial, run: TrialRun) -> None:
    """Put the trial's MLflow run id in its user attributes (RUN_ID_ATTR), unless the run's creation failed.

    Not at the trial's start: the writer may still be creating the run then. A trial whose
    worker dies before its first report has no RUN_ID_ATTR; `StaleTrialHandler` finds its
    run by its tags.
    """
    run_id = run.run_id
    if run_id is not None:
        trial.set_user_attr(RUN_ID_ATTR, run_id)


def combined_writes(trial: optuna.Trial) -> contextlib.AbstractContextManager[None]:
    """The journal storage's `combined_writes`; other storages write as they go."""
    combine = getattr(trial.storage, "combined_writes", None)
    return combine() if combine is not None else contextlib.nullcontext()


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def requeue(trial: optuna.Trial) -> None:
    """Queue a WAITING copy of an interrupted trial: same params and user attributes, so that
    the next run resumes it from its checkpoint, linked to this attempt's MLflow run.

    The copy's system attributes say which trial it replaces, as Optuna's retry of a stale
    trial does (`failed_trial`, `retry_history`), so budgets count the trial once.
    """
    frozen = trial.storage.get_trial(trial._trial_id)
    user_attrs = {k: v for k, v in frozen.user_attrs.items() if k not in (REASON_ATTR, PRUNED_AT_ATTR)}
    system_attrs = {"failed_trial": frozen.number, "retry_history": [], **frozen.system_attrs}
    system_attrs["retry_history"] = [*system_attrs["retry_history"], frozen.number]
    trial.study.add_trial(
        optuna.create_trial(
            state=TrialState.WAITING,
            params=frozen.params,
            distributions=frozen.distributions,
            user_attrs=user_attrs,
            system_attrs=system_attrs,
        )
    )


WORKER_DIED = "worker died: its trial stopped sending heartbeats"


class StaleTrialHandler:
    """Run on each trial found stale (its worker died): close its MLflow run, then retry it.

    The retry is Optuna's: a WAITING copy with the same params and user attributes, so it
    resumes from the dead attempt's checkpoint and its run links to the dead one.
    """

    def __init__(self, tracking: StudyTracking, max_retry: int = MAX_RETRY) -> None:
        self.tracking = tracking
        self.retry = RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        worker = trial.user_attrs.get(WORKER_ATTR, "unknown")
        try:
            run_id = self.tracking.close_dead_attempt(
                trial.number, trial.user_attrs.get(RUN_ID_ATTR), f"{WORKER_DIED} ({worker})"
            )
            if run_id is not None and RUN_ID_ATTR not in trial.user_attrs:  # died before its first report
                trial = copy.copy(trial)
                trial.user_attrs = {**trial.user_attrs, RUN_ID_ATTR: run_id}  # so that the retry links to the run
        except Exception as exc:  # MLflow unreachable: the retry matters more than the record
            logging.getLogger(__name__).warning("could not close the run of dead trial %d: %s", trial.number, exc)
        self.retry(study, trial)


def _release_cuda_memory(exc: BaseException) -> None:
    import torch

    # The traceback holds the failed trial's frames and with them its tensors: clear them,
    # collect, and hand the cached blocks back to the driver.
    traceback.clear_frames(exc.__traceback__)
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
