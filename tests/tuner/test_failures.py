"""CUDA out of memory inside a trial, end to end: the trial FAILs with a reason naming the batch
size and the model, its MLflow run is FAILED with the reason and a traceback artifact, the
failed trial's memory is released before the next trial starts, and the study goes on.

On a machine with CUDA the out-of-memory error is real (an allocation no GPU can hold) and the
check is on the GPU's allocated memory; without CUDA the error is injected and the check is
that the failed trial's tensors were freed.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from pathlib import Path

import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.tuner.fakes import curve_fit
from trainables import EpochResult, TrainConfig, takes_train_config
from tuner.run.execute import execute_study
from tuner.space import Float
from tuner.study import RunOptions, StudySpec
from tuner.tracking import RUN_ID_ATTR

CUDA = torch.cuda.is_available()


def test_cuda_out_of_memory_fails_the_trial_frees_its_memory_and_the_study_goes_on(options: RunOptions) -> None:
    device = "cuda" if CUDA else "cpu"
    held: list[weakref.ref[torch.Tensor]] = []
    seen_at_next_start: list[tuple[bool, int]] = []
    baseline = torch.cuda.memory_allocated() if CUDA else 0

    @takes_train_config
    def fit(
        config: TrainConfig, checkpoint: Path | None = None, checkpoint_every: float = 0.0
    ) -> Iterator[EpochResult]:
        if not held:  # the first trial: grab memory, then run out of it
            weights = torch.ones(64 * 2**20 // 4, device=device)  # 64 MiB the trial holds when it fails
            held.append(weakref.ref(weights))
            yield from curve_fit(config.replace(epochs=1))
            if CUDA:
                torch.empty(2**50, dtype=torch.uint8, device=device)  # a real CUDA out-of-memory error
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 PiB")
        seen_at_next_start.append((held[0]() is None, torch.cuda.memory_allocated() if CUDA else 0))
        yield from curve_fit(config)

    space = {"lr": Float(1e-3, 1e-1, log=True), "epochs": 3, "batch_size": 4096, "model": "mlp"}
    study = execute_study(StudySpec(name="oom", space=space, n_trials=3, trainable=fit), options)

    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    reason = study.trials[0].user_attrs["reason"]
    assert (
        reason == "CUDA out of memory with batch_size 4096 and model mlp: lower the batch size or use a smaller model"
    )
    freed, allocated = seen_at_next_start[0]
    assert freed  # the failed trial's tensors were gone before the next trial started
    if CUDA:
        assert allocated == baseline

    client = MlflowClient(options.tracking_uri)
    run = client.get_run(study.trials[0].user_attrs[RUN_ID_ATTR])
    assert run.info.status == "FAILED"
    assert run.data.tags["tuner.reason"] == reason and run.data.tags["optuna.state"] == "FAIL"
    traceback = Path(client.download_artifacts(run.info.run_id, "traceback.txt")).read_text()
    assert "OutOfMemoryError" in traceback and "Traceback" in traceback
    for trial in study.trials[1:]:
        assert client.get_run(trial.user_attrs[RUN_ID_ATTR]).info.status == "FINISHED"
