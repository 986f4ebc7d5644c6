"""The package as a whole: its public names, and that it stays independent of the tuner."""

from __future__ import annotations

import json
import subprocess
import sys

import trainables


def test_public_api_is_importable_from_the_package() -> None:
    # what the tuner's side of the seam uses
    assert {"TrainConfig", "ConfigError", "fit", "EpochResult", "Diverged", "DatasetNotFound"} <= set(
        trainables.__all__
    )
    for name in trainables.__all__:
        assert getattr(trainables, name) is not None


def test_import_trainables_does_not_import_optuna_mlflow_or_the_tuner() -> None:
    # touch every public name, so that names the package imports lazily are loaded too
    script = (
        "import json, sys, trainables; "
        "[getattr(trainables, name) for name in trainables.__all__]; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120)
    loaded = set(json.loads(done.stdout))
    assert "torch" in loaded  # the check sees what trainables does import
    assert not loaded & {"optuna", "mlflow", "tuner"}
