"""The errors every layer may raise or catch; this module imports nothing of tuner."""

from __future__ import annotations


class UserError(Exception):
    """Bad input (flag, study file, search space, storage URL, dataset path) with how to fix it.

    The CLI prints it as one line and exits non-zero.
    """


class WorkersFailed(UserError):
    """Some worker processes exited with an error; the study itself is intact and resumable."""


class TerminatedError(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C (the running trial is closed and queued again) but exiting 143."""


def first_line(exc: BaseException) -> str:
    """An error's first non-blank line, at most 200 characters (SQLAlchemy's go on with the query)."""
    line = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    return line[:200]
