"""Helpers shared by the benchmark scripts: the machine line, fixed configs, timing, Markdown."""

from __future__ import annotations

import datetime
import logging
import math
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
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # a line per run on a server
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


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine(device: Any = None) -> str:
    """One line: date, CPU, cores, Python, torch, the device (and GPU) when given, the load average now."""
    import torch

    line = (
        f"{datetime.date.today()} · {cpu_name()} · {os.cpu_count()} cores · Python {platform.python_version()} · "
        f"torch {torch.__version__} · torch threads {torch.get_num_threads()}"
    )
    if device is not None:
        line += f" · device {device}"
        if torch.device(device).type == "cuda":
            line += f" ({torch.cuda.get_device_name(device)})"
    return f"{line} · load average (1/5/15 min) {load_average()}"


def seeded_sampler(seed: int = 0) -> Any:
    """Optuna's `RandomSampler(seed)` as tuner runs it: reseeded before each trial from (seed, trial number)."""
    import optuna

    from tuner.run.open import TrialSeeded

    return TrialSeeded(optuna.samplers.RandomSampler(seed=seed), seed)


def fixed_configs(n: int, epochs: int, seed: int = 0) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(space, params): the first `n` parameter sets that `seeded_sampler(seed)` draws from the
    default space (epochs fixed, CPU).

    Any study that samples this space with `seeded_sampler(seed)` draws the same sequence, so
    every arm of a benchmark trains the same configs whatever it runs them with.
    """
    import optuna

    from tuner.space import default_space, suggest

    space = {**default_space(), "epochs": epochs, "device": "cpu"}
    study = optuna.create_study(sampler=seeded_sampler(seed))
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


@dataclass(frozen=True)
class Span:
    """One trial as its fit function saw it: wall-clock start and end (time.time()), and the
    wall and process-CPU seconds spent inside the trainable's generator."""

    start: float
    end: float
    inside: float
    start_cpu: float = math.nan
    inside_cpu: float = math.nan


@dataclass
class FitClock:
    """Wraps a fit function and records a `Span` per trial: the time inside the trainable's own
    generator (training, evaluation, checkpointing) is told apart from everything around it."""

    fit: Callable[..., Generator[Any, None, None]]
    spans: list[Span] = field(default_factory=list)

    def __call__(self, config: Any, **kwargs: Any) -> Generator[Any, None, None]:
        start, start_cpu = time.time(), time.process_time()
        inside = inside_cpu = 0.0
        epochs = self.fit(config, **kwargs)
        try:
            while True:
                t, c = time.perf_counter(), time.process_time()
                result = next(epochs, None)
                inside += time.perf_counter() - t
                inside_cpu += time.process_time() - c
                if result is None:
                    return
                yield result
        finally:
            epochs.close()
            self.spans.append(Span(start, time.time(), inside, start_cpu, inside_cpu))


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(" --- " for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
