"""Storage costs: Optuna's storages per trial, and MLflow's cost per child run, local and served.

1. Optuna, per trial, on a trivial objective that makes a trial's storage traffic (3
   suggestions, 5 reports with pruning checks, the result), RandomSampler so that the sampler
   costs nothing: the journal file, SQLite and PostgreSQL storages as `tuner.storage.open_storage`
   opens them (heartbeats on, SQLite in WAL mode), with 1 and 4 worker processes on one study.
   Figure: wall time from the moment all workers are ready until the last one ends, divided by
   the trials run (so with 4 workers it is the cost per trial of the study's throughput).
2. MLflow, per child run, what tuner's tracking writes for one trial of 10 epochs (create the
   run, params, 10 x 7 metrics, state tags, config.json and history.csv, terminate), on SQLite
   in WAL mode (tuner's default), on SQLite with MLflow's own rollback journal, and through a
   tracking server (`mlflow server --backend-store-uri sqlite:///... --workers 1`, started and
   stopped here); each written by tuner's writer process (its default for a server, and for
   SQLite when a CPU is spare) and inline by the training process. Each epoch's training is
   played by a 50 ms pause, during which the writer process works, as it does beside a real
   trial. Figures: the time the trial's process spends in tracking calls (its wait), and the
   time until every record is written, the pauses left out (the throughput).

PostgreSQL: `--postgres-url URL` uses that server (give one the user may create tables in);
without it a throwaway PostgreSQL 15 cluster is started in a temp dir (initdb -A trust, as the
postgres user when run as root) and stopped at the end; without its binaries it is skipped.

Every case runs once per round, rounds repeat (3 by default), and medians are reported.

    .venv/bin/python bench/storage.py [--trials 200] [--runs 50] [--repeats 3] [--postgres-url URL] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _common import machine, median, quiet, table

PG_BIN = Path("/usr/lib/postgresql/15/bin")
WORKERS = (1, 4)
EPOCHS = 10  # per child run
# each epoch's training (an MNIST-1D epoch on 2 CPU cores: 70-80 ms), played by a pause the figures leave out
EPOCH_SECONDS = 0.05


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def objective(trial: Any) -> float:
    x = trial.suggest_float("x", -10, 10)
    trial.suggest_float("lr", 1e-5, 1e-1, log=True)
    trial.suggest_categorical("optimizer", ["sgd", "adam"])
    for step in range(1, 6):
        trial.report(x * x / step, step)
        trial.should_prune()
    return x * x


def optuna_worker(url: str, study_name: str, n_trials: int, barrier: Any, out: Any) -> None:
    """One worker process: load the study, wait for the others, run its trials."""
    quiet()
    import optuna

    from tuner.storage import open_storage

    study = optuna.load_study(
        study_name=study_name,
        storage=open_storage(url),
        sampler=optuna.samplers.RandomSampler(seed=os.getpid()),
        pruner=optuna.pruners.NopPruner(),
    )
    barrier.wait()
    start = time.time()
    errors = 0
    for _ in range(n_trials):
        try:
            study.optimize(objective, n_trials=1)
        except Exception:  # a storage error (e.g. database locked): counted, the worker goes on
            errors += 1
    out.put((start, time.time(), errors))


def optuna_cost(url: str, study_name: str, workers: int, trials: int) -> tuple[float, int]:
    """(ms per trial, errors) of `trials` trials split over `workers` processes."""
    import optuna

    from tuner.storage import open_storage

    optuna.create_study(study_name=study_name, storage=open_storage(url), direction="minimize")
    context = multiprocessing.get_context("spawn")  # no inherited database connections
    barrier, out = context.Barrier(workers), context.Queue()
    share = [trials // workers + (i < trials % workers) for i in range(workers)]
    procs = [context.Process(target=optuna_worker, args=(url, study_name, n, barrier, out)) for n in share]
    for p in procs:
        p.start()
    results = [out.get(timeout=600) for _ in procs]
    for p in procs:
        p.join()
    start, end = min(r[0] for r in results), max(r[1] for r in results)
    return (end - start) / trials * 1000, sum(r[2] for r in results)


def child_run_cost(tracking_uri: str, runs: int, wal: bool = True, inline: bool = False) -> tuple[float, float]:
    """ms per child run of tuner's tracking (`StudyTracking`) at `tracking_uri`: (what the trial waits
    for, until everything is written). `inline`: the training process writes, not the writer process."""
    import optuna

    import tuner.tracking
    from trainables import TrainConfig
    from trainables.loop import EpochResult
    from tuner.record_writer import RecordWriter

    prepare = tuner.tracking.prepare_mlflow_store

    def rollback_journal(uri: str) -> None:  # MLflow's default: tuner's set-up, then WAL mode undone
        prepare(uri)
        with contextlib.closing(sqlite3.connect(uri.removeprefix("sqlite:///"))) as db:
            db.execute("PRAGMA journal_mode=DELETE")

    if not wal:
        tuner.tracking.prepare_mlflow_store = rollback_journal
    try:
        study = optuna.create_study(study_name=f"child-runs-{time.time_ns()}")
        tracking = tuner.tracking.StudyTracking(tracking_uri, study, {"sampler": "random"}, {})
    finally:
        tuner.tracking.prepare_mlflow_store = prepare
    tracking.writer = RecordWriter(inline=inline)
    tracking.writer.write(tracking_uri, "connect")  # the helper's start-up is set-up, not part of a run
    tracking.writer.sync()
    config = TrainConfig(epochs=EPOCHS)
    params = {"optimizer": "adam", "lr": 0.01, "batch_size": 100}
    paused = 0.0  # the rest of the loop is the trial's tracking calls: what it waits for
    start = time.perf_counter()
    for number in range(runs):
        run = tracking.start_trial(number, params, config)
        for epoch in range(1, EPOCHS + 1):
            t = time.perf_counter()
            time.sleep(EPOCH_SECONDS)  # the epoch's training, during which the writer process works
            paused += time.perf_counter() - t
            last = epoch == EPOCHS
            result = EpochResult(
                epoch, 0.5, 0.8, 0.6, 0.8, 0.01, 0.1, 5e4, 0.6 if last else None, 0.8 if last else None
            )
            run.log_epoch(result.epoch, result.metrics())
            if epoch == 1:
                assert run.run_id is not None  # asked for with the first report, as a trial does
        run.finish("COMPLETE")
    waited = time.perf_counter() - start - paused
    tracking.sync()
    written = time.perf_counter() - start - paused
    tracking.finish_study()
    tracking.writer.close()
    return waited / runs * 1000, written / runs * 1000


@contextlib.contextmanager
def mlflow_server(tmp: Path) -> Iterator[str]:
    """An MLflow tracking server on a free local port (SQLite backend), stopped on exit."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        f"sqlite:///{tmp}/server.db",
    ]
    command += ["--default-artifact-root", (tmp / "server-artifacts").as_uri(), "--host", "127.0.0.1"]
    command += ["--port", str(port), "--workers", "1"]
    log = open(tmp / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"mlflow server did not answer /health: see {tmp / 'server.log'}") from None
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@contextlib.contextmanager
def postgres(tmp: Path) -> Iterator[str]:
    """A throwaway PostgreSQL 15 cluster in `tmp`, stopped on exit; yields its URL."""
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if os.geteuid() == 0:
        shutil.chown(tmp, "postgres")
    data, port = tmp / "data", free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_postgres, *args], check=True, capture_output=True)

    pg(str(PG_BIN / "initdb"), "-A", "trust", "-U", "postgres", "-D", str(data))
    options = f"-p {port} -k {tmp} -h 127.0.0.1"
    pg(str(PG_BIN / "pg_ctl"), "-w", "-t", "60", "-D", str(data), "-l", str(tmp / "server.log"), "-o", options, "start")
    try:
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/postgres"
    finally:
        pg(str(PG_BIN / "pg_ctl"), "-w", "-D", str(data), "-m", "fast", "stop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=200, help="trials per storage and worker count")
    parser.add_argument("--runs", type=int, default=50, help="MLflow child runs per store")
    parser.add_argument("--postgres-url", help="a PostgreSQL server to use instead of a throwaway cluster")
    parser.add_argument("--repeats", type=int, default=3, help="rounds over all cases; medians are reported")
    parser.add_argument("--quick", action="store_true", help="1 round of 40 trials and 10 child runs per case")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.runs, args.repeats = 40, 10, 1
    quiet()

    optuna_ms: dict[tuple[str, int], list[float]] = {}
    optuna_errors: dict[tuple[str, int], int] = {}
    mlflow_ms: dict[tuple[str, str], list[tuple[float, float]]] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-storage-")))
        urls = {"journal file": str(tmp / "optuna.journal"), "SQLite": f"sqlite:///{tmp / 'optuna.db'}"}
        if args.postgres_url:
            urls["PostgreSQL"] = args.postgres_url
        elif (PG_BIN / "initdb").exists():
            pg_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-pg-")))
            urls["PostgreSQL"] = stack.enter_context(postgres(pg_dir))
        else:
            print(f"PostgreSQL skipped: no {PG_BIN / 'initdb'}; give --postgres-url or install postgresql-15")
        server_dir = tmp / "server"
        server_dir.mkdir()
        server = stack.enter_context(mlflow_server(server_dir))
        cases = {  # name: (tracking URI prefix, WAL)
            "SQLite, WAL (tuner's default)": (f"sqlite:///{tmp / 'mlflow-wal'}", True),
            "SQLite, rollback journal (MLflow's default)": (f"sqlite:///{tmp / 'mlflow-journal'}", False),
            "tracking server over HTTP (SQLite backend)": (server, True),
        }
        for repeat in range(args.repeats):  # every case once per round, so that load changes hit all alike
            for name, url in urls.items():
                for workers in WORKERS:
                    ms, errors = optuna_cost(url, f"bench-{workers}w-{time.time_ns()}", workers, args.trials)
                    print(f"round {repeat + 1} {name:12s} {workers} worker(s): {ms:6.1f} ms per trial, {errors} errors")
                    optuna_ms.setdefault((name, workers), []).append(ms)
                    optuna_errors[name, workers] = optuna_errors.get((name, workers), 0) + errors
            for name, (uri, wal) in cases.items():
                for writes, inline in (("writer process", False), ("inline", True)):
                    store = uri if uri.startswith("http") else f"{uri}-{repeat}-{writes.split()[0]}.db"
                    waited, written = child_run_cost(store, args.runs, wal, inline)
                    print(
                        f"round {repeat + 1} {name}, {writes}: waited {waited:.1f} ms, written {written:.1f} ms per run"
                    )
                    mlflow_ms.setdefault((name, writes), []).append((waited, written))

    optuna_rows = [
        [name, workers, args.trials, f"{median(ms):.1f}", optuna_errors[name, workers]]
        for (name, workers), ms in optuna_ms.items()
    ]
    mlflow_rows = [
        [name, writes, args.runs, f"{median([w for w, _ in ms]):.1f}", f"{median([t for _, t in ms]):.1f}"]
        for (name, writes), ms in mlflow_ms.items()
    ]
    print()
    print(f"#### Storage costs: median of {args.repeats} round(s)")
    print()
    print(machine())
    print()
    print(
        table(["Optuna storage", "workers", "trials per round", "ms per trial (wall / trials)", "errors"], optuna_rows)
    )
    print()
    print(
        table(
            [
                f"MLflow store (child run of {EPOCHS} epochs)",
                "written by",
                "runs per round",
                "ms per run the trial waits",
                "ms per run until written",
            ],
            mlflow_rows,
        )
    )


if __name__ == "__main__":
    main()
