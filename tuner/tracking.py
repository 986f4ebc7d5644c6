"""MLflow records of a study: one experiment and one parent run per study, one child run per trial.

Everything goes through `MlflowClient` with explicit run ids, never the process-global
"active run", so several workers (threads, processes, hosts) can log side by side.
Per-epoch metrics are buffered and sent with `log_batch`, at most every `FLUSH_SECONDS`
and at the end of the trial. What a trial logs, its run's creation included, goes through
the process's `RecordWriter` (tuner/record_writer.py), which sends it to a helper process
for a tracking server or when a CPU is spare; `StudyTracking.sync` waits until it is all
written.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import socket
import subprocess
import time
import traceback as traceback_module
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.locations import default_artifact_root, redact
from tuner.record_writer import RecordWriter, quiet_mlflow, writer
from tuner.storage import check_mlflow_store

if TYPE_CHECKING:
    import optuna
    from mlflow import MlflowClient
    from optuna.trial import FrozenTrial

    from trainables import TrainConfig

FLUSH_SECONDS = 1.0  # a process killed by SIGKILL loses at most this much of its metrics (or one slow epoch)
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # study user attribute: the parent run, shared by all workers
RUN_ID_ATTR = "mlflow_run_id"  # trial user attribute: the trial's child run
MLFLOW_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "FINISHED", "FAIL": "FAILED", "KILLED": "KILLED"}


class StudyTracking:
    """The MLflow side of one study.

    Its experiment and parent run are opened by the process's `RecordWriter` (on its helper,
    while the first trial trains): `experiment_id` and `parent_run_id` wait for them the first
    time they are asked for; the trial runs name them by key until then. A new parent run's id
    is put in the study (`PARENT_RUN_ATTR`, where other workers find it) by `settle`: after the
    first trial, or before workers start.
    """

    def __init__(
        self,
        tracking_uri: str,
        study: optuna.Study,
        settings: dict[str, Any],
        space: dict[str, Any],
        experiment: str | None = None,
        watch_system: bool = True,
    ) -> None:
        """`settings`: the parent run's params; `experiment`: its experiment's name (default: the study's);
        `watch_system`: log this machine's system metrics on the parent run (a process that trains)."""
        quiet_mlflow()
        self.tracking_uri = tracking_uri
        self._study = study
        check_mlflow_store(tracking_uri)  # a store that cannot be used is one line, before any trial
        self.writer: RecordWriter = writer()
        parent = study.user_attrs.get(PARENT_RUN_ATTR)
        params = [(k, redact(str(v))) for k, v in settings.items()]
        tags = {"tuner.role": "study", "tuner.study": study.study_name, **environment_tags()}
        root = default_artifact_root(tracking_uri)
        name = experiment or study.study_name
        self._experiment, self._parent = self.writer.open_study(
            tracking_uri, name, study.study_name, parent, root, params, space, tags
        )
        # CPU, memory (and GPU) of this machine on the parent run, under this process's node id: workers on
        # several machines (or several on one) each log their own series
        if watch_system:
            self.writer.write(tracking_uri, "watch_system", self._parent, f"{socket.gethostname()}-{os.getpid()}")
        self._ids: dict[str, str] = {} if parent is None else {self._parent: str(parent)}
        self._client: MlflowClient | None = None
        self._best_number: int | None = None
        self._front: list[int] = []
        self._settled = parent is not None

    @property
    def study_name(self) -> str:
        return str(self._study.study_name)

    @property
    def client(self) -> MlflowClient:
        """A client of the store, for reading it (made when first needed: MLflow takes seconds to import)."""
        if self._client is None:
            from mlflow import MlflowClient

            self.sync()  # the writer has made the store, if it is new
            self._client = MlflowClient(self.tracking_uri)
        return self._client

    @property
    def experiment_id(self) -> str:
        return self._resolve(self._experiment)

    @property
    def parent_run_id(self) -> str:
        return self._resolve(self._parent)

    def _resolve(self, key: str) -> str:
        if key not in self._ids:
            found = self.writer.run_id(self.tracking_uri, key)
            if found is None:
                raise RuntimeError(
                    f"the MLflow experiment and parent run of this study could not be opened at "
                    f"{redact(self.tracking_uri)}; see the line above"
                )
            self._ids[key] = found
        return self._ids[key]

    def settle(self) -> None:
        """Put the parent run's id in the study, where other workers, later runs and the report find it (once);
        waits for the writer to have opened it."""
        if self._settled:
            return
        self._settled = True
        try:
            run_id = self.parent_run_id
        except RuntimeError:  # not opened: the line was said; the study's next run opens it again
            return
        try:
            self._study.set_user_attr(PARENT_RUN_ATTR, run_id)
        except Exception:  # the study's storage failed (a full disk): the caller says so; a later sync tries again
            self._settled = False

    def start_trial(
        self,
        trial_number: int,
        params: dict[str, Any],
        config: TrainConfig | Mapping[str, Any],
        retry_of_run: str | None = None,
        attempt_of_trial: int | None = None,
        worker: str | None = None,
    ) -> TrialRun:
        """Create the trial's child run (nested under the study's parent run).

        `params` are the sampled ones; `config` is what the trial trains with: a TrainConfig
        (its active fields are logged as params) or a user trainable's params dict (logged as is).

        A retry of a trial whose worker died (or that was interrupted) gets a run of its own,
        tagged with the run id of the attempt it replaces (`tuner.retry_of_run`) and the first
        attempt's trial number (`tuner.attempt_of_trial`).
        """
        tags = {
            "mlflow.parentRunId": self._parent,  # by its key: the writer knows its id
            "tuner.role": "trial",
            "optuna.trial_number": str(trial_number),
            "optuna.sampled_params": ",".join(sorted(params)),
        }
        if retry_of_run is not None:
            tags["tuner.retry_of_run"] = retry_of_run
        if attempt_of_trial is not None and attempt_of_trial != trial_number:
            tags["tuner.attempt_of_trial"] = str(attempt_of_trial)
        if worker is not None:
            tags["tuner.worker"] = worker
        tags["optuna.state"] = "RUNNING"
        run = self.writer.create_run(self.tracking_uri, self._experiment, f"trial {trial_number}", tags)
        if isinstance(config, Mapping):
            logged, record, columns = dict(config), dict(config), []
        else:
            logged, record, columns = {**config.active(), **params}, config.to_dict(), BUILTIN_COLUMNS
        param_list = [(k, redact(str(v))[:6000]) for k, v in sorted(logged.items())]
        return TrialRun(self.writer, self.tracking_uri, run, record, param_list, columns)

    def record_best(self, study: optuna.Study, trial: FrozenTrial | None = None) -> None:
        """After a trial (`trial`, when one just ended): the study-level curves on the parent run, one point per
        trial number (the trial's value and epochs, the best value so far), and the best trial's params as tags
        when it changed. Settles the parent run first (`settle`)."""
        self.settle()
        now = int(time.time() * 1000)
        metrics: list[tuple[str, float, int, int]] = []
        tags: list[tuple[str, str]] = []
        if trial is not None:
            epochs = len(trial.intermediate_values) or int(trial.user_attrs.get("pruned_at_epoch", 0))
            metrics.append(("trial_epochs", float(epochs), now, trial.number))
            if trial.values is not None and len(trial.values) == 1 and math.isfinite(trial.values[0]):
                metrics.append(("trial_value", float(trial.values[0]), now, trial.number))
        if len(study.directions) > 1:  # no single best: the parent run lists the Pareto front
            front = sorted(t.number for t in study.best_trials)
            if front != self._front:
                self._front = front
                tags.append(("best.pareto_trials", json.dumps(front)))
        else:
            try:
                best: FrozenTrial | None = study.best_trial
            except ValueError:  # no completed trial yet
                best = None
            if best is not None and best.value is not None:
                step = trial.number if trial is not None else best.number
                metrics.append(("best_value", float(best.value), now, step))  # a step curve over trial numbers
                if best.number != self._best_number:
                    self._best_number = best.number
                    tags += [("best.trial_number", str(best.number)), ("best.params", json.dumps(best.params))]
                    tags += [(f"best.{k}", str(v)) for k, v in best.params.items()]
        if metrics or tags:
            self.writer.write(self.tracking_uri, "log_batch", self._parent, metrics, [], tags)

    def sync(self) -> None:
        """Wait until every record sent so far is written (the parent run's id, in the study, among them)."""
        self.writer.sync()
        self.settle()

    def stop_watching(self) -> None:
        """Stop logging this machine's system metrics on the parent run (this process trains no more of the study)."""
        self.writer.write(self.tracking_uri, "unwatch_system", self._parent)

    def finish_study(self, status: str = "FINISHED") -> None:
        """End the parent run, after the trials' runs (the writer applies writes in order); raises if that failed."""
        failed = self.writer.lost.get(self._parent, 0)
        self.stop_watching()  # (a no-op when close_parent_run stopped it first)
        self.writer.write(self.tracking_uri, "set_terminated", self._parent, status)
        self.sync()
        if self.writer.lost.get(self._parent, 0) > failed:
            raise RuntimeError("the parent run's end could not be written; see the line above")

    def close_dead_attempt(self, trial_number: int, run_id: str | None, reason: str) -> str | None:
        """Mark the run of a trial whose worker died FAILED with `reason`; returns its run id.

        A killed worker cannot close its own run, so the worker that finds the trial stale does.
        Without the run id (the worker died before recording it) the run is found by its tags.
        """
        from mlflow.entities import RunTag

        self.sync()  # this process's own records of the attempt are written first
        run = self.client.get_run(run_id) if run_id is not None else None
        # a retry that died before its first report still names the run of the attempt it retried
        if run is None or run.data.tags.get("optuna.trial_number") != str(trial_number):
            found = self.client.search_runs(  # the study's own: a group's studies share the experiment
                [self.experiment_id],
                f"tags.`tuner.role` = 'trial' and tags.`optuna.trial_number` = '{trial_number}' "
                f"and tags.`mlflow.parentRunId` = '{self.parent_run_id}'",
                max_results=1,
            )
            if not found:
                return None
            run = found[0]
        run_id = run.info.run_id
        if run.info.status != "RUNNING":
            return run_id  # closed already (by another worker, or the attempt ended after all)
        tags = [RunTag("optuna.state", "FAIL"), RunTag("tuner.reason", reason)]
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, status="FAILED")
        return run_id


class TrialRun:
    """The child run of one trial: buffered per-epoch metrics, final state, artifacts.

    Each MLflow call costs a few ms of SQLAlchemy work on SQLite (an HTTP request on a server)
    whatever it carries, so a trial makes as few as it can (bench/platform_overhead.py): the
    run's tags go with its creation; the params wait for the first batch of metrics (at most
    FLUSH_SECONDS after the first epoch, or when the trial ends); the final metrics and state
    tags share one batch; artifacts go straight to the run's artifact location. All of it goes
    through the writer, which may apply it on its helper process while the trial trains; the
    writes name the run by the key the writer gave it, and `run_id` asks for the real id.
    """

    def __init__(
        self,
        writer: RecordWriter,
        tracking_uri: str,
        run: str,
        record: dict[str, Any],
        params: list[tuple[str, str]],
        columns: list[str],
    ) -> None:
        self.writer, self.tracking_uri, self.run = writer, tracking_uri, run
        self.record, self.columns = record, columns  # config.json; history.csv's first columns
        self._run_id: str | None = None
        self.history: list[tuple[int, dict[str, float]]] = []  # (epoch, metrics)
        self._pending: list[tuple[str, float, int, int]] = []  # metrics: key, value, timestamp, step
        self._params = params  # sent with the first batch
        self._last_flush = time.monotonic()

    @property
    def lost_writes(self) -> int:
        """How many of this run's writes failed here (a full disk, the store down); the helper's are not seen here."""
        return self.writer.lost.get(self.run, 0)

    @property
    def run_id(self) -> str | None:
        """The run's MLflow id (None if its creation failed); waits for the writer the first time."""
        if self._run_id is None:
            self._run_id = self.writer.run_id(self.tracking_uri, self.run)
        return self._run_id

    def log_epoch(self, epoch: int, metrics: Mapping[str, float], resumed: bool = False) -> None:
        """One epoch's metrics, at step `epoch`; `resumed`: the first epoch trained after loading a checkpoint."""
        self.history.append((epoch, dict(metrics)))
        now = int(time.time() * 1000)
        self._pending += [(k, float(v), now, epoch) for k, v in metrics.items()]
        if resumed:  # say where it took over
            self.flush([("tuner.resumed_from_epoch", str(epoch - 1))])
        elif time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def log_dataset(self, dataset: Mapping[str, Any]) -> None:
        """The dataset the trial trains on (name, digest, source, sizes), in the run's Datasets (MLflow's `log_inputs`)."""
        self.writer.write(self.tracking_uri, "log_inputs", self.run, dict(dataset))

    def flush(self, tags: list[tuple[str, str]] | None = None) -> None:
        if self._pending or self._params or tags:
            self.writer.write(self.tracking_uri, "log_batch", self.run, self._pending, self._params, tags or [])
            self._pending, self._params = [], []
        self._last_flush = time.monotonic()

    def finish(
        self,
        state: str,
        reason: str | None = None,
        error: BaseException | None = None,
        tags: list[tuple[str, str]] | None = None,
        files_dir: Path | None = None,
    ) -> None:
        """Send what is buffered, the artifacts and the final state (COMPLETE, PRUNED, FAIL or KILLED).

        `files_dir`: a folder of the trial's own files, logged as artifacts when it holds any.
        """
        tags = [("optuna.state", state), ("tuner.epochs", str(len(self.history))), *(tags or [])]
        if self.history:  # as a metric too, so that the UI's charts can plot it
            self._pending.append(("epochs_run", float(len(self.history)), int(time.time() * 1000), self.history[-1][0]))
        if reason:
            tags.append(("tuner.reason", redact(reason)[:5000]))
        if state == "PRUNED" and self.history:
            tags.append(("tuner.pruned_at_epoch", str(self.history[-1][0])))
        self.flush(tags)
        files = {
            "config.json": json.dumps(self.record, indent=2, default=str),
            "history.csv": history_csv(self.history, self.columns),
        }
        if error is not None:
            files["traceback.txt"] = redact("".join(traceback_module.format_exception(error)))
        self.writer.write(self.tracking_uri, "log_texts", self.run, files)
        if files_dir is not None and files_dir.is_dir() and any(files_dir.iterdir()):
            self.writer.write(self.tracking_uri, "log_dir", self.run, str(files_dir), "files")
        _ = self.run_id  # known here before the writer forgets the run's key, with its end
        self.writer.write(self.tracking_uri, "set_terminated", self.run, MLFLOW_STATUS[state])


# the built-in trainable's metrics, in the columns of its history.csv (test metrics on the last epoch only)
BUILTIN_COLUMNS = ["train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "samples_per_second"]
BUILTIN_COLUMNS += ["peak_memory_mb"]
BUILTIN_COLUMNS += ["test_loss", "test_acc"]


def history_csv(history: list[tuple[int, dict[str, float]]], columns: list[str]) -> str:
    """One row per epoch: `columns` first, then every other metric in the order it first appeared."""
    out = io.StringIO()
    names = list(dict.fromkeys([*columns, *(k for _, metrics in history for k in metrics)]))
    writer = csv.writer(out)
    writer.writerow(["epoch", *names])
    for epoch, metrics in history:
        writer.writerow([epoch, *(metrics.get(n, "") for n in names)])
    return out.getvalue()


def environment_tags() -> dict[str, str]:
    """Where the study ran: git commit, torch and CUDA versions, device name."""
    import torch

    tags = {"torch.version": torch.__version__, "cuda.version": str(torch.version.cuda or "none")}
    tags["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        tags["mlflow.source.git.commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass  # not in a git checkout
    return tags
