"""Reading studies back: `tuner studies`, `tuner best`, the best model, and the summary after a run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.locations import DEFAULT_STORAGE, redact, storage_kind
from tuner.run.models import MODELS_ATTR, kept_models
from tuner.storage import open_storage


def _open_existing(storage: str) -> Any:
    if storage_kind(storage) == "journal" and not Path(storage).exists():
        raise UserError(
            f"no studies yet: {storage} does not exist; run a study first (tuner run studies/quickstart.py)"
        )
    return open_storage(storage, heartbeat=False)


def list_studies(storage: str) -> int:
    import optuna
    from optuna.trial import TrialState
    from rich.console import Console
    from rich.table import Table

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store = _open_existing(storage)
    table = Table("study", "direction", "trials", "complete", "pruned", "failed", "running", "best value")
    for summary in optuna.get_all_study_summaries(store, include_best_trial=True):
        study = optuna.load_study(study_name=summary.study_name, storage=store)
        trials = study.get_trials(deepcopy=False)
        count = {s: sum(t.state == s for t in trials) for s in TrialState}
        directions = ",".join(d.name.lower() for d in summary.directions)
        if len(summary.directions) > 1:
            front = len(study.best_trials)
            shown = f"front of {front}" if front else "-"
        else:
            best = summary.best_trial.value if summary.best_trial is not None else None
            shown = "-" if best is None else f"{best:.4f}"
        table.add_row(
            summary.study_name,
            directions,
            str(len(trials)),
            str(count[TrialState.COMPLETE]),
            str(count[TrialState.PRUNED]),
            str(count[TrialState.FAIL]),
            str(count[TrialState.RUNNING] + count[TrialState.WAITING]),
            shown,
        )
    Console(soft_wrap=True).print(table)
    return 0


def load_study(study_name: str, storage: str) -> Any:
    """An existing study; UserError naming how to list them when there is none of that name."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store = _open_existing(storage)
    try:
        return optuna.load_study(study_name=study_name, storage=store)
    except KeyError:
        raise UserError(
            f"study {study_name!r} not found in {redact(storage)}; run `tuner studies` to list them"
        ) from None


def print_best(study_name: str, storage: str, model_out: str | None = None) -> int:
    """The best trial's params as JSON; for several objectives, the Pareto front: each trial's number, values, params."""
    study = load_study(study_name, storage)
    if len(study.directions) > 1:
        front = sorted(study.best_trials, key=lambda t: t.number)
        if not front:
            raise UserError(f"study {study_name!r} has no completed trial yet")
        print(json.dumps([{"trial": t.number, "values": t.values, "params": t.params} for t in front], indent=2))
    else:
        try:
            best = study.best_trial
        except ValueError:
            raise UserError(f"study {study_name!r} has no completed trial yet") from None
        print(json.dumps(best.params, indent=2, sort_keys=True))
    if model_out is not None:
        import shutil

        source, trial = best_model(study)
        Path(model_out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, model_out)
        print(f"model of trial {trial}: {model_out}", file=sys.stderr)
    return 0


def best_model(study: Any) -> tuple[Path, int]:
    """The file of the study's kept best model (a front's: the best in the first objective), and its trial."""
    folder = study.user_attrs.get(MODELS_ATTR)
    kept = kept_models(Path(folder)) if folder else []
    if not kept:
        raise UserError(
            f"study {study.study_name!r} has no kept model: its trainable returns no nn.Module, or no trial completed "
            "(a trainable keeps its model with `return model` at its end)"
        )
    first = _first_objective_best(study, kept)
    path = Path(folder) / first["file"]
    if not path.exists():
        raise UserError(f"the best model of study {study.study_name!r} should be at {path}, which is missing")
    return path, int(first["trial"])


def _first_objective_best(study: Any, kept: list[dict[str, Any]]) -> dict[str, Any]:
    maximize = study.directions[0].name.lower() == "maximize"
    first = [(entry.get("values") or [entry["value"]])[0] for entry in kept]
    return kept[first.index(max(first) if maximize else min(first))]


def load_best_model(study_name: str, storage: str = DEFAULT_STORAGE) -> Any:
    """The trained `nn.Module` of the study's best trial, as its trainable returned it."""
    import torch

    path, _ = best_model(load_study(study_name, storage))
    return torch.load(path, map_location="cpu", weights_only=False)


def print_summary(study: Any, options: Any, where: bool = True) -> None:
    """What a person needs after a run: the outcome and (`where`) where to look at it."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {
        s.name.lower(): sum(t.state == s for t in trials)
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    print(f"study {study.study_name}: {len(trials)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())})")
    if len(study.directions) > 1:
        front = sorted(study.best_trials, key=lambda t: t.number)
        print(f"Pareto front: {len(front)} trial(s)" + "".join(f"\n  trial {t.number}: {t.values}" for t in front))
    else:
        try:
            best = study.best_trial
            print(f"best value {best.value:.4f} (trial {best.number}): {json.dumps(best.params, sort_keys=True)}")
        except ValueError:
            print("no completed trial yet")
    if not where:
        return
    print(f"Optuna storage: {redact(options.storage)}  (browse: tuner dashboard --storage {redact(options.storage)})")
    print(
        f"MLflow runs: {redact(options.tracking_uri)}  (browse: tuner ui --tracking-uri {redact(options.tracking_uri)})"
    )
