"""`--n-trials N` is N more trials for the run that asks, shared by its workers; runs of one study at once add up.

Each run's budget is its own study attribute and each trial names its run, so two runs
started together neither overwrite each other's budget (which made 4 trials of two runs of
3) nor count each other's trials.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
from optuna.trial import TrialState

from tests.tuner.procs import finish, start_tuner, tuner
from tuner.run.adapter import RUN_ATTR
from tuner.run.open import counted_trials
from tuner.storage import open_storage

SCRIPT = """
import time

from tuner import StudySpec, main_for_script
from tuner.space import Float


def steady(params):
    for epoch in range(1, 4):
        time.sleep(0.2)
        yield {"score": params["x"] * epoch}


STUDY = StudySpec(
    name="shared", trainable=steady, space={"x": Float(0.0, 1.0)}, metric="score", pruner="none", n_trials=3
)

if __name__ == "__main__":
    main_for_script(STUDY)
"""


def load(tmp_path: Path) -> optuna.Study:
    storage = open_storage(str(tmp_path / "mlruns" / "optuna.journal"), heartbeat=False)
    return optuna.load_study(study_name="shared", storage=storage)


def test_two_runs_at_once_each_run_their_own_n_trials(tmp_path: Path) -> None:
    script = tmp_path / "shared.py"
    script.write_text(SCRIPT)
    first = tuner(tmp_path, "run", str(script), "--n-trials", "1", "--quiet", "--no-report")  # the study exists
    assert first.returncode == 0, first.stderr

    runs = [
        start_tuner(
            tmp_path, "run", str(script), "--n-trials", "3", "--quiet", "--no-report", log=tmp_path / f"{i}.log"
        )
        for i in range(2)
    ]
    assert [finish(r) for r in runs] == [0, 0], [(tmp_path / f"{i}.log").read_text() for i in range(2)]
    study = load(tmp_path)
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert counted_trials(study.trials) == 1 + 3 + 3  # not 4: neither run overwrote the other's budget
    per_run = Counter(t.user_attrs[RUN_ATTR] for t in study.trials)
    assert sorted(per_run.values()) == [1, 3, 3]

    again = tuner(tmp_path, "run", str(script), "--n-trials", "2", "--quiet", "--no-report")  # one after the other
    assert again.returncode == 0, again.stderr
    assert counted_trials(load(tmp_path).trials) == 9
