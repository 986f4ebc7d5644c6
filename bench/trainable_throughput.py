"""Training throughput: the PyTorch tutorial loop against our loop (`trainables.fit`).

Both sides train the same model (`trainables.build_model`) with the same optimizer, learning
rate and other hyperparameters (`trainables.optim.build_optimizer`), the same batch size and
the same training tensors, for the same number of epochs, from a fresh model each time, with
the same number of torch threads (`--threads`; default 1 on CPU, torch's default on CUDA):

(a) tutorial: the loop of the PyTorch tutorials ("Quickstart", "Training a Classifier"):
    `DataLoader(TensorDataset(x, y), batch_size, shuffle=True)` with the default
    num_workers=0, `.to(device)` per batch, `running_loss += loss.item()` every step, fp32,
    the optimizer as PyTorch builds it by default.
(b) ours: `trainables.fit_splits` (what `trainables.fit` runs once it has loaded the data):
    tensors on the device, batches as index slices of a seeded permutation, fused optimizer
    kernels, bf16 autocast and channels_last on CUDA, metrics read once per epoch.

Runs alternate a, b, a, b, ... in one process after one untimed warm-up pair; each side's
figure is the median over repeats of training samples per second. Only training is timed:
(a) is timed around its batch loop (synchronised on CUDA), (b) is read from
`EpochResult.samples_per_second`, which `fit` measures around its own batch loop, also
synchronised, so neither includes evaluation, model construction or data generation.

Cases:
  mnist1d  MNIST-1D as `trainables.load_splits` gives it (3,200 training samples),
           the `cnn1d` model, batch 100: the headline case on CPU.
  cifar    CIFAR-10-shaped random tensors (3x32x32, 10 classes, normalised like CIFAR),
           the `resnet` model, batch 512: the GPU case. 50,000 training images (CIFAR-10's
           training set) on CUDA; 1,024 on CPU, a smoke test of the code path (minutes).

    .venv/bin/python bench/trainable_throughput.py [--device auto|cpu|cuda] [--repeats N]
        [--epochs N] [--cases mnist1d,cifar] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# the repository root, so that the script also runs where the project is not installed (e.g. a GPU box)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import load_average, machine

from trainables import TrainConfig, build_model, fit_splits, load_splits
from trainables.data import Splits
from trainables.optim import build_optimizer

CASES = ("mnist1d", "cifar")


@dataclass(frozen=True)
class Case:
    name: str
    config: TrainConfig  # model, optimizer, lr, batch size (dataset fields unused)
    make_splits: Callable[[torch.device], Splits]
    epochs: dict[str, int]  # default epochs per repeat, by device type


def mnist1d_splits(device: torch.device) -> Splits:
    config = TrainConfig()
    return load_splits("mnist1d", config.data_dir, False, config.val_fraction)


def cifar_shaped_splits(device: torch.device, seed: int = 0) -> Splits:
    """Random tensors with CIFAR-10's shapes and normalised statistics (no files needed)."""
    n_train = 50_000 if device.type == "cuda" else 1_024
    n_eval = 1_000  # validation and test: evaluated by fit, never timed
    gen = torch.Generator().manual_seed(seed)

    def images(n: int) -> torch.Tensor:
        return torch.randn(n, 3, 32, 32, generator=gen)

    def labels(n: int) -> torch.Tensor:
        return torch.randint(0, 10, (n,), generator=gen)

    return Splits(images(n_train), labels(n_train), images(n_eval), labels(n_eval), images(n_eval), labels(n_eval), 10)


CASE_TABLE = {
    "mnist1d": Case("mnist1d", TrainConfig(model="cnn1d", batch_size=100), mnist1d_splits, {"cpu": 10, "cuda": 10}),
    "cifar": Case(
        "cifar",
        TrainConfig(dataset="cifar10", model="resnet", batch_size=512),
        cifar_shaped_splits,
        {"cpu": 1, "cuda": 3},
    ),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def tutorial(config: TrainConfig, splits: Splits, device: torch.device, epochs: int) -> tuple[float, float]:
    """(a) The tutorial loop; returns (training samples per second, last epoch's mean loss)."""
    torch.manual_seed(config.seed)
    model = build_model(config.model, splits.input_shape, splits.num_classes, config.dropout).to(device)
    optimizer = build_optimizer(config, model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    dataset = TensorDataset(splits.x_train, splits.y_train)
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True)
    seconds, running_loss = 0.0, 0.0
    for _ in range(epochs):
        model.train()
        running_loss = 0.0
        sync(device)
        started = time.perf_counter()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            pred = model(x)
            loss = loss_fn(pred, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            running_loss += loss.item()
        sync(device)
        seconds += time.perf_counter() - started
    return epochs * len(dataset) / seconds, running_loss / len(loader)


def ours(config: TrainConfig, splits: Splits, device: torch.device, epochs: int) -> tuple[float, float]:
    """(b) Our loop; returns (training samples per second, last epoch's mean loss)."""
    results = list(fit_splits(config.replace(epochs=epochs, device=str(device)), splits))
    n_train = len(splits.y_train)
    train_seconds = sum(n_train / r.samples_per_second for r in results)
    return epochs * n_train / train_seconds, results[-1].train_loss


def run_case(case: Case, device: torch.device, repeats: int, epochs: int | None) -> dict[str, object]:
    splits = case.make_splits(device)
    epochs = epochs or case.epochs[device.type]
    print(
        f"\n[{case.name}] model={case.config.model} batch={case.config.batch_size} "
        f"optimizer={case.config.optimizer} lr={case.config.lr} train_samples={len(splits.y_train)} "
        f"input={tuple(splits.input_shape)} epochs/repeat={epochs} repeats={repeats} (+1 warm-up pair)",
        flush=True,
    )
    a_runs: list[float] = []
    b_runs: list[float] = []
    for i in range(repeats + 1):
        a, a_loss = tutorial(case.config, splits, device, epochs)
        b, b_loss = ours(case.config, splits, device, epochs)
        label = "warm-up" if i == 0 else f"repeat {i}"
        print(
            f"  {label:>9}: tutorial {a:10.0f} samples/s (loss {a_loss:.3f})   "
            f"ours {b:10.0f} samples/s (loss {b_loss:.3f})   b/a {b / a:.2f}",
            flush=True,
        )
        if i > 0:
            a_runs.append(a)
            b_runs.append(b)
    a_med, b_med = statistics.median(a_runs), statistics.median(b_runs)
    paired = [b / a for a, b in zip(a_runs, b_runs, strict=True)]
    return {
        "case": case.name,
        "tutorial": a_med,
        "ours": b_med,
        "ratio": b_med / a_med,
        "paired_min": min(paired),
        "paired_max": max(paired),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per side, after one warm-up pair")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per repeat (default: per case and device)")
    parser.add_argument("--cases", default=None, help="comma-separated, from: " + ",".join(CASES))
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch intra-op threads, the same for both sides; 0: torch's default "
        "(default: 1 on CPU, steady on a shared machine; torch's default on CUDA)",
    )
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    if args.epochs is not None and args.epochs < 1:
        parser.error("--epochs must be >= 1")
    if args.threads is not None and args.threads < 0:
        parser.error("--threads must be >= 0")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    if args.cases is not None:
        args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
        unknown = [c for c in args.cases if c not in CASES]
        if unknown or not args.cases:
            parser.error(f"--cases: unknown {','.join(unknown) or '(none given)'}; choose from {','.join(CASES)}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    cases = args.cases or (["mnist1d", "cifar"] if device.type == "cuda" else ["mnist1d"])
    print("trainable throughput: (a) PyTorch tutorial loop vs (b) trainables.fit")
    print(machine(device))  # its load average: before the run
    started = time.perf_counter()
    results = [run_case(CASE_TABLE[name], device, args.repeats, args.epochs) for name in cases]
    print(f"\nload average (1/5/15 min) {load_average()} after; {time.perf_counter() - started:.0f} s in all")
    print(
        f"\n{'case':<8} {'tutorial (a)':>14} {'ours (b)':>14} {'b/a':>6}  paired b/a range   [training samples/s, median]"
    )
    for r in results:
        print(
            f"{r['case']:<8} {r['tutorial']:14.0f} {r['ours']:14.0f} {r['ratio']:6.2f}  "
            f"{r['paired_min']:.2f}-{r['paired_max']:.2f}"
        )


if __name__ == "__main__":
    main()
