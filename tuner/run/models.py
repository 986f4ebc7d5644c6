"""The best model of a study, kept: a file the trainable's returned `nn.Module` is saved to, and an MLflow model.

A trainable (the built-in one, or a user's) may `return model` at its end. When a trial
completes with a better value than the study's best so far, its model replaces
`MODELS/<study>/best.pt` (`torch.save` of the whole module: `torch.load(path, weights_only=False)`
gives it back), and `best.json` says which trial and value it is. A multi-objective study
keeps the models of its Pareto front instead (`trial-N.pt`, listed in `front.json`);
`--keep-models all` keeps every completed trial's model as `trial-N.pt` besides.

Workers of one study share the folder: each decision is taken under a file lock. When a run
ends, the kept models are logged to their trials' MLflow runs as MLflow models (`model`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BEST, FRONT = "best.json", "front.json"
MODELS_ATTR = "tuner:models_dir"  # study user attribute: the folder of its kept models


@contextlib.contextmanager
def locked(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, path)


def save_model(model: Any, path: Path) -> None:
    import torch

    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(model, tmp)
    os.replace(tmp, path)  # readers never see half a file


def dominates(a: Sequence[float], b: Sequence[float], directions: Sequence[str]) -> bool:
    """Whether values `a` are at least as good as `b` in every objective and better in one."""
    sign = [1.0 if d == "maximize" else -1.0 for d in directions]
    at_least = all(s * x >= s * y for s, x, y in zip(sign, a, b, strict=True))
    return at_least and any(s * x > s * y for s, x, y in zip(sign, a, b, strict=True))


@dataclass(frozen=True)
class ModelKeeper:
    """Keeps the models of one study's best trial (or Pareto front) in `folder`."""

    folder: Path
    directions: tuple[str, ...]
    keep_all: bool = False

    def offer(self, trial_number: int, values: Sequence[float], model: Any) -> bool:
        """A completed trial's model: kept when the trial is the best so far (or on the front); returns whether."""
        import torch

        if not isinstance(model, torch.nn.Module):
            return False
        with locked(self.folder):
            if self.keep_all:
                save_model(model, self.folder / f"trial-{trial_number}.pt")
            if len(self.directions) == 1:
                return self._offer_best(trial_number, float(values[0]), model)
            return self._offer_front(trial_number, [float(v) for v in values], model)

    def _offer_best(self, number: int, value: float, model: Any) -> bool:
        best = read_json(self.folder / BEST, None)
        if best is not None and not dominates([value], [best["value"]], self.directions):
            return False
        save_model(model, self.folder / "best.pt")
        write_json(self.folder / BEST, {"trial": number, "value": value, "file": "best.pt"})
        return True

    def _offer_front(self, number: int, values: list[float], model: Any) -> bool:
        front = read_json(self.folder / FRONT, [])
        if any(dominates(f["values"], values, self.directions) for f in front):
            return False
        save_model(model, self.folder / f"trial-{number}.pt")
        kept = [f for f in front if not dominates(values, f["values"], self.directions)]
        if not self.keep_all:
            for dropped in front:
                if dropped not in kept:
                    (self.folder / dropped["file"]).unlink(missing_ok=True)
        write_json(self.folder / FRONT, [*kept, {"trial": number, "values": values, "file": f"trial-{number}.pt"}])
        return True


def kept_models(folder: Path) -> list[dict[str, Any]]:
    """The kept best model (or the front's models), each {"trial", "value" or "values", "file"}; [] when none."""
    best = read_json(folder / BEST, None)
    return [best] if best is not None else list(read_json(folder / FRONT, []))


def log_kept_models(folder: Path, run_ids: dict[int, str], tracking_uri: str) -> int:
    """Log each kept model to its trial's MLflow run as an MLflow model named `model`, once; returns how many."""
    logged = 0
    with locked(folder):
        for entry in kept_models(folder):
            run_id = run_ids.get(int(entry["trial"]))
            marker = folder / f".logged-{entry['trial']}-{entry['file']}.run"
            if run_id is None or marker.exists() or not (folder / entry["file"]).exists():
                continue
            log_model(folder / entry["file"], run_id, tracking_uri)
            marker.write_text(run_id)
            logged += 1
    return logged


def log_model(path: Path, run_id: str, tracking_uri: str) -> None:
    import mlflow
    import torch

    model = torch.load(path, map_location="cpu", weights_only=False)
    previous = mlflow.get_tracking_uri()
    levels = {name: logging.getLogger(name).level for name in ("mlflow.pytorch", "mlflow.utils.requirements_utils")}
    for name in levels:
        logging.getLogger(name).setLevel(logging.ERROR)  # the pickle-format and environment notes, on every call
    try:
        mlflow.set_tracking_uri(tracking_uri)
        # created in the run's experiment: on its own, log_model puts it in the process's active one (Default)
        experiment_id = mlflow.MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
        logged = mlflow.initialize_logged_model(name="model", source_run_id=run_id, experiment_id=experiment_id)
        mlflow.pytorch.log_model(
            model,
            name="model",
            run_id=run_id,
            model_id=logged.model_id,
            serialization_format="pickle",  # any nn.Module; pt2 would need an input example to trace
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],  # no environment inference: offline, fast
        )
    finally:
        mlflow.set_tracking_uri(previous)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
