"""The one place where a trainable meets Optuna and MLflow.

`TrialRunner` consumes the trainable epoch by epoch, reports to the trial, asks the pruner,
stops the generator when pruned, feeds tracking, keeps the returned model when it is the
best, and maps every outcome to a trial state in `classify`. Two kinds of trainable:
the built-in protocol (`fit(config: TrainConfig, checkpoint=..., checkpoint_every=...)`
yielding EpochResult) and a user's (`train(params)` or `train(params, context)` yielding a
mapping of metric name to number per epoch); both may `return model` at the end.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import logging
import math
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
from tuner import interrupts
from tuner.errors import UserError
from tuner.locations import DEFAULT_STORE, MAX_RETRY
from tuner.run.context import TrialContext
from tuner.run.models import ModelKeeper
from tuner.run.pruning import CurvePruner
from tuner.space import Space, suggest_params
from tuner.tracking import RUN_ID_ATTR, StudyTracking, TrialRun

FitFn = Callable[..., Generator[Any, None, Any]]
REASON_ATTR = "reason"  # trial user attribute: why a trial was pruned or failed
PRUNED_AT_ATTR = "pruned_at_epoch"
# The first attempt's trial number. Optuna copies user attributes into the retry of a trial
# whose worker died, so a retry finds here which checkpoint to resume and, in RUN_ID_ATTR,
# the MLflow run of the attempt it replaces.
ATTEMPT_OF_ATTR = "attempt_of_trial"
WORKER_ATTR = "worker"  # host:pid of the process running the trial
RUN_ATTR = "tuner:run"  # the run (`tuner.run.open`) whose budget the trial counts in
EPOCH_KEY = "epoch"  # a user trainable may yield it: the step of that epoch's metrics
TRACKING_LOST_ATTR = "tracking_lost_writes"  # MLflow writes of the trial's run that failed; backfill restores them


class TrialFailed(Exception):
    """Raised to Optuna so that it records the trial as FAIL; the study goes on."""


class TrialTakenOver(Exception):
    """This worker's trial was failed as stale by another worker (its heartbeats stopped reaching the
    storage for the grace period: a long pause, a network cut) and retried there; this attempt stops."""


class BadYield(UserError):
    """A user trainable broke the contract (yielded no mapping, or one without the metric): every trial
    would fail the same way, so the study stops at the first."""


class MetricNotFinite(ArithmeticError):
    """A user trainable yielded a NaN or infinite value of the study's metric: the trial diverged."""

    def __init__(self, epoch: int, metric: str, value: float) -> None:
        self.epoch = epoch
        super().__init__(f"{metric} = {value} at epoch {epoch}")


def classify(exc: BaseException, params: Mapping[str, Any] | None, epochs_done: int) -> tuple[str, str]:
    """(state, reason) for how a trial ended: the only mapping from outcomes to states."""
    if isinstance(exc, optuna.exceptions.UpdateFinishedTrialError):  # before RuntimeError: it is one
        return (
            "FAIL",
            f"heartbeat lost at epoch {epochs_done}: another worker failed this trial as stale and retried it",
        )
    if isinstance(exc, optuna.TrialPruned):
        return "PRUNED", f"pruned at epoch {epochs_done}"
    if isinstance(exc, trainables.Diverged | MetricNotFinite):
        return "PRUNED", f"diverged at epoch {exc.epoch}"
    if isinstance(exc, KeyboardInterrupt | SystemExit):
        return "KILLED", f"interrupted at epoch {epochs_done} ({type(exc).__name__})"
    if _is_cuda_oom(exc):
        shown = [f"{k} {params[k]}" for k in ("batch_size", "model") if params and k in params]
        where = f" with {' and '.join(shown)}" if shown else ""
        return "FAIL", f"CUDA out of memory{where}: lower the batch size or use a smaller model"
    if isinstance(exc, BadYield):
        return "FAIL", str(exc)
    text = " ".join(str(exc).split())
    return "FAIL", f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _is_cuda_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError)


@dataclass
class Epoch:
    """One epoch's record, whichever trainable yielded it."""

    step: int
    metrics: dict[str, float]
    resumed: bool = False  # the first epoch trained after loading a checkpoint


@dataclass
class Member:
    """One trial while it trains: what `TrialRunner` needs to report it and to close it."""

    trial: optuna.Trial
    first_number: int  # the first attempt's number: a retry resumes its checkpoint
    checkpoint: Path | None
    retry_of_run: str | None = None  # the MLflow run of the attempt this retry replaces
    params: dict[str, Any] | None = None
    config: Any = None  # a TrainConfig (built-in protocol) or the params
    run: TrialRun | None = None
    context: TrialContext | None = None
    recorded_run: bool = False  # the run id is in the trial's attributes
    epochs_done: int = 0
    values: list[float] | None = None  # the objectives at the last epoch


@dataclass
class TrialRunner:
    """The objective handed to `study.optimize`."""

    space: Space
    tracking: StudyTracking
    fit: FitFn  # the plan's trainable (`tuner.run.plan`)
    metrics: tuple[str, ...] = ("val_acc",)  # the study's objectives; the first is reported and pruned on
    overrides: Mapping[str, Any] = field(default_factory=dict)
    checkpoint_dir: Path | None = None
    checkpoint_every: float = 0.0  # seconds between a trial's checkpoints (0: every epoch)
    keep_checkpoints: bool = False
    takes_config: bool = True  # the built-in protocol; else a user trainable of params
    passes_context: bool = False  # a user trainable that takes `context`
    trainable_name: str = "trainable"  # for messages: the reference, or the function's name
    device: str | None = None  # for a user trainable's context; None: cuda when there is one, else cpu
    data_dir: str | None = None
    models: ModelKeeper | None = None
    curve_pruner: CurvePruner | None = None  # a multi-objective study: Optuna cannot prune it
    taken_over: list[int] = field(default_factory=list)  # trials failed as stale under us: see `work`
    run_key: str | None = None  # the run whose budget this process's trials count in
    cohort: int = 1  # trials trained together (`tuner.run.cohort`) when `fused` is given
    fused: Any = None  # the trainable's fused form (`trainables.cohort.Cohort`); None: trials one by one

    def __call__(self, trial: optuna.Trial) -> float | list[float]:
        member = self.member(trial)
        try:
            self.begin(member)
            epochs = self._start(member)
            model = None
            try:
                while True:
                    try:
                        with interrupts.raised():  # the trainable's own code: Ctrl-C or SIGTERM stops it at once
                            raw = next(epochs)
                    except StopIteration as stop:
                        model = stop.value  # what the trainable returned: its trained model, if any
                        break
                    self.report(member, raw)
            finally:
                epochs.close()  # stops the trainable at once when pruned or failing
            return self.complete(member, model)
        except BaseException as exc:
            error = self.close(member, exc)
            if error is None:
                raise
            raise error from exc

    # One trial's steps, here in order and in `tuner.run.cohort` for each member of a cohort.

    def member(self, trial: optuna.Trial) -> Member:
        """The trial about to train: which attempt it is, where its checkpoint goes."""
        first_number = int(trial.user_attrs.get(ATTEMPT_OF_ATTR, trial.number))
        checkpoint = self._checkpoint_path(first_number)  # a cohort member's is a solo one: either resumes it
        if first_number != trial.number:  # a retry: it resumes from what the attempt it replaces left
            self._adopt_legacy_files(first_number)
        return Member(trial, first_number, checkpoint, retry_of_run=trial.user_attrs.get(RUN_ID_ATTR))

    def begin(self, member: Member) -> None:
        """Sample the trial's params, build its config and open its MLflow run."""
        trial = member.trial
        with combined_writes(trial):  # the params and attributes below: one storage write, not a dozen
            member.params = params = suggest_params(trial, self.space)
            if self.takes_config:
                params.update(self.overrides)
                member.config = trainables.TrainConfig(**params)
            else:
                member.config = params
            if member.retry_of_run is not None:  # normally closed by the worker that found it stale
                self.tracking.close_dead_attempt(member.first_number, member.retry_of_run, WORKER_DIED)
            worker = worker_id()
            member.run = self.tracking.start_trial(
                trial.number,
                trial.params,
                member.config,
                member.retry_of_run,
                attempt_of_trial=member.first_number,
                worker=worker,
            )
            trial.set_user_attr(ATTEMPT_OF_ATTR, member.first_number)
            trial.set_user_attr(WORKER_ATTR, worker)
            if self.run_key is not None:
                trial.set_user_attr(RUN_ATTR, self.run_key)

    def _start(self, member: Member) -> Generator[Any, None, Any]:
        """The trainable's epochs for one trial (nothing runs until the first is asked for)."""
        if self.takes_config:
            return self.fit(member.config, checkpoint=member.checkpoint, checkpoint_every=self.checkpoint_every)
        member.context = self._context(member.trial.number, member.first_number, member.checkpoint)
        params = dict(member.params or {})
        return self.fit(params, member.context) if self.passes_context else self.fit(params)

    def report(self, member: Member, raw: Any) -> None:
        """Record one epoch the trainable yielded; TrialPruned when the pruner stops the trial."""
        trial, run, context = member.trial, member.run, member.context
        assert run is not None
        epoch = self._epoch(raw, member.epochs_done, context)
        if not member.recorded_run and isinstance(member.config, trainables.TrainConfig):
            log_dataset(run, member.config)  # loaded by now: the trainable trained on it
        run.log_epoch(epoch.step, epoch.metrics, epoch.resumed)
        member.epochs_done = epoch.step
        if context is not None:
            context.epochs_done = epoch.step
        member.values = values = [epoch.metrics[m] for m in self.metrics]
        if not math.isfinite(values[0]) and not self.takes_config:
            raise MetricNotFinite(epoch.step, self.metrics[0], values[0])
        with combined_writes(trial):  # the run id goes with the first report: the run exists by now
            if not member.recorded_run:
                record_run_id(trial, run)  # waits for the writer: the parent run exists too (settled below)
            if self.curve_pruner is None:
                trial.report(values[0], epoch.step)
            else:
                self.curve_pruner.record(trial, epoch.step, values[0])
        if not member.recorded_run:
            self.tracking.settle()  # the parent run's id in the study early: a process joining finds it
        member.recorded_run = True
        should_prune = (
            trial.should_prune()
            if self.curve_pruner is None
            else self.curve_pruner.should_prune(trial, epoch.step, values[0])
        )
        if should_prune:
            raise optuna.TrialPruned()

    def complete(self, member: Member, model: Any) -> float | list[float]:
        """The trial trained every epoch: keep its model if it is the best, close its run; its objective value(s)."""
        values, run = member.values, member.run
        if values is None:
            raise BadYield(
                f"trainable {self.trainable_name} yielded no epoch: yield one mapping of metric name to number "
                f"per epoch, with the study's metric {self.metrics[0]!r}"
            )
        assert run is not None
        if self.models is not None and model is not None:
            self.models.offer(member.trial.number, values, model)
        context = member.context
        run.finish("COMPLETE", tags=self._resume_tags(context), files_dir=context.trial_dir if context else None)
        note_lost_writes(member.trial, run)
        self._remove_checkpoint(member.checkpoint)
        return values[0] if len(values) == 1 else values

    def close(self, member: Member, exc: BaseException) -> BaseException | None:
        """Record how the trial ended on `exc` (study and run); the exception to raise to Optuna (None: `exc` itself).

        An interrupted trial is queued again (`requeue`) to resume from its checkpoint.
        """
        trial, run, context = member.trial, member.run, member.context
        state, reason = classify(exc, member.params, member.epochs_done)
        taken_over = isinstance(exc, optuna.exceptions.UpdateFinishedTrialError)
        if not taken_over:  # a taken-over trial is finished: Optuna refuses any write to it
            with combined_writes(trial):
                if run is not None and not member.recorded_run:
                    record_run_id(trial, run)
                self._record(trial, state, reason, member.epochs_done)
        if run is not None:
            error = exc if state == "FAIL" and not taken_over and not isinstance(exc, BadYield) else None
            files = context.trial_dir if context else None
            run.finish(state, reason, error=error, tags=self._resume_tags(context), files_dir=files)
            if not taken_over:
                note_lost_writes(trial, run)
        if state == "KILLED":  # queued again; its retry resumes from the checkpoint kept here
            requeue(trial)
        elif not taken_over:  # the retry of a taken-over trial resumes from its checkpoint too
            self._remove_checkpoint(member.checkpoint)
        if taken_over:
            self.taken_over.append(trial.number)
            return TrialTakenOver(reason)
        if state == "FAIL" and _is_cuda_oom(exc):
            _release_cuda_memory(exc)
        if state == "PRUNED":
            return optuna.TrialPruned(reason)
        if state == "FAIL" and not isinstance(exc, BadYield):
            return TrialFailed(reason)
        return None

    def _epoch(self, raw: Any, epochs_done: int, context: TrialContext | None) -> Epoch:
        """The record of one yield: an EpochResult (built-in protocol) or a user's mapping, checked."""
        if self.takes_config:
            return Epoch(raw.epoch, raw.metrics(), raw.resumed)
        number = epochs_done + 1
        if not isinstance(raw, Mapping) or not raw:
            raise BadYield(
                f"trainable {self.trainable_name} yielded {_shown(raw)} at epoch {number}: expected a mapping of "
                f"metric name to number, e.g. {{{self.metrics[0]!r}: 0.9}}"
            )
        bad = [k for k, v in raw.items() if not isinstance(k, str) or isinstance(v, bool) or not _is_number(v)]
        if bad:
            raise BadYield(
                f"trainable {self.trainable_name} yielded {_shown(raw)} at epoch {number}: every key must be a "
                f"metric name and every value a number ({bad[0]!r} is not)"
            )
        missing = [m for m in self.metrics if m not in raw]
        if missing:
            raise BadYield(
                f"trainable {self.trainable_name} yielded {_shown(raw)} at epoch {number}, without the study's "
                f"metric {missing[0]!r}: yield it every epoch, or set the study's metric to one of {', '.join(map(repr, raw))}"
            )
        metrics = {k: float(v) for k, v in raw.items() if k != EPOCH_KEY}
        loaded = context.loaded_epochs if context is not None else None
        resumed = loaded is not None and epochs_done == 0
        if EPOCH_KEY in raw:
            step = int(raw[EPOCH_KEY])
        elif resumed and loaded is not None:
            step = loaded + 1  # the first epoch after the checkpoint's
        else:
            step = number
        return Epoch(step, metrics, resumed)

    def _context(self, number: int, first_number: int, checkpoint: Path | None) -> TrialContext:
        import torch

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        trial_dir = self._trial_folder() / f"trial-{first_number}-files"
        trial_dir.mkdir(parents=True, exist_ok=True)
        return TrialContext(
            trial_number=number,
            trial_dir=trial_dir,
            device=device,
            checkpoint_path=checkpoint,
            checkpoint_every=self.checkpoint_every,
            data_dir=self.data_dir,
            retry_of=first_number if first_number != number else None,
        )

    @staticmethod
    def _resume_tags(context: TrialContext | None) -> list[tuple[str, str]]:
        """A retried user trial that loaded no checkpoint started again from scratch: its run says so."""
        if context is None or context.retry_of is None or context.loaded_epochs is not None:
            return []
        return [
            ("tuner.restarted_from_scratch", f"retry of trial {context.retry_of}: the trainable loaded no checkpoint")
        ]

    def _record(self, trial: optuna.Trial, state: str, reason: str, epochs_done: int) -> None:
        trial.set_user_attr(REASON_ATTR, reason)
        if state == "PRUNED":
            trial.set_user_attr(PRUNED_AT_ATTR, epochs_done)

    def _trial_folder(self) -> Path:
        """Where this study's trials keep checkpoints and files: a folder named after the study (not its MLflow
        experiment's id, which is known only once the writer has opened the experiment, after the first epoch)."""
        return (self.checkpoint_dir or DEFAULT_STORE / "checkpoints") / folder_name(self.tracking.study_name)

    def _adopt_legacy_files(self, key: int) -> None:
        """Move a trial's checkpoint and files from where they were kept before trial folders were named after the
        study (a folder named by the MLflow experiment's id) to where its retry looks for them."""
        folder = self._trial_folder()
        names = [f"trial-{key}.pt", f"trial-{key}-files"]
        if any((folder / name).exists() for name in names):
            return
        try:
            legacy = folder.parent / self.tracking.experiment_id  # waits for the writer: retries only
        except RuntimeError:  # the experiment could not be opened: nothing to look in
            return
        for name in names:
            if (legacy / name).exists():
                folder.mkdir(parents=True, exist_ok=True)
                os.replace(legacy / name, folder / name)

    def _checkpoint_path(self, key: int) -> Path | None:
        return None if self.checkpoint_dir is None else self._trial_folder() / f"trial-{key}.pt"

    def _remove_checkpoint(self, path: Path | None) -> None:
        if path is not None and not self.keep_checkpoints:
            path.unlink(missing_ok=True)


def folder_name(name: str) -> str:
    """A file name for a study's name: the name itself when it is one, else it made safe and told apart by a hash."""
    import hashlib
    import re

    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "study"
    return safe if safe == name else f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def log_dataset(run: TrialRun, config: trainables.TrainConfig) -> None:
    """The built-in trainable's dataset in the trial's run: what it is, its digest and split sizes."""
    try:
        dataset = trainables.describe_dataset(
            config.dataset, config.data_dir, config.download, config.val_fraction, config.train_samples
        )
    except Exception as exc:  # the record is a nicety: it never fails the trial that trained on the data
        logging.getLogger(__name__).warning("tuner: dataset of trial not recorded: %s", exc)
        return
    run.log_dataset(dataset)


def record_run_id(trial: optuna.Trial, run: TrialRun) -> None:
    """Put the trial's MLflow run id in its user attributes (RUN_ID_ATTR), unless the run's creation failed.

    Not at the trial's start: the writer may still be creating the run then. A trial whose
    worker dies before its first report has no RUN_ID_ATTR; `StaleTrialHandler` finds its
    run by its tags.
    """
    run_id = run.run_id
    if run_id is not None:
        trial.set_user_attr(RUN_ID_ATTR, run_id)


def note_lost_writes(trial: optuna.Trial, run: TrialRun) -> None:
    """Note in the study that the trial's MLflow run lost writes: its record is kept in the study alone until
    `tuner.run.backfill` restores the run, and the note says why the run was restored."""
    if run.lost_writes:
        trial.set_user_attr(TRACKING_LOST_ATTR, run.lost_writes)


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
