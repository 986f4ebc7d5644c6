"""The plan of a run: a study's spec with the run's options applied, validated and resolved.

Every later stage (open, execute, launch, finish) takes a `Plan`, so a study's settings flow
one way from here. This is also the one place where a trainable is resolved: from the
reference a plan names ("module:function"), the same way in this process, in local worker
processes and in `tuner worker` on another host.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import sys
import uuid
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
    takes_config: bool  # the built-in protocol: a TrainConfig in, EpochResult out (else a params dict in)
    passes_context: bool  # a user trainable that takes a second argument, the trial's `context`
    models_dir: Path  # where the study's best model is kept (`tuner.run.models`)
    import_paths: tuple[str, ...] = ()  # folders the trainable imports from, recorded for `tuner worker`

    @property
    def trainable_name(self) -> str:
        """The trainable as messages name it."""
        if self.trainable_ref is not None:
            return self.trainable_ref
        return str(getattr(self.spec.trainable, "__qualname__", self.spec.trainable))

    def trainable(self) -> Callable[..., Any]:
        """The function that trains a trial."""
        if callable(self.spec.trainable):
            return self.spec.trainable
        return resolve_trainable(self.spec.trainable)

    def fused(self) -> Callable[..., Any] | None:
        """What trains a cohort of trials as one fused model (`trainables.cohort.Cohort`), or None: trials one by one.

        A trainable of the built-in protocol declares its fused form as its `fused` attribute (the
        class, or its "module:Class" path); any other trainable runs its trials one by one.
        """
        if self.spec.cohort < 2 or not self.takes_config:
            return None
        fused = getattr(self.trainable(), "fused", None)
        return resolve_trainable(fused) if isinstance(fused, str) else fused


def make_plan(spec: StudySpec, options: RunOptions) -> Plan:
    """Apply `options` to `spec` and check everything that needs no storage; UserError before anything exists."""
    spec = spec.with_options(options)
    if not (callable(spec.trainable) or isinstance(spec.trainable, str)):
        raise UserError(f"trainable {spec.trainable!r}: give an import path 'module:function' or the function itself")
    paths = tuple(str(Path(p).resolve()) for p in options.import_paths)
    add_import_paths(paths)
    reference = trainable_reference(spec.trainable)
    # a reference that does not import fails here, before any trial
    function = spec.trainable if callable(spec.trainable) else resolve_trainable(spec.trainable)
    takes_config = bool(getattr(function, "takes_train_config", False))
    passes_context = False
    if not takes_config:
        name = str(reference or getattr(function, "__qualname__", repr(function)))
        if not inspect.isgeneratorfunction(function):
            raise UserError(
                f"trainable {name} is not a generator function: yield one mapping of metric name to number "
                "per epoch, e.g. `yield {'val_loss': loss}`"
            )
        passes_context = takes_context(function, name)
    if takes_config and options.data_dir is not None:
        spec = dataclasses.replace(
            spec, space={**spec.space, "data_dir": options.data_dir, "download": options.download}
        )
    spec.validate(options, takes_config=takes_config)
    if reference is None and options.workers > 1:
        raise UserError(
            f"trainable {spec.trainable!r} cannot be imported by worker processes (define it at the top level "
            "of an importable module, or name it as 'module:function'); or run with --workers 1"
        )
    device = options.device or (f"cuda:{options.gpus[0]}" if options.gpus else None)
    models = store_dir(options, "models") / spec.name
    if options.run_key is None:  # a new run: its budget is its own, whatever other runs of the study do
        options = dataclasses.replace(options, run_key=uuid.uuid4().hex[:12])
    return Plan(spec, options, reference, checkpoint_dir(options), device, takes_config, passes_context, models, paths)


def add_import_paths(paths: tuple[str, ...]) -> None:
    """Put `paths` first on sys.path (a study script's folder: as `python script.py` does)."""
    for path in reversed(paths):
        if path not in sys.path:
            sys.path.insert(0, path)


def takes_context(function: Callable[..., Any], name: str) -> bool:
    """Whether a user trainable takes `(params, context)`, or `(params)` alone; UserError for anything else."""
    parameters = list(inspect.signature(function).parameters.values())
    positional = [p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    if not positional or len(required) > 2:
        raise UserError(
            f"trainable {name} must take the trial's params as its argument: def train(params, context=None)"
        )
    return len(positional) >= 2 or any(p.name == "context" for p in parameters)


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
    if module == "__main__":  # `python studies/X.py`: the script imports by its file name from its folder
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        module = inspect.getmodulename(main_file) if main_file else None
        if module is None or main_file is None:
            return None
        add_import_paths((str(Path(main_file).resolve().parent),))
    reference = f"{module}:{name}"
    try:
        found = resolve_trainable(reference)
    except UserError:
        return None
    same = found is trainable or _code_file(found) == _code_file(trainable) is not None
    return reference if same else None


def _code_file(function: Any) -> str | None:
    code = getattr(function, "__code__", None)
    return None if code is None else f"{code.co_filename}:{code.co_firstlineno}"


def with_trainable(spec: StudySpec, trainable: str | Callable[..., Any] | None) -> StudySpec:
    """`spec` training `trainable` instead of its own (a study group's members); None leaves it."""
    return spec if trainable is None else dataclasses.replace(spec, trainable=trainable)


def checkpoint_dir(options: RunOptions) -> Path:
    """`--checkpoint-dir`, else beside a local store; with a remote one, under ./mlruns/checkpoints.

    A retry on another host resumes only when the checkpoint directory is on a shared file system.
    """
    if options.checkpoint_dir:
        return Path(options.checkpoint_dir).resolve()
    return store_dir(options, "checkpoints")


def store_dir(options: RunOptions, name: str) -> Path:
    """The folder `name` beside a local Optuna store; with a remote one, under ./mlruns."""
    if options.storage.startswith("sqlite:///"):
        return Path(options.storage.removeprefix("sqlite:///")).resolve().parent / name
    if "://" not in options.storage:
        return Path(options.storage).resolve().parent / name
    return DEFAULT_STORE.resolve() / name
