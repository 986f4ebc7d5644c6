"""`fit_model`: the built-in loop training a user's nn.Module on the user's data."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from tests.trainables.helpers import run_to_end
from trainables import fit_model


def blobs(seed: int, n: int = 400) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    return centres[y] + torch.randn(n, 2, generator=g), y


class Net(nn.Module):
    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.hidden = hidden
        self.body = nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Dropout(0.0), nn.Linear(hidden, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MemoryStore:
    """A context's checkpoint side, in memory."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.device, self.checkpoint_every = "cpu", 0.0

    def save(self, state: dict[str, Any]) -> None:
        self.state = state

    def load(self) -> dict[str, Any] | None:
        return self.state


PARAMS = {"optimizer": "adam", "lr": 0.02, "epochs": 5, "batch_size": 32, "hidden": 24, "dropout": 0.25}


def test_it_trains_the_users_model_and_returns_it() -> None:
    records, model = run_to_end(fit_model(PARAMS, Net, train=blobs(0), val=blobs(1), test=blobs(2)))
    assert len(records) == 5 and {"train_loss", "val_acc", "lr"} <= set(records[0])
    assert "test_acc" in records[-1] and "test_acc" not in records[0]
    assert records[-1]["val_acc"] > 0.85  # it learns: three separable blobs
    assert isinstance(model, Net) and model.hidden == 24  # the non-TrainConfig param went to the factory
    assert model.body[2].p == 0.25  # dropout set on the model's own Dropout layer
    x, y = blobs(1)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x).argmax(1) == y).float().mean())
    assert accuracy == pytest.approx(records[-1]["val_acc"])  # the returned model is the one evaluated


def test_numpy_arrays_and_datasets_are_data_too() -> None:
    x, y = blobs(0)
    val = TensorDataset(*blobs(1))
    first = next(fit_model({**PARAMS, "epochs": 1}, Net, train=(x.numpy(), y.numpy().astype(np.int64)), val=val))
    again = next(fit_model({**PARAMS, "epochs": 1}, Net, train=(x, y), val=blobs(1)))
    assert first["val_acc"] == pytest.approx(again["val_acc"])  # the same data, the same seeded training
    with pytest.raises(TypeError, match="give \\(x, y\\) tensors or arrays"):
        next(fit_model(PARAMS, Net, train="x", val=blobs(1)))  # type: ignore[arg-type]


def test_it_resumes_from_the_contexts_checkpoint() -> None:
    store = MemoryStore()
    stopped = fit_model(PARAMS, Net, train=blobs(0), val=blobs(1), context=store)
    first_two = [next(stopped), next(stopped)]
    stopped.close()
    assert store.state is not None and store.state["epoch"] == 2
    resumed = list(fit_model(PARAMS, Net, train=blobs(0), val=blobs(1), context=store))
    full = list(fit_model(PARAMS, Net, train=blobs(0), val=blobs(1)))
    assert len(resumed) == 3  # epochs 3 to 5
    assert [r["val_acc"] for r in first_two + resumed] == pytest.approx([r["val_acc"] for r in full])
