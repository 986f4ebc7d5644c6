"""Fast start: time from the command to the first trial's first epoch, and a worker's fixed cost.

Runs, side by side and alternating, the code of a baseline commit (a `git worktree` of it,
default c09df01, the commit before issue 18's changes) and the working tree, with the same
venv, each repetition in a fresh folder (a fresh ./mlruns, as a new user's first run):

- first epoch: `tuner run STUDY --n-trials 1`; the study's trainable is `trainables.fit`
  behind a wrapper that writes, at the first epoch's end, `time.time()` minus the epoch's own
  `seconds` (its wall time as the loop measures it): the moment the first epoch started.
  Reported from the moment the command was started.
- worker fixed cost: after an untimed `tuner create`, a `tuner worker` that runs one trial;
  its wall time minus the trainable's own epoch seconds, so what the process costs besides
  training (start-up, MLflow, the end).

The built-in MNIST-1D CNN, 5 epochs per trial, CPU. The dataset cache (the working tree's)
is warmed once before the timed runs and kept in a private folder; the baseline has none.
Prints medians and the ratios after/before.

    .venv/bin/python bench/startup.py [--repeats 3] [--before c09df01]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench._common import load_average, machine  # noqa: E402

PROBE = """
import json, os, time
import trainables
from trainables import takes_train_config

@takes_train_config
def fit(config, checkpoint=None, checkpoint_every=0.0):
    epochs = trainables.fit(config, checkpoint=checkpoint, checkpoint_every=checkpoint_every)
    seconds = []
    try:
        while True:
            result = next(epochs)
            now = time.time()
            if not seconds:
                with open(os.environ["STARTUP_PROBE_OUT"], "w") as f:
                    json.dump({"first_epoch_start": now - result.seconds}, f)
            seconds.append(result.seconds)
            with open(os.environ["STARTUP_PROBE_OUT"] + ".epochs", "w") as f:
                json.dump(seconds, f)
            yield result
    except StopIteration as stop:
        return stop.value
"""
SCRIPT = """
from tuner import StudySpec, default_space

STUDY = StudySpec(
    name="startup",
    trainable="startup_probe:fit",
    space={**default_space(), "dataset": "mnist1d", "model": "cnn1d", "epochs": 5, "device": "cpu"},
    sampler="tpe",
    pruner="median",
    n_trials=1,
)
"""


def _env(tree: Path, cache: Path, out: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNER_")}
    return {**env, "PYTHONPATH": str(tree), "TUNER_CACHE_DIR": str(cache), "STARTUP_PROBE_OUT": str(out)}


def _folder(root: Path) -> Path:
    folder = Path(tempfile.mkdtemp(dir=root))
    (folder / "startup_probe.py").write_text(PROBE)
    (folder / "startup.py").write_text(SCRIPT)
    return folder


def _tuner(args: list[str], folder: Path, env: dict[str, str]) -> float:
    """Run `tuner ARGS` in `folder`; returns the time it was started (time.time())."""
    started = time.time()
    done = subprocess.run(
        [sys.executable, "-m", "tuner.cli", *args], cwd=folder, env=env, capture_output=True, text=True, timeout=600
    )
    if done.returncode != 0:
        raise SystemExit(f"tuner {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return started


def first_epoch(tree: Path, root: Path, cache: Path) -> tuple[float, float]:
    """(seconds from the command to the first epoch's start, seconds of the whole command)."""
    folder = _folder(root)
    out = folder / "probe.json"
    started = _tuner(["run", "startup.py", "--n-trials", "1", "--quiet", "--no-report"], folder, _env(tree, cache, out))
    ended = time.time()
    return json.loads(out.read_text())["first_epoch_start"] - started, ended - started


def worker_fixed_cost(tree: Path, root: Path, cache: Path) -> tuple[float, float]:
    """(a worker's seconds besides its trainable's epochs, seconds from its start to its first epoch)."""
    folder = _folder(root)
    out = folder / "probe.json"
    env = _env(tree, cache, out)
    _tuner(["create", "startup.py", "--n-trials", "1"], folder, env)
    started = _tuner(["worker", "--study", "startup", "--quiet"], folder, env)
    wall = time.time() - started
    training = sum(json.loads(Path(f"{out}.epochs").read_text()))
    return wall - training, json.loads(out.read_text())["first_epoch_start"] - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--before", default="c09df01", help="the baseline commit (default c09df01)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tuner-startup-"))
    before = root / "before"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.before],
        check=True,
        capture_output=True,
    )
    cache = root / "cache"
    try:
        subprocess.run(
            [sys.executable, "-c", "from trainables.data import mnist1d_arrays; mnist1d_arrays()"],
            env=_env(REPO, cache, root / "x"),
            check=True,
        )  # the working tree's cache, warmed once
        print(machine(), flush=True)
        arms = {"before": before, "after": REPO}
        rows: dict[str, dict[str, list[float]]] = {a: {"first": [], "run": [], "fixed": [], "wfirst": []} for a in arms}
        for rep in range(args.repeats):
            for arm, tree in arms.items() if rep % 2 == 0 else reversed(list(arms.items())):
                first, run = first_epoch(tree, root, cache)
                fixed, wfirst = worker_fixed_cost(tree, root, cache)
                for key, value in zip(("first", "run", "fixed", "wfirst"), (first, run, fixed, wfirst), strict=True):
                    rows[arm][key].append(value)
                print(
                    f"repeat {rep + 1} {arm:6s}: first epoch at {first:5.2f} s (run {run:5.2f} s); worker fixed "
                    f"cost {fixed:5.2f} s, its first epoch at {wfirst:5.2f} s",
                    flush=True,
                )
        print()
        print("| measure (median s) | before | after | after/before |")
        print("| --- | --- | --- | --- |")
        names = {
            "first": "`tuner run`: command to first epoch",
            "run": "`tuner run`: whole command (5 epochs)",
            "fixed": "`tuner worker`: wall time besides training",
            "wfirst": "`tuner worker`: start to first epoch",
        }
        for key, name in names.items():
            b, a = statistics.median(rows["before"][key]), statistics.median(rows["after"][key])
            print(f"| {name} | {b:.2f} | {a:.2f} | {a / b:.2f} |")
        print(f"\nload average after: {load_average()}")
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)], capture_output=True)


if __name__ == "__main__":
    main()
