"""The plan of a run: a study's spec with the run's options applied, validated and resolved.

Every later stage (open, execute, launch, finish) takes a `Plan`, so a study's settings flow
one way from here. This is also the one place where a trainable is resolved: from the
reference a plan names ("module:function"), the same way in this process, in local worker
processes and in `tuner worker` on another host.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.locations import DEFAULT_STORE
from tuner.study import RunOptions, StudySpec


@dataclass(frozen=True)
class Plan:
    """A study ready to run: what to train, where to store it, how much, on which device."""

    spec: StudySpec  # the run's options applied, validated
    options: RunOptions
    trainable_ref: str | None  # importable "module:function"; None: a function only this process can call
    checkpoint_dir: Path
    device: str | None  # --device, or the GPU a one-GPU --gpus names; None: the study's own

    def trainable(self) -> Callable[..., Any]:
        """The function that trains a trial."""
        if callable(self.spec.trainable):
            return self.spec.trainable
        return resolve_trainable(self.spec.trainable)


def make_plan(spec: StudySpec, options: RunOptions) -> Plan:
    """Apply `options` to `spec` and check everything that needs no storage; UserError before anything exists."""
    spec = spec.with_options(options)
    spec.validate(options)
    reference = trainable_reference(spec.trainable)
    if reference is not None:
        resolve_trainable(reference)  # a reference that does not import fails here, before any trial
    elif options.workers > 1:
        raise UserError(
            f"trainable {spec.trainable!r} cannot be imported by worker processes (define it at the top level "
            "of an importable module, or name it as 'module:function'); or run with --workers 1"
        )
    device = options.device or (f"cuda:{options.gpus[0]}" if options.gpus else None)
    return Plan(spec, options, reference, checkpoint_dir(options), device)


def resolve_trainable(reference: str) -> Callable[..., Any]:
    """Import "module:function" (dots after the colon reach into classes); UserError when it cannot be done."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise UserError(f"trainable {reference!r}: give an import path 'module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"trainable {reference!r}: module {module_name!r} does not import ({exc})") from None
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise UserError(f"trainable {reference!r}: {module_name} has no attribute {attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise UserError(f"trainable {reference!r} is not callable")
    return target


def trainable_reference(trainable: str | Callable[..., Any]) -> str | None:
    """The import path of a trainable: a string as given, a function's module and name when they import it back."""
    if isinstance(trainable, str):
        return trainable
    module = getattr(trainable, "__module__", None)
    name = getattr(trainable, "__qualname__", "")
    if not module or "<" in name:  # a lambda or a function defined inside another
        return None
    reference = f"{module}:{name}"
    try:
        return reference if resolve_trainable(reference) is trainable else None
    except UserError:
        return None


def with_trainable(spec: StudySpec, trainable: str | Callable[..., Any] | None) -> StudySpec:
    """`spec` training `trainable` instead of its own (a study group's members); None leaves it."""
    return spec if trainable is None else dataclasses.replace(spec, trainable=trainable)


def checkpoint_dir(options: RunOptions) -> Path:
    """`--checkpoint-dir`, else beside a local store; with a remote one, under ./mlruns/checkpoints.

    A retry on another host resumes only when the checkpoint directory is on a shared file system.
    """
    if options.checkpoint_dir:
        return Path(options.checkpoint_dir).resolve()
    if options.storage.startswith("sqlite:///"):
        return Path(options.storage.removeprefix("sqlite:///")).resolve().parent / "checkpoints"
    if "://" not in options.storage:
        return Path(options.storage).resolve().parent / "checkpoints"
    return DEFAULT_STORE.resolve() / "checkpoints"
