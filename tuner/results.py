"""Reading studies back: `tuner studies`, `tuner best`, the best model, and the summary after a run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuner.errors import UserError
from tuner.locations import DEFAULT_STORAGE, redact, storage_kind
from tuner.run.models import MODELS_ATTR, kept_models
from tuner.storage import open_storage

if TYPE_CHECKING:
    from rich.console import Console

MIN_FOLDED = 20  # on a narrow terminal, the fewest characters of a study name a line may show
_UNBOUNDED = 1_000_000  # a console width no table reaches: measures its natural width


def _open_existing(storage: str) -> Any:
    if storage_kind(storage) == "journal" and not Path(storage).exists():
        raise UserError(
            f"no studies yet: {storage} does not exist; run a study first (tuner run studies/quickstart.py)"
        )
    return open_storage(storage, heartbeat=False)


def list_studies(storage: str, console: Console | None = None) -> int:
    """Print a table of the storage's studies; `console` (default: stdout's) is for tests."""
    import optuna
    from optuna.trial import TrialState
    from rich.console import Console
    from rich.table import Column, Table

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store = _open_existing(storage)
    # the name folds rather than ends in "…": a study is asked for by its whole name
    headers = ("direction", "trials", "complete", "pruned", "failed", "running", "best value")
    table = Table(Column("study", overflow="fold"), *(Column(h, no_wrap=True) for h in headers))
    summaries = optuna.get_all_study_summaries(store, include_best_trial=True)
    for summary in summaries:
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
    longest = max((len(s.study_name) for s in summaries), default=0)
    console = Console() if console is None else console
    console.width = _table_width(table, console.width if _isatty(console.file) else None, longest)
    console.print(table)
    return 0


def _table_width(table: Any, terminal_width: int | None, longest_name: int) -> int:
    """The width to print the studies table at, so that no study name is cut.

    Not a terminal (a pipe, a file): the table's natural width, one line per study, whatever
    COLUMNS says. A terminal: its width when the names fit or can fold into at least
    `MIN_FOLDED` characters a line; else the natural width (the terminal wraps the lines).
    """
    from rich.console import Console

    natural = Console(width=_UNBOUNDED).measure(table).maximum
    if terminal_width is None or natural <= terminal_width:
        return natural if terminal_width is None else terminal_width
    folded = natural - longest_name + min(longest_name, MIN_FOLDED)
    return terminal_width if folded <= terminal_width else natural


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


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


def print_best(
    study_name: str,
    storage: str,
    model_out: str | None = None,
    register: str | None = None,
    tracking_uri: str | None = None,
    trial: int | None = None,
) -> int:
    """The best trial's params as JSON; for several objectives, the Pareto front: each trial's number, values, params.

    `model_out`: copy the kept model file there. `register`: register it in the MLflow Model
    Registry at `tracking_uri` under that name. `trial`: that trial's kept model instead of the
    best's (for several objectives, the one of the front to register).
    """
    study = load_study(study_name, storage)
    if trial is not None and model_out is None and register is None:
        raise UserError("--trial N chooses the model for --register or --model-out: give one of them")
    registered = None
    if register is not None:  # first: a refusal leaves no half output behind
        from tuner.registry import register_best

        if tracking_uri is None:
            raise UserError("--register needs --tracking-uri: the MLflow store the study ran with")
        registered = register_best(study, tracking_uri, register, best_model, trial)
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
    sys.stdout.flush()  # the JSON before the lines below on stderr, when both go to one log
    if model_out is not None:
        import shutil

        source, number = best_model(study, trial)
        Path(model_out).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, model_out)
        print(f"model of trial {number}: {model_out}", file=sys.stderr)
    if registered is not None:
        print(
            f"registered model {registered.name!r} version {registered.version} (trial {registered.trial} of study "
            f"{study_name}, {registered.metric} {registered.value}): {registered.uri}",
            file=sys.stderr,
        )
    return 0


def best_model(study: Any, trial: int | None = None) -> tuple[Path, int]:
    """The file of the study's kept best model (a front's: the best in the first objective), and its trial.

    With `trial`: that trial's kept model (on the front, or kept by `--keep-models all`).
    """
    folder = study.user_attrs.get(MODELS_ATTR)
    kept = kept_models(Path(folder)) if folder else []
    if not kept:
        raise UserError(
            f"no model was kept for study {study.study_name!r}: its trainable returned none, or no trial completed "
            "(a trainable keeps its model with `return model` at its end)"
        )
    if trial is None:
        entry = _first_objective_best(study, kept)
    else:
        entry = _kept_of_trial(study, Path(folder), kept, trial)
    path = Path(folder) / entry["file"]
    if not path.exists():
        raise UserError(
            f"the model of trial {entry['trial']} of study {study.study_name!r} should be at {path}, which is missing"
        )
    return path, int(entry["trial"])


def _kept_of_trial(study: Any, folder: Path, kept: list[dict[str, Any]], trial: int) -> dict[str, Any]:
    numbers = [t.number for t in study.get_trials(deepcopy=False)]
    if trial not in numbers:
        raise UserError(f"--trial {trial}: study {study.study_name!r} has trials 0 to {len(numbers) - 1}")
    for entry in kept:
        if int(entry["trial"]) == trial:
            return entry
    if (folder / f"trial-{trial}.pt").exists():  # kept by --keep-models all
        return {"trial": trial, "file": f"trial-{trial}.pt"}
    which = ", ".join(str(e["trial"]) for e in sorted(kept, key=lambda e: int(e["trial"])))
    raise UserError(
        f"--trial {trial}: no model was kept for that trial of study {study.study_name!r}; kept: trial {which} "
        "(--keep-models all keeps every completed trial's)"
    )


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
