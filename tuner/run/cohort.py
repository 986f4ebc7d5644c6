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


def run_cohort(study: Any, runner: TrialRunner, size: int, callbacks: Sequence[Callback] = ()) -> int:
    """Ask `size` trials and train them in cohorts of one shape; returns how many trials ended.

    On an interrupt every member still open is closed (KILLED, queued again to resume from its
    checkpoint) before the interrupt goes on: no trial is left running.
    """
    fused = runner.fused
    open_members: list[Member] = []
    ended = 0
    with contextlib.ExitStack() as heartbeats, _as_optimize(study):
        try:
            for _ in range(size):
                trial = study.ask()
                beat: Any = get_heartbeat_thread(
                    trial._trial_id, study._storage
                )  # as study.optimize keeps one per trial
                heartbeats.enter_context(beat)
                if open_members:
                    trial = _with_shape_of(study, trial, open_members[0], fused.shape_fields)
                member = runner.member(trial)
                open_members.append(member)
                try:
                    runner.begin(member)
                except Exception as exc:
                    _end(study, runner, member, exc, callbacks, open_members)
                    ended += 1
            for group in _groups(open_members, fused):
                ended += _train(study, runner, group, callbacks, open_members)
        except BaseException as exc:  # an interrupt, or a store that failed: no member stays RUNNING
            for member in list(open_members):
                _end(study, runner, member, exc, callbacks, open_members)
            raise
    return ended


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


def _train(
    study: Any, runner: TrialRunner, group: list[Member], callbacks: Sequence[Callback], open_members: list[Member]
) -> int:
    """Train one group as a cohort to its last epoch; each member is reported, pruned and told on its own."""
    try:
        cohort = runner.fused([m.config for m in group], [m.checkpoint for m in group], runner.checkpoint_every)
        _mark(group)
        for _ in range(cohort.start_epoch, cohort.epochs + 1):
            if not cohort.active():
                break
            with interrupts.raised():  # the training itself: Ctrl-C or SIGTERM stops it at once
                results = cohort.train_epoch()
            for index, result in results.items():
                member = group[index]
                try:
                    if isinstance(result, BaseException):  # it diverged: it has left the cohort
                        raise result
                    runner.report(member, result)
                except Exception as exc:  # pruned, diverged, a record that failed: this member alone ends
                    if index in cohort.active():
                        cohort.drop(index)
                    _end(study, runner, member, exc, callbacks, open_members)
        for index in cohort.active():
            member = group[index]
            try:
                values = runner.complete(member, cohort.model(index))
            except Exception as exc:
                _end(study, runner, member, exc, callbacks, open_members)
                continue
            _tell(study, member, callbacks, open_members, values=values)
    except Exception as exc:  # the cohort itself failed (out of memory...): each member still open fails with it
        for member in [m for m in group if m in open_members]:
            _end(study, runner, member, exc, callbacks, open_members)
    return len(group)


def _mark(group: Sequence[Member]) -> None:
    """Say in each member's trial and run which trials trained with it (`COHORT_ATTR`, tag `tuner.cohort`)."""
    numbers = [m.trial.number for m in group]
    for member in group:
        with combined_writes(member.trial):
            member.trial.set_user_attr(COHORT_ATTR, numbers)
        if member.run is not None:
            member.run.flush([("tuner.cohort", ",".join(map(str, numbers)))])


def _end(
    study: Any,
    runner: TrialRunner,
    member: Member,
    exc: BaseException,
    callbacks: Sequence[Callback],
    open_members: list[Member],
) -> None:
    """Close a member that stopped on `exc` (its records, as `TrialRunner.close` does) and tell Optuna."""
    error = runner.close(member, exc)
    if isinstance(error, TrialTakenOver):  # another worker failed it as stale: Optuna refuses any write
        open_members.remove(member)
        logging.getLogger(__name__).warning(
            "trial %d lost its heartbeat and was retried by another worker; going on", member.trial.number
        )
        return
    state = TrialState.PRUNED if isinstance(error, optuna.TrialPruned) else TrialState.FAIL
    _tell(study, member, callbacks, open_members, state=state)


def _tell(
    study: Any,
    member: Member,
    callbacks: Sequence[Callback],
    open_members: list[Member],
    values: float | list[float] | None = None,
    state: TrialState | None = None,
) -> None:
    open_members.remove(member)
    frozen = study.tell(member.trial, values, state=state, skip_if_finished=True)
    for callback in callbacks:
        callback(study, frozen)
