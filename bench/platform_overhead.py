"""Platform overhead per trial: tuner against the tools people use instead.

The same fixed sequence of configs (drawn once at random from the default search space,
epochs fixed, MNIST-1D, CPU) is trained in four arms:

(a) floor:  bare `trainables.fit` calls in a loop; nothing tracked, nothing stored.
(b) tuner:  `tuner.run.execute.execute_study` with everything it does by default: journal-file
            Optuna storage with heartbeats, SQLite MLflow with a parent run, a child run per
            trial with params, per-epoch metrics, state tags and artifacts (config.json,
            history.csv), checkpoints every 30 s, the best result on the parent run. The
            MLflow writes go through tuner's writer process when a CPU is spare (with one
            torch thread on 2 CPUs or more), as `tuner run` does; its CPU is counted.
(b') tuner_inline: (b) with every MLflow write made by the training process
            (TUNER_RECORD_WRITER=inline): what the writer process changes.
(c) optuna: plain Optuna on SQLite with optuna-integration's `MLflowCallback` (one run per
            trial: the final value and the params), what an Optuna user writes today.
(d) ray:    Ray Tune `Tuner` with `OptunaSearch`, an `ASHAScheduler` and Ray's
            `MLflowLoggerCallback` (every reported result to MLflow), Ray's defaults otherwise:
            a fresh worker process per trial, JSON/CSV/TensorBoard result files.

Fairness: every arm trains the same configs for the same number of epochs: all sample the
same space with Optuna's `RandomSampler(seed=0)`, reseeded per trial as tuner does (so sampling costs next to nothing and the
same in every arm) and the script checks that each arm trained the floor's configs; pruning
is off (NopPruner in (b) and (c), an ASHA grace period equal to the epoch budget in (d)); one trial at a time,
each with the same number of torch threads (Ray: one CPU per trial, one trial at a time);
every arm gets fresh temp storages; imports and the dataset are warmed up first. Arms run
back to back in one process, in a rotated order on each repeat; figures are medians.

Measured per arm: setup (start until the first trial's training starts: storages,
databases, Ray start-up), per-trial time (first training start until the arm returns,
divided by the trials), its overhead over the floor's per-trial time, and the time per
trial spent outside the trainable's own generator, which the arm's training speed (and so
the machine's noise) does not enter (wall and, except for Ray, process CPU); the per-epoch
checkpoints that tuner asks the trainable for are timed apart and counted as outside. What
each arm logged is read back from MLflow.

    .venv/bin/python bench/platform_overhead.py [--trials 30] [--epochs 5] [--repeats 1]
        [--arms floor,tuner,tuner_inline,optuna,ray] [--threads 1] [--quick] [--profile FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import math
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import (
    FitClock,
    Span,
    config_of,
    fixed_configs,
    machine,
    median,
    quiet,
    same_params,
    seeded_sampler,
    set_threads,
    table,
)

ARMS = ("floor", "tuner", "tuner_inline", "optuna", "ray")
NEEDS = {"optuna": "optuna_integration", "ray": "ray"}  # arms that need the `bench` extra
STUDY = "overhead"


def arm_floor(space: dict[str, Any], params: list[dict[str, Any]], tmp: Path, threads: int) -> dict[str, Any]:
    import trainables

    clock = FitClock(trainables.fit)
    for p in params:
        for _ in clock(config_of(space, p)):
            pass
    return {"spans": clock.spans}


def arm_tuner(space: dict[str, Any], params: list[dict[str, Any]], tmp: Path, threads: int) -> dict[str, Any]:
    import trainables
    import trainables.loop
    from trainables import takes_train_config
    from tuner.run.execute import execute_study
    from tuner.study import RunOptions, StudySpec

    storage, tracking = str(tmp / "optuna.journal"), f"sqlite:///{tmp / 'mlflow.db'}"
    clock = FitClock(trainables.fit)
    # tuner asks the trainable for a checkpoint after every epoch: platform work done inside
    # the generator, timed here so that it counts as overhead, not as training
    save, saving = trainables.loop._save_checkpoint, [0.0, 0.0]

    def timed_save(*args: Any, **kwargs: Any) -> None:
        t, c = time.perf_counter(), time.process_time()
        save(*args, **kwargs)
        saving[0] += time.perf_counter() - t
        saving[1] += time.process_time() - c

    trainables.loop._save_checkpoint = timed_save
    helper_cpu_start: list[float] = []  # the writer process's CPU when the first trial starts: after set-up

    @takes_train_config
    def fit(config: Any, **kwargs: Any) -> Any:
        if not helper_cpu_start:
            helper_cpu_start.append(writer_cpu())
        return clock(config, **kwargs)

    try:
        spec = StudySpec(name=STUDY, space=space, sampler="random", pruner="none", n_trials=len(params), seed=0)
        options = RunOptions(storage=storage, tracking_uri=tracking, quiet=True, report=False)
        study = execute_study(dataclasses.replace(spec, trainable=fit), options)
    finally:
        trainables.loop._save_checkpoint = save
    same_params("tuner", params, [t.params for t in study.trials])
    spans = [
        dataclasses.replace(
            s, inside=s.inside - saving[0] / len(clock.spans), inside_cpu=s.inside_cpu - saving[1] / len(clock.spans)
        )
        for s in clock.spans
    ]
    out = {"spans": spans, "tracking": tracking, "filter": "tags.`tuner.role` = 'trial'"}
    return {**out, "helper_cpu_start": helper_cpu_start[0]}


def arm_tuner_inline(space: dict[str, Any], params: list[dict[str, Any]], tmp: Path, threads: int) -> dict[str, Any]:
    from tuner import record_writer

    writer = record_writer.writer()
    mode, writer.inline = writer.inline, True
    try:
        return arm_tuner(space, params, tmp, threads)
    finally:
        writer.inline = mode


def arm_optuna(space: dict[str, Any], params: list[dict[str, Any]], tmp: Path, threads: int) -> dict[str, Any]:
    import mlflow
    import optuna
    from optuna_integration import MLflowCallback

    import trainables
    from tuner.space import suggest

    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    study = optuna.create_study(
        study_name=STUDY,
        storage=f"sqlite:///{tmp / 'optuna.db'}",
        sampler=seeded_sampler(0),
        pruner=optuna.pruners.NopPruner(),
        direction="maximize",
    )
    mlflow.set_tracking_uri(tracking)
    mlflow.set_experiment(STUDY)  # the store's tables are created here, in setup, as in the other arms
    clock = FitClock(trainables.fit)

    def objective(trial: optuna.Trial) -> float:
        value = 0.0
        for result in clock(suggest(trial, space)):
            value = result.val_acc
            trial.report(value, result.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=len(params), callbacks=[MLflowCallback(tracking, metric_name="val_acc")])
    same_params("optuna", params, [t.params for t in study.trials])
    return {"spans": clock.spans, "tracking": tracking}


def ray_trial(params: dict[str, Any], space: dict[str, Any], spans_dir: str, threads: int) -> None:
    """The Ray Tune function trainable: trains one config, reports every epoch.

    Ray stops the function at its last report (ASHA's max_t), so the span is written before each.
    """
    import torch
    from ray import tune

    import trainables

    torch.set_num_threads(threads)
    start, inside = time.time(), 0.0
    epochs = trainables.fit(config_of(space, params))
    while True:
        t = time.perf_counter()
        result = next(epochs, None)
        inside += time.perf_counter() - t
        if result is None:
            return
        Path(spans_dir, f"{os.getpid()}-{start}").write_text(f"{start} {time.time()} {inside}")  # CPU: not measured
        tune.report({**result.metrics(), "epoch": result.epoch})


def define_by_run(trial: Any, space: dict[str, Any]) -> None:
    """OptunaSearch's define-by-run search space: the same `suggest` calls as in tuner."""
    from tuner.space import suggest

    suggest(trial, space)


def arm_ray(space: dict[str, Any], params: list[dict[str, Any]], tmp: Path, threads: int) -> dict[str, Any]:
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    tracking = f"sqlite:///{tmp / 'mlflow.db'}"
    spans_dir = tmp / "spans"
    spans_dir.mkdir()
    bench_dir = Path(__file__).resolve().parent
    pythonpath = os.pathsep.join([str(bench_dir), str(bench_dir.parent), os.environ.get("PYTHONPATH", "")])
    ray.init(
        num_cpus=os.cpu_count(),
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
        runtime_env={"env_vars": {"PYTHONPATH": pythonpath, "OMP_NUM_THREADS": str(threads)}},
    )
    try:
        epochs = int(space["epochs"])
        search = OptunaSearch(
            space=functools.partial(define_by_run, space=space),
            metric="val_acc",
            mode="max",
            sampler=seeded_sampler(0),
        )
        tuner = tune.Tuner(
            tune.with_resources(
                tune.with_parameters(ray_trial, space=space, spans_dir=str(spans_dir), threads=threads), {"cpu": 1}
            ),
            tune_config=tune.TuneConfig(
                metric="val_acc",
                mode="max",
                search_alg=search,
                scheduler=ASHAScheduler(max_t=epochs, grace_period=epochs),  # no early stop: same epochs
                num_samples=len(params),
                max_concurrent_trials=1,
            ),
            run_config=tune.RunConfig(
                name=STUDY,
                storage_path=str(tmp / "ray_results"),
                callbacks=[MLflowLoggerCallback(tracking_uri=tracking, experiment_name=STUDY)],
                verbose=0,
            ),
        )
        grid = tuner.fit()
        end = time.time()
        for r in grid:
            if r.error:
                raise RuntimeError(f"a Ray trial failed: {r.error}")
        same_params("ray", params, [r.config for r in grid])
    finally:
        ray.shutdown()
        wait_for_ray_to_exit()
    spans = [Span(*(float(x) for x in f.read_text().split())) for f in spans_dir.iterdir()]
    return {"spans": spans, "tracking": tracking, "end": end}


def wait_for_ray_to_exit(deadline_seconds: float = 60.0) -> None:
    """Wait until Ray's processes (raylet, GCS, dashboard, workers) are gone, so that the next arm
    does not train beside their shutdown (a floor right after Ray measured 12% slower)."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        if not any(_is_ray_process(d) for d in Path("/proc").iterdir() if d.name.isdigit()):
            return
        time.sleep(0.2)
    print(f"Ray's processes were still running {deadline_seconds:.0f} s after ray.shutdown()")


def _is_ray_process(proc: Path) -> bool:
    try:
        command = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:  # it exited meanwhile
        return False
    return command.startswith(b"ray::") or b"/site-packages/ray/" in command


def logged_per_trial(tracking: str, filter_string: str = "") -> tuple[float, float, float]:
    """(metric values, params, artifacts) per trial run, read back from MLflow."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking)
    experiment = client.get_experiment_by_name(STUDY)
    assert experiment is not None, f"no experiment {STUDY} in {tracking}"
    runs = client.search_runs([experiment.experiment_id], filter_string=filter_string, max_results=10_000)
    metrics = sum(len(client.get_metric_history(r.info.run_id, key)) for r in runs for key in r.data.metrics)
    params = sum(len(r.data.params) for r in runs)
    artifacts = sum(len(client.list_artifacts(r.info.run_id)) for r in runs)
    n = max(1, len(runs))
    return metrics / n, params / n, artifacts / n


def writer_cpu() -> float:
    """CPU seconds used so far by tuner's MLflow writer process (tuner/record_writer.py), 0 if none runs."""
    from tuner import record_writer

    helper = record_writer._writer._helper if record_writer._writer is not None else None
    if helper is None:
        return 0.0
    fields = Path(f"/proc/{helper.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def measure(arm: Callable[..., dict[str, Any]], space: dict[str, Any], params: list[dict[str, Any]], threads: int):
    with tempfile.TemporaryDirectory(prefix=f"bench-{arm.__name__}-") as tmp:
        started = time.time()
        out = arm(space, params, Path(tmp), threads)
        end, end_cpu = out.get("end", time.time()), time.process_time()
        helper_cpu = writer_cpu() - out["helper_cpu_start"] if "helper_cpu_start" in out else 0.0
        spans: list[Span] = out["spans"]
        assert len(spans) == len(params), f"{arm.__name__}: {len(spans)} trials ran, {len(params)} expected"
        first = min(spans, key=lambda s: s.start)
        logged = logged_per_trial(out["tracking"], out.get("filter", "")) if "tracking" in out else (0, 0, 0)
    n = len(params)
    return {
        "setup": first.start - started,
        "per_trial": (end - first.start) / n,
        "outside": (end - first.start - sum(s.inside for s in spans)) / n,
        # CPU of this process (and of tuner's writer process) outside the trainable; NaN for Ray,
        # whose trials run in other processes
        "outside_cpu": (end_cpu - first.start_cpu - sum(s.inside_cpu for s in spans) + helper_cpu) / n,
        "logged": logged,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1, help="run every arm this many times; report medians")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"comma-separated subset of {','.join(ARMS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per trial in every arm")
    parser.add_argument("--quick", action="store_true", help="6 trials of 4 epochs: checks that every arm runs")
    parser.add_argument("--profile", metavar="FILE", help="write a pyinstrument profile of the tuner arm here")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs = 6, 4
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    if unknown := set(arms) - set(ARMS):
        parser.error(f"unknown arms {sorted(unknown)}: choose from {', '.join(ARMS)}")
    skipped = [a for a in arms if a in NEEDS and importlib.util.find_spec(NEEDS[a]) is None]
    for a in skipped:
        print(f"arm {a} skipped: {NEEDS[a]} is not installed; run `.venv/bin/pip install -e '.[bench]'`")
    arms = [a for a in arms if a not in skipped]

    quiet()
    set_threads(args.threads)
    space, params = fixed_configs(args.trials, args.epochs)
    # warm-up: imports, the dataset's in-process cache, torch's first-call costs
    import mlflow  # noqa: F401

    import trainables
    import tuner.run.execute  # noqa: F401

    for a in arms:
        if a in NEEDS:
            __import__(NEEDS[a])
    for _ in trainables.fit(config_of(space, params[0])):
        pass

    functions = {"floor": arm_floor, "tuner": arm_tuner, "tuner_inline": arm_tuner_inline}
    functions |= {"optuna": arm_optuna, "ray": arm_ray}
    results: dict[str, list[dict[str, Any]]] = {a: [] for a in arms}
    for repeat in range(args.repeats):
        order = arms[repeat % len(arms) :] + arms[: repeat % len(arms)]
        for a in order:
            if a == "tuner" and args.profile:
                from pyinstrument import Profiler

                with Profiler(interval=0.0005) as profiler:
                    results[a].append(measure(functions[a], space, params, args.threads))
                Path(args.profile).write_text(profiler.output_text(unicode=True, show_all=False))
            else:
                results[a].append(measure(functions[a], space, params, args.threads))
            r = results[a][-1]
            print(f"repeat {repeat + 1} {a:12s} setup {r['setup']:6.2f} s  per trial {r['per_trial'] * 1000:8.1f} ms")

    def med(a: str, key: str) -> float:
        return median([r[key] for r in results[a]])

    def paired(a: str) -> float:  # per repeat against the floor of the same repeat: steadier when the machine drifts
        if "floor" not in results:
            return float("nan")
        return median([r["per_trial"] - f["per_trial"] for r, f in zip(results[a], results["floor"], strict=True)])

    floor = med("floor", "per_trial") if "floor" in results else float("nan")
    rows = []
    for a in arms:
        per_trial = med(a, "per_trial")
        over = per_trial - floor
        logged = [median([r["logged"][i] for r in results[a]]) for i in range(3)]
        rows.append(
            [
                a,
                f"{med(a, 'setup'):.2f}",
                f"{per_trial * 1000:.0f}",
                "-" if a == "floor" else f"{over * 1000:+.0f}",
                "-" if a == "floor" else f"{over / floor * 100:+.1f}%",
                "-" if a == "floor" else f"{paired(a) * 1000:+.0f}",
                f"{med(a, 'outside') * 1000:.0f}",
                f"{med(a, 'outside') / floor * 100:.1f}%",
                "n/a" if math.isnan(med(a, "outside_cpu")) else f"{med(a, 'outside_cpu') * 1000:.0f}",
                f"{logged[0]:.0f}",
                f"{logged[1]:.0f}",
                f"{logged[2]:.0f}",
            ]
        )
    print()
    print(
        f"#### Platform overhead: {args.trials} MNIST-1D trials x {args.epochs} epochs, "
        f"median of {args.repeats} run(s) per arm"
    )
    print()
    print(machine())
    print()
    headers = ["arm", "setup s", "per trial ms", "over floor ms", "over floor %", "over floor, paired ms"]
    headers += ["outside training ms"]
    headers += ["outside % of floor", "outside training, CPU ms", "metric values/trial", "params/trial"]
    headers += ["artifacts/trial"]
    print(table(headers, rows))


if __name__ == "__main__":
    main()
