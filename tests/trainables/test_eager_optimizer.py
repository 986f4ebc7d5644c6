"""Fast start: building and stepping an optimizer does not import torch._dynamo (2.2 s a process on a
2-core CPU), and the update is torch.optim's own. Speed itself is measured in bench/startup.py."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from trainables import TrainConfig
from trainables.optim import build_optimizer

REPO = Path(__file__).resolve().parents[2]


def _train(make: Callable[[Any], torch.optim.Optimizer]) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    optimizer = make(model.parameters())
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    optimizer.load_state_dict(optimizer.state_dict())
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("name", ["sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw"])
@pytest.mark.parametrize("fused", [True, False])
def test_the_optimizer_without_dynamo_computes_the_same_update_as_torch_optim(name: str, fused: bool) -> None:
    config = TrainConfig(optimizer=name, lr=0.05, weight_decay=1e-3)
    built = build_optimizer(config, [torch.nn.Parameter(torch.ones(1))], fused=fused)
    stock_cls = type(built)  # a plain torch.optim optimizer, only its instance's methods unwrapped
    assert stock_cls.__module__.startswith("torch.optim")
    assert "add_param_group" in vars(built)  # else this compares torch.optim with itself
    ours = _train(lambda params: build_optimizer(config, params, fused=fused))
    accepted = inspect.signature(stock_cls).parameters
    stock = _train(lambda params: stock_cls(params, **{k: v for k, v in built.defaults.items() if k in accepted}))
    assert all(torch.equal(a, b) for a, b in zip(ours, stock, strict=True))
    assert any(
        not torch.equal(a, b) for a, b in zip(ours, _train(lambda params: stock_cls(params, lr=0.01)), strict=True)
    )


def test_training_with_every_optimizer_and_a_checkpoint_does_not_import_dynamo(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys, torch
        from trainables import TrainConfig, fit_splits
        from trainables.data import Splits
        x, y = torch.randn(96, 1, 40), torch.randint(0, 10, (96,))
        splits = Splits(x[:64], y[:64], x[64:], y[64:], x[64:], y[64:], 10)
        for name in ["sgd", "momentum", "nesterov", "rmsprop", "adagrad", "adam", "adamw"]:
            config = TrainConfig(optimizer=name, model="cnn1d", epochs=2, batch_size=16, device="cpu")
            list(fit_splits(config, splits, checkpoint=sys.argv[1] + "/" + name + ".pt"))
        print("torch._dynamo" in sys.modules)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
