"""Several worker processes on one study: `tuner run --workers N` and `tuner create`.

`launch` is the local case: it creates the study, its MLflow experiment and parent run
once, then starts N `tuner worker` processes (each its own process group, so one crashing
takes no other down), shows their progress from the storage, and waits for them. Each
worker runs `tuner.run.execute.join`, as a worker on another host does after `create`.
Storage and tracking URIs travel to local workers in the environment (TUNER_STORAGE,
TUNER_TRACKING_URI), never on a command line where `ps` would show their passwords.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

from tuner import interrupts
from tuner.errors import TerminatedError, WorkersFailed
from tuner.heap import freeze_heap
from tuner.locations import redact
from tuner.run.open import close_parent_run, prepare_study
from tuner.run.plan import Plan
from tuner.study import RunOptions

STORAGE_ENV, TRACKING_ENV = "TUNER_STORAGE", "TUNER_TRACKING_URI"
LAUNCHER_ENV = "TUNER_LAUNCHER_FD"  # a local worker's end of a pipe that closes when its launcher dies
STOP_SECONDS = 120  # after forwarding Ctrl-C / SIGTERM, how long workers get to close their trials


def cpu_threads(workers: int) -> int:
    """Torch threads per worker so that N workers do not oversubscribe the machine's cores."""
    return max(1, len(os.sched_getaffinity(0)) // workers)


def worker_devices(options: RunOptions) -> list[str | None]:
    """The device of each worker: worker i gets cuda:gpus[i], else the run's --device (or the study's)."""
    if options.gpus:
        return [f"cuda:{options.gpus[i]}" for i in range(options.workers)]  # validated: workers <= len(gpus)
    return [options.device] * options.workers


def launch(plan: Plan) -> Any:
    """Run the planned study in `options.workers` processes; returns the study when all have exited."""
    options = plan.options
    study, tracking = prepare_study(plan, trains=False)  # the workers train
    tracking.settle()  # the workers find the parent run in the study
    env = {**os.environ, STORAGE_ENV: options.storage, TRACKING_ENV: options.tracking_uri}
    # The workers hold the read end; only this process holds the write end (pipes are not inherited
    # unless passed), so the kernel closes it when this process dies, however it dies.
    lifeline, held = os.pipe()
    env[LAUNCHER_ENV] = str(lifeline)
    procs: list[subprocess.Popen[bytes]] = []
    interrupted = True
    try:
        try:
            procs = _start_workers(plan, env, lifeline)
        finally:
            os.close(lifeline)  # the workers hold it now
        freeze_heap()  # this process only watches from here on
        _watch(study, plan, procs)
        interrupted = False
    except KeyboardInterrupt as exc:
        _stop(procs, signal.SIGTERM if isinstance(exc, TerminatedError) else signal.SIGINT)
        raise
    finally:
        os.close(held)  # any worker still running (a start that failed half-way) stops itself
        close_parent_run(study, tracking, interrupted, plan.spec.metrics)
    tracking.record_best(study)
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    if failed:
        described = ", ".join(f"worker {i} {_exit_text(code)}" for i, code in failed)
        raise WorkersFailed(
            f"{len(failed)} of {len(procs)} workers failed ({described}); the others went on and the study is "
            f"resumable: see its state with `tuner studies`, run the same command again to finish it"
        )
    return study


def _start_workers(plan: Plan, env: dict[str, str], lifeline: int) -> list[subprocess.Popen[bytes]]:
    """Start `tuner worker` processes, each in a session of its own, holding the launcher's pipe."""
    spec, options = plan.spec, plan.options
    threads = cpu_threads(options.workers)
    procs = []
    for index, device in enumerate(worker_devices(options)):
        command = [sys.executable, "-m", "tuner.cli", "worker", "--study", spec.name, "--quiet"]
        command += ["--worker-index", str(index), "--checkpoint-dir", str(plan.checkpoint_dir)]
        command += ["--run-key", str(options.run_key)]  # the workers share this run's budget
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
        command += ["--keep-models", options.keep_models]
        if options.data_dir is not None:
            command += ["--data-dir", options.data_dir] + (["--download"] if options.download else [])
        procs.append(subprocess.Popen(command, env=dict(env), start_new_session=True, pass_fds=(lifeline,)))
    return procs


def watch_launcher() -> None:
    """In a worker that a launcher started: SIGTERM ourselves when the launcher dies (SIGKILL, a crash).

    The workers run in sessions of their own (one crashing takes no other down), so nothing
    else would stop them: they would train on unseen, and running the command again would
    double them. SIGTERM closes the running trial and queues it again, as Ctrl-C does. The
    read of the launcher's pipe returns (end of file) the moment the launcher is gone.
    """
    text = os.environ.pop(LAUNCHER_ENV, "")
    if not text.isdigit():
        return
    lifeline = int(text)

    def watch() -> None:
        try:
            while os.read(lifeline, 1):
                pass
        except OSError:  # not the pipe we were given: watch nothing
            return
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-launcher", daemon=True).start()


def _watch(study: Any, plan: Plan, procs: list[subprocess.Popen[bytes]]) -> None:
    """Wait for the workers, redrawing the progress line from the storage as trials end."""
    from optuna.trial import TrialState

    from tuner.progress import StudyProgress

    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    spec, options = plan.spec, plan.options
    seen = {t.number for t in study.get_trials(deepcopy=False, states=ended)}  # earlier runs' trials
    with StudyProgress(spec.name, spec.n_trials, spec.timeout, quiet=options.quiet) as progress:
        while True:
            interrupts.check()
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


def create(plan: Plan) -> int:
    """`tuner create`: the study, its MLflow experiment and parent run, its budget; then say how to join it."""
    spec, options = plan.spec, plan.options
    _, tracking = prepare_study(plan, trains=False)
    tracking.settle()  # the workers find the parent run in the study
    budget = spec.n_trials
    print(f"study {spec.name}: ready for workers, {'no trial limit' if budget is None else f'{budget} trials to run'}")
    print(
        f"join it from any host: tuner worker --study {spec.name} --storage {redact(options.storage)} "
        f"--tracking-uri {redact(options.tracking_uri)}"
    )
    return 0
