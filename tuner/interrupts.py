"""Ctrl-C and SIGTERM, made sure to stop a run.

Python runs a signal handler between two bytecodes of the main thread, wherever that is.
When it is inside a finalizer or a weakref callback, the exception the handler raises is
printed as "Exception ignored in ..." and lost, and a worker told to stop would train on.
So the handler also records the interrupt here, and the run checks at safe points (before
each epoch, before each trial, while a launcher waits) and raises it again.
"""

from __future__ import annotations

from typing import NoReturn

_pending: KeyboardInterrupt | None = None


def interrupt(exc: KeyboardInterrupt) -> NoReturn:
    """Raise `exc` from a signal handler, and keep it for `check` in case it is swallowed."""
    global _pending
    _pending = exc
    raise exc


def check() -> None:
    """Raise the interrupt a signal handler raised, if it was swallowed on the way."""
    global _pending
    if _pending is not None:
        exc, _pending = _pending, None
        raise exc


def clear() -> None:
    """The interrupt was handled."""
    global _pending
    _pending = None
