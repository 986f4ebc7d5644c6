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

The helper ignores SIGINT and SIGTERM (its parent handles them, syncs and closes the pipe)
and stops at the end of its input, so it also applies what a parent killed by SIGKILL had
sent.
"""

from __future__ import annotations

import atexit
import itertools
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
LOST_WRITES_TAG = "tuner.lost_writes"  # on a run: how many of its writes failed before this one


RUN_OPS = ("create_run", "log_batch", "set_terminated", "log_texts", "log_dir")  # their first argument: the run


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
        mode = os.environ.get(MODE_ENV, "")
        self.inline = {"inline": True, "process": False}.get(mode) if inline is None else inline
        self._helper: subprocess.Popen[bytes] | None = None
        self._clients: dict[str, MlflowClient] = {}
        self._choice: dict[str, bool] = {}  # tracking URI: helper or not, for the default mode
        self._runs: dict[str, tuple[str, str]] = {}  # run key: (run id, artifact URI), until the run ends
        self._keys = itertools.count()
        self.lost: dict[str, int] = {}  # run key or id: how many of its writes failed (this process's)
        self._names: dict[str, str] = {}  # run key: the run's name, for messages

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

    def name_run(self, run: str, name: str) -> None:
        """Name a run created elsewhere (a study's parent run) in this writer's messages."""
        self._names[run] = name

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

    def _lost_write(self, tracking_uri: str, op: str, args: tuple[Any, ...], exc: Exception) -> None:
        """One line for the first write a run loses (or for a write of no run), counted for the run's next write."""
        from tuner.errors import first_line
        from tuner.locations import redact

        run = args[0] if op in RUN_OPS and args else None
        if run is not None:
            self.lost[run] = self.lost.get(run, 0) + 1
            if self.lost[run] > 1:
                return
        if op == "create_run" and run is not None:
            self._names[run] = args[2]
        what = f"run {self._names.get(run, run)!r}" if run else f"a {op}"
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
        """Apply what is pending and stop the helper."""
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

        if op == "create_run":  # key, experiment id, run name, {tag: value}, start time (ms)
            key, experiment_id, run_name, tags, start_time = args
            run = client.create_run(experiment_id, start_time=start_time, tags=tags, run_name=run_name)
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
        elif op == "connect":  # nothing to write: the client, and with it the store, now exists
            pass
        else:
            raise ValueError(f"unknown MLflow write {op!r}")

    def _run_id(self, run: str) -> str:
        """The MLflow id of a run named by its key or by that id."""
        if run in self._runs:
            return self._runs[run][0]
        if run.startswith(NEW_RUN):
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
        self.inline = True
        if self._helper is not None:
            self._helper.kill()
            self._helper.wait()
            self._helper = None

    def _client(self, tracking_uri: str) -> MlflowClient:
        from mlflow import MlflowClient

        if tracking_uri not in self._clients:
            self._clients[tracking_uri] = MlflowClient(tracking_uri)
        return self._clients[tracking_uri]


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


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles them, then closes our input
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, not into the replies
    from tuner.heap import collections_held

    with collections_held():  # MLflow loads with the first write, after which serve freezes the heap
        serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
