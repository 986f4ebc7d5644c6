"""Train a cohort: up to K trials asked together and trained as one fused model, one step for all.

Small models leave a device mostly idle; stacking K of them into one model (the trainable's
fused form, `trainables.cohort.Cohort`) trains K trials in little more than the time of one.
Each member stays a real trial: its own Optuna trial and MLflow run, reported and pruned
epoch by epoch through the same `TrialRunner` steps as a trial trained alone (`member`,
`begin`, `report`, `complete`, `close`). A member that is pruned or diverges leaves the
cohort and stops costing compute; the others train on.

Members must share a shape (dataset, model, batch size, epochs, precision: the fused form's
`key`). So that a cohort is full whatever the space samples, the members after the first
take the first member's sampled shape params as fixed params (Optuna's own mechanism, as
`enqueue_trial` uses): the sampler still chooses them once per cohort, and each member
samples everything else (learning rate, optimizer settings, schedule, regularisation).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import FrozenTrial, TrialState

from tuner import interrupts
from tuner.run.adapter import Member, TrialRunner, TrialTakenOver, combined_writes

Callback = Callable[[Any, FrozenTrial], None]
COHORT_ATTR = "cohort"  # trial user attribute: the numbers of the trials trained together with it, itself included


def run_cohort(
    study: Any,
    runner: TrialRunner,
    size: int,
    callbacks: Sequence[Callback] = (),
    may_start: Callable[[], bool] = lambda: True,
) -> int:
    """Ask up to `size` trials (each after the first only while `may_start()`: the run's budget, which
    other workers share) and train them in cohorts of one shape; returns how many trials ended.

    On an interrupt every member still open is closed (KILLED, queued again to resume from its
    checkpoint) before the interrupt goes on: no trial is left running.
    """
    members = _Members(study, runner, callbacks)
    with _as_optimize(study):
        try:
            for number in range(size):
                if number and not may_start():
                    break
                member = members.ask(first=members.open[0] if members.open else None)
                try:
                    runner.begin(member)
                except Exception as exc:
                    members.end(member, exc)
            for group in _groups(members.open, runner.fused):
                _train(members, group)
        except BaseException as exc:  # an interrupt, or a store that failed: no member stays RUNNING
            members.end_all(exc)
            raise
        finally:
            members.stop_heartbeats()
    return members.ended


class _Members:
    """The trials of one `run_cohort`: asked with a heartbeat each (as `study.optimize` keeps one per
    trial), then ended one by one, each told to Optuna once."""

    def __init__(self, study: Any, runner: TrialRunner, callbacks: Sequence[Callback]) -> None:
        self.study, self.runner, self.callbacks = study, runner, callbacks
        self.open: list[Member] = []
        self.ended = 0
        self._beats: dict[int, Any] = {}  # trial number: its heartbeat thread, stopped when it ends

    def ask(self, first: Member | None) -> Member:
        trial = self.study.ask()
        beat = get_heartbeat_thread(trial._trial_id, self.study._storage)
        beat.__enter__()
        self._beats[trial.number] = beat
        if first is not None:
            trial = _with_shape_of(self.study, trial, first, self.runner.fused.shape_fields)
        member = self.runner.member(trial)
        self.open.append(member)
        return member

    def end(self, member: Member, exc: BaseException) -> None:
        """Close a member that stopped on `exc` (its records, as `TrialRunner.close` does) and tell Optuna."""
        error = self.runner.close(member, exc)
        if isinstance(error, TrialTakenOver):  # another worker failed it as stale: Optuna refuses any write
            self.runner.taken_over.remove(member.trial.number)
            logging.getLogger(__name__).warning(
                "trial %d lost its heartbeat and was retried by another worker; going on", member.trial.number
            )
            self._forget(member)
            return
        state = TrialState.PRUNED if isinstance(error, optuna.TrialPruned) else TrialState.FAIL
        self.tell(member, state=state)

    def tell(self, member: Member, values: float | list[float] | None = None, state: TrialState | None = None) -> None:
        try:
            frozen = self.study.tell(member.trial, values, state=state, skip_if_finished=True)
        finally:  # told, or the storage refused: its heartbeat stops, and a retry follows when it goes stale
            self._forget(member)
        for callback in self.callbacks:
            callback(self.study, frozen)

    def end_all(self, exc: BaseException) -> None:
        for member in list(self.open):
            try:
                self.end(member, exc)
            except Exception as failed:  # the store failing too: the others are still closed
                logging.getLogger(__name__).warning(
                    "trial %d could not be closed (%s); it is retried once its heartbeat stops",
                    member.trial.number,
                    failed,
                )

    def stop_heartbeats(self) -> None:
        for number in list(self._beats):
            self._beats.pop(number).__exit__(None, None, None)

    def _forget(self, member: Member) -> None:
        self.open.remove(member)
        self.ended += 1
        beat = self._beats.pop(member.trial.number, None)
        if beat is not None:
            beat.__exit__(None, None, None)


@contextlib.contextmanager
def _as_optimize(study: Any) -> Iterator[None]:
    """Run as `study.optimize` does: samplers may call `study.stop()` (GridSampler does when its grid is done),
    and `ask` expects the trials' heartbeats to be kept, which `run_cohort` does."""
    local = study._thread_local
    outer, local.in_optimize_loop = local.in_optimize_loop, True
    try:
        yield
    finally:
        local.in_optimize_loop = outer


def _with_shape_of(study: Any, trial: optuna.Trial, first: Member, shape_fields: Sequence[str]) -> optuna.Trial:
    """`trial`, with the shape params the cohort's first member sampled fixed (a queued trial keeps its own)."""
    shared = {k: v for k, v in first.trial.params.items() if k in shape_fields}
    frozen = trial.storage.get_trial(trial._trial_id)
    # a queued trial has its params; a grid sampler's trial, its grid point
    if not shared or frozen.params or {"fixed_params", "grid_id"} & set(frozen.system_attrs):
        return trial
    trial.storage.set_trial_system_attr(trial._trial_id, "fixed_params", shared)
    return optuna.Trial(study, trial._trial_id)  # reads its fixed params back


def _groups(members: Sequence[Member], fused: Any) -> list[list[Member]]:
    """Members that can train as one model: the same shape, resuming from the same epoch."""
    groups: dict[Any, list[Member]] = {}
    for member in members:
        key = (fused.key(member.config), fused.resumes_at(member.checkpoint))
        groups.setdefault(key, []).append(member)
    return list(groups.values())


def _train(members: _Members, group: list[Member]) -> None:
    """Train one group as a cohort to its last epoch; each member is reported, pruned and told on its own.

    When the cohort itself fails (out of memory, a bad config), each of its members still open fails with it.
    """
    runner = members.runner
    try:
        cohort = runner.fused([m.config for m in group], [m.checkpoint for m in group], runner.checkpoint_every)
    except Exception as exc:
        for member in group:
            members.end(member, exc)
        return
    _mark(group)
    for _ in range(cohort.start_epoch, cohort.epochs + 1):
        if not cohort.active():
            return
        try:
            with interrupts.raised():  # the training itself: Ctrl-C or SIGTERM stops it at once
                results = cohort.train_epoch()
        except Exception as exc:
            for member in [m for m in group if m in members.open]:
                members.end(member, exc)
            return
        for index, result in results.items():
            member = group[index]
            try:
                if isinstance(result, BaseException):  # it diverged: it has left the cohort
                    raise result
                runner.report(member, result)
            except Exception as exc:  # pruned, diverged, a record that failed: this member alone ends
                if index in cohort.active():
                    cohort.drop(index)
                members.end(member, exc)
    for index in cohort.active():
        member = group[index]
        try:
            values = runner.complete(member, cohort.model(index))
        except Exception as exc:
            members.end(member, exc)
            continue
        members.tell(member, values=values)


def _mark(group: Sequence[Member]) -> None:
    """Say in each member's trial and run which trials trained with it (`COHORT_ATTR`, tag `tuner.cohort`)."""
    numbers = [m.trial.number for m in group]
    for member in group:
        with combined_writes(member.trial):
            member.trial.set_user_attr(COHORT_ATTR, numbers)
        if member.run is not None:
            member.run.flush([("tuner.cohort", ",".join(map(str, numbers)))])
