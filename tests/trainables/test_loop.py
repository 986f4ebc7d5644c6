"""The training loop: records, determinism, divergence, stopping early, checkpoint and resume, learning."""

from __future__ import annotations

import gc
import inspect
import itertools
import math
import time
import weakref
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import trainables.loop
from tests.trainables.helpers import assert_finite, computed
from trainables import Diverged, EpochResult, TrainConfig, fit, resolve_device


def test_one_record_per_epoch_with_test_metrics_on_the_last_only(tiny: TrainConfig) -> None:
    records = list(fit(tiny.replace(epochs=3)))
    assert [r.epoch for r in records] == [1, 2, 3]
    assert_finite(records)
    assert [r.test_acc is None for r in records] == [True, True, False]
    assert [r.test_loss is None for r in records] == [True, True, False]
    assert not any(r.resumed for r in records)
    last = records[-1].metrics()
    assert set(last) == {
        "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "samples_per_second", "test_loss", "test_acc",
        "peak_memory_mb",
    }  # fmt: skip
    assert "test_acc" not in records[0].metrics()
    assert all(r.peak_memory_mb is not None and r.peak_memory_mb > 10 for r in records)  # MiB: a process holds more


def test_same_seed_gives_identical_metrics(tiny: TrainConfig) -> None:
    config = tiny.replace(epochs=2, dropout=0.2)  # dropout masks come from the seeded RNG too
    first = [computed(r) for r in fit(config)]
    second = [computed(r) for r in fit(config)]
    assert first == second


def test_different_seed_gives_different_metrics(tiny: TrainConfig) -> None:
    first = [computed(r) for r in fit(tiny.replace(seed=0))]
    other = [computed(r) for r in fit(tiny.replace(seed=1))]
    assert first != other
    assert first[0]["train_loss"] != other[0]["train_loss"]


def test_absurd_learning_rate_raises_diverged_with_epoch_and_step(tiny: TrainConfig) -> None:
    config = tiny.replace(optimizer="sgd", lr=1e6, epochs=3)
    with pytest.raises(Diverged) as caught:
        list(fit(config))
    error = caught.value
    assert error.epoch == 1
    assert 1 <= error.step <= 4  # 4 steps per epoch; steps count from 1
    assert not math.isfinite(error.loss)
    assert f"epoch {error.epoch}, step {error.step}" in str(error)
    assert isinstance(error, ArithmeticError)


def test_fit_is_a_lazy_plain_generator(tmp_path: Path) -> None:
    # nothing runs before the first next(): a missing data set only shows when iteration starts
    records = fit(TrainConfig(dataset="mnist", model="cnn", data_dir=str(tmp_path / "missing"), device="cpu"))
    assert inspect.isgenerator(records)
    with pytest.raises(FileNotFoundError):
        next(records)


def test_caller_can_stop_after_the_first_epoch(tiny: TrainConfig, tmp_path: Path) -> None:
    checkpoint = tmp_path / "run.pt"
    records = fit(tiny.replace(epochs=5), checkpoint=checkpoint)
    alive = weakref.ref(records)
    assert next(records).epoch == 1
    records.close()
    assert records.gi_frame is None  # the frame, and with it model, optimizer and data, is released
    with pytest.raises(StopIteration):
        next(records)
    assert torch.load(checkpoint, weights_only=False)["epoch"] == 1  # no epoch ran after the stop
    del records
    gc.collect()
    assert alive() is None


def test_checkpoint_every_saves_once_that_many_seconds_have_passed(
    tiny: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1000.0]  # the loop's monotonic clock, moved on 4 s between epochs
    monkeypatch.setattr(
        trainables.loop, "time", SimpleNamespace(monotonic=lambda: clock[0], perf_counter=time.perf_counter)
    )
    saved: list[int] = []
    save = trainables.loop._save_checkpoint

    def counted_save(path: Path, epoch: int, *args: object) -> None:
        saved.append(epoch)
        save(path, epoch, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(trainables.loop, "_save_checkpoint", counted_save)
    for _ in fit(tiny.replace(epochs=8), checkpoint=tmp_path / "run.pt", checkpoint_every=10.0):
        clock[0] += 4.0
    # epoch k ends at 1000 + 4(k - 1): saved at the first epoch end 10 s after the start (epoch 4, at 1012),
    # then 10 s after that save (epoch 7, at 1024); the last epoch gets no save of its own
    assert saved == [4, 7]
    assert torch.load(tmp_path / "run.pt", weights_only=False)["epoch"] == 7

    saved.clear()
    for _ in fit(tiny.replace(epochs=3), checkpoint=tmp_path / "short.pt", checkpoint_every=60.0):
        clock[0] += 4.0
    assert saved == [] and not (tmp_path / "short.pt").exists()  # a short run never pays for a checkpoint


def _run_interrupted_after_3_of_5(config: TrainConfig, checkpoint: Path) -> tuple[list[EpochResult], list[EpochResult]]:
    """An uninterrupted run, and the epochs that a resumed run trains after a first run stopped at epoch 3."""
    uninterrupted = list(fit(config))
    first_run = fit(config, checkpoint=checkpoint)
    interrupted = [computed(r) for r in itertools.islice(first_run, 3)]
    first_run.close()
    assert interrupted == [computed(r) for r in uninterrupted[:3]]
    resumed = list(fit(config, checkpoint=checkpoint))
    assert [r.epoch for r in resumed] == [4, 5]
    assert [r.resumed for r in resumed] == [True, False]
    return uninterrupted, resumed


@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer": "adam", "dropout": 0.3},  # dropout masks need the RNG state restored
        {"optimizer": "momentum", "lr": 0.05, "lr_schedule": "onecycle"},  # per-batch schedule state
        {"optimizer": "rmsprop", "lr": 1e-3, "lr_schedule": "step", "step_size": 2, "weight_decay": 1e-3},
    ],
    ids=["adam-dropout", "momentum-onecycle", "rmsprop-step"],
)
def test_resume_from_checkpoint_continues_exactly_like_an_uninterrupted_run(
    tiny: TrainConfig, tmp_path: Path, overrides: dict[str, object]
) -> None:
    config = tiny.replace(epochs=5, **overrides)
    checkpoint = tmp_path / "trial" / "checkpoint.pt"
    uninterrupted, resumed = _run_interrupted_after_3_of_5(config, checkpoint)
    assert [{**computed(r), "resumed": False} for r in resumed] == [computed(r) for r in uninterrupted[3:]]

    assert list(fit(config, checkpoint=checkpoint)) == []  # a finished run has nothing left to do
    assert [p.name for p in checkpoint.parent.iterdir()] == ["checkpoint.pt"]  # no temporary file left


@pytest.mark.cuda
def test_resume_on_cuda_continues_like_an_uninterrupted_run(tiny: TrainConfig, tmp_path: Path) -> None:
    # the checkpoint holds CPU RNG states next to CUDA tensors: loading must put each where it belongs
    config = tiny.replace(device="cuda", epochs=5, dropout=0.3, lr_schedule="onecycle")
    uninterrupted, resumed = _run_interrupted_after_3_of_5(config, tmp_path / "checkpoint.pt")
    for got, expected in zip(resumed, uninterrupted[3:], strict=True):
        assert got.lr == pytest.approx(expected.lr, rel=1e-6)
        assert got.val_loss == pytest.approx(expected.val_loss, rel=1e-3)
        assert got.train_loss == pytest.approx(expected.train_loss, rel=1e-3)


def test_bf16_autocast_runs_on_cpu(tiny: TrainConfig) -> None:
    records = list(fit(tiny.replace(precision="bf16", epochs=1)))
    assert_finite(records)


def test_resolve_device() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda:0")


@pytest.mark.slow
def test_cnn1d_learns_mnist1d_with_the_default_config() -> None:
    # TrainConfig's defaults: cnn1d, adam lr 1e-2, batch 100, 20 epochs, the full 3,200 training samples
    records = list(fit(TrainConfig(device="cpu")))
    assert len(records) == 20
    assert_finite(records)
    assert records[-1].val_acc >= 0.80
    assert records[-1].test_acc is not None and records[-1].test_acc >= 0.75
    assert records[-1].train_loss < records[0].train_loss / 2


def test_a_checkpoint_that_cannot_be_written_does_not_stop_training(
    tiny: TrainConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk at the checkpoint (torch.save raises RuntimeError or OSError): the run trains every epoch,
    one warning per failed save, no temporary file left; only resumability is lost."""
    import errno

    def full(obj: object, f: object, *args: object, **kwargs: object) -> None:
        Path(str(f)).write_bytes(b"half")  # what a write cut short leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    checkpoint = tmp_path / "trial" / "checkpoint.pt"
    records = list(fit(tiny.replace(epochs=3), checkpoint=checkpoint, checkpoint_every=0))
    assert [r.epoch for r in records] == [1, 2, 3]
    assert caplog.text.count("not saved ([Errno 28] No space left on device); training goes on") == 3  # a save a epoch
    assert not checkpoint.exists() and not list(checkpoint.parent.glob("*.tmp"))
