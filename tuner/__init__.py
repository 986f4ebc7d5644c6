"""tuner: Optuna studies over PyTorch trainables, tracked in MLflow.

The run path, in the order a trial passes through it (each module imports only those above it):

    tuner/study.py, space.py, group.py   data: what a study is, its search space, a group of studies
    tuner/locations.py                   data: storage URLs and tracking URIs, and their checks
    tuner/cli.py, scripts.py             the shell: flags -> RunOptions, a study script -> its STUDY
    tuner/run/api.py                     run_study / create / join: the top stage, also for Python callers
    tuner/run/group.py                   a study group: each member study in turn, then the re-runs
    tuner/run/execute.py                 execute_study: the plan, then trials here or in workers (join)
    tuner/run/plan.py                    the resolved study: spec + options, trainable resolved (one place)
    tuner/run/launch.py                  N local `tuner worker` processes on one study
    tuner/run/open.py                    the Optuna study (storage.py, journal.py) and its MLflow parent run
    tuner/run/adapter.py                 one trial: trainable epochs -> reports, pruning, records, states
    trainables/                          the trainable itself: PyTorch only
    tuner/tracking.py, record_writer.py  the trial's MLflow run, written by a helper process
    tuner/run/finish.py                  the report (tuner/report/) and where to browse

Errors every layer may raise are in `tuner.errors`. Names are imported on first use, so that
`tuner --help` does not wait for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Budget": "tuner.group",
    "Rerun": "tuner.group",
    "StudyGroup": "tuner.group",
    "Categorical": "tuner.space",
    "Float": "tuner.space",
    "Int": "tuner.space",
    "default_space": "tuner.space",
    "RunOptions": "tuner.study",
    "run_study": "tuner.run.api",
    "load_best_model": "tuner.results",
    "StudySpec": "tuner.study",
    "UserError": "tuner.errors",
    "main_for_script": "tuner.cli",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'tuner' has no attribute {name!r}")
