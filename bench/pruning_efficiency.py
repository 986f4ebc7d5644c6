"""Pruning efficiency: what each pruner saves, and what it costs in the best result found.

Each pruner of tuner (median, hyperband, successive_halving) and no pruning run the same
study, real training through `tuner.run.execute.execute_study` (journal file and SQLite MLflow in a
temp dir), on MNIST-1D with the default search space and a fixed epoch budget per trial: the
same TPE seed and the same number of trials, for each of 3 seeds. Reported per run:

- epochs trained in all (every epoch a trial reported, pruned trials' included), wall time;
- the best validation accuracy reached (the best completed trial, as the study reports it);
- time and epochs to target: the first moment a completed trial reached the no-pruning run's
  final best (same seed) within 0.5 points, counted from the start of the run.

The summary gives, per pruner, the mean share of the no-pruning run's epochs and wall time,
the mean gap in best accuracy, and in how many seeds it reached the target. All runs use the
same number of torch threads (1 by default: steadier on a shared 2-core machine).

    .venv/bin/python bench/pruning_efficiency.py [--trials 40] [--epochs 15] [--seeds 3] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from typing import Any

from _common import machine, quiet, set_threads, table

PRUNERS = ("none", "median", "hyperband", "successive_halving")
TOLERANCE = 0.005  # 0.5 points of accuracy


def run(pruner: str, seed: int, space: dict[str, Any], n_trials: int) -> dict[str, Any]:
    """One study; returns its trials' outcomes in the order they ended."""
    from optuna.trial import TrialState

    from tuner.run.execute import execute_study
    from tuner.study import RunOptions, StudySpec

    with tempfile.TemporaryDirectory(prefix=f"bench-pruning-{pruner}-") as tmp:
        spec = StudySpec(name=f"{pruner}-{seed}", space=space, pruner=pruner, n_trials=n_trials, seed=seed)
        options = RunOptions(
            storage=f"{tmp}/optuna.journal", tracking_uri=f"sqlite:///{tmp}/mlflow.db", quiet=True, report=False
        )
        started = time.time()
        study = execute_study(spec, options)
        wall = time.time() - started
        trials = study.trials
    ended = sorted((t for t in trials if t.datetime_complete), key=lambda t: t.datetime_complete)
    events = []  # (seconds since start, epochs so far, value of a completed trial or None)
    epochs = 0
    for t in ended:
        epochs += len(t.intermediate_values)
        value = t.value if t.state == TrialState.COMPLETE else None
        events.append((t.datetime_complete.timestamp() - started, epochs, value))
    completed = [v for _, _, v in events if v is not None]
    return {
        "pruner": pruner,
        "seed": seed,
        "wall": wall,
        "epochs": epochs,
        "best": max(completed, default=float("nan")),
        "complete": len(completed),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "events": events,
    }


def to_target(result: dict[str, Any], target: float) -> tuple[float, int] | None:
    """(seconds, epochs) when a completed trial first reached `target`; None if none did."""
    for seconds, epochs, value in result["events"]:
        if value is not None and value >= target:
            return seconds, epochs
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=40, help="trials per study")
    parser.add_argument("--epochs", type=int, default=15, help="epochs per trial that is not pruned")
    parser.add_argument("--seeds", type=int, default=3, help="sampler seeds 0..N-1")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--quick", action="store_true", help="1 seed, 10 trials of 6 epochs: about a minute")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.epochs, args.seeds = 10, 6, 1

    quiet()
    set_threads(args.threads)
    from tuner.space import default_space

    space = {**default_space(), "epochs": args.epochs, "device": "cpu"}
    results: list[dict[str, Any]] = []
    for seed in range(args.seeds):
        for pruner in PRUNERS:
            r = run(pruner, seed, space, args.trials)
            results.append(r)
            print(
                f"seed {seed} {pruner:18s} epochs {r['epochs']:4d}  wall {r['wall']:6.1f} s  "
                f"best {r['best']:.4f}  complete {r['complete']}  pruned {r['pruned']}"
            )

    baseline = {r["seed"]: r for r in results if r["pruner"] == "none"}
    rows = []
    for r in results:
        base = baseline[r["seed"]]
        hit = to_target(r, base["best"] - TOLERANCE)
        rows.append(
            [
                r["pruner"],
                r["seed"],
                f"{r['complete']}/{r['pruned']}",
                r["epochs"],
                f"{r['wall']:.1f}",
                f"{r['best'] * 100:.2f}",
                "-" if hit is None else f"{hit[0]:.1f}",
                "-" if hit is None else hit[1],
            ]
        )
    summary = []
    for pruner in PRUNERS:
        runs = [r for r in results if r["pruner"] == pruner]
        hits = [to_target(r, baseline[r["seed"]]["best"] - TOLERANCE) for r in runs]
        reached = [h for h in hits if h is not None]
        summary.append(
            [
                pruner,
                f"{statistics.mean(r['epochs'] / baseline[r['seed']]['epochs'] for r in runs) * 100:.0f}%",
                f"{statistics.mean(r['wall'] / baseline[r['seed']]['wall'] for r in runs) * 100:.0f}%",
                f"{statistics.mean((r['best'] - baseline[r['seed']]['best']) * 100 for r in runs):+.2f}",
                f"{len(reached)}/{len(runs)}",
                "-" if not reached else f"{statistics.median(h[0] for h in reached):.1f}",
                "-" if not reached else f"{statistics.median(h[1] for h in reached):.0f}",
            ]
        )
    print()
    print(
        f"#### Pruning efficiency: MNIST-1D, default space, {args.trials} trials x up to {args.epochs} epochs, "
        f"TPE seeds 0-{args.seeds - 1}"
    )
    print()
    print(machine())
    print()
    print(
        table(
            [
                "pruner",
                "epochs (share of none)",
                "wall time (share of none)",
                "best - none's best, points",
                "reached none's best -0.5",
                "median time to it, s",
                "median epochs to it",
            ],
            summary,
        )
    )
    print()
    print(
        table(
            [
                "pruner",
                "seed",
                "complete/pruned",
                "epochs",
                "wall s",
                "best val_acc %",
                "time to target s",
                "epochs to target",
            ],
            rows,
        )
    )


if __name__ == "__main__":
    main()
