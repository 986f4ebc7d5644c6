"""The user's training loop: a generator of per-epoch metrics, with macro-F1 as the metric to tune.

The tuner contract is only this: `train(params, context)` yields one mapping of metric name to
number per epoch and returns the trained model; `context` (optional) gives the device and a
checkpoint (`context.save` / `context.load`) so that a retried trial resumes.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

import torch
from torch import nn

from spirals.data import splits
from spirals.model import SpiralNet


def macro_f1(predicted: torch.Tensor, target: torch.Tensor, classes: int = 3) -> float:
    scores = []
    for c in range(classes):
        tp = ((predicted == c) & (target == c)).sum().item()
        fp = ((predicted == c) & (target != c)).sum().item()
        fn = ((predicted != c) & (target == c)).sum().item()
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / classes


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(macro-F1, loss) of `model` on (x, y)."""
    model.eval()
    with torch.no_grad():
        logits = model(x)
    return macro_f1(logits.argmax(1), y), float(nn.functional.cross_entropy(logits, y))


def train(params: dict[str, Any], context: Any = None) -> Generator[dict[str, float], None, nn.Module]:
    device = torch.device(context.device if context is not None else "cpu")
    torch.manual_seed(params.get("seed", 0))
    data = {k: (x.to(device), y.to(device)) for k, (x, y) in splits().items()}
    model = SpiralNet(params["hidden"], params["layers"], params.get("dropout", 0.0)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=params["lr"], weight_decay=params.get("weight_decay", 0.0))
    start = 0
    state = context.load() if context is not None else None
    if state is not None:  # a retried trial: go on from the last checkpoint
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = state["epoch"]
    x, y = data["train"]
    for epoch in range(start + 1, params["epochs"] + 1):
        model.train()
        for idx in torch.randperm(len(y), device=device).split(params["batch_size"]):
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        val_f1, val_loss = evaluate(model, *data["val"])
        yield {"epoch": epoch, "val_f1": val_f1, "val_loss": val_loss}
        if context is not None:
            context.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch})
    return model
