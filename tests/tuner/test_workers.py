"""Worker processes on one study, with a real trainable (tiny): `--workers 4` on PostgreSQL
and on the journal file, and a chaos run where a worker is SIGKILLed mid-trial.

The launching process runs in the test's process (its CLI path is tested in test_signals.py);
the workers are real `tuner worker` processes.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import optuna
import pytest
import torch
from mlflow import MlflowClient
from optuna.trial import TrialState

from tests.tuner.procs import (
    SLOW_SPACE,
    child_runs,
    fake_mnist,
    finish,
    postgres_url,
    start_tuner,
    tuner,
    tuner_env,
    wait_for,
    write_script,
)
from tuner.errors import WorkersFailed
from tuner.results import print_summary
from tuner.run.adapter import ATTEMPT_OF_ATTR, WORKER_ATTR
from tuner.run.api import create
from tuner.run.execute import execute_study
from tuner.run.open import counted_trials
from tuner.scripts import load_study_script
from tuner.storage import open_storage, redact
from tuner.study import RunOptions
from tuner.tracking import PARENT_RUN_ATTR, RUN_ID_ATTR

__all__ = ["fake_mnist", "postgres_url"]  # fixtures
SECRET = "s3cret-pw"
FINAL = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def load(storage: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(storage, heartbeat=False))


def check_one_run_per_trial(study: optuna.Study, tracking_uri: str) -> dict[int, object]:
    """Every trial has exactly one child run, its own, with the trial's state; returns runs by trial number."""
    runs = child_runs(tracking_uri, study.study_name)
    by_number = {int(r.data.tags["optuna.trial_number"]): r for r in runs}
    assert len(by_number) == len(runs) == len(study.trials)  # one-to-one, nothing duplicated or lost
    for trial in study.trials:
        run = by_number[trial.number]
        assert trial.user_attrs[RUN_ID_ATTR] == run.info.run_id
        assert run.data.tags["mlflow.parentRunId"] == study.user_attrs[PARENT_RUN_ATTR]
    return by_number


@pytest.mark.parametrize("kind", ["postgresql", "journal"])
def test_four_workers_share_one_study_and_its_budget(
    kind: str,
    tmp_path: Path,
    fake_mnist: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    if kind == "postgresql":  # with a password, which must never show (the test server trusts any)
        storage = request.getfixturevalue("postgres_url").replace("://postgres@", f"://postgres:{SECRET}@")
    else:
        storage = str(tmp_path / "optuna.journal")
    tracking_uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    for name, value in tuner_env().items():
        monkeypatch.setenv(name, value)  # the workers' environment
    monkeypatch.chdir(tmp_path)
    script = write_script(tmp_path / "study.py", fake_mnist, "four", spec_args="n_trials=10, pruner='none'")
    options = RunOptions(
        workers=4, storage=storage, tracking_uri=tracking_uri, quiet=True, report=False, checkpoint_every=0
    )
    try:
        execute_study(load_study_script(str(script)), options)
    except WorkersFailed as exc:
        pytest.fail(f"{exc}\n{capfd.readouterr().err}")
    study = load(storage, "four")
    print_summary(study, options)
    output = capfd.readouterr()  # the summary, and the workers' output
    assert "locked" not in output.err and "Traceback" not in output.err, output.err
    assert f"Optuna storage: {redact(storage)}" in output.out
    trials = study.trials
    # the budget is shared: 10 in all, not 4 x 10 (workers that check it at the same moment may add one each)
    assert 10 <= len(trials) <= 13
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert len({t.user_attrs[WORKER_ATTR] for t in trials}) >= 2  # trials really ran in parallel processes

    client = MlflowClient(tracking_uri)
    runs = check_one_run_per_trial(study, tracking_uri)
    for trial in trials:
        run = runs[trial.number]
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
        steps = sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_acc"))
        assert steps == [1, 2, 3]  # no lost writes: every epoch of every trial is there
        assert run.data.metrics["val_acc"] == pytest.approx(trial.value)
    experiment = client.get_experiment_by_name("four")
    assert experiment is not None
    parents = client.search_runs([experiment.experiment_id], "tags.`tuner.role` = 'study'")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"  # created once, by the launcher
    models = Path(study.user_attrs["tuner:models_dir"])
    assert [p.name for p in models.glob("*.pt")] == ["best.pt"]  # the best trial's model, kept
    assert [p for p in tmp_path.rglob("*.pt") if models not in p.parents] == []  # checkpoints removed as trials ended

    # the password is nowhere: output, MLflow params and tags, the study's records, files written
    assert SECRET not in output.out + output.err
    assert parents[0].data.params["storage"] == redact(storage)
    for run in [*runs.values(), *parents]:
        assert SECRET not in repr(run.data.params) + repr(run.data.tags)
    assert SECRET not in repr(study.user_attrs) + repr([t.user_attrs for t in trials])
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or SECRET.encode() not in path.read_bytes(), path


def test_chaos_a_worker_killed_mid_trial_is_retried_and_resumes_from_its_checkpoint(
    tmp_path: Path, fake_mnist: str, capsys: pytest.CaptureFixture[str]
) -> None:
    storage, tracking_uri = str(tmp_path / "optuna.journal"), f"sqlite:///{tmp_path / 'mlflow.db'}"
    flags = ["--storage", storage, "--tracking-uri", tracking_uri]
    script = write_script(tmp_path / "study.py", fake_mnist, "chaos", SLOW_SPACE, "n_trials=4, pruner='none'")
    create(load_study_script(str(script)), RunOptions(storage=storage, tracking_uri=tracking_uri))
    assert "tuner worker --study chaos" in capsys.readouterr().out

    def worker(index: int) -> object:
        return start_tuner(
            tmp_path, "worker", "--study", "chaos", "--worker-index", str(index), "--threads", "1",
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--checkpoint-every", "0", *flags,
            log=tmp_path / f"worker{index}.log",
            env=tuner_env(TUNER_GRACE_SECONDS="5"),  # the dead worker's trial is retried 5 s after its last beat
        )  # fmt: skip

    workers = {index: worker(index) for index in (0, 1)}
    # a trial is mid-way once it has checkpointed an epoch: its file exists until the trial ends
    checkpoint = wait_for(lambda: next((tmp_path / "ckpt").rglob("trial-*.pt"), None), "a trial to checkpoint")
    victim_number = int(checkpoint.stem.removeprefix("trial-"))

    def reported() -> optuna.Study | None:  # the run id goes with the first report, just after the checkpoint
        study = load(storage, "chaos")
        return study if RUN_ID_ATTR in study.trials[victim_number].user_attrs else None

    study = wait_for(reported, "the trial's first report")
    pid = int(study.trials[victim_number].user_attrs[WORKER_ATTR].rsplit(":", 1)[1])
    victim = next(i for i, p in workers.items() if p.pid == pid)
    workers[victim].send_signal(signal.SIGKILL)
    assert finish(workers[victim]) == -signal.SIGKILL
    assert load(storage, "chaos").trials[victim_number].state == TrialState.RUNNING  # killed mid-trial
    resumed_after = torch.load(checkpoint, weights_only=False)["epoch"]
    assert 1 <= resumed_after < 6

    workers[2] = worker(2)  # the restarted worker
    for index in (1 - victim, 2):
        assert finish(workers[index]) == 0, (tmp_path / f"worker{index}.log").read_text()

    study = load(storage, "chaos")
    trials = study.trials
    counts = Counter(t.state.name for t in trials)
    print(f"chaos: {len(trials)} trials by state: {dict(counts)}")
    assert all(t.state in FINAL for t in trials)  # nothing left RUNNING or WAITING
    assert counted_trials(trials) == 4  # the retry took the dead attempt's place in the budget
    assert trials[victim_number].state == TrialState.FAIL
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == victim_number)
    assert retry.state == TrialState.COMPLETE
    assert retry.params == trials[victim_number].params and retry.user_attrs[ATTEMPT_OF_ATTR] == victim_number
    assert sorted(retry.intermediate_values) == list(range(resumed_after + 1, 7))  # resumed, not restarted

    client = MlflowClient(tracking_uri)
    runs = check_one_run_per_trial(study, tracking_uri)
    dead_run, retry_run = runs[victim_number], runs[retry.number]
    assert dead_run.info.status == "FAILED"  # closed by the worker that found it stale
    assert dead_run.data.tags["tuner.reason"].startswith("worker died")
    assert retry_run.info.status == "FINISHED"
    assert retry_run.data.tags["tuner.retry_of_run"] == dead_run.info.run_id
    assert retry_run.data.tags["tuner.attempt_of_trial"] == str(victim_number)
    assert retry_run.data.tags["tuner.resumed_from_epoch"] == str(resumed_after)
    steps = sorted(m.step for m in client.get_metric_history(retry_run.info.run_id, "val_acc"))
    assert steps == list(range(resumed_after + 1, 7))  # epochs before the checkpoint not repeated
    for trial in trials:
        if trial.number != victim_number:
            assert runs[trial.number].info.status == "FINISHED"
    assert client.get_run(study.user_attrs[PARENT_RUN_ATTR]).info.status == "FINISHED"
    assert not list((tmp_path / "ckpt").rglob("*.pt"))
    assert os.path.exists(tmp_path / "worker2.log")


@pytest.mark.cuda
def test_gpus_give_each_worker_its_own_gpu(tmp_path: Path, fake_mnist: str) -> None:
    gpus = list(range(min(2, torch.cuda.device_count())))
    space = SLOW_SPACE.replace('"device": "cpu"', '"device": "auto"')
    script = write_script(tmp_path / "study.py", fake_mnist, "gpus", space, "n_trials=4, pruner='none'")
    flags = ("--gpus", ",".join(map(str, gpus)), "--quiet", "--no-report")  # one worker per GPU
    done = tuner(tmp_path, "run", str(script), *flags)
    assert done.returncode == 0, done.stderr
    study = load(str(tmp_path / "mlruns" / "optuna.journal"), "gpus")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 4
    runs = child_runs(f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}", "gpus")
    devices: dict[str, set[str]] = {}
    for run in runs:
        devices.setdefault(run.data.tags["tuner.worker"], set()).add(run.data.params["device"])
    assert all(len(ds) == 1 for ds in devices.values())  # each worker stays on its GPU...
    used = [d for ds in devices.values() for d in ds]
    assert len(used) == len(set(used)) and set(used) <= {f"cuda:{g}" for g in gpus}  # ...a GPU of its own
