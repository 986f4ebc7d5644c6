"""Fused cohorts: trials per hour of K trials trained solo one after another against one `Cohort` of K.

Both sides train the same K configs (the flagship's shape: MNIST-1D, `cnn1d`, batch 100, 15 epochs;
the optimizers cycle through all seven, each with its own learning rate and seed, as a study's
trials would) on the same splits and the same number of torch threads (`--threads`; default 1 on
CPU, torch's default on CUDA):

(a) solo: `trainables.fit_splits(config, splits)` for each config in turn, the whole call timed
    (model build, training, evaluation): trials per hour = K / the sum of those times.
(b) cohort: `trainables.cohort.Cohort(configs, splits=splits)` and every `train_epoch()`, timed
    together (the same work: build, training, evaluation, for all K at once).

For each K the two sides run back to back in one process, after an untimed warm-up of both. The
ratio is (b)'s trials per hour over (a)'s. Peak memory per member: on CUDA the growth of
`torch.cuda.max_memory_allocated` over the run divided by K; on CPU the growth of the process's
peak resident set (VmHWM in /proc/self/status, reset before each side through /proc/self/clear_refs,
after glibc's malloc_trim has handed freed heap back) divided by K: what the process held, which
includes allocator slack, not only live tensors.

A second table times one epoch of 14 members three ways: one cohort mixing the seven optimizers
(two each), one cohort of 14 Adam members (what one type costs), and seven single-type cohorts of
two (what grouping cohorts by optimizer would run instead).

    .venv/bin/python bench/cohort_throughput.py [--device auto|cpu|cuda] [--epochs N] [--quick]
        [--ks 1,4,8,16,32] [--threads N]
"""

from __future__ import annotations

import argparse
import ctypes
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import torch

# the repository root, so that the script also runs where the project is not installed (e.g. a GPU box)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import load_average, machine, table

from trainables import TrainConfig, fit_splits, load_splits
from trainables.cohort import Cohort
from trainables.config import OPTIMIZERS
from trainables.data import Splits

LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "rmsprop": 0.001, "adagrad": 0.02, "adam": 0.01, "adamw": 0.01}


def configs_for(k: int, epochs: int, device: torch.device, kinds: tuple[str, ...] = OPTIMIZERS) -> list[TrainConfig]:
    base = TrainConfig(model="cnn1d", batch_size=100, epochs=epochs, device=str(device))
    return [base.replace(optimizer=kinds[i % len(kinds)], lr=LR[kinds[i % len(kinds)]], seed=i) for i in range(k)]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory growth over a block: CUDA allocator peak, or the CPU resident set's peak (VmHWM)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.bytes: float = float("nan")

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            with suppress(OSError, AttributeError):
                ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system: RSS counts live memory
            with suppress(OSError):
                Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
            self.start = _status_kib("VmRSS") * 1024
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self.start
        else:
            self.bytes = _status_kib("VmHWM") * 1024 - self.start


def _status_kib(field: str) -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        pass
    return float("nan")


def solo(configs: list[TrainConfig], splits: Splits, device: torch.device) -> tuple[float, float, float]:
    """(seconds, peak bytes per trial, mean final val_acc) for the configs trained one after another."""
    seconds, peak, accs = 0.0, 0.0, []
    for config in configs:
        with PeakMemory(device) as memory:
            sync(device)
            started = time.perf_counter()
            records = list(fit_splits(config, splits))
            sync(device)
            seconds += time.perf_counter() - started
        peak = max(peak, memory.bytes)
        accs.append(records[-1].val_acc)
    return seconds, peak, sum(accs) / len(accs)


def cohort(configs: list[TrainConfig], splits: Splits, device: torch.device) -> tuple[float, float, float]:
    """(seconds, peak bytes per member, mean final val_acc) for one cohort of the configs."""
    with PeakMemory(device) as memory:
        sync(device)
        started = time.perf_counter()
        fused = Cohort(configs, splits=splits)
        last: dict[int, object] = {}
        for _ in range(fused.epochs):
            last.update(fused.train_epoch())
        sync(device)
        seconds = time.perf_counter() - started
    accs = [float(getattr(r, "val_acc", float("nan"))) for r in last.values()]
    return seconds, memory.bytes / len(configs), sum(accs) / len(accs)


def timed_epoch(make: Callable[[], list[Cohort]], device: torch.device, repeats: int) -> float:
    """Median seconds of one epoch of the given cohorts (built untimed, a warm-up epoch first)."""
    times = []
    for _ in range(repeats):
        cohorts = make()
        for c in cohorts:
            c.train_epoch()
        sync(device)
        started = time.perf_counter()
        for c in cohorts:
            c.train_epoch()
        sync(device)
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def mixing(splits: Splits, device: torch.device, repeats: int) -> list[list[object]]:
    mixed = configs_for(14, 2, device)
    adam = configs_for(14, 2, device, ("adam",))
    rows = [
        ("one cohort, the 7 optimizers mixed (2 each)", lambda: [Cohort(mixed, splits=splits)]),
        ("one cohort, 14 x adam (one type)", lambda: [Cohort(adam, splits=splits)]),
        (
            "7 cohorts of 2, grouped by optimizer",
            lambda: [Cohort([c for c in mixed if c.optimizer == o], splits=splits) for o in OPTIMIZERS],
        ),
    ]
    out: list[list[object]] = []
    for label, make in rows:
        seconds = timed_epoch(make, device, repeats)
        out.append([label, f"{seconds:.2f}", f"{seconds / 14 * 1000:.0f}"])
        print(f"  {label}: {seconds:.2f} s per epoch", flush=True)
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--epochs", type=int, default=None, help="epochs per trial (default 15; 2 with --quick)")
    parser.add_argument("--quick", action="store_true", help="2 epochs per trial, one mixing repeat: a smoke run")
    parser.add_argument("--ks", default="1,4,8,16,32", help="cohort sizes, comma-separated")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads for both sides (default: 1 on CPU)"
    )
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (2 if args.quick else 15)
    args.ks = [int(k) for k in args.ks.split(",") if k.strip()]
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: CUDA is not available on this machine")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else 0)
    if threads:
        torch.set_num_threads(threads)
    splits = load_splits("mnist1d", "data", False, 0.2)
    print("fused cohorts: (a) K trials solo with fit_splits, one after another, vs (b) one Cohort of K")
    print(machine(device))
    print(f"MNIST-1D cnn1d batch 100, {len(splits.y_train)} training samples, {args.epochs} epochs per trial")
    started = time.perf_counter()
    solo(configs_for(2, 1, device), splits, device)  # warm-up: kernels, allocator, data
    cohort(configs_for(2, 1, device), splits, device)

    rows = []
    for k in args.ks:
        configs = configs_for(k, args.epochs, device)
        a_seconds, a_peak, a_acc = solo(configs, splits, device)
        b_seconds, b_peak, b_acc = cohort(configs, splits, device)
        a_rate, b_rate = k / a_seconds * 3600, k / b_seconds * 3600
        rows.append(
            [
                k,
                f"{a_rate:,.0f}",
                f"{b_rate:,.0f}",
                f"**{b_rate / a_rate:.2f}**",
                f"{a_peak / 2**20:.1f}",
                f"{b_peak / 2**20:.1f}",
                f"{a_acc:.3f} / {b_acc:.3f}",
            ]
        )
        print(
            f"  K={k:3d}: solo {a_seconds:7.1f} s ({a_rate:8.0f} trials/h)  cohort {b_seconds:7.1f} s "
            f"({b_rate:8.0f} trials/h)  x{b_rate / a_rate:.2f}",
            flush=True,
        )
    print("\noptimizer mixing (14 members, one epoch, median):")
    mix = mixing(splits, device, 1 if args.quick else 3)
    print(f"\nload average (1/5/15 min) {load_average()} after; {time.perf_counter() - started:.0f} s in all\n")
    print(
        table(
            [
                "K",
                "solo trials/h (a)",
                "cohort trials/h (b)",
                "b/a",
                "peak MiB per trial, solo",
                "peak MiB per member, cohort",
                "mean val_acc a / b",
            ],
            rows,
        )
    )
    print()
    print(table(["14 members", "s per epoch", "ms per member-epoch"], mix))


if __name__ == "__main__":
    main()
