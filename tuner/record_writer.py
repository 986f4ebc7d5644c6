"""MLflow writes to a tracking server on a helper process, so that they cost a trial a pipe write.

A trial's records after its run is created (metrics, state tags, artifacts, the run's end)
are a few MLflow requests, each an HTTP round trip to a tracking server (16 ms or more) that
the training process would sit waiting for. The helper, started on the first write, applies
the writes in the order they were sent while the next trial trains; `sync()` returns once it
has applied everything sent before. A thread could not do this: the GIL serialises its
MLflow client code with the training loop.

To a local store (SQLite) the training process writes itself: there a write is CPU work,
not waiting, and on a 2-core machine a helper doing it beside the training slowed the
training by more than it saved (bench/RESULTS.md). `TUNER_RECORD_WRITER=process` uses the
helper for every store (machines with cores to spare), `inline` for none.

The helper ignores SIGINT and SIGTERM (its parent handles them, syncs and closes the pipe)
and stops at the end of its input, so it also applies what a parent killed by SIGKILL had
sent.
"""

from __future__ import annotations

import atexit
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow import MlflowClient

MODE_ENV = "TUNER_RECORD_WRITER"  # "process", "inline", or unset: the helper for tracking servers only
_HEADER = struct.Struct("<I")  # the length of each pickled message
_SYNC = "sync"


def apply(client: MlflowClient, op: str, args: tuple[Any, ...]) -> None:
    """Perform one write. Messages carry plain data; the MLflow entities are built here."""
    from mlflow.entities import Metric, Param, RunTag

    if op == "log_batch":  # run_id, [(key, value, timestamp, step)], [(key, value)], [(key, value)]
        run_id, metrics, params, tags = args
        client.log_batch(
            run_id,
            metrics=[Metric(*m) for m in metrics],
            params=[Param(k, v) for k, v in params],
            tags=[RunTag(k, v) for k, v in tags],
        )
    elif op == "connect":  # nothing to write: the client, and with it the store, now exists
        pass
    elif op == "set_terminated":  # run_id, status
        client.set_terminated(*args)
    elif op == "log_texts":  # artifact_uri, {file name: text}: straight to the run's artifact location
        from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

        artifact_uri, files = args
        with tempfile.TemporaryDirectory() as tmp:
            for name, text in files.items():
                Path(tmp, name).write_text(text)
            get_artifact_repository(artifact_uri, tracking_uri=client.tracking_uri).log_artifacts(tmp)
    else:
        raise ValueError(f"unknown MLflow write {op!r}")


class RecordWriter:
    """The parent's end: `write` sends or writes, `sync` waits; writes inline if the helper is gone.

    `inline`: True writes everything here, False sends everything to the helper, None (the
    default) follows TUNER_RECORD_WRITER, and without it sends only what goes to a server.
    """

    def __init__(self, inline: bool | None = None) -> None:
        mode = os.environ.get(MODE_ENV, "")
        self.inline = {"inline": True, "process": False}.get(mode) if inline is None else inline
        self._helper: subprocess.Popen[bytes] | None = None
        self._clients: dict[str, MlflowClient] = {}

    def uses_helper(self, tracking_uri: str) -> bool:
        if self.inline is None:
            return tracking_uri.startswith(("http://", "https://"))
        return not self.inline

    def write(self, tracking_uri: str, op: str, *args: Any) -> None:
        if self.uses_helper(tracking_uri):
            try:
                self._send(tracking_uri, op, args)
                return
            except OSError as exc:
                self._give_up(f"it stopped ({exc})")
        apply(self._client(tracking_uri), op, args)

    def sync(self) -> None:
        """Return once the helper has applied every write sent so far."""
        if self._helper is None:
            return
        try:
            self._send(None, _SYNC, ())
            assert self._helper.stdout is not None
            if self._helper.stdout.read(1) != b"\n":
                raise EOFError("no reply")
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

    def _send(self, tracking_uri: str | None, op: str, args: tuple[Any, ...]) -> None:
        if self._helper is None:
            self._helper = _start_helper()
        data = pickle.dumps((tracking_uri, op, args), protocol=pickle.HIGHEST_PROTOCOL)
        assert self._helper.stdin is not None
        self._helper.stdin.write(_HEADER.pack(len(data)) + data)
        self._helper.stdin.flush()

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
    from tuner.storage import redact
    from tuner.tracking import quiet_mlflow

    quiet_mlflow()
    local = RecordWriter(inline=True)  # applies each write here, with a client per tracking URI
    while header := messages.read(_HEADER.size):
        tracking_uri, op, args = pickle.loads(messages.read(_HEADER.unpack(header)[0]))
        if op == _SYNC:
            replies.write(b"\n")
            replies.flush()
            continue
        try:
            local.write(tracking_uri, op, *args)
        except Exception as exc:  # one lost write must not stop the others
            print(
                f"tuner: MLflow write {op} {args[:1]} to {redact(tracking_uri)} failed: {exc}",
                file=sys.stderr,
                flush=True,
            )


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles them, then closes our input
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed goes to stderr, not into the replies
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
