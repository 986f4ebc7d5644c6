"""A live one-line view of a running study (rich): trials done, pruned, failed, best, time."""

from __future__ import annotations

import time
from typing import Any

from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.live import Live


class StudyProgress:
    """An Optuna callback that redraws the status line after every trial."""

    def __init__(self, study_name: str, n_trials: int | None, timeout: float | None, quiet: bool = False) -> None:
        self.study_name, self.n_trials, self.timeout, self.quiet = study_name, n_trials, timeout, quiet
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        self.best: float | None = None
        self.started = time.monotonic()
        self.console = Console(stderr=True)
        self.live: Live | None = None

    def __enter__(self) -> StudyProgress:
        if not self.quiet:
            self.live = Live(self, console=self.console, refresh_per_second=2, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

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

    def __rich__(self) -> str:  # redrawn by Live twice a second, so the clock moves
        return self.render()

    def render(self) -> str:
        done = sum(self.counts.values())
        elapsed = time.monotonic() - self.started
        best = "-" if self.best is None else f"{self.best:.4f}"
        total = f"/{self.n_trials}" if self.n_trials else ""
        return (
            f"[bold]{self.study_name}[/]  trials {done}{total}  complete {self.counts['COMPLETE']}  "
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


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes}:{secs:02d}"
