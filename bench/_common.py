"""Helpers shared by the benchmark scripts: the machine line, fixed configs, timing, Markdown."""

from __future__ import annotations

import datetime
import logging
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# the repository root, so that the scripts also run where the project is not installed
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def quiet() -> None:
    """Keep Optuna's, MLflow's and their databases' INFO lines and warnings off the console."""
    warnings.filterwarnings("ignore")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("optuna", "mlflow", "alembic", "sqlalchemy", "ray", "filelock"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)


def set_threads(threads: int) -> None:
    """Pin torch's intra-op threads. One thread by default: on a busy 2-core machine, two
    OpenMP threads that wait on each other make small models up to 10x slower and far noisier."""
    import torch

    os.environ["OMP_NUM_THREADS"] = str(threads)  # for child processes (Ray workers)
    torch.set_num_threads(threads)


def machine() -> str:
    """One line: date, CPU, cores, Python, torch, and the load average when the run ended."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"{datetime.date.today()} · {cpu} · {os.cpu_count()} cores · Python {platform.python_version()} · "
        f"torch {torch.__version__} · torch threads {torch.get_num_threads()} · load average (1/5/15 min) {load}"
    )


def fixed_configs(n: int, epochs: int, seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(space, params): the first `n` parameter sets that Optuna's `RandomSampler(seed)` draws from
    the default space (epochs fixed, CPU).

    Any study that samples this space with `RandomSampler(seed)` draws the same sequence, so
    every arm of a benchmark trains the same configs whatever it runs them with.
    """
    import optuna

    from tuner.space import default_space, suggest

    space = {**default_space(), "epochs": epochs, "device": "cpu"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    params = []
    for _ in range(n):
        trial = study.ask()
        suggest(trial, space)
        params.append(dict(trial.params))
        study.tell(trial, 0.0)
    return space, params


def config_of(space: dict[str, Any], params: dict[str, Any]) -> Any:
    """The TrainConfig that `params` (one trial's sampled values) make in `space`."""
    import optuna

    from tuner.space import suggest

    return suggest(optuna.trial.FixedTrial(params), space)


def same_params(arm: str, expected: list[dict[str, Any]], ran: list[dict[str, Any]]) -> None:
    """Fail loudly when an arm trained other configs than the floor."""
    import json

    def key(params: list[dict[str, Any]]) -> list[str]:
        return sorted(json.dumps(p, sort_keys=True) for p in params)

    assert key(expected) == key(ran), f"{arm}: trained other configs than the floor"


@dataclass
class FitClock:
    """Wraps a fit function and records, per trial, the wall-clock span and the seconds spent
    inside the trainable's generator (training, evaluation, checkpointing)."""

    fit: Callable[..., Generator[Any, None, None]]
    spans: list[tuple[float, float, float]] = field(default_factory=list)  # (start, end, inside)

    def __call__(self, config: Any, **kwargs: Any) -> Generator[Any, None, None]:
        start = time.time()
        inside = 0.0
        epochs = self.fit(config, **kwargs)
        try:
            while True:
                t = time.perf_counter()
                try:
                    result = next(epochs)
                except StopIteration:
                    inside += time.perf_counter() - t
                    return
                inside += time.perf_counter() - t
                yield result
        finally:
            epochs.close()
            self.spans.append((start, time.time(), inside))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
