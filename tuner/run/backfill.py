"""Make MLflow agree with the Optuna study: each finished trial has one finished run with every reported epoch.

The Optuna study is the record of a study; its MLflow runs are the view people browse. The
view can fall behind the record: a disk that filled during a write, a store or server that
was down, the last second of buffered metrics of a process killed by SIGKILL, a worker that
died before its run was closed. `backfill_study` compares the two when a study is opened and
when its run ends, and writes what MLflow lacks from what the study holds: the run itself
(params, state, reason), the first objective's value at every reported epoch, the final
values. Other per-epoch metrics of a lost write are gone; the run says what was restored
(`tuner.backfilled`). When the two agree it costs one search of the study's trial runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from tuner.errors import first_line
from tuner.locations import redact
from tuner.record_writer import LOST_WRITES_TAG
from tuner.run.adapter import REASON_ATTR, WORKER_DIED
from tuner.run.pruning import CURVE_ATTR
from tuner.tracking import MLFLOW_STATUS, RUN_ID_ATTR, StudyTracking

if TYPE_CHECKING:
    from mlflow.entities import Run
    from optuna.trial import FrozenTrial

BACKFILLED_TAG = "tuner.backfilled"  # on a run: what was restored from the Optuna study
_BATCH = 1000  # MLflow's most metrics in one log_batch


def backfill_study(study: Any, tracking: StudyTracking, metrics: Sequence[str], settled_seconds: float = 0.0) -> int:
    """Restore in MLflow what it lacks of the study's finished trials; returns how many runs were written.

    `metrics`: the study's objectives; the first is the one each trial reports per epoch. A failure is one
    warning: the study's record is intact, and the next run tries again.
    """
    from optuna.trial import TrialState

    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    restored = 0
    try:
        trials = study.get_trials(deepcopy=False)
        settled = datetime.now() - timedelta(seconds=settled_seconds)
        ended = [
            t
            for t in trials
            if t.state in finished
            and not (settled_seconds and (t.datetime_complete is None or t.datetime_complete > settled))
        ]
        if not ended:  # a new study: nothing to compare, and MLflow need not be read (or imported)
            return 0
        tracking.sync()  # this process's own writes first: they may be what looks missing
        runs = trial_runs(tracking)
        retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
        for trial in ended:
            run = _run_of(trial, runs.get(trial.number, []))
            if run is None or not agrees(trial, run):
                restore(tracking, trial, run, metrics, retried)
                restored += 1
    except Exception as exc:
        logging.getLogger(__name__).warning(
            "tuner: could not restore MLflow records of study %s from its Optuna study (%s: %s); they are kept "
            "there, and the next run of the study tries again",
            study.study_name,
            type(exc).__name__,
            redact(first_line(exc)),
        )
    if restored:
        logging.getLogger(__name__).warning(
            "tuner: restored the MLflow records of %d trial(s) of study %s from the Optuna study",
            restored,
            study.study_name,
        )
    return restored


def trial_runs(tracking: StudyTracking) -> dict[int, list[Run]]:
    """The study's trial runs, by the trial number they are tagged with."""
    found: dict[int, list[Run]] = {}
    page_token = None
    while True:
        page = tracking.client.search_runs(  # the study's own: a group's studies share the experiment
            [tracking.experiment_id],
            f"tags.`tuner.role` = 'trial' and tags.`mlflow.parentRunId` = '{tracking.parent_run_id}'",
            max_results=_BATCH,
            page_token=page_token,
        )
        for run in page:
            number = run.data.tags.get("optuna.trial_number", "")
            if number.isdigit():
                found.setdefault(int(number), []).append(run)
        page_token = page.token
        if not page_token:
            return found


def _run_of(trial: FrozenTrial, runs: list[Run]) -> Run | None:
    """The trial's run: the one its attribute names, else the one tagged with its number."""
    named = [r for r in runs if r.info.run_id == trial.user_attrs.get(RUN_ID_ATTR)]
    return (named or runs)[0] if runs else None


def curve(trial: FrozenTrial) -> dict[int, float]:
    """The first objective's value at each reported epoch (kept in system attributes for a multi-objective study)."""
    if trial.intermediate_values:
        return dict(trial.intermediate_values)
    return {int(k[len(CURVE_ATTR) :]): float(v) for k, v in trial.system_attrs.items() if k.startswith(CURVE_ATTR)}


def agrees(trial: FrozenTrial, run: Run) -> bool:
    """Whether the run is closed and holds every epoch the trial reported (by its own count, not a query per run)."""
    tags = run.data.tags
    if run.info.status == "RUNNING":
        return False
    if BACKFILLED_TAG in tags:
        return True
    epochs = tags.get("tuner.epochs", "")
    return LOST_WRITES_TAG not in tags and epochs.isdigit() and int(epochs) >= len(curve(trial))


def restore(
    tracking: StudyTracking, trial: FrozenTrial, run: Run | None, metrics: Sequence[str], retried: set[int]
) -> None:
    """Write the trial's record from the study into its run (created if there is none), and close the run."""
    from mlflow.entities import Metric, Param, RunTag

    client, metric = tracking.client, metrics[0]
    state = trial.state.name
    when = _ms(trial.datetime_complete or trial.datetime_start) or int(time.time() * 1000)
    if run is None:
        new_tags = {
            "mlflow.parentRunId": tracking.parent_run_id,
            "tuner.role": "trial",
            "optuna.trial_number": str(trial.number),
            "optuna.sampled_params": ",".join(sorted(trial.params)),
        }
        created = client.create_run(
            tracking.experiment_id,
            start_time=_ms(trial.datetime_start),
            tags=new_tags,
            run_name=f"trial {trial.number}",
        )
        run_id, have_steps, have_params, status = created.info.run_id, set(), set(), "RUNNING"
        have_metrics: set[str] = set()
    else:
        run_id, status = run.info.run_id, run.info.status
        have_steps = {m.step for m in client.get_metric_history(run_id, metric)}
        have_params, have_metrics = set(run.data.params), set(run.data.metrics)
    points = curve(trial)
    values = [Metric(metric, v, when, step) for step, v in sorted(points.items()) if step not in have_steps]
    if state == "COMPLETE" and trial.values:  # the other objectives' final values
        last = max(points, default=0)
        values += [
            Metric(n, float(v), when, last)
            for n, v in zip(metrics, trial.values, strict=False)
            if n != metric and n not in have_metrics
        ]
    params = [Param(k, redact(str(v))[:6000]) for k, v in sorted(trial.params.items()) if k not in have_params]
    what = f"{len(values)} value(s) of {metric} and the trial's state, from the Optuna study"
    tags = [RunTag(BACKFILLED_TAG, what), RunTag("tuner.epochs", str(len(points)))]
    if status == "RUNNING" or (run is not None and run.data.tags.get("optuna.state") == "RUNNING") or run is None:
        tags.append(RunTag("optuna.state", state))
        if state == "FAIL" or REASON_ATTR in trial.user_attrs:
            tags.append(RunTag("tuner.reason", redact(reason(trial, retried))[:5000]))
    client.log_batch(run_id, metrics=values[:_BATCH], params=params, tags=tags)
    for start in range(_BATCH, len(values), _BATCH):
        client.log_batch(run_id, metrics=values[start : start + _BATCH])
    if status == "RUNNING":
        interrupted = str(trial.user_attrs.get(REASON_ATTR, "")).startswith("interrupted")
        client.set_terminated(run_id, "KILLED" if interrupted else MLFLOW_STATUS[state], end_time=when)


def reason(trial: FrozenTrial, retried: set[int]) -> str:
    """Why the trial ended as it did: its own record, else what the study says of it."""
    if REASON_ATTR in trial.user_attrs:
        return str(trial.user_attrs[REASON_ATTR])
    if trial.number in retried:  # Optuna failed it as stale (it cannot record why) and queued a retry
        return f"{WORKER_DIED} (retried)"
    return "ended without a recorded reason"


def _ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)
