"""The progress of a running study: trials done, pruned, failed, best, time.

On a terminal it is one live line (rich) redrawn in place. Anywhere else (a CI log, a file,
a pipe) redrawing would glue carriage-return frames together, so each finished trial gets
one plain line instead.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.live import Live

_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed"}


class StudyProgress:
    """An Optuna callback that reports each finished trial: redraws the live line, or writes a line."""

    def __init__(
        self,
        study_name: str,
        n_trials: int | None,
        timeout: float | None,
        quiet: bool = False,
        stream: TextIO | None = None,
    ) -> None:
        self.study_name, self.n_trials, self.timeout, self.quiet = study_name, n_trials, timeout, quiet
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        self.best: float | None = None
        self.started = time.monotonic()
        self.stream = stream if stream is not None else sys.stderr
        self.console = Console(file=self.stream)
        self.live: Live | None = None

    @property
    def redraws(self) -> bool:
        """Whether to redraw in place: a real terminal only (FORCE_COLOR makes rich treat a CI log as one)."""
        return self.console.is_interactive and _isatty(self.stream)

    def __enter__(self) -> StudyProgress:
        if not self.quiet and self.redraws:
            self.live = Live(self, console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)  # leaves the last frame and a newline

    def __call__(self, study: Any, trial: FrozenTrial) -> None:
        name = trial.state.name
        if name in self.counts:
            self.counts[name] += 1
        if trial.state == TrialState.COMPLETE:
            try:
                self.best = study.best_value
            except (ValueError, RuntimeError):  # none yet; several objectives have no single best
                pass
        if self.live is not None:
            self.live.refresh()
        elif not self.quiet:
            self.stream.write(self.render(markup=False, trial=trial) + "\n")
            self.stream.flush()

    def __rich__(self) -> str:  # redrawn by Live twice a second, so the clock moves
        return self.render()

    def render(self, markup: bool = True, trial: FrozenTrial | None = None) -> str:
        """The status line; with `trial`, led by what that trial ended with (`trial 3 complete, value 0.8541;`)."""
        done = sum(self.counts.values())
        elapsed = time.monotonic() - self.started
        best = "-" if self.best is None else f"{self.best:.4f}"
        total = f"/{self.n_trials}" if self.n_trials else ""
        name = f"[bold]{self.study_name}[/]" if markup else self.study_name
        ended = "" if trial is None else f"{_ended(trial)};  "
        return (
            f"{name}  {ended}trials {done}{total}  complete {self.counts['COMPLETE']}  "
            f"pruned {self.counts['PRUNED']}  failed {self.counts['FAIL']}  best {best}  "
            f"elapsed {_clock(elapsed)}  remaining {self._remaining(done, elapsed)}"
        )

    def _remaining(self, done: int, elapsed: float) -> str:
        estimates = []
        if self.n_trials and done:
            estimates.append(elapsed / done * max(0, self.n_trials - done))
        if self.timeout:
            estimates.append(max(0.0, self.timeout - elapsed))
        return _clock(min(estimates)) if estimates else "?"


def _ended(trial: FrozenTrial) -> str:
    text = f"trial {trial.number} {_STATES.get(trial.state.name, trial.state.name.lower())}"
    if trial.state != TrialState.COMPLETE or not trial.values:
        return text
    label = "value" if len(trial.values) == 1 else "values"
    return f"{text}, {label} {', '.join(f'{v:.4f}' for v in trial.values)}"


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"
