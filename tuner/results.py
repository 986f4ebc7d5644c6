"""Reading studies back: `tuner studies`, `tuner best`, and the summary after a run."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.locations import redact, storage_kind
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
        best = summary.best_trial.value if summary.best_trial is not None else None
        table.add_row(
            summary.study_name,
            summary.direction.name.lower(),
            str(len(trials)),
            str(count[TrialState.COMPLETE]),
            str(count[TrialState.PRUNED]),
            str(count[TrialState.FAIL]),
            str(count[TrialState.RUNNING] + count[TrialState.WAITING]),
            "-" if best is None else f"{best:.4f}",
        )
    Console(soft_wrap=True).print(table)
    return 0


def print_best(study_name: str, storage: str) -> int:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store = _open_existing(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=store)
    except KeyError:
        raise UserError(
            f"study {study_name!r} not found in {redact(storage)}; run `tuner studies` to list them"
        ) from None
    try:
        best = study.best_trial
    except ValueError:
        raise UserError(f"study {study_name!r} has no completed trial yet") from None
    print(json.dumps(best.params, indent=2, sort_keys=True))
    return 0


def print_summary(study: Any, options: Any, where: bool = True) -> None:
    """What a person needs after a run: the outcome and (`where`) where to look at it."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {
        s.name.lower(): sum(t.state == s for t in trials)
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    }
    print(f"study {study.study_name}: {len(trials)} trials ({', '.join(f'{v} {k}' for k, v in counts.items())})")
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
