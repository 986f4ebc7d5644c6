"""Three interleaved noisy spirals in the plane: a small classification task an MLP must work to learn."""

from __future__ import annotations

import numpy as np
import torch


def make_spirals(n_per_class: int, noise: float = 0.25, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (n, 2) and labels (n,) of 3 spirals, each turning 1.5 times around the origin."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for label in range(3):
        radius = np.linspace(0.1, 1.0, n_per_class)
        angle = 3 * np.pi * radius + 2 * np.pi * label / 3 + rng.normal(0, noise, n_per_class)
        xs.append(np.stack([radius * np.cos(angle), radius * np.sin(angle)], axis=1))
        ys.append(np.full(n_per_class, label))
    x, y = np.concatenate(xs), np.concatenate(ys)
    order = rng.permutation(len(y))
    return torch.tensor(x[order], dtype=torch.float32), torch.tensor(y[order], dtype=torch.int64)


def splits(seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Train and validation sets drawn independently (500 and 200 points per class)."""
    return {"train": make_spirals(500, seed=seed), "val": make_spirals(200, seed=seed + 1)}
