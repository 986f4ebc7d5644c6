"""Chaos run (issue 17): a study with 2 workers on the journal storage, under faults, then a check that nothing was lost.

While `tuner run STUDY --workers 2` trains, this script SIGKILLs a random worker every few
seconds (the launcher then exits non-zero and the script runs the command again, as a user
would, for the trials still to run), leaves a torn record at the journal's tail once (the
fragment a crash mid-append leaves, written under the journal's lock) and fills the disk
of the store once for a few seconds (a small tmpfs, when this process may mount one). The
faults stop once 3/4 of the trials are counted, so that the last run ends the study as a
user's would. Then it checks, and prints as one JSON line:

- every trial is COMPLETE, PRUNED, or FAIL with a reason;
- Optuna and MLflow agree one to one: one run per trial, closed, in the trial's state;
- no configuration was sampled twice (retries of an attempt share its params by design);
- no reported epoch is missing from its run's metric history.

    python bench/chaos.py --trials 40 --dir /tmp/chaos      # as root, for the full disk
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from _common import machine, quiet

STUDY = """
from tuner import StudySpec, default_space

STUDY = StudySpec(
    name="chaos",
    space={**default_space(), "dataset": "mnist1d", "model": "mlp", "epochs": 4, "train_samples": 500},
    sampler="tpe",
    pruner="median",
    n_trials=40,
)
"""
ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--kill-every", type=float, default=8.0, help="seconds between worker kills (jittered)")
    parser.add_argument("--dir", default="/tmp/tuner-chaos")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    quiet()
    rng = random.Random(args.seed)
    work = Path(args.dir)
    store = work / "store"
    if work.exists():
        subprocess.run(["umount", str(store)], capture_output=True)
        shutil.rmtree(work)
    store.mkdir(parents=True)
    tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(store)], capture_output=True)
    disk = "tmpfs of 96 MB" if tmpfs.returncode == 0 else None
    script = work / "chaos_study.py"
    script.write_text(STUDY)
    journal = store / "optuna.journal"
    flags = ["--storage", str(journal), "--tracking-uri", f"sqlite:///{store / 'mlflow.db'}"]
    flags += ["--checkpoint-dir", str(store / "checkpoints"), "--checkpoint-every", "0", "--quiet", "--no-report"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNER_HEARTBEAT_SECONDS": "1", "TUNER_GRACE_SECONDS": "6"}
    faults: Counter[str] = Counter()
    torn = filled = False
    launches, started = 0, time.monotonic()
    try:
        while (left := args.trials - counted(journal)) > 0:
            launches += 1
            command = [sys.executable, "-m", "tuner.cli", "run", str(script), "--workers", "2", "--debug"]
            with open(work / f"launch-{launches}.log", "w") as log:  # the child keeps its own copy
                launcher = subprocess.Popen([*command, "--n-trials", str(left), *flags], env=env, cwd=work, stderr=log)
            next_kill = time.monotonic() + args.kill_every * rng.uniform(0.5, 1.5)
            while launcher.poll() is None:
                time.sleep(0.2)
                chaos = counted(journal) < args.trials * 3 // 4
                if chaos and time.monotonic() >= next_kill:
                    workers = worker_pids(launcher.pid)
                    if workers:
                        os.kill(rng.choice(workers), signal.SIGKILL)
                        faults["worker killed"] += 1
                    next_kill = time.monotonic() + args.kill_every * rng.uniform(0.5, 1.5)
                if chaos and not torn and counted(journal) >= args.trials // 4:
                    tear_journal_tail(journal)
                    faults["journal tail torn"] += 1
                    torn = True
                if chaos and disk and not filled and counted(journal) >= args.trials // 2:
                    fill_disk(store, seconds=4.0)
                    faults["disk filled"] += 1
                    filled = True
            err = (work / f"launch-{launches}.log").read_text()
            print(f"launch {launches}: exit {launcher.returncode}; {last_lines(err)}", file=sys.stderr)
        result = check(journal, f"sqlite:///{store / 'mlflow.db'}")
        result.update(
            machine=machine(),
            trials_asked=args.trials,
            launches=launches,
            faults=dict(faults),
            disk=disk or "no tmpfs (not root): the disk was not filled",
            minutes=round((time.monotonic() - started) / 60, 1),
        )
        print(json.dumps(result))
    finally:
        if disk:  # the store is kept beside it, to look into
            shutil.copytree(store, work / "store-kept", ignore=shutil.ignore_patterns("filler", "checkpoints"))
            subprocess.run(["umount", "-l", str(store)], capture_output=True)


def counted(journal: Path) -> int:
    """Trials counted against the budget: all but attempts that a retry replaced."""
    study = load(journal) if journal.exists() else None
    if study is None:
        return 0
    from tuner.run.open import counted_trials

    trials = study.trials
    return counted_trials(trials) - sum(t.state.name == "WAITING" for t in trials)


def load(journal: Path) -> Any:
    import optuna

    from tuner.storage import open_storage

    storage = open_storage(str(journal), heartbeat=False)
    if "chaos" not in optuna.get_all_study_names(storage):
        return None
    return optuna.load_study(study_name="chaos", storage=storage)


def worker_pids(launcher: int) -> list[int]:
    """The launcher's `tuner worker` processes (in sessions of their own, so found by parent pid)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == launcher and b"worker" in command:
            pids.append(int(entry.name))
    return pids


def tear_journal_tail(journal: Path) -> None:
    """Append half a record without its newline, under the journal's lock: what a crash mid-append leaves."""
    from optuna.storages.journal._file import get_lock_file

    from tuner.journal import JournalFile

    backend = JournalFile(str(journal))
    last = journal.read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    with get_lock_file(backend._lock), open(journal, "ab") as f:
        f.write(last[: len(last) // 2])


def fill_disk(store: Path, seconds: float) -> None:
    """Fill the store's file system, keep it full for `seconds`, then free it."""
    filler = store / "filler"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:  # ENOSPC: full
            pass
        time.sleep(seconds)
    filler.unlink()


def check(journal: Path, tracking_uri: str) -> dict[str, Any]:
    """The counts of the checks in the docstring."""
    from mlflow import MlflowClient

    study = load(journal)
    trials = study.trials
    states = Counter(t.state.name for t in trials)
    unfinished = [t.number for t in trials if t.state.name not in ("COMPLETE", "PRUNED", "FAIL")]

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name("chaos")
    runs = client.search_runs([experiment.experiment_id], "tags.`tuner.role` = 'trial'", max_results=5000)
    by_number: dict[int, list[Any]] = {}
    for run in runs:
        by_number.setdefault(int(run.data.tags["optuna.trial_number"]), []).append(run)
    status = {"COMPLETE": ("FINISHED",), "PRUNED": ("FINISHED",), "FAIL": ("FAILED", "KILLED")}
    no_run = [t.number for t in trials if t.number not in by_number]
    several_runs = [n for n, r in by_number.items() if len(r) > 1]
    runs_without_trial = sorted(set(by_number) - {t.number for t in trials})
    wrong_state = [
        t.number
        for t in trials
        if t.number in by_number and by_number[t.number][0].info.status not in status.get(t.state.name, ())
    ]
    # a reason in the study, or on the trial's run (a dead worker's trial: Optuna failed it, its run says why)
    fail_without_reason = [
        t.number
        for t in trials
        if t.state.name == "FAIL"
        and not t.user_attrs.get("reason")
        and not any(r.data.tags.get("tuner.reason") for r in by_number.get(t.number, []))
    ]
    missing_epochs = 0
    for t in trials:
        if t.number in by_number:
            steps = {m.step for m in client.get_metric_history(by_number[t.number][0].info.run_id, "val_acc")}
            missing_epochs += len(set(t.intermediate_values) - steps)

    retries = {t.number for t in trials if t.system_attrs.get("failed_trial") is not None}
    configs = Counter(json.dumps(t.params, sort_keys=True) for t in trials if t.number not in retries)
    return {
        "trials": len(trials),
        "states": dict(states),
        "retries": len(retries),
        "unfinished": len(unfinished),
        "fail_without_reason": len(fail_without_reason),
        "runs": len(runs),
        "trials_without_run": len(no_run),
        "trials_with_several_runs": len(several_runs),
        "runs_without_trial": len(runs_without_trial),
        "run_state_disagrees": len(wrong_state),
        "configs_sampled_twice": sum(n - 1 for n in configs.values() if n > 1),
        "reported_epochs": sum(len(t.intermediate_values) for t in trials),
        "epochs_missing_in_mlflow": missing_epochs,
    }


def last_lines(text: str, n: int = 3) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-n:]) if lines else "(no output)"


if __name__ == "__main__":
    main()
