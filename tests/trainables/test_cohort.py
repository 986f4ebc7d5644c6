"""Fused cohorts: each member trains as it would solo with `fit_splits`, divergence and drop leave the
others alone, checkpoints resume exactly.

Tolerances. The fused model sums in another order than solo (batched matrix products and grouped
convolutions instead of one oneDNN convolution per model), so fp32 curves differ by rounding, and
training amplifies it: Adam and RMSprop divide each gradient by its own magnitude, so a weight whose
gradient is rounding noise takes an lr-sized step whose sign differs between the two. With the
learning rates below, the worst fp32 difference of the 49 members over 12 steps was 2.1e-5 relative
(nesterov/plateau; most under 5e-7), hence `FP32_RTOL` = 1e-4. The same members in float64 agree to
2.4e-7, the rounding of the cross-entropy that both loops compute in fp32 (`logits.float()`): that
run (`FP64_RTOL` = 1e-6) pins the update formulas and schedules down, free of the amplification.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from tests.trainables.helpers import run_to_end
from trainables import Diverged, EpochResult, FileCheckpoint, TrainConfig, fit_splits, load_splits
from trainables.cohort import Cohort, checkpoint_epoch, cohort_key
from trainables.config import OPTIMIZERS, SCHEDULES
from trainables.data import Splits

FP32_RTOL = 1e-4
FP64_RTOL = 1e-6
# learning rates low enough that no member is chaotic over these 12 steps (at rmsprop lr 0.003 one member's
# fp32 curve left solo's by 8e-3: its first steps are 10*lr per weight, whatever the gradient's size)
LR = {"sgd": 0.1, "momentum": 0.05, "nesterov": 0.05, "rmsprop": 0.001, "adagrad": 0.02, "adam": 0.003, "adamw": 0.003}
MEMBER = {"momentum": 0.8, "beta1": 0.85, "beta2": 0.99}  # away from the defaults: each is read per member
BASE = TrainConfig(device="cpu", epochs=3, batch_size=32, warmup_epochs=1, step_size=1, plateau_patience=0)


def mnist1d(n: int = 128, dtype: torch.dtype = torch.float32) -> Splits:
    s = load_splits("mnist1d", "data", False, 0.2)
    return Splits(
        s.x_train[:n].to(dtype),
        s.y_train[:n],
        s.x_val[:n].to(dtype),
        s.y_val[:n],
        s.x_test[:n].to(dtype),
        s.y_test[:n],
        10,
    )


def images(channels: int, size: int, n: int = 64) -> Splits:
    """Random images and labels: enough to compare fused and solo training, nothing to learn."""
    gen = torch.Generator().manual_seed(0)

    def x(k: int) -> torch.Tensor:
        return torch.randn(k, channels, size, size, generator=gen)

    def y(k: int) -> torch.Tensor:
        return torch.randint(0, 10, (k,), generator=gen)

    return Splits(x(n), y(n), x(32), y(32), x(32), y(32), 10)


def every_pair() -> list[TrainConfig]:
    """One member per optimizer x schedule, with its own seed, and weight decay, l1, momentum and betas set."""
    return [
        BASE.replace(**MEMBER, optimizer=opt, lr_schedule=schedule, lr=LR[opt], seed=7 * i + j).replace(
            weight_decay=1e-3 * (j % 2), l1=1e-4 * (i % 2)
        )
        for i, opt in enumerate(OPTIMIZERS)
        for j, schedule in enumerate(SCHEDULES)
    ]


def run(cohort: Cohort, epochs: int | None = None) -> dict[int, list[EpochResult | Diverged]]:
    out: dict[int, list[EpochResult | Diverged]] = {}
    for _ in range(epochs if epochs is not None else cohort.epochs - cohort.start_epoch + 1):
        for member, result in cohort.train_epoch().items():
            out.setdefault(member, []).append(result)
    return out


def curve(results: list[EpochResult] | list[EpochResult | Diverged]) -> list[tuple[float, ...]]:
    out = []
    for r in results:
        assert isinstance(r, EpochResult), r
        out.append((r.train_loss, r.val_loss, r.lr))
    return out


def assert_curves_close(
    got: list[tuple[float, ...]], expected: list[tuple[float, ...]], rtol: float, what: str
) -> None:
    assert len(got) == len(expected), what
    for epoch, (g, e) in enumerate(zip(got, expected, strict=True), start=1):
        assert g == pytest.approx(e, rel=rtol), f"{what}, epoch {epoch}: {g} != {e}"


@pytest.fixture
def float64() -> Iterator[None]:
    dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(dtype)


@pytest.mark.parametrize("precision", ["fp32", "fp64"])
def test_every_optimizer_and_schedule_trains_as_solo(precision: str, request: pytest.FixtureRequest) -> None:
    if precision == "fp64":
        request.getfixturevalue("float64")
    splits = mnist1d(dtype=torch.get_default_dtype())
    configs = every_pair()
    cohort = Cohort(configs, splits=splits)
    assert (cohort.size, cohort.start_epoch, cohort.epochs) == (49, 1, 3)
    fused = run(cohort)
    rtol = FP32_RTOL if precision == "fp32" else FP64_RTOL
    for i, config in enumerate(configs):
        solo = list(fit_splits(config, splits))
        what = f"{config.optimizer}/{config.lr_schedule}"
        assert_curves_close(curve(fused[i]), curve(solo), rtol, what)
        last = fused[i][-1]
        assert isinstance(last, EpochResult)
        assert last.test_loss == pytest.approx(solo[-1].test_loss, rel=rtol), what
        assert [r.epoch for r in fused[i] if isinstance(r, EpochResult)] == [1, 2, 3]
        assert [r.test_acc is None for r in fused[i] if isinstance(r, EpochResult)] == [True, True, False]


@pytest.mark.parametrize(("model", "splits"), [("cnn", images(1, 8)), ("resnet", images(3, 8, n=32)), ("mlp", None)])
def test_batchnorm_and_other_models_train_as_solo(model: str, splits: Splits | None) -> None:
    splits = splits or mnist1d()
    epochs = 1 if model == "resnet" else 2
    base = BASE.replace(model=model, epochs=epochs, batch_size=16, lr_schedule="constant")
    configs = [
        base.replace(optimizer="momentum", lr=0.05, seed=1, weight_decay=1e-3),
        base.replace(optimizer="adam", lr=0.003, seed=2, l1=1e-4),
    ]
    cohort = Cohort(configs, splits=splits)
    fused = run(cohort)
    for i, config in enumerate(configs):
        solo, solo_model = run_to_end(fit_splits(config, splits))
        assert_curves_close(curve(fused[i]), curve(solo), FP32_RTOL, f"{model}/{config.optimizer}")
        # the member as a solo module: weights and BatchNorm running statistics as solo's
        ours = cohort.model(i).state_dict()
        for name, tensor in solo_model.state_dict().items():
            torch.testing.assert_close(ours[name], tensor, rtol=1e-3, atol=1e-4, msg=f"{model} {name}")


def test_a_diverging_member_leaves_and_the_others_do_not_notice() -> None:
    splits = mnist1d()
    good = [BASE.replace(optimizer="adam", seed=1), BASE.replace(optimizer="nesterov", lr=0.05, seed=2)]
    bad = BASE.replace(optimizer="sgd", lr=1e6, seed=3)
    with_bad = Cohort([good[0], bad, good[1]], splits=splits)
    first = with_bad.train_epoch()
    diverged = first[1]
    assert isinstance(diverged, Diverged)
    with pytest.raises(Diverged) as solo:
        list(fit_splits(bad, splits))
    assert (diverged.epoch, diverged.step) == (solo.value.epoch, solo.value.step)
    assert not math.isfinite(diverged.loss)
    assert with_bad.active() == [0, 2]
    fused = run(with_bad, 2)
    without = run(Cohort(good, splits=splits))
    assert_curves_close(curve([first[0], *fused[0]]), curve(without[0]), 1e-6, "adam")
    assert_curves_close(curve([first[2], *fused[2]]), curve(without[1]), 1e-6, "nesterov")
    assert 1 not in fused


def test_drop_removes_the_member_and_its_compute() -> None:
    splits = mnist1d()
    configs = [BASE.replace(optimizer=o, lr=LR[o], seed=i) for i, o in enumerate(("adam", "rmsprop", "momentum"))]
    cohort = Cohort(configs, splits=splits)
    first = cohort.train_epoch()
    assert set(first) == {0, 1, 2}
    cohort.drop(1)
    assert cohort.active() == [0, 2]
    assert cohort._flat.shape[0] == 2  # the fused weights lost its row: the member costs nothing more
    with pytest.raises(ValueError):
        cohort.drop(1)
    with pytest.raises(ValueError):
        cohort.model(1)
    rest = run(cohort, 2)
    assert set(rest) == {0, 2}
    for i in (0, 2):
        solo = list(fit_splits(configs[i], splits))
        assert_curves_close(curve([first[i], *rest[i]]), curve(solo), FP32_RTOL, configs[i].optimizer)
    with pytest.raises(RuntimeError):
        cohort.train_epoch()


def test_resuming_from_checkpoints_continues_exactly(tmp_path: Path) -> None:
    splits = mnist1d()
    base = BASE.replace(epochs=5)
    configs = [
        base.replace(optimizer="adam", lr_schedule="onecycle", seed=1),
        base.replace(optimizer="momentum", lr=0.05, lr_schedule="plateau", seed=2, dropout=0.3),
        base.replace(optimizer="rmsprop", lr=0.003, lr_schedule="step", seed=3),
        base.replace(optimizer="adagrad", lr=0.05, lr_schedule="warmup_cosine", seed=4, dropout=0.1),
    ]
    torch.manual_seed(0)
    straight = run(Cohort(configs, splits=splits))

    paths = [tmp_path / f"member{i}.pt" for i in range(len(configs))]
    torch.manual_seed(0)
    interrupted = Cohort(configs, checkpoints=paths, splits=splits)
    first = run(interrupted, 3)
    assert [checkpoint_epoch(p) for p in paths] == [3, 3, 3, 3]
    solo_path = tmp_path / "solo.pt"
    solo_path.write_bytes(paths[0].read_bytes())
    torch.manual_seed(123)  # resuming restores the dropout stream from the checkpoints
    resumed = Cohort(configs, checkpoints=[FileCheckpoint(p) for p in paths], splits=splits)
    assert resumed.start_epoch == 4
    rest = run(resumed)
    for i in range(len(configs)):
        assert curve(first[i] + rest[i]) == curve(straight[i]), configs[i].optimizer
        assert [getattr(r, "resumed", None) for r in rest[i]] == [True, False]

    # a member's checkpoint is fit_splits' own: solo resumes it too
    solo = list(fit_splits(configs[0], splits, checkpoint=solo_path))
    assert [r.epoch for r in solo] == [4, 5] and solo[0].resumed


def test_mismatched_keys_and_checkpoint_epochs_are_refused(tmp_path: Path) -> None:
    splits = mnist1d()
    with pytest.raises(ValueError, match="cohort_key"):
        Cohort([BASE, BASE.replace(batch_size=16)], splits=splits)
    assert cohort_key(BASE) == cohort_key(BASE.replace(optimizer="sgd", lr=0.5, seed=9, dropout=0.2))
    assert cohort_key(BASE) != cohort_key(BASE.replace(epochs=4))

    path = tmp_path / "a.pt"
    assert checkpoint_epoch(path) == 0 and checkpoint_epoch(None) == 0
    list(fit_splits(BASE.replace(epochs=1), splits, checkpoint=path))  # solo's checkpoint, epoch 1
    assert checkpoint_epoch(path) == 1
    with pytest.raises(ValueError, match="different epochs"):
        Cohort([BASE, BASE.replace(seed=1)], checkpoints=[path, None], splits=splits)
