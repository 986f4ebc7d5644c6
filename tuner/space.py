"""Search spaces as data: a mapping from parameter name to a distribution or a fixed value.

For the built-in trainable the names are TrainConfig fields; a user's trainable takes any.

    space = {
        "optimizer": Categorical(["sgd", "momentum", "adam"]),
        "lr": Float(1e-4, 1e-1, log=True),
        "momentum": Float(0.5, 0.99, when={"optimizer": ["momentum"]}),
        "epochs": 20,                      # anything that is not a distribution is fixed
    }

`when` makes a parameter conditional on parameters defined before it (or fixed values), so
a trial never carries a parameter its config ignores. `suggest` is the one function that
turns a space into Optuna suggestions (`suggest_params`; `suggest` builds a TrainConfig of them).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trainables import ADAM_FAMILY, MOMENTUM_OPTIMIZERS, OPTIMIZERS, SCHEDULES, TrainConfig
from tuner.errors import UserError

if TYPE_CHECKING:
    import optuna

Condition = Mapping[str, Sequence[Any]]


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    log: bool = False
    step: float | None = None
    when: Condition = field(default_factory=dict)


@dataclass(frozen=True)
class Int:
    low: int
    high: int
    log: bool = False
    step: int = 1
    when: Condition = field(default_factory=dict)


@dataclass(frozen=True)
class Categorical:
    choices: Sequence[Any]
    when: Condition = field(default_factory=dict)


Distribution = Float | Int | Categorical
Space = Mapping[str, Any]


def default_space() -> dict[str, Any]:
    """The joint space over optimizer, lr, batch size, schedule and regularization."""
    return {
        "optimizer": Categorical(list(OPTIMIZERS)),
        "lr": Float(1e-4, 3e-1, log=True),
        "batch_size": Categorical([32, 64, 128, 256]),
        "lr_schedule": Categorical(list(SCHEDULES)),
        "weight_decay": Float(1e-6, 1e-2, log=True),
        "l1": Float(1e-7, 1e-3, log=True),
        "dropout": Float(0.0, 0.5),
        "momentum": Float(0.5, 0.99, when={"optimizer": list(MOMENTUM_OPTIMIZERS)}),
        "beta1": Float(0.8, 0.95, when={"optimizer": list(ADAM_FAMILY)}),
        "beta2": Float(0.99, 0.9999, when={"optimizer": list(ADAM_FAMILY)}),
        "step_size": Int(2, 8, when={"lr_schedule": ["step"]}),
        "gamma": Float(0.1, 0.9, when={"lr_schedule": ["step"]}),
        "decay_rate": Float(0.7, 0.99, when={"lr_schedule": ["exponential"]}),
        "warmup_epochs": Int(1, 3, when={"lr_schedule": ["warmup_cosine"]}),
        "plateau_patience": Int(1, 4, when={"lr_schedule": ["plateau"]}),
        "plateau_factor": Float(0.1, 0.7, when={"lr_schedule": ["plateau"]}),
    }


def is_distribution(value: object) -> bool:
    return isinstance(value, Float | Int | Categorical)


def validate_space(space: Space, train_config: bool = True) -> None:
    """Raise UserError naming the first malformed entry; called before any trial runs.

    `train_config`: every name must be a TrainConfig field and every value a trial can draw
    must make a valid TrainConfig (the built-in trainable); else names are free.
    """
    if not isinstance(space, Mapping) or not space:
        raise UserError(
            "the search space is empty: give at least one parameter, e.g. {'lr': Float(1e-4, 1e-1, log=True)}"
        )
    fields = set(TrainConfig.field_names()) if train_config else {n for n in space if isinstance(n, str) and n}
    seen: set[str] = set()
    fixed = {name: value for name, value in space.items() if name in fields and not is_distribution(value)}
    if train_config:
        for name, value in fixed.items():
            _check_fixed(name, value)
        try:
            TrainConfig(**fixed)
        except (TypeError, ValueError) as exc:
            raise UserError(f"search space: the fixed values do not fit together: {exc}") from None
    for name, dist in space.items():
        if not train_config and name not in fields:
            raise UserError(f"search space: the name {name!r} is not a non-empty string")
        if name not in fields:
            raise UserError(
                f"search space: {name!r} is not a TrainConfig field; valid fields: {', '.join(sorted(fields))}"
            )
        where = f"search space: {name}"
        if isinstance(dist, Float | Int):
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in (dist.low, dist.high)):
                raise UserError(f"{where}: low and high must be finite numbers, got {dist.low!r} and {dist.high!r}")
            if dist.low >= dist.high:
                raise UserError(f"{where}: low ({dist.low}) must be below high ({dist.high}); swap or widen them")
            if dist.log and dist.low <= 0:
                raise UserError(f"{where}: a log range needs low > 0, got {dist.low}; use a positive low or log=False")
            if dist.step is not None and dist.step <= 0:
                raise UserError(f"{where}: step must be positive, got {dist.step}")
            if dist.log and dist.step not in (None, 1):
                raise UserError(f"{where}: a log range cannot have a step; drop step or log")
            if isinstance(dist, Int) and not all(isinstance(v, int) for v in (dist.low, dist.high, dist.step)):
                raise UserError(f"{where}: Int needs integer low, high and step; use Float for real numbers")
        elif isinstance(dist, Categorical) and len(dist.choices) == 0:
            raise UserError(f"{where}: a Categorical needs at least one choice")
        if is_distribution(dist):
            if train_config:
                _check_values(name, dist, fixed)
            for cond_name, allowed in dist.when.items():
                if cond_name not in space:
                    raise UserError(
                        f"{where}: condition on {cond_name!r}, which is not in the search space; add it or drop the condition"
                    )
                if is_distribution(space[cond_name]) and cond_name not in seen:
                    raise UserError(
                        f"{where}: condition on {cond_name!r}, which must come before {name!r} in the space"
                    )
                if isinstance(allowed, str) or not isinstance(allowed, Sequence) or not allowed:
                    raise UserError(f"{where}: condition on {cond_name!r} needs a non-empty list of values")
        elif train_config:
            _check_fixed(name, dist)
        seen.add(name)
    if train_config:
        _check_corners(space, fixed)


# TrainConfig fields whose valid values depend on each other (warmup_epochs < epochs for
# warmup_cosine; momentum > 0 for nesterov): their corners are checked together.
CROSS_CHECKED = ("optimizer", "lr_schedule", "epochs", "momentum", "warmup_epochs")


def _check_corners(space: Space, fixed: Mapping[str, Any]) -> None:
    """Every combination of the cross-checked fields' extreme values that a trial can draw makes a valid config."""
    dists = [(n, d) for n, d in space.items() if n in CROSS_CHECKED and is_distribution(d)]
    if not dists:
        return
    corners = [[(n, v) for v in _extremes(d)] for n, d in dists]
    for combo in itertools.product(*corners):
        values = dict(fixed)
        for name, value in combo:  # in the space's order: a value applies only when its conditions hold
            if all(values.get(c) in allowed for c, allowed in space[name].when.items()):
                values[name] = value
        try:
            TrainConfig(**values)
        except (TypeError, ValueError) as exc:
            drawn = ", ".join(f"{n}={values[n]!r}" for n, _ in combo if n in values)
            raise UserError(
                f"search space: a trial can draw {drawn}, which is invalid: {exc}; narrow a range or fix a value"
            ) from None


def _extremes(dist: Distribution) -> list[Any]:
    return list(dist.choices) if isinstance(dist, Categorical) else [dist.low, dist.high]


def _check_values(name: str, dist: Distribution, fixed: Mapping[str, Any]) -> None:
    """Every value a trial can draw must make a valid TrainConfig: the choices, the range's ends."""
    if isinstance(dist, Categorical):
        values = [("choice", v) for v in dist.choices]
    else:
        values = [("low end", dist.low), ("high end", dist.high)]
    for what, value in values:
        try:
            TrainConfig(**{**fixed, name: value})
        except (TypeError, ValueError) as exc:
            fix = "drop that choice" if what == "choice" else "narrow the range"
            raise UserError(f"search space: {name}: {what} {exc}; {fix}") from None


def _check_fixed(name: str, value: Any) -> None:
    try:
        TrainConfig(**{name: value})
    except (TypeError, ValueError) as exc:
        raise UserError(f"search space: fixed value {exc}") from None


def suggest(trial: optuna.Trial, space: Space, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Ask the trial for every active parameter of the space and build the TrainConfig.

    `overrides` (e.g. the CLI's --device) are fixed values applied last and never sampled.
    """
    return TrainConfig(**{**suggest_params(trial, space), **(overrides or {})})


def check_enqueued(space: Space, params: Mapping[str, Any]) -> None:
    """UserError unless `params` (a trial to enqueue) names only sampled parameters of the space, each with a
    value it could sample (Optuna would fail the trial at its first suggestion otherwise)."""
    for name, value in params.items():
        dist = space.get(name)
        if not isinstance(dist, Float | Int | Categorical):
            raise UserError(
                f"enqueued {name}={value!r}: {name!r} is not a sampled parameter of the search space; "
                "enqueue only the parameters the space samples"
            )
        if isinstance(dist, Categorical):
            fits = value in list(dist.choices)
        else:
            number = isinstance(value, int | float) and not isinstance(value, bool)
            fits = number and dist.low <= value <= dist.high and (not dist.log or value > 0)
        if not fits:
            raise UserError(
                f"enqueued {name}={value!r} is outside the search space's {name} ({_shown(dist)}); "
                "give a value the space can sample"
            )


def _shown(dist: Distribution) -> str:
    if isinstance(dist, Categorical):
        return "one of " + ", ".join(map(str, dist.choices))
    return f"{dist.low}..{dist.high}{', log' if dist.log else ''}"


def suggest_params(trial: optuna.Trial, space: Space) -> dict[str, Any]:
    """The trial's params: every active parameter of the space, sampled, and the fixed values."""
    values: dict[str, Any] = {}
    for name, dist in space.items():
        if not is_distribution(dist):
            values[name] = dist
        elif all(values.get(cond) in allowed for cond, allowed in dist.when.items()):
            values[name] = _suggest_one(trial, name, dist)
    return values


def _suggest_one(trial: optuna.Trial, name: str, dist: Distribution) -> Any:
    if isinstance(dist, Categorical):
        return trial.suggest_categorical(name, list(dist.choices))
    if isinstance(dist, Int):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)


def describe(space: Space) -> dict[str, Any]:
    """A JSON-friendly description of the space, for the study's records."""

    def one(d: Any) -> Any:
        out: dict[str, Any]
        if isinstance(d, Float | Int):
            kind = "float" if isinstance(d, Float) else "int"
            out = {"type": kind, "low": d.low, "high": d.high, "log": d.log}
            if d.step is not None and (kind == "float" or d.step != 1):
                out["step"] = d.step
        elif isinstance(d, Categorical):
            out = {"type": "categorical", "choices": list(d.choices)}
        else:
            return {"fixed": d}
        if d.when:
            out["when"] = {k: list(v) for k, v in d.when.items()}
        return out

    return {name: one(d) for name, d in space.items()}


def space_from_description(described: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `describe`: the space rebuilt from its JSON record (a worker joining a study)."""
    space: dict[str, Any] = {}
    for name, d in described.items():
        if not isinstance(d, Mapping):
            raise UserError(f"recorded search space: {name!r} is not a distribution record")
        when = {k: list(v) for k, v in d.get("when", {}).items()}
        kind = d.get("type")
        if "fixed" in d:
            space[name] = d["fixed"]
        elif kind == "float":
            space[name] = Float(d["low"], d["high"], log=d["log"], step=d.get("step"), when=when)
        elif kind == "int":
            space[name] = Int(d["low"], d["high"], log=d["log"], step=d.get("step", 1), when=when)
        elif kind == "categorical":
            space[name] = Categorical(list(d["choices"]), when=when)
        else:
            raise UserError(f"recorded search space: {name!r} has unknown type {kind!r}")
    return space


def grid_values(space: Space) -> dict[str, list[Any]]:
    """The grid for GridSampler: every distribution must be discrete."""
    grid: dict[str, list[Any]] = {}
    for name, dist in space.items():
        if isinstance(dist, Categorical):
            grid[name] = list(dist.choices)
        elif isinstance(dist, Int) and not dist.log:
            grid[name] = list(range(dist.low, dist.high + 1, dist.step))
        elif isinstance(dist, Float) and dist.step is not None and not dist.log:
            n = round((dist.high - dist.low) / dist.step)
            grid[name] = [dist.low + i * dist.step for i in range(n + 1)]
        elif is_distribution(dist):
            raise UserError(
                f"sampler grid: {name!r} is continuous; give it Categorical choices or a step, or use another sampler"
            )
    return grid
