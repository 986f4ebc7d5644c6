"""MLflow writes on a helper process, so that a trial's records cost it a pipe write.

A trial's records (its run's creation, metrics, state tags, artifacts, the run's end) are a
few MLflow calls: on a tracking server each is an HTTP round trip (16 ms or more) that the
training process would sit waiting for; on SQLite each is a few ms of SQLAlchemy work. The
helper, started on the first write, applies the writes in the order they were sent while
the trial trains; `sync()` returns once it has applied everything sent before. A thread
could not do this: the GIL serialises its MLflow client code with the training loop.

A run is created on the helper too: `create_run` returns a key at once, the later writes
name the run by that key, and `run_id(key)` asks for the real id when it is needed (by
then the helper has long created the run).

The helper is used for tracking servers, and for local stores (SQLite) when the process
has a CPU to spare beyond torch's threads: on a 2-core machine training with 2 threads, a
helper doing the CPU work beside the training slowed it by more than it saved
(bench/RESULTS.md). `TUNER_RECORD_WRITER=process` uses the helper for every store,
`inline` for none.

A write that fails (a full disk, a store or server that is down) never raises into the
trial: the writer logs one line per run that lost a write, and tags the run on its next
write that succeeds (`tuner.lost_writes`), so that `tuner.backfill` later restores what the
Optuna study holds of it. The training result is the record that matters.

A study's set-up (its experiment and parent run, `open_study`, with the store made first when
it is new) is a write too, and always goes to the helper: the helper imports MLflow and opens
the store while the first trial trains, so that neither is on the way to the first epoch. The
experiment and the parent run are named by keys like a new run's; the writes of that store
then stay on the helper, in order. If the set-up fails, one line says so and the store's
writes count as lost, so that the study's next run restores them (`tuner.backfill`).

The helper ignores SIGINT and SIGTERM (its parent handles them, syncs and closes the pipe)
and stops at the end of its input, so it also applies what a parent killed by SIGKILL had
sent.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

MODE_ENV = "TUNER_RECORD_WRITER"  # "process", "inline", or unset: the helper for servers and spare CPUs
_HEADER = struct.Struct("<I")  # the length of each pickled message
_SYNC = "sync"
_RUN_ID = "run_id"
NEW_RUN = "new-run:"  # how the keys of runs created through the writer begin (MLflow's run ids are hex)
NEW_EXPERIMENT = "new-experiment:"  # how the key of a study's experiment, opened through the writer, begins
LOST_WRITES_TAG = "tuner.lost_writes"  # on a run: how many of its writes failed before this one


RUN_OPS = ("create_run", "log_batch", "set_terminated", "log_texts", "log_dir", "log_inputs")  # first argument: the run
# MLflow 3's UI opens an experiment in its GenAI views (traces, sessions) unless this tag says it holds model training
EXPERIMENT_KIND_TAG, TRAINING_KIND = "mlflow.experimentKind", "custom_model_development"
SYSTEM_METRICS_SECONDS = 5.0  # between samples of MLflow's system metrics (its own default: 10 s)


def quiet_mlflow() -> None:
    """Keep MLflow's and its database migrations' INFO chatter off the console."""
    for name in ("mlflow", "alembic", "alembic.runtime.migration", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # it logs each failed query with its traceback, then raises it: the caller's one line says it
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


class RunLost(RuntimeError):
    """A write names a run that was never created: its creation failed, or was lost with the helper process."""


def spare_cpu() -> bool:
    """Whether this process may use more CPUs than torch trains with."""
    import torch

    affinity = getattr(os, "sched_getaffinity", None)  # Linux; elsewhere every CPU counts
    cpus = len(affinity(0)) if affinity is not None else os.cpu_count() or 1
    return cpus > torch.get_num_threads()


class RecordWriter:
    """The parent's end: `write` sends or writes, `sync` waits; writes inline if the helper is gone.

    `inline`: True writes everything here, False sends everything to the helper, None (the
    default) follows TUNER_RECORD_WRITER, and without it sends what goes to a server, and
    what goes to a local store when there is a spare CPU (decided once per store).
    """

    def __init__(self, inline: bool | None = None) -> None:
        self._inline = inline
        self._helper: subprocess.Popen[bytes] | None = None
        self._clients: dict[str, MlflowClient] = {}
        self._choice: dict[str, bool] = {}  # tracking URI: helper or not, for the default mode
        self._runs: dict[str, tuple[str, str]] = {}  # run key: (run id, artifact URI), until the run ends
        self._keys = itertools.count()
        self.lost: dict[str, int] = {}  # run key or id: how many of its writes failed (this process's)
        self._names: dict[str, str] = {}  # run key: the run's name, for messages
        self._down: set[str] = set()  # tracking URIs whose study set-up failed: their writes count as lost
        self._studies: set[str] = set()  # the keys of study parent runs: kept after the run ends
        self._monitors: dict[str, Any] = {}  # run id: its SystemMetricsMonitor, on the process that applies writes

    @property
    def inline(self) -> bool | None:
        """True: every write here; False: every write on the helper; None: as `uses_helper` decides per store.
        TUNER_RECORD_WRITER is read each time, unless the writer was made with a mode or gave up on its helper."""
        if self._inline is not None:
            return self._inline
        return {"inline": True, "process": False}.get(os.environ.get(MODE_ENV, ""))

    def open_study(
        self,
        tracking_uri: str,
        experiment_name: str,
        study_name: str,
        parent_run_id: str | None,
        artifact_root: str | None,
        params: list[tuple[str, str]],
        space: dict[str, Any],
        tags: dict[str, str],
    ) -> tuple[str, str]:
        """Open the study's experiment (`experiment_name`: created if new, restored if deleted; that of
        `parent_run_id` when the parent run exists) and its parent run (`parent_run_id` set RUNNING again, or
        a new one named `study_name` with `params`, `tags` and the search space); returns their keys, for
        `run_id` and as the experiment and parent of the runs the writer creates. It is applied on the helper
        when one may be used, and then so are the store's later writes."""
        count = next(self._keys)
        experiment, parent = f"{NEW_EXPERIMENT}{os.getpid()}-{count}", f"{NEW_RUN}{os.getpid()}-{count}"
        self._names[parent] = f"study {study_name}"
        if self.inline is None:
            self._choice[tracking_uri] = True  # the set-up and, to keep them in order, the writes after it
        args = (experiment, parent, experiment_name, study_name, parent_run_id, artifact_root, params, space, tags)
        self.write(tracking_uri, "open_study", *args)
        return experiment, parent

    def uses_helper(self, tracking_uri: str) -> bool:
        if self.inline is not None:
            return not self.inline
        if tracking_uri not in self._choice:  # once: a run's writes all go the same way
            self._choice[tracking_uri] = tracking_uri.startswith(("http://", "https://")) or spare_cpu()
        return self._choice[tracking_uri]

    def create_run(self, tracking_uri: str, experiment_id: str, run_name: str, tags: dict[str, str]) -> str:
        """Create a RUNNING run (started now); returns the key by which the other writes name it."""
        key = f"{NEW_RUN}{os.getpid()}-{next(self._keys)}"
        self._names[key] = run_name
        self.write(tracking_uri, "create_run", key, experiment_id, run_name, tags, int(time.time() * 1000))
        return key

    def run_id(self, tracking_uri: str, key: str) -> str | None:
        """The MLflow id of the run created as `key`; None if its creation failed or was lost."""
        if key in self._runs:
            return self._runs[key][0]
        if self._helper is None or not self.uses_helper(tracking_uri):
            return None
        try:
            return self._ask(_RUN_ID, key).decode() or None
        except (OSError, EOFError) as exc:
            self._give_up(f"it stopped before saying which run it created ({exc}); see its errors above")
            return None

    def write(self, tracking_uri: str, op: str, *args: Any) -> None:
        if op == "open_study":  # another study's set-up may have failed there: this one is tried again
            self._down.discard(tracking_uri)
        if tracking_uri in self._down:  # its set-up failed, and said so in a line: what the runs lack is counted
            self._count_lost(op, args)
            return
        if self.uses_helper(tracking_uri):
            try:
                self._send(tracking_uri, op, args)
                return
            except OSError as exc:
                self._give_up(f"it stopped ({exc})")
        try:
            self._apply(self._client(tracking_uri), op, args)
        except Exception as exc:  # the trial goes on; what the run lacks is backfilled from the study
            self._lost_write(tracking_uri, op, args, exc)

    def _count_lost(self, op: str, args: tuple[Any, ...]) -> str | None:
        """Count a lost write against its run (which the run's next write that succeeds says); returns the run."""
        run = args[0] if op in RUN_OPS and args else None
        if run is not None:
            self.lost[run] = self.lost.get(run, 0) + 1
        return run

    def _lost_write(self, tracking_uri: str, op: str, args: tuple[Any, ...], exc: Exception) -> None:
        """One line for the first write a run loses (or for a write of no run), counted for the run's next write."""
        from tuner.errors import first_line
        from tuner.locations import redact

        run = self._count_lost(op, args)
        if run is not None and self.lost[run] > 1:
            return
        if op == "create_run" and run is not None:
            self._names[run] = args[2]
        what = f"run {self._names.get(run, run)!r}" if run else f"a {op}"
        if op == "open_study":  # no experiment and parent run: the store's other writes are counted, not said
            self._down.add(tracking_uri)
            what = f"study {args[3]!r}: its experiment and parent run could not be opened, so none of its runs"
        logging.getLogger(__name__).warning(
            "tuner: MLflow at %s could not record %s (%s: %s); the study goes on, and its next run "
            "restores the record from the Optuna study",
            redact(tracking_uri),
            what,
            type(exc).__name__,
            first_line(exc),
        )

    def sync(self) -> None:
        """Return once the helper has applied every write sent so far."""
        if self._helper is None:
            return
        try:
            self._ask(_SYNC)
        except (OSError, EOFError) as exc:
            self._give_up(f"it stopped before applying every write ({exc}); see its errors above")

    def close(self) -> None:
        """Apply what is pending and stop the helper (and any system-metrics monitor)."""
        self._unwatch_system()
        if self._helper is None:
            return
        helper, self._helper = self._helper, None
        try:
            assert helper.stdin is not None
            helper.stdin.close()
        except OSError:
            pass
        helper.wait()

    def _apply(self, client: MlflowClient, op: str, args: tuple[Any, ...]) -> None:
        """Perform one write. Messages carry plain data; the MLflow entities are built here."""
        from mlflow.entities import Metric, Param, RunTag

        if op == "create_run":  # key, experiment (id or key), run name, {tag: value}, start time (ms)
            key, experiment, run_name, tags, start_time = args
            parent = tags.get("mlflow.parentRunId")
            if parent is not None:  # the study's parent run, by its key when the writer opened it
                tags = {**tags, "mlflow.parentRunId": self._run_id(parent)}
            run = client.create_run(self._run_id(experiment), start_time=start_time, tags=tags, run_name=run_name)
            self._runs[key] = (run.info.run_id, run.info.artifact_uri)
            self._names[key] = run_name  # the helper's messages name it too
        elif op == "log_batch":  # run, [(key, value, timestamp, step)], [(key, value)], [(key, value)]
            run, metrics, params, tags = args
            if self.lost.get(run):  # the run says that it lacks writes, so that backfill finds it
                tags = [*tags, (LOST_WRITES_TAG, str(self.lost[run]))]
            client.log_batch(
                self._run_id(run),
                metrics=[Metric(*m) for m in metrics],
                params=[Param(k, v) for k, v in params],
                tags=[RunTag(k, v) for k, v in tags],
            )
        elif op == "set_terminated":  # run, status
            run, status = args
            client.set_terminated(self._run_id(run), status)
            if run not in self._studies:  # a study's parent run is written to after its end (the best, the report)
                self._runs.pop(run, None)
                self._names.pop(run, None)
        elif op == "log_texts":  # run, {file name: text}: straight to the run's artifact location
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            run, files = args
            with tempfile.TemporaryDirectory() as tmp:
                for name, text in files.items():
                    Path(tmp, name).write_text(text)
                repository = get_artifact_repository(self._artifact_uri(client, run), tracking_uri=client.tracking_uri)
                repository.log_artifacts(tmp)
        elif op == "log_dir":  # run, local folder, artifact path: the folder's files, as they are
            from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

            run, folder, artifact_path = args
            repository = get_artifact_repository(self._artifact_uri(client, run), tracking_uri=client.tracking_uri)
            repository.log_artifacts(folder, artifact_path)
        elif op == "open_study":
            experiment, parent, experiment_name, name, parent_run_id, artifact_root, params, space, tags = args
            if parent_run_id:  # a study from before groups shared an experiment keeps its own
                experiment_id = str(client.get_run(parent_run_id).info.experiment_id)
            else:
                experiment_id = _open_experiment(client, experiment_name, artifact_root)
            if client.get_experiment(experiment_id).tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:
                client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
            self._runs[experiment] = (experiment_id, "")
            self._runs[parent] = _open_parent_run(client, experiment_id, name, parent_run_id, params, space, tags)
            self._studies.add(parent)
            self._names[parent] = f"study {name}"
        elif op == "watch_system":  # run, node id: MLflow's system metrics of this machine, until unwatched
            run, node = args
            self._watch_system(client, self._run_id(run), node)
        elif op == "unwatch_system":  # run
            self._unwatch_system(self._run_id(args[0]))
        elif op == "log_inputs":  # run, {name, digest, source, source_type, schema, profile, context}
            from mlflow.entities import Dataset, DatasetInput, InputTag

            run, record = args
            dataset = Dataset(
                name=record["name"],
                digest=record["digest"],
                source_type=record["source_type"],
                source=json.dumps(record["source"]),
                schema=json.dumps(record.get("schema", {})),
                profile=json.dumps(record.get("profile", {})),
            )
            tags = [InputTag("mlflow.data.context", record.get("context", "training"))]
            client.log_inputs(self._run_id(run), datasets=[DatasetInput(dataset, tags=tags)])
        else:
            raise ValueError(f"unknown MLflow write {op!r}")

    def _watch_system(self, client: MlflowClient, run_id: str, node: str) -> None:
        """Start MLflow's system-metrics monitor on `run_id` (a thread of this process), as node `node`."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        if run_id in self._monitors:
            return
        logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)  # its per-start notes
        monitor = SystemMetricsMonitor(
            run_id,
            sampling_interval=SYSTEM_METRICS_SECONDS,
            resume_logging=True,  # a resumed study's parent run goes on from its last step
            node_id=node,
            tracking_uri=client.tracking_uri,
        )
        monitor.start()
        self._monitors[run_id] = monitor

    def _unwatch_system(self, run_id: str | None = None) -> None:
        """Stop the monitor of `run_id` (every monitor: None), writing what it has sampled."""
        for watched in [run_id] if run_id is not None else list(self._monitors):
            monitor = self._monitors.pop(watched, None)
            if monitor is not None:
                monitor.finish()
                with contextlib.suppress(Exception):  # the run's last sample: a study shorter than an interval has one
                    monitor.collect_metrics()
                    monitor.publish_metrics(monitor.aggregate_metrics())
                    monitor.mlflow_logger.flush()

    def _run_id(self, run: str) -> str:
        """The MLflow id of a run (or of a study's experiment) named by its key or by that id."""
        if run in self._runs:
            return self._runs[run][0]
        if run.startswith((NEW_RUN, NEW_EXPERIMENT)):
            raise RunLost(f"MLflow run {run} was not created: its creation failed or its writer process died")
        return run

    def _artifact_uri(self, client: MlflowClient, run: str) -> str:
        """Where a run's artifacts go: known from its creation here, else looked up."""
        if run in self._runs:
            return self._runs[run][1]
        return str(client.get_run(self._run_id(run)).info.artifact_uri)

    def _send(self, tracking_uri: str | None, op: str, args: tuple[Any, ...]) -> None:
        if self._helper is None:
            self._helper = _start_helper()
        data = pickle.dumps((tracking_uri, op, args), protocol=pickle.HIGHEST_PROTOCOL)
        assert self._helper.stdin is not None
        self._helper.stdin.write(_HEADER.pack(len(data)) + data)
        self._helper.stdin.flush()

    def _ask(self, op: str, *args: Any) -> bytes:
        """Send a question to the helper; its one-line answer comes once every earlier write is applied."""
        self._send(None, op, args)
        assert self._helper is not None and self._helper.stdout is not None
        reply = self._helper.stdout.readline()
        if not reply.endswith(b"\n"):
            raise EOFError("no reply")
        return reply[:-1]

    def _give_up(self, why: str) -> None:
        logging.getLogger(__name__).warning("tuner: the MLflow writer process failed: %s; writing inline", why)
        self._inline = True
        if self._helper is not None:
            self._helper.kill()
            self._helper.wait()
            self._helper = None

    def _client(self, tracking_uri: str) -> MlflowClient:
        from mlflow import MlflowClient

        from tuner.storage import prepare_mlflow_store

        if tracking_uri not in self._clients:
            prepare_mlflow_store(tracking_uri)  # a new SQLite store is created whole, by one process
            self._clients[tracking_uri] = MlflowClient(tracking_uri)
        return self._clients[tracking_uri]


def _open_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    """The id of the experiment named `name`: created if new, restored if it was deleted."""
    existing = client.get_experiment_by_name(name)
    if existing is not None:
        if existing.lifecycle_stage == "deleted":
            client.restore_experiment(existing.experiment_id)
        return str(existing.experiment_id)
    try:
        return str(client.create_experiment(name, artifact_location=artifact_root))
    except Exception:  # another worker created it first
        existing = client.get_experiment_by_name(name)
        if existing is None:
            raise
        return str(existing.experiment_id)


def _open_parent_run(
    client: MlflowClient,
    experiment_id: str,
    name: str,
    run_id: str | None,
    params: list[tuple[str, str]],
    space: dict[str, Any],
    tags: dict[str, str],
) -> tuple[str, str]:
    """(id, artifact URI) of the study's parent run: `run_id` RUNNING again, or a new run."""
    from mlflow.entities import Param

    if run_id:
        run = client.get_run(run_id)
        if run.info.status != "RUNNING":
            client.update_run(run_id, status="RUNNING")
        return run_id, str(run.info.artifact_uri)
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    client.log_batch(run.info.run_id, params=[Param(k, v) for k, v in params])
    client.log_dict(run.info.run_id, space, "search_space.json")
    return str(run.info.run_id), str(run.info.artifact_uri)


def _start_helper() -> subprocess.Popen[bytes]:
    package_root = str(Path(__file__).resolve().parents[1])  # so that a source checkout imports too
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-m", "tuner.record_writer"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env
    )


_writer: RecordWriter | None = None


def writer() -> RecordWriter:
    """The process's one writer; what it has pending is applied before the interpreter exits."""
    global _writer
    if _writer is None:
        _writer = RecordWriter()
        atexit.register(_writer.close)
    return _writer


def serve(messages: IO[bytes], replies: IO[bytes]) -> None:
    """The helper's loop: apply each message in order until the input ends."""
    from tuner.heap import freeze_heap

    quiet_mlflow()
    local = RecordWriter(inline=True)  # applies each write here, with a client per tracking URI
    asking = True  # the parent still reads the answers
    while len(header := messages.read(_HEADER.size)) == _HEADER.size:
        size = _HEADER.unpack(header)[0]
        data = messages.read(size)
        if len(data) < size:  # the parent was killed while sending this one: the earlier ones are applied
            break
        tracking_uri, op, args = pickle.loads(data)
        if op in (_SYNC, _RUN_ID):  # every earlier write is applied: answer
            answer = (local.run_id("", args[0]) or "") if op == _RUN_ID else ""
            try:
                if asking:
                    replies.write(answer.encode() + b"\n")
                    replies.flush()
            except BrokenPipeError:  # the parent died waiting (SIGKILL): apply the rest of what it sent
                asking = False
            continue
        local.write(tracking_uri, op, *args)  # a lost write is one line on stderr, and the others go on
        freeze_heap()  # once, with MLflow loaded by the first write: no full collection stalls a trial's writes
    local.close()  # the monitors' last samples


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles them, then closes our input
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, not into the replies
    from tuner.heap import collections_held

    with collections_held():  # MLflow loads now, before the first write; serve then freezes the heap
        import mlflow.entities  # noqa: F401  (while the parent imports torch: the writes find it ready)
        from mlflow import MlflowClient  # noqa: F401

        serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
