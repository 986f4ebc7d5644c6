"""Words for metrics and parameters, so that every axis and sentence reads without the code."""

from __future__ import annotations

METRIC_LABELS = {
    "val_acc": "validation accuracy",
    "val_loss": "validation loss",
    "train_acc": "training accuracy",
    "train_loss": "training loss",
    "test_acc": "test accuracy",
    "test_loss": "test loss",
    "lr": "learning rate",
}
PARAM_LABELS = {
    "lr": "learning rate",
    "batch_size": "batch size",
    "weight_decay": "weight decay (L2)",
    "l1": "L1 strength",
    "dropout": "dropout rate",
    "lr_schedule": "learning-rate schedule",
    "schedule": "learning-rate schedule",
}


def metric_label(metric: str) -> str:
    return METRIC_LABELS.get(metric, metric.replace("_", " "))


def param_label(param: str) -> str:
    return PARAM_LABELS.get(param, param.replace("_", " "))


def test_metric_for(metric: str) -> str:
    """The held-out counterpart of an objective: val_acc -> test_acc, train_loss -> test_loss."""
    return "test_" + metric.split("_", 1)[1] if metric.startswith(("val_", "train_")) else metric


def fmt_value(value: float) -> str:
    """Metric values: three decimals (accuracies and losses of these models)."""
    return f"{value:.3f}"


def fmt_lr(lr: float) -> str:
    return f"{lr:.2g}" if 1e-3 <= lr < 10 else f"{lr:.1e}"


def seed_metric_label(metric: str, seed_metric: str) -> str:
    """What the seed re-runs are compared on: the test metric, or the objective when none was recorded."""
    return metric_label(test_metric_for(metric)) if seed_metric != "value" else f"final {metric_label(metric)}"
