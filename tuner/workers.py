"""Several worker processes on one study: `tuner run --workers N` and `tuner worker`.

`launch` is the local case: it creates the study, its MLflow experiment and parent run
once, then starts N `tuner worker` processes (each its own process group, so one crashing
takes no other down), shows their progress from the storage, and waits for them.

`join` is what each worker runs, here or on any other host: it loads an existing study,
rebuilds its StudySpec from the record that `prepare_study` keeps in the study's user
attributes (so a worker needs no study script, only the storage and tracking URIs), and
runs trials until the study's shared budget is used. Storage and tracking URIs travel to
local workers in the environment (TUNER_STORAGE, TUNER_TRACKING_URI), never on a command
line where `ps` would show their passwords.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tuner.errors import UserError
from tuner.storage import open_storage, redact, storage_kind
from tuner.study import RunOptions, StudySpec

STORAGE_ENV, TRACKING_ENV = "TUNER_STORAGE", "TUNER_TRACKING_URI"
STOP_SECONDS = 120  # after forwarding Ctrl-C / SIGTERM, how long workers get to close their trials


class WorkersFailed(UserError):
    """Some worker processes exited with an error; the study itself is intact and resumable."""


def cpu_threads(workers: int) -> int:
    """Torch threads per worker so that N workers do not oversubscribe the machine's cores."""
    return max(1, len(os.sched_getaffinity(0)) // workers)


def worker_devices(options: RunOptions) -> list[str | None]:
    """The device of each worker: worker i gets cuda:gpus[i], else the run's --device (or the study's)."""
    if options.gpus:
        return [f"cuda:{options.gpus[i]}" for i in range(options.workers)]  # validated: workers <= len(gpus)
    return [options.device] * options.workers


def launch(spec: StudySpec, options: RunOptions) -> Any:
    """Run `spec` (already validated) in `options.workers` processes; returns the study when all have exited."""
    from tuner.heap import freeze_heap
    from tuner.runner import checkpoint_dir, close_parent_run, prepare_study

    study, tracking = prepare_study(spec, options)
    env = {**os.environ, STORAGE_ENV: options.storage, TRACKING_ENV: options.tracking_uri}
    threads = cpu_threads(options.workers)
    procs = []
    for index, device in enumerate(worker_devices(options)):
        command = [sys.executable, "-m", "tuner.cli", "worker", "--study", spec.name, "--quiet"]
        command += ["--worker-index", str(index), "--checkpoint-dir", str(checkpoint_dir(options))]
        command += ["--checkpoint-every", str(options.checkpoint_every)]
        if device is not None:
            command += ["--device", device]
        if device is None or not device.startswith("cuda"):
            command += ["--threads", str(threads)]
            env["OMP_NUM_THREADS"] = str(threads)
        if spec.timeout is not None:
            command += ["--timeout", str(spec.timeout)]
        if options.keep_checkpoints:
            command.append("--keep-checkpoints")
        procs.append(subprocess.Popen(command, env=dict(env), start_new_session=True))
    freeze_heap()  # this process only watches from here on
    interrupted = True
    try:
        _watch(study, spec, options, procs)
        interrupted = False
    except KeyboardInterrupt as exc:
        from tuner.cli import TerminatedError

        _stop(procs, signal.SIGTERM if isinstance(exc, TerminatedError) else signal.SIGINT)
        raise
    finally:
        close_parent_run(study, tracking, interrupted)
    tracking.record_best(study)
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        described = ", ".join(f"worker {i} {_exit_text(code)}" for i, code in failed)
        raise WorkersFailed(
            f"{len(failed)} of {len(procs)} workers failed ({described}); the others went on and the study is "
            f"resumable: see its state with `tuner studies`, run the same command again to finish it"
        )
    return study


def _watch(study: Any, spec: StudySpec, options: RunOptions, procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait for the workers, redrawing the progress line from the storage as trials end."""
    from optuna.trial import TrialState

    from tuner.progress import StudyProgress

    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    seen = {t.number for t in study.get_trials(deepcopy=False, states=ended)}  # earlier runs' trials
    with StudyProgress(spec.name, spec.n_trials, spec.timeout, quiet=options.quiet) as progress:
        while True:
            running = [p for p in procs if p.poll() is None]
            if not options.quiet:
                for trial in study.get_trials(deepcopy=False, states=ended):
                    if trial.number not in seen:
                        seen.add(trial.number)
                        progress(study, trial)
            if not running:
                return
            try:
                running[0].wait(timeout=1.0)
            except subprocess.TimeoutExpired:
                pass


def _stop(procs: list[subprocess.Popen[bytes]], signum: int) -> None:
    """Pass the signal on so that each worker closes its trial (re-queued), then wait for them."""
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signum)
    deadline = time.monotonic() + STOP_SECONDS
    for proc in procs:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()  # its trial goes stale and is retried by the next run
            proc.wait()


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"


def create(study: Any, options: RunOptions) -> int:
    """`tuner create`: the study, its MLflow experiment and parent run, its budget; then say how to join it."""
    from tuner.runner import BUDGET_ATTR, prepare_study, quiet_optuna

    if not isinstance(study, StudySpec):
        raise UserError("the study script's STUDY is not a StudySpec, so workers could not rebuild it; use tuner run")
    spec = study.with_options(options)
    spec.validate(options)
    quiet_optuna()
    optuna_study, _ = prepare_study(spec, options)
    budget = optuna_study.user_attrs.get(BUDGET_ATTR)
    print(f"study {spec.name}: ready for workers, {'no trial limit' if budget is None else f'{budget} trials in all'}")
    print(
        f"join it from any host: tuner worker --study {spec.name} --storage {redact(options.storage)} "
        f"--tracking-uri {redact(options.tracking_uri)}"
    )
    return 0


def join(
    study_name: str,
    options: RunOptions,
    worker_index: int | None = None,
    timeout: float | None = None,
) -> int:
    """`tuner worker`: run trials of an existing study until its budget is used; returns how many ran."""
    import optuna

    from tuner.adapter import StaleTrialHandler
    from tuner.runner import SPEC_ATTR, close_parent_run, make_runner, open_study, quiet_optuna, work
    from tuner.storage import check_storage_url, check_tracking_uri, set_stale_trial_callback
    from tuner.study import check_checkpoint_every
    from tuner.tracking import StudyTracking

    quiet_optuna()
    if options.threads is not None and options.threads < 1:
        raise UserError(f"--threads {options.threads}: give 1 or more")
    check_storage_url(options.storage)
    check_tracking_uri(options.tracking_uri)
    check_checkpoint_every(options.checkpoint_every)
    if storage_kind(options.storage) == "journal" and not Path(options.storage).exists():
        raise UserError(
            f"--storage {options.storage}: no such journal file; create the study first with "
            "`tuner create SCRIPT` (or `tuner run SCRIPT`) on this storage"
        )
    storage = open_storage(options.storage)
    try:
        record = optuna.load_study(study_name=study_name, storage=storage).user_attrs.get(SPEC_ATTR)
    except KeyError:
        raise UserError(
            f"study {study_name!r} not found in {redact(options.storage)}; create it with `tuner create SCRIPT "
            "--storage ...` or list the studies there with `tuner studies --storage ...`"
        ) from None
    if record is None:
        raise UserError(
            f"study {study_name!r} was not created by `tuner run` or `tuner create`, so its search space is not "
            "recorded; create it with one of them first"
        )
    spec = StudySpec.from_record(record)
    spec.validate(options)  # this host's devices and dataset files
    if options.threads is not None:
        import torch

        torch.set_num_threads(options.threads)
    index = worker_index if worker_index is not None else os.getpid()
    study = open_study(spec, options, create=False, worker_index=index)
    tracking = StudyTracking(options.tracking_uri, study, spec.settings(options.storage), spec.describe_space())
    set_stale_trial_callback(study._storage, StaleTrialHandler(tracking))
    runner = make_runner(spec, options, tracking)
    interrupted = True
    try:
        ran = work(
            study,
            runner,
            spec.timeout if timeout is None else timeout,
            callbacks=[lambda s, t: tracking.record_best(s)],
        )
        interrupted = False
    finally:
        close_parent_run(study, tracking, interrupted)
    return ran
