"""Shared fixtures: tiny, CPU-only configs so that the whole suite stays fast on two cores."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from trainables import TrainConfig


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Train on one CPU thread: these models are too small to gain from more, and with two threads on a
    two-core machine that is busy with anything else, torch's spinning workers ran 20x slower (67 s
    instead of 3 s for the 20-epoch MNIST-1D run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny() -> TrainConfig:
    """MNIST-1D cnn1d on 200 training samples: 4 steps of 50 per epoch, 2 epochs."""
    return TrainConfig(device="cpu", epochs=2, batch_size=50, train_samples=200)
