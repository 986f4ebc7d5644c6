"""What a study is (`StudySpec`) and how a run of it is set (`RunOptions`): frozen data and its checks.

Nothing here opens a storage, starts MLflow, spawns a process or trains: the stages in
`tuner.run` do, given a plan made from these (`tuner.run.plan`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from tuner.errors import UserError
from tuner.locations import DEFAULT_STORAGE, DEFAULT_TRACKING_URI, check_storage_url, check_tracking_uri, redact
from tuner.space import (
    Categorical,
    Space,
    check_enqueued,
    default_space,
    describe,
    grid_values,
    space_from_description,
    validate_space,
)

SAMPLERS = ("tpe", "random", "grid", "cmaes", "gp", "qmc")
PRUNERS = ("median", "hyperband", "successive_halving", "percentile", "none")
BUILTIN_TRAINABLE = "trainables:fit"  # the built-in trainable: TrainConfig in, EpochResult per epoch out
METRICS = {"val_acc": "maximize", "val_loss": "minimize", "train_acc": "maximize", "train_loss": "minimize"}


@dataclass(frozen=True)
class RunOptions:
    """How to run a study: the CLI's flags. None means "the study's own setting"."""

    n_trials: int | None = None
    timeout: float | None = None
    storage: str = DEFAULT_STORAGE
    tracking_uri: str = DEFAULT_TRACKING_URI
    device: str | None = None
    seed: int | None = None
    study_name: str | None = None
    quiet: bool = False
    keep_checkpoints: bool = False
    report: bool = True
    budget: str = "default"  # a study script's named budget (e.g. small); StudySpec has only the default
    fixed: Mapping[str, Any] = field(default_factory=dict)  # TrainConfig values replacing the space's entries
    n_trials_in_all: bool = False  # n_trials is the study's trial count in all (resumes stop there), not this run's
    workers: int = 1  # worker processes on this machine, sharing the study and its trial budget
    gpus: tuple[int, ...] = ()  # CUDA device indices; worker i trains on gpus[i], one trial per GPU
    checkpoint_dir: str | None = None  # default: `checkpoints/` beside a local store, else ./mlruns/checkpoints
    # Seconds between a trial's checkpoints. Each save costs a few ms (seconds for a large
    # model): every epoch of a short trial would be the platform's largest cost per trial
    # (bench/platform_overhead.py), while a killed trial loses at most this much training.
    checkpoint_every: float = 30.0
    threads: int | None = None  # torch CPU threads of this process (None: torch's default)
    keep_models: str = "best"  # best: the best trial's model (a Pareto front's); all: every completed trial's too
    cohort: int | None = None  # trials trained as one fused model per step (`tuner.run.cohort`); None: the study's
    data_dir: str | None = None  # where datasets live: the built-in's data_dir, a user trainable's context.data_dir
    download: bool = False  # let the built-in trainable download missing dataset files
    import_paths: tuple[str, ...] = ()  # folders put first on sys.path to import the trainable (a study script's)
    # The run whose trial budget this process counts in (`tuner.run.open`): set by a launcher for its
    # workers; None is a new run for `tuner run` / `tuner create`, the study's latest run for `tuner worker`.
    run_key: str | None = None


@dataclass(frozen=True)
class StudySpec:
    """One Optuna study: a search space, what trains each trial, the metric(s) to optimise, a budget.

    With the built-in trainable the space holds TrainConfig fields; a user's trainable takes
    any keys. Several metrics (a tuple, with a tuple of directions) make a multi-objective study.
    """

    name: str
    space: Space = field(default_factory=default_space)
    sampler: str = "tpe"
    pruner: str = "median"
    n_trials: int | None = 30
    timeout: float | None = None  # seconds
    metric: str | tuple[str, ...] = "val_acc"  # any metric the trainable yields every epoch
    direction: str | tuple[str, ...] | None = None  # default: the metric's natural direction, else maximize
    seed: int = 0
    user_attrs: Mapping[str, Any] = field(default_factory=dict)  # set on the Optuna study, e.g. {"kind": ...}
    # What trains a trial: an importable reference "module:function" (every worker process
    # resolves it the same way, `tuner.run.plan`), or the function itself.
    trainable: str | Callable[..., Any] = BUILTIN_TRAINABLE
    # Trials trained together as one fused model, one step for all (`tuner.run.cohort`): much
    # faster for small models. Only a trainable with a fused form (the built-in one) fuses; any
    # other runs its trials one by one.
    cohort: int = 1
    # The MLflow experiment its runs go in (one parent run for the study, its trials nested under it);
    # None: one named after the study. A study group's studies share the group's (`tuner.run.group`).
    experiment: str | None = None
    # Trials to run first, in order, when the study is new (a baseline the search must beat, e.g. the
    # optimizer's default config): each the values of some of the space's sampled parameters.
    enqueue: tuple[Mapping[str, Any], ...] = ()

    def with_options(self, options: RunOptions) -> StudySpec:
        """The spec with the CLI's overrides applied."""
        changes: dict[str, Any] = {}
        if options.study_name:
            changes["name"] = options.study_name
        if options.n_trials is not None:
            changes["n_trials"] = options.n_trials
        if options.timeout is not None:
            changes["timeout"] = options.timeout
        if options.seed is not None:
            changes["seed"] = options.seed
        if options.fixed:
            changes["space"] = {**self.space, **options.fixed}
        if options.cohort is not None:
            changes["cohort"] = options.cohort
        return dataclasses.replace(self, **changes)

    @property
    def metrics(self) -> tuple[str, ...]:
        """The objectives, in order: one for a single-objective study."""
        return (self.metric,) if isinstance(self.metric, str) else tuple(self.metric)

    @property
    def directions(self) -> tuple[Literal["maximize", "minimize"], ...]:
        given = self.direction if isinstance(self.direction, tuple | list) else [self.direction] * len(self.metrics)
        return tuple(
            cast(Literal["maximize", "minimize"], d or METRICS.get(m, "maximize"))
            for m, d in zip(self.metrics, given, strict=False)
        )

    @property
    def resolved_direction(self) -> Literal["maximize", "minimize"]:
        """The direction of the first objective (the only one of a single-objective study)."""
        return self.directions[0]

    @property
    def multi_objective(self) -> bool:
        return len(self.metrics) > 1

    def settings(self, storage: str) -> dict[str, Any]:
        """What the MLflow parent run records about the study."""
        return {
            "study_name": self.name,
            "sampler": self.sampler,
            "pruner": self.pruner,
            "metric": ",".join(self.metrics),
            "direction": ",".join(self.directions),
            "seed": self.seed,
            "cohort": self.cohort,
            "storage": redact(storage),
        }

    def validate(self, options: RunOptions, takes_config: bool = True) -> None:
        """Every check that needs no storage: raises UserError before anything is created.

        `takes_config`: the trainable takes a TrainConfig (the built-in protocol), so the space
        holds TrainConfig fields and the metric is one the built-in loop reports.
        """
        if not self.name or not isinstance(self.name, str) or any(c in self.name for c in "/\\\n"):
            raise UserError(f"study name {self.name!r} is invalid: use letters, digits, '-' and '_'")
        if self.sampler not in SAMPLERS:
            raise UserError(f"sampler {self.sampler!r} is unknown: choose one of {', '.join(SAMPLERS)}")
        if self.pruner not in PRUNERS:
            raise UserError(f"pruner {self.pruner!r} is unknown: choose one of {', '.join(PRUNERS)}")
        check_metrics(self.metric, self.direction, takes_config)
        if self.n_trials is not None and (isinstance(self.n_trials, bool) or self.n_trials < 1):
            raise UserError(f"--n-trials {self.n_trials}: give a positive number of trials")
        check_timeout(self.timeout)
        if isinstance(self.cohort, bool) or not isinstance(self.cohort, int) or self.cohort < 1:
            raise UserError(f"--cohort {self.cohort}: give 1 (one trial at a time) or more trials to train together")
        if self.experiment is not None and (not isinstance(self.experiment, str) or not self.experiment.strip()):
            raise UserError(f"experiment {self.experiment!r} is invalid: give an MLflow experiment name, or None")
        if self.n_trials is None and self.timeout is None:
            raise UserError("the study has no budget: give --n-trials or --timeout")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**32:
            raise UserError(f"--seed {self.seed}: give a whole number from 0 to {2**32 - 1}")
        validate_space(self.space, train_config=takes_config)
        for params in self.enqueue:
            check_enqueued(self.space, params)
        if self.multi_objective and self.sampler in ("cmaes", "gp"):
            raise UserError(f"sampler {self.sampler!r} has one objective: use tpe, random, qmc or grid for several")
        if self.sampler == "grid":
            grid_values(self.space)
        if options.device is not None:
            from trainables import ConfigError, TrainConfig

            try:
                TrainConfig(device=options.device)
            except ConfigError as exc:
                raise UserError(f"--device {options.device!r} is invalid: use auto, cpu, cuda or cuda:N") from exc
        check_checkpoint_every(options.checkpoint_every)
        if options.keep_models not in ("best", "all"):
            raise UserError(f"--keep-models {options.keep_models}: choose best or all")
        check_workers(options, self.space)
        if takes_config:
            check_datasets(self.space)
        check_storage_url(options.storage)
        check_tracking_uri(options.tracking_uri)

    def to_record(self) -> dict[str, Any]:
        """The spec as JSON-friendly data, kept in the study so that `tuner worker` can rebuild it."""
        record = {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("space", "trainable")
        }
        record["enqueue"] = [dict(params) for params in self.enqueue]
        trainable = self.trainable if isinstance(self.trainable, str) else None  # the plan records a function's path
        return {**record, "space": describe(self.space), "trainable": trainable}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> StudySpec:
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in record.items() if k in known and k not in ("space", "trainable")}
        for key in ("metric", "direction", "enqueue"):  # JSON keeps tuples as lists
            if isinstance(values.get(key), list):
                values[key] = tuple(values[key])
        trainable = record.get("trainable", BUILTIN_TRAINABLE)  # records older than the field: the built-in
        if trainable is None:
            raise UserError(
                f"study {record.get('name')!r} trains a function that only its launching process can call "
                "(no import path was recorded); give its StudySpec trainable='module:function' to run it in workers"
            )
        return cls(**values, space=space_from_description(record["space"]), trainable=trainable)

    def describe_space(self) -> dict[str, Any]:
        return describe(self.space)

    def fixed_values(self) -> dict[str, Any]:
        """The space's fixed entries (what defines an arm of a comparison: its optimizer, model, dataset...)."""
        return {k: v for k, v in self.space.items() if isinstance(v, str | int | float | bool)}


def check_metrics(metric: Any, direction: Any, takes_config: bool) -> None:
    """The metric (or metrics) and direction(s): names the trainable yields, maximize or minimize."""
    metrics = (metric,) if isinstance(metric, str) else metric
    if not isinstance(metrics, tuple | list) or not metrics or not all(isinstance(m, str) and m for m in metrics):
        raise UserError(f"metric {metric!r}: give a metric name, or a tuple of names for several objectives")
    if len(set(metrics)) != len(metrics):
        raise UserError(f"metric {metric!r}: a metric is named twice")
    if takes_config:
        for m in metrics:
            if m not in METRICS:
                raise UserError(f"metric {m!r} is not reported every epoch: choose one of {', '.join(METRICS)}")
    directions = direction if isinstance(direction, tuple | list) else [direction]
    if isinstance(direction, tuple | list) and len(directions) != len(metrics):
        raise UserError(f"direction {direction!r}: give one direction per metric ({len(metrics)})")
    for d in directions:
        if d not in (None, "maximize", "minimize"):
            raise UserError(f"direction {d!r} is invalid: use maximize or minimize")


def check_workers(options: RunOptions, space: Space) -> None:
    """--workers and --gpus: a positive count, one trial per GPU, GPUs that exist."""
    workers, gpus = options.workers, options.gpus
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise UserError(f"--workers {workers}: give 1 or more worker processes")
    if not gpus:
        device = options.device or space.get("device")
        if isinstance(device, str) and device.startswith("cuda"):
            _check_cuda(f"--device {device}", [int(device[5:])] if device[5:] else [0])
        return
    if options.device is not None:
        raise UserError(
            f"--gpus and --device {options.device} together: --gpus gives each worker its GPU; drop --device"
        )
    if len(set(gpus)) != len(gpus):
        raise UserError(f"--gpus {','.join(map(str, gpus))}: a GPU is listed twice; list each once")
    if workers > len(gpus):
        raise UserError(
            f"--workers {workers} with {len(gpus)} GPU(s) in --gpus: one trial per GPU at a time, so at most "
            f"{len(gpus)} workers; drop --workers (one worker per GPU) or list more GPUs"
        )
    _check_cuda(f"--gpus {','.join(map(str, gpus))}", list(gpus))


def _check_cuda(flag: str, indices: list[int]) -> None:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise UserError(f"{flag}: CUDA is not available on this machine; drop it to train on the CPU")
    missing = [i for i in indices if i >= count]
    if missing:
        raise UserError(f"{flag}: no GPU {missing[0]} here, this machine has {count} (0 to {count - 1})")


def check_datasets(space: Space) -> None:
    """Torchvision datasets must have their files before a study starts, not fail in every trial."""
    from trainables import DatasetNotFound, TrainConfig, check_dataset_files

    def values(name: str) -> list[Any]:
        value = space.get(name, getattr(TrainConfig, name))
        return list(value.choices) if isinstance(value, Categorical) else [value]

    for dataset in values("dataset"):
        for data_dir in values("data_dir"):
            for download in values("download"):
                try:
                    check_dataset_files(str(dataset), str(data_dir), bool(download))
                except DatasetNotFound as exc:
                    raise UserError(str(exc)) from None


def check_timeout(seconds: float | None) -> None:
    if seconds is not None and not (math.isfinite(seconds) and seconds > 0):
        raise UserError(f"--timeout {seconds}: give a positive, finite number of seconds")


def check_checkpoint_every(seconds: float) -> None:
    if not (math.isfinite(seconds) and seconds >= 0):
        raise UserError(f"--checkpoint-every {seconds}: give a number of seconds >= 0 (0 checkpoints every epoch)")
