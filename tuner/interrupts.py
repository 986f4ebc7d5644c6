"""Ctrl-C and SIGTERM, made sure to stop a run, and never half way through a trial's records.

Python runs a signal handler between two bytecodes of the main thread, wherever that is.
Two places are bad ones. Inside a finalizer or a weakref callback, the exception the
handler raises is printed as "Exception ignored in ..." and lost, and a worker told to stop
would train on. Between Optuna creating a trial and the objective's `try` (or inside
Optuna's `tell`), the exception leaves the trial RUNNING with nobody to close it.

So the handler records the interrupt here; while a study's trials run (`deferred`) it raises
only inside the trainable's own code (`raised`), which the objective closes properly, and the
run checks at safe points (before each epoch, before each trial, while a launcher waits).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from tuner.errors import TerminatedError

_pending: KeyboardInterrupt | None = None
_deferring = False


def install() -> None:
    """SIGTERM closes the running trial as Ctrl-C does; Ctrl-C works even when started with SIGINT ignored."""
    signal.signal(signal.SIGTERM, _terminated)
    signal.signal(signal.SIGINT, _interrupted)


def _terminated(signum: int, frame: Any) -> None:
    interrupt(TerminatedError())


def _interrupted(signum: int, frame: Any) -> None:
    interrupt(KeyboardInterrupt())


def interrupt(exc: KeyboardInterrupt) -> None:
    """From a signal handler: keep `exc` for `check`, and raise it unless the run defers it."""
    global _pending
    _pending = exc
    if not _deferring:
        raise exc


def check() -> None:
    """Raise the interrupt a signal handler recorded (deferred, or swallowed on the way)."""
    global _pending
    if _pending is not None:
        exc, _pending = _pending, None
        raise exc


def clear() -> None:
    """The interrupt was handled."""
    global _pending
    _pending = None


def deferred() -> contextlib.AbstractContextManager[None]:
    """Signals only record the interrupt here: trials are opened and closed whole, `check` raises it."""
    return _deferring_as(True)


@contextmanager
def raised() -> Iterator[None]:
    """Inside `deferred`: code that may be stopped at once (the trainable's epoch, a wait)."""
    with _deferring_as(False):
        check()
        yield


@contextmanager
def _deferring_as(value: bool) -> Iterator[None]:
    global _deferring
    outer, _deferring = _deferring, value
    try:
        yield
    finally:
        _deferring = outer
