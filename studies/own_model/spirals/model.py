"""An MLP whose width and depth are hyperparameters."""

from __future__ import annotations

from torch import nn


class SpiralNet(nn.Module):
    def __init__(self, hidden: int = 64, layers: int = 2, dropout: float = 0.0) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = 2
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
            width = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(width, 3))

    def forward(self, x):  # type: ignore[no-untyped-def]
        return self.net(x)
