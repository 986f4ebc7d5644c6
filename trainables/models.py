"""Small models for the bundled datasets; dropout is configurable where it applies."""

from __future__ import annotations

from torch import nn


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, dropout: float) -> nn.Module:
    """A fresh model; `input_shape` excludes the batch dimension."""
    channels = input_shape[0]
    if name == "mlp":
        return mlp(int(_numel(input_shape)), num_classes, dropout)
    if name == "cnn1d":
        return cnn1d(channels, input_shape[-1], num_classes, dropout)
    if name == "cnn":
        return cnn(channels, num_classes, dropout)
    if name == "resnet":
        return resnet(channels, num_classes, dropout)
    raise ValueError(f"unknown model {name!r}")


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def mlp(inputs: int, num_classes: int, dropout: float, hidden: int = 100) -> nn.Module:
    """Two hidden layers of 100, as the MNIST-1D paper's MLP."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(inputs, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, num_classes),
    )  # fmt: skip


def cnn1d(channels: int, length: int, num_classes: int, dropout: float, width: int = 25) -> nn.Module:
    """The MNIST-1D paper's CNN: three strided convolutions and a linear layer (5,210 parameters)."""
    out_length = length
    for kernel in (5, 3, 3):
        out_length = (out_length + 2 - kernel) // 2 + 1
    return nn.Sequential(
        nn.Conv1d(channels, width, 5, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Dropout(dropout),
        nn.Linear(width * out_length, num_classes),
    )  # fmt: skip


def _conv_bn(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


def cnn(channels: int, num_classes: int, dropout: float) -> nn.Module:
    """A small 2D CNN for 28x28 MNIST/FashionMNIST (and any image size)."""
    return nn.Sequential(
        _conv_bn(channels, 32), nn.MaxPool2d(2),
        _conv_bn(32, 64), nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
        nn.Linear(64, num_classes),
    )  # fmt: skip


class _ResidualStage(nn.Module):
    """conv-pool-bn-relu then a residual conv-bn-relu, as in the fast CIFAR-10 records."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.down = nn.Sequential(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2), nn.BatchNorm2d(c_out), nn.ReLU()
        )
        self.residual = nn.Sequential(_conv_bn(c_out, c_out), _conv_bn(c_out, c_out))

    def forward(self, x):  # type: ignore[no-untyped-def]
        x = self.down(x)
        return x + self.residual(x)


def resnet(channels: int, num_classes: int, dropout: float, widths: tuple[int, int, int] = (64, 128, 256)) -> nn.Module:
    """A small fast ResNet for 32x32 images in the style of the fast CIFAR-10 training records."""
    return nn.Sequential(
        _conv_bn(channels, widths[0]),
        _ResidualStage(widths[0], widths[1]),
        nn.Sequential(nn.Conv2d(widths[1], widths[2], 3, padding=1, bias=False), nn.MaxPool2d(2),
                      nn.BatchNorm2d(widths[2]), nn.ReLU()),
        _ResidualStage(widths[2], widths[2]),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout),
        nn.Linear(widths[2], num_classes),
    )  # fmt: skip
