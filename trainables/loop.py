"""The training loop: `fit(config)` yields one EpochResult per epoch and returns the trained model.

Speed choices, in one place: the whole dataset lives on the device as tensors and
batches are index slices of a seeded per-epoch permutation (no DataLoader); bf16
autocast and channels_last on CUDA; fused optimizer kernels where PyTorch has them; losses
and accuracies are accumulated on the device and read once per epoch, so the step loop
never waits for the host.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import torch
from torch import nn

from trainables.config import TrainConfig
from trainables.data import Splits, load_splits
from trainables.models import build_model
from trainables.optim import Schedule, build_optimizer, l1_penalty

F = TypeVar("F", bound=Callable[..., Any])


def takes_train_config(fn: F) -> F:
    """Mark a trainable of the built-in protocol: `fn(config: TrainConfig, checkpoint=..., checkpoint_every=...)`
    yielding EpochResult. The tuner validates its search space against TrainConfig and builds the config
    for it; any other trainable gets the trial's params as a plain dict."""
    fn.takes_train_config = True  # type: ignore[attr-defined]
    return fn


class CheckpointStore(Protocol):
    """Where a training run keeps its state between epochs: `save(state)`, and `load()` (None when there is none)."""

    def save(self, state: dict[str, Any]) -> None: ...

    def load(self) -> dict[str, Any] | None: ...


@dataclass(frozen=True)
class FileCheckpoint:
    """A checkpoint file, replaced atomically: a kill mid-save leaves the previous one intact."""

    path: Path

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        try:
            torch.save(state, tmp)
            os.replace(tmp, self.path)
        except (OSError, RuntimeError) as exc:  # a full disk (torch says RuntimeError): training goes on
            tmp.unlink(missing_ok=True)
            checkpoint_not_saved(self.path, exc)

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        # on the CPU: RNG states must stay CPU tensors; load_state_dict moves the rest to the device
        return torch.load(self.path, map_location="cpu", weights_only=False)


def checkpoint_not_saved(path: Path, exc: BaseException) -> None:
    """One warning: the checkpoint is for resuming; losing one costs a retry some epochs, not the trial."""
    first_line = next(iter(str(exc).splitlines()), type(exc).__name__)
    logging.getLogger(__name__).warning(
        "checkpoint %s not saved (%s); training goes on, and a retry resumes from the last one saved", path, first_line
    )


class Diverged(ArithmeticError):
    """The training loss became NaN or infinite."""

    def __init__(self, epoch: int, step: int, loss: float) -> None:
        self.epoch, self.step, self.loss = epoch, step, loss
        super().__init__(f"diverged at epoch {epoch}, step {step} (loss {loss})")


@dataclass(frozen=True)
class EpochResult:
    """Metrics of one finished epoch (epochs count from 1); test metrics only on the last."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float  # learning rate at the start of the epoch
    seconds: float  # wall time of the epoch, evaluation included
    samples_per_second: float  # training throughput
    test_loss: float | None = None
    test_acc: float | None = None
    resumed: bool = False  # True on the first epoch trained after resuming from a checkpoint
    # the most memory the trial has held so far, in MiB: on CUDA the device's peak allocation since the
    # trial started (a cohort's, for each member), on the CPU the process's peak resident size; None: unknown
    peak_memory_mb: float | None = None

    def metrics(self) -> dict[str, float]:
        """The numeric metrics, without the epoch number and the flags."""
        names = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "samples_per_second")
        out = {name: float(getattr(self, name)) for name in names}
        if self.peak_memory_mb is not None:
            out["peak_memory_mb"] = float(self.peak_memory_mb)
        if self.test_acc is not None and self.test_loss is not None:
            out["test_loss"], out["test_acc"] = self.test_loss, self.test_acc
        return out


def peak_memory_mb(device: torch.device) -> float | None:
    """The peak memory of this trial so far (see EpochResult.peak_memory_mb)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} asked for, but CUDA is not available on this machine")
    return torch.device(device)


@takes_train_config
def fit(
    config: TrainConfig, checkpoint: str | Path | None = None, checkpoint_every: float = 0.0
) -> Generator[EpochResult, None, nn.Module]:
    """Train `config`, yielding after every epoch; the caller may stop at any epoch.

    With `checkpoint`, model, optimizer, scheduler and RNG state are saved there at the end of
    an epoch once `checkpoint_every` seconds have passed since the last save (or since
    training started; 0: after every epoch), and a run that finds the file already there
    resumes after the epoch it holds. Returns the trained model when every epoch has run.
    """
    splits = load_splits(config.dataset, config.data_dir, config.download, config.val_fraction)
    return (yield from fit_splits(config, splits, checkpoint, checkpoint_every))


fit.fused = "trainables.cohort:Cohort"  # type: ignore[attr-defined]  # its trials fuse into cohorts


def fit_splits(
    config: TrainConfig,
    splits: Splits,
    checkpoint: str | Path | CheckpointStore | None = None,
    checkpoint_every: float = 0.0,
    model: nn.Module | None = None,
) -> Generator[EpochResult, None, nn.Module]:
    """`fit` on given splits instead of the dataset that `config` names (benchmarks, custom data).

    The config's dataset fields (`dataset`, `data_dir`, `download`, `val_fraction`) are not read.
    `model` trains instead of the one `config.model` names; `checkpoint` may be a file or any
    `CheckpointStore`. Splits without test samples skip the test evaluation.
    """
    store = FileCheckpoint(Path(checkpoint)) if isinstance(checkpoint, str | Path) else checkpoint
    device = resolve_device(config.device)
    use_bf16 = config.precision == "bf16" or (config.precision == "auto" and device.type == "cuda")
    reset_peak_memory(device)
    data = _to_device(splits, config.train_samples, device)
    channels_last = device.type == "cuda" and data["x_train"].ndim == 4
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if channels_last:
        data = {k: v.contiguous(memory_format=memory_format) if v.ndim == 4 else v for k, v in data.items()}

    torch.manual_seed(config.seed)  # model init and dropout masks
    if model is None:
        model = build_model(config.model, splits.input_shape, splits.num_classes, config.dropout)
    model = model.to(device).to(memory_format=memory_format)
    optimizer = build_optimizer(config, model.parameters(), fused=True)
    n_train = len(data["y_train"])
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    schedule = Schedule(config, optimizer, steps_per_epoch)
    shuffle = torch.Generator().manual_seed(config.seed)  # CPU generator: same order on every device
    autocast: Any = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
    loss_fn = nn.CrossEntropyLoss()

    start_epoch = 1
    state = store.load() if store is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        shuffle.set_state(state["shuffle_rng"])
        torch.set_rng_state(state["torch_rng"])
        if device.type == "cuda" and state.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(state["cuda_rng"], device)
        start_epoch = state["epoch"] + 1

    last_save = time.monotonic()
    for epoch in range(start_epoch, config.epochs + 1):
        _sync(device)
        started = time.perf_counter()
        lr = float(optimizer.param_groups[0]["lr"])
        model.train()
        order = torch.randperm(n_train, generator=shuffle).to(device, non_blocking=True)
        step_losses = torch.empty(steps_per_epoch, device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        loss_sum = torch.zeros((), device=device)
        for step in range(steps_per_epoch):
            idx = order[step * config.batch_size : (step + 1) * config.batch_size]
            x, y = data["x_train"][idx], data["y_train"][idx]
            with autocast():
                logits = model(x)
                loss = loss_fn(logits.float(), y)
                if config.l1 > 0:
                    loss = loss + config.l1 * l1_penalty(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.after_step()
            step_losses[step] = loss.detach()
            loss_sum += loss.detach() * len(idx)
            correct += (logits.argmax(1) == y).sum()
        finite = torch.isfinite(step_losses)
        if not bool(finite.all()):  # one host sync per epoch, not per step
            bad_step = int((~finite).nonzero()[0])
            raise Diverged(epoch, bad_step + 1, float(step_losses[bad_step]))
        _sync(device)
        train_seconds = time.perf_counter() - started

        val_loss, val_acc = _evaluate(model, data["x_val"], data["y_val"], config.batch_size, autocast, loss_fn)
        schedule.after_epoch(val_loss)
        test_loss = test_acc = None
        if epoch == config.epochs and len(data["y_test"]):
            test_loss, test_acc = _evaluate(model, data["x_test"], data["y_test"], config.batch_size, autocast, loss_fn)
        if store is not None and time.monotonic() - last_save >= checkpoint_every:
            _save_checkpoint(store, epoch, model, optimizer, schedule, shuffle, device)
            last_save = time.monotonic()
        _sync(device)
        seconds = time.perf_counter() - started
        yield EpochResult(
            epoch=epoch,
            train_loss=float(loss_sum) / n_train,
            train_acc=float(correct) / n_train,
            val_loss=val_loss,
            val_acc=val_acc,
            lr=lr,
            seconds=seconds,
            samples_per_second=n_train / train_seconds,
            test_loss=test_loss,
            test_acc=test_acc,
            resumed=epoch == start_epoch and start_epoch > 1,
            peak_memory_mb=peak_memory_mb(device),
        )
    return model


def _to_device(splits: Splits, train_samples: int, device: torch.device) -> dict[str, torch.Tensor]:
    x_train, y_train = splits.x_train, splits.y_train
    if train_samples:
        x_train, y_train = x_train[:train_samples], y_train[:train_samples]
    tensors = {
        "x_train": x_train, "y_train": y_train,
        "x_val": splits.x_val, "y_val": splits.y_val,
        "x_test": splits.x_test, "y_test": splits.y_test,
    }  # fmt: skip
    return {k: v.to(device) for k, v in tensors.items()}


@torch.no_grad()
def _evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int, autocast: Any, loss_fn: nn.Module
) -> tuple[float, float]:
    model.eval()
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    eval_batch = max(batch_size, 1024)  # no gradients: larger batches are cheaper
    for start in range(0, len(y), eval_batch):
        xb, yb = x[start : start + eval_batch], y[start : start + eval_batch]
        with autocast():
            logits = model(xb).float()
        loss_sum += nn.functional.cross_entropy(logits, yb, reduction="sum")
        correct += (logits.argmax(1) == yb).sum()
    return float(loss_sum) / len(y), float(correct) / len(y)


def _save_checkpoint(
    store: CheckpointStore,
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule: Schedule,
    shuffle: torch.Generator,
    device: torch.device,
) -> None:
    state = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "shuffle_rng": shuffle.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }
    store.save(state)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
