"""Which studies a report covers: names resolved against the storage before anything is written."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.locations import redact, storage_kind
from tuner.storage import open_storage

KIND_ORDER = ("optimizer_tuning", "seeds", "lr_schedule", "batch_size", "regularization")


def open_existing_storage(storage: str) -> Any:
    """The Optuna storage at `storage`; a missing local file is an error, never created."""
    kind = storage_kind(storage)
    path = Path(storage.removeprefix("sqlite:///")) if kind == "sqlite" else Path(storage)
    if kind in ("journal", "sqlite") and not path.is_file():
        raise UserError(f"--storage {redact(storage)}: no such file; run a study first or give the storage it used")
    return open_storage(storage, heartbeat=False)


def resolve_names(requested: list[str], available: list[str], storage: str) -> list[str]:
    """Each name, or when it is no study but `NAME.<x>` studies exist, all of those (sorted)."""
    if not requested:
        raise UserError("give at least one study name; run `tuner studies` to list them")
    resolved: list[str] = []
    unknown: list[str] = []
    for name in requested:
        members = [name] if name in available else sorted(s for s in available if s.startswith(name + "."))
        if not members:
            unknown.append(name)
        resolved += [m for m in members if m not in resolved]
    if unknown:
        names = ", ".join(repr(n) for n in unknown)
        raise UserError(
            f"no study named {names} (nor any named NAME.<x>) in {redact(storage)}; run `tuner studies` to list them"
        )
    return resolved


def load_studies(requested: list[str], storage: str) -> list[Any]:
    """The Optuna studies named, comparison studies first, then seeds, then the others."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    store = open_existing_storage(storage)
    names = resolve_names(requested, optuna.get_all_study_names(store), storage)
    studies = [optuna.load_study(study_name=n, storage=store) for n in names]

    def order(study: Any) -> tuple[int, int]:
        kind = study.user_attrs.get("kind")
        return (KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER), names.index(study.study_name))

    return sorted(studies, key=order)
