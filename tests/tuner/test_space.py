from __future__ import annotations

from typing import Any

import optuna
import pytest

from trainables import ADAM_FAMILY, MOMENTUM_OPTIMIZERS, TrainConfig
from tuner.errors import UserError
from tuner.space import Categorical, Float, Int, default_space, describe, grid_values, suggest, validate_space


def sample_configs(space: dict, n: int, seed: int = 0) -> list[tuple[dict, TrainConfig]]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    out = []
    for _ in range(n):
        trial = study.ask()
        config = suggest(trial, space)
        out.append((dict(trial.params), config))
        study.tell(trial, 0.0)
    return out


def test_default_space_is_valid_and_trials_carry_only_active_params() -> None:
    space = default_space()
    validate_space(space)
    samples = sample_configs({**space, "epochs": 10}, 150)
    optimizers = {c.optimizer for _, c in samples}
    schedules = {c.lr_schedule for _, c in samples}
    assert len(optimizers) == 7 and len(schedules) == 7  # every choice is reachable
    for params, config in samples:
        # a trial never carries a parameter its config ignores
        assert set(params) <= set(config.active()), (params, config.optimizer, config.lr_schedule)
        assert ("momentum" in params) == (config.optimizer in MOMENTUM_OPTIMIZERS)
        assert ("beta1" in params) == (config.optimizer in ADAM_FAMILY)
        assert ("step_size" in params) == (config.lr_schedule == "step")
        assert ("warmup_epochs" in params) == (config.lr_schedule == "warmup_cosine")
        assert 1e-4 <= config.lr <= 3e-1
        assert config.epochs == 10


def test_suggest_applies_fixed_values_and_overrides() -> None:
    space = {"lr": Float(1e-3, 1e-1, log=True), "epochs": 3, "model": "mlp", "batch_size": Int(16, 64, step=16)}
    study = optuna.create_study()
    trial = study.ask()
    config = suggest(trial, space, overrides={"device": "cpu"})
    assert config.epochs == 3 and config.model == "mlp" and config.device == "cpu"
    assert config.batch_size in (16, 32, 48, 64)
    assert set(trial.params) == {"lr", "batch_size"}


def test_condition_on_fixed_value() -> None:
    space = {
        "optimizer": "adam",
        "beta1": Float(0.8, 0.9, when={"optimizer": ["adam"]}),
        "momentum": Float(0.5, 0.9, when={"optimizer": ["momentum"]}),
    }
    validate_space(space)
    params, config = sample_configs(space, 1)[0]
    assert set(params) == {"beta1"} and config.optimizer == "adam"


@pytest.mark.parametrize(
    ("space", "needle"),
    [
        ({"lr": Float(0.1, 0.01)}, "low (0.1) must be below high (0.01)"),
        ({"lr": Float(0.1, 0.1)}, "must be below high"),
        ({"lr": Float(0.0, 0.1, log=True)}, "log range needs low > 0"),
        ({"weight_decay": Float(-1.0, 0.1, log=True)}, "log range needs low > 0"),
        ({"optimizer": Categorical([])}, "at least one choice"),
        (
            {"momentum": Float(0.5, 0.9, when={"optimizer": ["sgd"]})},
            "condition on 'optimizer', which is not in the search space",
        ),
        ({"learning_rate": Float(1e-3, 1e-1)}, "'learning_rate' is not a TrainConfig field"),
        ({"batch_size": Int(16, 64.5)}, "Int needs integer"),  # type: ignore[arg-type]
        (
            {"momentum": Float(0.5, 0.9, when={"optimizer": ["sgd"]}), "optimizer": Categorical(["sgd"])},
            "must come before",
        ),
        ({"epochs": 0}, "epochs=0 is invalid"),
        ({"optimizer": "adamm"}, "optimizer='adamm' is invalid"),
        ({}, "search space is empty"),
        ({"lr": Float(1e-3, 1e-1, log=True, step=0.01)}, "log range cannot have a step"),
    ],
)
def test_malformed_space_fails_with_one_clear_line(space: dict, needle: str) -> None:
    with pytest.raises(UserError) as err:
        validate_space(space)
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_grid_values_need_discrete_distributions() -> None:
    grid = grid_values({"batch_size": Int(32, 128, step=32), "optimizer": Categorical(["sgd", "adam"]), "epochs": 2})
    assert grid == {"batch_size": [32, 64, 96, 128], "optimizer": ["sgd", "adam"]}
    with pytest.raises(UserError, match="'lr' is continuous"):
        grid_values({"lr": Float(1e-3, 1e-1, log=True)})


def test_describe_is_json_friendly() -> None:
    import json

    text = json.dumps(describe(default_space()))
    assert '"when": {"optimizer": ["momentum", "nesterov"]}' in text


def study_script_spaces() -> list[tuple[str, dict[str, Any]]]:
    """The search space of every study in studies/ (every member and budget of a group, its re-run space too)."""
    from pathlib import Path

    from tuner.group import StudyGroup
    from tuner.scripts import load_study_script
    from tuner.study import BUILTIN_TRAINABLE, StudySpec

    spaces: list[tuple[str, dict[str, Any]]] = [("default", default_space())]
    for script in sorted((Path(__file__).resolve().parents[2] / "studies").glob("*.py")):
        study = load_study_script(str(script))
        if isinstance(study, StudySpec) and study.trainable == BUILTIN_TRAINABLE:
            spaces.append((script.stem, dict(study.space)))
        elif isinstance(study, StudyGroup):
            for budget_name, budget in study.budgets.items():
                spaces += [(f"{s.name}/{budget_name}", dict(s.space)) for s in study.studies(script.stem, budget)]
                if study.rerun_space is not None:
                    spaces.append((f"{script.stem}.seeds/{budget_name}", dict(study.rerun_space(budget))))
    return spaces


def test_every_config_a_valid_space_can_yield_is_valid() -> None:
    """Property: a space validation accepts never yields an invalid config; checked over many sampled trials
    of every study script's space and the default space, with epochs fixed from 1 to 6."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    accepted = refused = 0
    for _name, space in study_script_spaces():
        validate_space(space)  # every study script's own space is valid as it stands
        for epochs in range(1, 7):
            candidate = {**space, "epochs": epochs}
            try:
                validate_space(candidate)
            except UserError:
                refused += 1
                continue
            accepted += 1
            study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=epochs))
            for _ in range(150):
                trial = study.ask()
                suggest(trial, candidate)  # raises ConfigError on an invalid config
                study.tell(trial, 0.0)
    assert accepted >= 20 and refused >= 1, (accepted, refused)


def test_a_space_that_can_yield_an_invalid_config_is_refused_up_front() -> None:
    """The default space with 3 epochs can draw warmup_cosine with 3 warm-up epochs: refused, naming the draw."""
    with pytest.raises(UserError, match=r"a trial can draw .*lr_schedule='warmup_cosine', warmup_epochs=3"):
        validate_space({**default_space(), "epochs": 3})
    space = {"optimizer": Categorical(["sgd", "nesterov"]), "momentum": Float(0.0, 0.9), "epochs": 3}
    with pytest.raises(UserError, match=r"optimizer='nesterov', momentum=0\.0"):
        validate_space(space)
