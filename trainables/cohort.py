"""Fused cohorts: K trials of the built-in protocol that share a shape train as one model per step.

Each member stays equivalent to training solo with `trainables.loop.fit_splits`: the same initial
weights (`torch.manual_seed(seed)` then `build_model`), the same batches in the same order (its own
seeded `torch.Generator`), the same optimizer update and learning-rate schedule, the same records
and checkpoints. Only the summation order of the fused operations differs (fp32 rounding), and
dropout masks come from one shared RNG stream, so they cannot match solo's.

Fusion: grouped operations, not `torch.func`. The K members' parameters live in one leaf tensor
`[K, P]` (one row per member); a small interpreter walks the solo model's modules and runs each as
one fused op over all members: Linear as `baddbmm`, Conv1d as unfold + `baddbmm`, Conv2d as one
convolution with `groups=K`, BatchNorm2d as one `batch_norm` over K*C channels (per-member
statistics by construction), pools and activations over all members at once. Per step of the
flagship shape (MNIST-1D `cnn1d`, batch 100, forward + backward, one thread, 2-core x86_64 CPU,
microseconds per member; the machine was shared, so figures moved by up to 1.5x between runs):
solo 2,400-3,700; `vmap(functional_call)` over `stack_module_state` 3,400 (K=1), 2,700-3,100 (K=4),
2,300-4,100 (K=16); Conv1d with `groups=K` 2,200-2,600 (K=4), 2,800-4,100 (K=16); unfold +
`baddbmm` 1,530 (K=4), 1,440 (K=16), 1,460 (K=32). oneDNN's grouped 1-D convolution (what vmap's
batching rule also lowers to) does not get faster per member as K grows; batched matrix products do.

Optimizers: one update formula covers all seven, with per-member hyperparameter tensors of shape
[K, 1] (`m = a1*m + c1*g`; `v = a2*v + c2*g*g`; `p -= lr/bc1 * u / (sqrt(v)/sqrt(bc2) + eps)`, where
SGD members have v = 0 and eps = 1, and nesterov takes `u = g + momentum*m`). A cohort may therefore
mix optimizer types at the cost of a few elementwise ops over [K, P] per step, and `cohort_key`
does not include the optimizer: grouping by type would split a study's trials into up to seven
smaller cohorts, each with less fusion. Measured (bench/cohort_throughput.py: cnn1d, batch 100, one
thread, one epoch of 14 members, median of 3): one cohort mixing the seven types 1.28 s, one cohort of
14 Adam members 1.34 s (mixing costs nothing measurable: noise is larger), seven single-type cohorts
of two 1.43 s (grouping by type: 12% slower).

The weight decay is L2 (added to the gradient) except for adamw (decoupled), eps, alpha and the
other defaults are read from the torch optimizer that `build_optimizer` makes for the member, and
each member's schedule is PyTorch's own scheduler (`trainables.optim.Schedule`) stepping a dummy
optimizer whose learning rate the fused update reads: all seven schedules behave as solo.

Records: `seconds` is the cohort's epoch wall time; `samples_per_second` each member's own (the
cohort's throughput is K times it). Checkpoints are fit_splits' format, so solo resumes a member's
checkpoint and a cohort resumes solo's. Peak memory per member: bench/cohort_throughput.py
(`PeakMemory`: CUDA `max_memory_allocated`; CPU the growth of the peak resident set).
Not mirrored from solo: channels_last on CUDA (grouped convolutions take the contiguous layout).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import TrainConfig
from trainables.data import Splits, load_splits
from trainables.loop import (
    CheckpointStore,
    Diverged,
    EpochResult,
    FileCheckpoint,
    _sync,
    _to_device,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
)
from trainables.models import _ResidualStage, build_model
from trainables.optim import Schedule, build_optimizer

SGD_FAMILY = ("sgd", "momentum", "nesterov")


# Configs that differ only outside these fields can train as one cohort.
SHAPE_FIELDS = (
    "dataset", "data_dir", "download", "val_fraction", "train_samples",
    "model", "batch_size", "epochs", "precision", "device",
)  # fmt: skip


def cohort_key(config: TrainConfig) -> tuple[Any, ...]:
    """Configs with equal keys can train as one cohort: same data, model, batches, epochs and device.

    The optimizer is not part of it: one fused update serves all seven (see the module docstring).
    """
    return tuple(getattr(config, name) for name in SHAPE_FIELDS)


def _store(checkpoint: str | Path | CheckpointStore | None) -> CheckpointStore | None:
    return FileCheckpoint(Path(checkpoint)) if isinstance(checkpoint, str | Path) else checkpoint


def checkpoint_epoch(checkpoint: str | Path | CheckpointStore | None) -> int:
    """The last epoch a member's checkpoint holds (0: none) — members of one cohort must start at the same epoch."""
    store = _store(checkpoint)
    state = store.load() if store is not None else None
    return 0 if state is None else int(state["epoch"])


@dataclass
class _Member:
    """What stays per member and outside the fused tensors."""

    index: int  # position in the configs the cohort was built with
    config: TrainConfig
    store: CheckpointStore | None
    schedule: Schedule  # PyTorch's scheduler on a dummy optimizer: the lr the fused update reads
    lr_group: dict[str, Any]  # that dummy optimizer's param group
    shuffle: torch.Generator


class Cohort:
    """K configs with one `cohort_key`, trained as one fused model; `train_epoch()` per epoch."""

    # What a runner needs to form cohorts (`tuner.run.cohort`): the config fields that must be
    # equal, the key that groups configs, and the epoch a member's checkpoint resumes after.
    shape_fields = SHAPE_FIELDS
    key = staticmethod(cohort_key)
    resumes_at = staticmethod(checkpoint_epoch)

    def __init__(
        self,
        configs: Sequence[TrainConfig],
        checkpoints: Sequence[str | Path | CheckpointStore | None] | None = None,
        checkpoint_every: float = 0.0,
        splits: Splits | None = None,
    ) -> None:
        if not configs:
            raise ValueError("a cohort needs at least one config")
        keys = {cohort_key(c) for c in configs}
        if len(keys) > 1:
            raise ValueError(f"configs of one cohort must share cohort_key(); got {len(keys)} different keys")
        checkpoints = list(checkpoints) if checkpoints is not None else [None] * len(configs)
        if len(checkpoints) != len(configs):
            raise ValueError(f"{len(checkpoints)} checkpoints for {len(configs)} configs")
        stores = [_store(c) for c in checkpoints]
        states = [s.load() if s is not None else None for s in stores]
        epochs_held = {0 if s is None else int(s["epoch"]) for s in states}
        if len(epochs_held) > 1:
            raise ValueError(f"members' checkpoints hold different epochs: {sorted(epochs_held)}")

        first = configs[0]
        if splits is None:
            splits = load_splits(first.dataset, first.data_dir, first.download, first.val_fraction)
        self.device = resolve_device(first.device)
        use_bf16 = first.precision == "bf16" or (first.precision == "auto" and self.device.type == "cuda")
        self._autocast: Any = (
            (lambda: torch.autocast(self.device.type, dtype=torch.bfloat16)) if use_bf16 else contextlib.nullcontext
        )
        reset_peak_memory(self.device)
        self._data = _to_device(splits, first.train_samples, self.device)
        self._input_shape, self._num_classes = splits.input_shape, splits.num_classes
        self._n_train = len(self._data["y_train"])
        self._batch_size = first.batch_size
        self._steps = math.ceil(self._n_train / self._batch_size)
        self.size = len(configs)
        self.epochs = first.epochs
        self.start_epoch = epochs_held.pop() + 1
        self._epoch = self.start_epoch  # the next epoch to train
        self._checkpoint_every = checkpoint_every

        rows: list[torch.Tensor] = []
        buffers: list[dict[str, torch.Tensor]] = []
        m_rows: list[torch.Tensor] = []
        v_rows: list[torch.Tensor] = []
        hypers: list[dict[str, float]] = []
        self._members: list[_Member] = []
        template: nn.Module | None = None
        for i, (config, store, state) in enumerate(zip(configs, stores, states, strict=True)):
            torch.manual_seed(config.seed)  # as fit_splits: the same initial weights
            model = build_model(config.model, self._input_shape, self._num_classes, config.dropout).to(self.device)
            optimizer = build_optimizer(config, model.parameters(), fused=True)
            dummy = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=config.lr)
            schedule = Schedule(config, dummy, self._steps)
            dummy.step()  # no gradient, no update: the scheduler sees a stepped optimizer (no order warning)
            shuffle = torch.Generator().manual_seed(config.seed)
            if state is not None:
                model.load_state_dict(state["model"])
                optimizer.load_state_dict(state["optimizer"])
                schedule.load_state_dict(state["schedule"])
                for key in _LR_KEYS:  # solo keeps the scheduled lr in its optimizer's param group
                    if key in optimizer.param_groups[0]:
                        dummy.param_groups[0][key] = optimizer.param_groups[0][key]
                shuffle.set_state(state["shuffle_rng"])
            if template is None:
                template = model
            params = [p.detach() for p in model.parameters()]
            rows.append(torch.cat([p.reshape(-1) for p in params]))
            buffers.append({k: b.detach() for k, b in model.named_buffers()})
            m, v = _optimizer_state(config.optimizer, optimizer, list(model.parameters()))
            m_rows.append(m)
            v_rows.append(v)
            hypers.append(_hyperparameters(config, optimizer.param_groups[0]))
            self._members.append(_Member(i, config, store, schedule, dummy.param_groups[0], shuffle))
        assert template is not None
        self._template = template
        self._names = [n for n, _ in template.named_parameters()]
        self._shapes = [p.shape for _, p in template.named_parameters()]
        self._sizes = [p.numel() for _, p in template.named_parameters()]
        self._weight_mask = torch.cat(
            [
                torch.full((n,), float(len(s) > 1), device=self.device)
                for n, s in zip(self._sizes, self._shapes, strict=True)
            ]
        )  # the weights l1_penalty sums (ndim > 1)
        self._flat = torch.stack(rows).requires_grad_()
        self._buffers = {k: torch.stack([b[k] for b in buffers]) for k in buffers[0]}
        self._m = torch.stack(m_rows)
        self._v = torch.stack(v_rows)
        self._hyper = {k: torch.tensor([h[k] for h in hypers], device=self.device).view(-1, 1) for k in hypers[0]}
        self._kinds = [c.optimizer for c in configs]
        self._optimizer_step = (self.start_epoch - 1) * self._steps  # the step count Adam's bias correction reads
        if states[0] is not None:  # dropout masks go on from where the (shared) stream was
            torch.set_rng_state(states[0]["torch_rng"])
            if self.device.type == "cuda" and states[0].get("cuda_rng") is not None:
                torch.cuda.set_rng_state(states[0]["cuda_rng"], self.device)
        self._last_save = time.monotonic()
        self._refresh()

    # ------------------------------------------------------------------ membership

    def active(self) -> list[int]:
        """Members not dropped (pruned, failed or diverged), by their index in `configs`; finished ones stay."""
        return [m.index for m in self._members]

    def drop(self, member: int) -> None:
        """The member leaves; its rows go from every fused tensor, so it stops costing compute."""
        self._drop_rows([self._row(member)])

    def _row(self, member: int) -> int:
        for row, m in enumerate(self._members):
            if m.index == member:
                return row
        raise ValueError(f"member {member} is not in the cohort (dropped, or never was)")

    def _drop_rows(self, rows: list[int]) -> None:
        keep = [r for r in range(len(self._members)) if r not in set(rows)]
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        self._flat = self._flat.detach().index_select(0, idx).requires_grad_()
        self._m, self._v = self._m.index_select(0, idx), self._v.index_select(0, idx)
        self._buffers = {k: b.index_select(0, idx) for k, b in self._buffers.items()}
        self._hyper = {k: h.index_select(0, idx) for k, h in self._hyper.items()}
        self._members = [self._members[r] for r in keep]
        self._kinds = [self._kinds[r] for r in keep]
        self._refresh()

    def _refresh(self) -> None:
        """Per-cohort switches: skip the parts of the step no member needs."""
        h = self._hyper
        self._any_dropout = bool((h["keep"] < 1).any())
        self._any_l1 = bool((h["l1"] > 0).any())
        self._any_l2 = bool((h["wd_l2"] > 0).any())
        self._any_decoupled = bool((h["wd_decoupled"] > 0).any())
        self._any_nesterov = bool((h["nesterov"] > 0).any())
        self._any_adaptive = any(k not in SGD_FAMILY for k in self._kinds)
        self._any_adam = any(k in ("adam", "adamw") for k in self._kinds)
        self._per_batch = any(m.schedule.per_batch for m in self._members)
        self._nesterov_mask = h["nesterov"] > 0

    # ------------------------------------------------------------------ weights

    def _params(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        k = flat.shape[0]
        views = flat.split(self._sizes, 1)
        return {n: v.view(k, *s) for n, v, s in zip(self._names, views, self._shapes, strict=True)}

    def model(self, member: int) -> nn.Module:
        """The member's current weights as a plain solo module, on the cohort's device."""
        row = self._row(member)
        config = self._members[row].config
        with torch.random.fork_rng(devices=[]):  # building must not move the dropout stream
            model = build_model(config.model, self._input_shape, self._num_classes, config.dropout)
        model = model.to(self.device)
        params = self._params(self._flat.detach()[row : row + 1])
        state = {n: p[0].clone() for n, p in params.items()}
        state |= {n: b[row].clone() for n, b in self._buffers.items()}
        model.load_state_dict(state)
        return model

    # ------------------------------------------------------------------ training

    def train_epoch(self) -> dict[int, EpochResult | Diverged]:
        """Train the next epoch for every active member: one EpochResult or Diverged per member."""
        if self._epoch > self.epochs:
            raise RuntimeError(f"the cohort has trained all {self.epochs} epochs")
        epoch = self._epoch
        self._epoch += 1
        if not self._members:
            return {}
        device, data, batch = self.device, self._data, self._batch_size
        _sync(device)
        started = time.perf_counter()
        lrs = [float(m.lr_group["lr"]) for m in self._members]
        lr = torch.tensor(lrs, device=device).view(-1, 1)
        k = len(self._members)
        orders = torch.stack([torch.randperm(self._n_train, generator=m.shuffle) for m in self._members])
        orders = orders.to(device, non_blocking=True)
        step_losses = torch.empty(self._steps, k, device=device)
        loss_sum = torch.zeros(k, device=device)
        correct = torch.zeros(k, device=device, dtype=torch.int64)
        for step in range(self._steps):
            idx = orders[:, step * batch : (step + 1) * batch]
            x, y = data["x_train"][idx], data["y_train"][idx]  # [K, B, ...]: each member's own batch
            with self._autocast():
                logits = self._forward(self._params(self._flat), x, training=True)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none")
                loss = loss.view(k, -1).mean(1)
                if self._any_l1:
                    loss = loss + self._hyper["l1"][:, 0] * (self._flat.abs() * self._weight_mask).sum(1)
            self._flat.grad = None
            loss.sum().backward()  # members share no weights: the sum's gradient is each member's own
            self._update(lr)
            if self._per_batch:
                for m in self._members:
                    m.schedule.after_step()
                lr = torch.tensor([float(m.lr_group["lr"]) for m in self._members], device=device).view(-1, 1)
            step_losses[step] = loss.detach()
            loss_sum += loss.detach() * idx.shape[1]
            correct += (logits.argmax(2) == y).sum(1)

        results: dict[int, EpochResult | Diverged] = {}
        finite = torch.isfinite(step_losses).all(0).tolist()  # one host sync per epoch, not per step
        if not all(finite):
            bad = [row for row, ok in enumerate(finite) if not ok]
            for row in bad:
                bad_step = int((~torch.isfinite(step_losses[:, row])).nonzero()[0])
                results[self._members[row].index] = Diverged(epoch, bad_step + 1, float(step_losses[bad_step, row]))
            lrs = [lr for row, lr in enumerate(lrs) if row not in bad]
            keep = torch.tensor([row for row in range(k) if row not in bad], device=device)
            loss_sum, correct = loss_sum[keep], correct[keep]
            self._drop_rows(bad)  # before evaluating: a diverged member costs nothing more
        if not self._members:
            return results
        _sync(device)
        train_seconds = time.perf_counter() - started

        val_loss, val_acc = self._evaluate(data["x_val"], data["y_val"])
        for m, loss_value in zip(self._members, val_loss, strict=True):
            m.schedule.after_epoch(loss_value)
        test_loss: list[float | None] = [None] * len(self._members)
        test_acc: list[float | None] = [None] * len(self._members)
        if epoch == self.epochs and len(data["y_test"]):
            tl, ta = self._evaluate(data["x_test"], data["y_test"])
            test_loss, test_acc = list(tl), list(ta)
        if time.monotonic() - self._last_save >= self._checkpoint_every and any(m.store for m in self._members):
            for row, m in enumerate(self._members):
                if m.store is not None:
                    m.store.save(self._checkpoint_state(row, epoch))
            self._last_save = time.monotonic()
        _sync(device)
        seconds = time.perf_counter() - started
        train_loss, train_acc = (loss_sum / self._n_train).tolist(), (correct.double() / self._n_train).tolist()
        peak = peak_memory_mb(self.device)
        for row, m in enumerate(self._members):
            results[m.index] = EpochResult(
                epoch=epoch,
                train_loss=train_loss[row],
                train_acc=train_acc[row],
                val_loss=val_loss[row],
                val_acc=val_acc[row],
                lr=lrs[row],
                seconds=seconds,
                samples_per_second=self._n_train / train_seconds,  # each member's own; the cohort's is K times it
                test_loss=test_loss[row],
                test_acc=test_acc[row],
                resumed=epoch == self.start_epoch and self.start_epoch > 1,
                peak_memory_mb=peak,  # the cohort's: its members share the device
            )
        return results

    @torch.no_grad()
    def _update(self, lr: torch.Tensor) -> None:
        """One optimizer step for all members, as torch.optim computes it (see the module docstring)."""
        h, p = self._hyper, self._flat
        g = p.grad
        assert g is not None
        self._optimizer_step += 1
        if self._any_l2:
            g = g.add(p * h["wd_l2"])
        if self._any_decoupled:  # adamw: the decay uses the weights before this step's update
            p.mul_(1 - lr * h["wd_decoupled"])
        self._m.mul_(h["a1"]).addcmul_(g, h["c1"])
        u = self._m
        if self._any_nesterov:
            u = torch.where(self._nesterov_mask, g + h["momentum"] * self._m, self._m)
        if not self._any_adaptive:
            p.sub_(lr * u)
            return
        self._v.mul_(h["a2"]).addcmul_(g * g, h["c2"])
        step_size = lr
        denom = self._v.sqrt()
        if self._any_adam:  # bias correction; the others have b1 = b2 = 0, so it is 1 for them
            t = self._optimizer_step
            step_size = lr / (1 - h["b1"] ** t)
            denom = denom / (1 - h["b2"] ** t).sqrt()
        p.sub_(step_size * u / denom.add_(h["eps"]))

    def _forward(self, params: dict[str, torch.Tensor], x: torch.Tensor, training: bool) -> torch.Tensor:
        """Logits [K, B, classes] of all members; `x` is [K, B, ...] (each member's own batch)."""
        out, grouped = self._run(self._template, "", x, False, params, training)
        return self._stacked(out) if grouped else out

    def _stacked(self, h: torch.Tensor) -> torch.Tensor:
        """[B, K*C, ...] (one convolution over all members) to [K, B, C, ...]."""
        k = len(self._members)
        return h.unflatten(1, (k, -1)).transpose(0, 1)

    def _grouped(self, h: torch.Tensor) -> torch.Tensor:
        """[K, B, C, ...] to [B, K*C, ...]."""
        return h.transpose(0, 1).flatten(1, 2)

    def _run(
        self,
        module: nn.Module,
        prefix: str,
        h: torch.Tensor,
        grouped: bool,
        params: dict[str, torch.Tensor],
        training: bool,
    ) -> tuple[torch.Tensor, bool]:
        """Run `module` for all members at once; `grouped` says which of the two layouts `h` is in."""
        k = len(self._members)
        if isinstance(module, nn.Sequential):
            for name, child in module.named_children():
                h, grouped = self._run(child, f"{prefix}{name}.", h, grouped, params, training)
            return h, grouped
        if isinstance(module, _ResidualStage):
            h, grouped = self._run(module.down, prefix + "down.", h, grouped, params, training)
            r, grouped_r = self._run(module.residual, prefix + "residual.", h, grouped, params, training)
            assert grouped_r == grouped
            return h + r, grouped
        if isinstance(module, nn.ReLU):
            return h.relu(), grouped
        if isinstance(module, nn.Linear):
            h = self._stacked(h) if grouped else h
            w, b = params[prefix + "weight"], params.get(prefix + "bias")
            out = torch.bmm(h, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))
            return out, False
        if isinstance(module, nn.Conv1d):
            h = self._stacked(h) if grouped else h
            return _conv1d(h, params[prefix + "weight"], params.get(prefix + "bias"), module), False
        if isinstance(module, nn.Conv2d):
            if module.groups != 1 or module.padding_mode != "zeros":
                raise TypeError(f"cohorts support plain convolutions only, not {module}")
            h = h if grouped else self._grouped(h)
            w, b = params[prefix + "weight"], params.get(prefix + "bias")
            out = F.conv2d(
                h,
                w.flatten(0, 1),
                None if b is None else b.flatten(),
                module.stride,
                module.padding,
                module.dilation,
                groups=k,
            )
            return out, True
        if isinstance(module, nn.BatchNorm2d):
            h = h if grouped else self._grouped(h)
            rm, rv = self._buffers[prefix + "running_mean"], self._buffers[prefix + "running_var"]
            if training:
                self._buffers[prefix + "num_batches_tracked"].add_(1)
            out = F.batch_norm(
                h,
                rm.view(-1),  # views: the running statistics update in place, per member and channel
                rv.view(-1),
                params[prefix + "weight"].flatten(),
                params[prefix + "bias"].flatten(),
                training,
                module.momentum if module.momentum is not None else 0.0,
                module.eps,
            )
            return out, True
        if isinstance(module, nn.MaxPool2d):
            h = h if grouped else self._grouped(h)
            return F.max_pool2d(
                h, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode
            ), True
        if isinstance(module, nn.AdaptiveAvgPool2d):
            return F.adaptive_avg_pool2d(h if grouped else self._grouped(h), module.output_size), True
        if isinstance(module, nn.AdaptiveMaxPool2d):
            return F.adaptive_max_pool2d(h if grouped else self._grouped(h), module.output_size), True  # type: ignore[arg-type]
        if isinstance(module, nn.Flatten):
            h = self._stacked(h) if grouped else h
            return h.flatten(module.start_dim + 1, module.end_dim if module.end_dim < 0 else module.end_dim + 1), False
        if isinstance(module, nn.Dropout):
            h = self._stacked(h) if grouped else h
            if training and self._any_dropout:
                keep = self._hyper["keep"].view(k, *([1] * (h.ndim - 1)))  # fp32, also under autocast
                h = h * (torch.rand(h.shape, device=h.device) < keep) / keep  # per-member p
            return h, False
        raise TypeError(f"cohorts cannot fuse {type(module).__name__} (the built-in models only)")

    @torch.no_grad()
    def _evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[list[float], list[float]]:
        """(loss, accuracy) per member, as fit_splits' evaluation computes them."""
        k = len(self._members)
        loss_sum = torch.zeros(k, device=x.device)
        correct = torch.zeros(k, device=x.device, dtype=torch.int64)
        eval_batch = max(self._batch_size, 1024)
        params = self._params(self._flat.detach())
        for start in range(0, len(y), eval_batch):
            xb, yb = x[start : start + eval_batch], y[start : start + eval_batch]
            with self._autocast():
                logits = self._forward(params, xb.expand(k, *xb.shape), training=False).float()
            loss_sum += F.cross_entropy(logits.flatten(0, 1), yb.repeat(k), reduction="none").view(k, -1).sum(1)
            correct += (logits.argmax(2) == yb).sum(1)
        return (loss_sum / len(y)).tolist(), (correct.double() / len(y)).tolist()

    # ------------------------------------------------------------------ checkpoints

    def _checkpoint_state(self, row: int, epoch: int) -> dict[str, Any]:
        """A member's checkpoint in fit_splits' format: solo can resume it, and so can a cohort."""
        member = self._members[row]
        model = self.model(member.index)
        optimizer = build_optimizer(member.config, model.parameters(), fused=True)
        params = list(model.parameters())
        m_views = self._params(self._m[row : row + 1])
        v_views = self._params(self._v[row : row + 1])
        kind = member.config.optimizer
        step = torch.tensor(float(self._optimizer_step), device=self.device if kind in ("adam", "adamw") else "cpu")
        for p, name in zip(params, self._names, strict=True):
            m, v = m_views[name][0].clone(), v_views[name][0].clone()
            if kind in ("momentum", "nesterov"):
                optimizer.state[p] = {"momentum_buffer": m}
            elif kind == "rmsprop":
                optimizer.state[p] = {"step": step.clone(), "square_avg": v}
            elif kind == "adagrad":
                optimizer.state[p] = {"step": step.clone(), "sum": v}
            elif kind in ("adam", "adamw"):
                optimizer.state[p] = {"step": step.clone(), "exp_avg": m, "exp_avg_sq": v}
        for key in _LR_KEYS:
            if key in member.lr_group:
                optimizer.param_groups[0][key] = member.lr_group[key]
        return {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "schedule": member.schedule.state_dict(),
            "shuffle_rng": member.shuffle.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
        }


_LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")  # what schedulers keep in a param group


def _conv1d(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, module: nn.Conv1d) -> torch.Tensor:
    """Conv1d of all members as one batched matrix product: [K, B, C, L] -> [K, B, O, L']."""
    if module.groups != 1 or module.dilation != (1,) or module.padding_mode != "zeros":
        raise TypeError(f"cohorts support plain 1-D convolutions only, not {module}")
    k, batch, channels, _ = h.shape
    out_channels, kernel = w.shape[1], w.shape[3]
    pad = module.padding[0]
    assert isinstance(pad, int)
    if pad:
        h = F.pad(h, (pad, pad))
    u = h.unfold(3, kernel, module.stride[0])  # [K, B, C, L', kernel]
    length = u.shape[3]
    u = u.permute(0, 1, 3, 2, 4).reshape(k, batch * length, channels * kernel)
    wt = w.reshape(k, out_channels, channels * kernel).transpose(1, 2)
    out = torch.bmm(u, wt) if b is None else torch.baddbmm(b.unsqueeze(1), u, wt)
    return out.view(k, batch, length, out_channels).transpose(2, 3)


def _optimizer_state(
    kind: str, optimizer: torch.optim.Optimizer, params: list[nn.Parameter]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The member's (first moment, second moment) rows, flattened like its parameters (zeros when new)."""
    m, v = [], []
    for p in params:
        state = optimizer.state.get(p, {})
        first = state.get("exp_avg", state.get("momentum_buffer"))
        second = state.get("exp_avg_sq", state.get("square_avg", state.get("sum")))
        m.append(torch.zeros_like(p) if first is None else first.detach().to(p.device))
        v.append(torch.zeros_like(p) if second is None else second.detach().to(p.device))
    return torch.cat([t.reshape(-1) for t in m]).detach(), torch.cat([t.reshape(-1) for t in v]).detach()


def _hyperparameters(config: TrainConfig, group: dict[str, Any]) -> dict[str, float]:
    """The member's coefficients of the one update formula, with the defaults its torch optimizer has."""
    kind = config.optimizer
    wd = float(group["weight_decay"])
    h = {
        "keep": 1.0 - config.dropout,
        "l1": config.l1,
        "wd_l2": 0.0 if kind == "adamw" else wd,
        "wd_decoupled": wd if kind == "adamw" else 0.0,
        "nesterov": 0.0,
        "momentum": 0.0,
        "b1": 0.0,
        "b2": 0.0,
    }
    if kind in SGD_FAMILY:  # buf = momentum*buf + g; v stays 0 and eps = 1: the divisor is 1
        if group.get("dampening", 0) != 0:
            raise ValueError("SGD dampening is not supported")
        momentum = float(group["momentum"])
        nesterov = bool(group["nesterov"])
        h |= {"a1": momentum, "c1": 1.0, "a2": 0.0, "c2": 0.0, "eps": 1.0}
        h |= {"momentum": momentum, "nesterov": float(nesterov)}
    elif kind == "rmsprop":  # v = alpha*v + (1-alpha)*g²; p -= lr*g/(sqrt(v)+eps)
        if group["centered"] or group["momentum"]:
            raise ValueError("centered RMSprop or RMSprop momentum is not supported")
        alpha = float(group["alpha"])
        h |= {"a1": 0.0, "c1": 1.0, "a2": alpha, "c2": 1.0 - alpha, "eps": float(group["eps"])}
    elif kind == "adagrad":  # v += g²; p -= lr*g/(sqrt(v)+eps)
        if group["lr_decay"] or group["initial_accumulator_value"]:
            raise ValueError("Adagrad lr_decay or initial_accumulator_value is not supported")
        h |= {"a1": 0.0, "c1": 1.0, "a2": 1.0, "c2": 1.0, "eps": float(group["eps"])}
    else:  # adam, adamw
        if group["amsgrad"]:
            raise ValueError("amsgrad is not supported")
        b1, b2 = (float(b) for b in group["betas"])
        h |= {"a1": b1, "c1": 1.0 - b1, "a2": b2, "c2": 1.0 - b2, "eps": float(group["eps"]), "b1": b1, "b2": b2}
    return h
