"""Tune your own model: a user package (`spirals/`, beside this script) with its own data, model and loop.

`tuner run studies/own_model/study.py` from any directory: the script's folder is put first on
sys.path, as `python studies/own_model/study.py` does, so `spirals` imports here and in every
worker process (`--workers 2`). The metric is the package's own macro-F1 on validation.
"""

from tuner import Categorical, Float, Int, StudySpec, main_for_script

STUDY = StudySpec(
    name="own-model",
    trainable="spirals.train:train",
    space={
        "lr": Float(1e-3, 3e-1, log=True),
        "hidden": Int(8, 128, log=True),
        "layers": Int(1, 3),
        "batch_size": Categorical([32, 64, 128]),
        "weight_decay": Float(1e-6, 1e-2, log=True),
        "epochs": 12,
    },
    metric="val_f1",
    direction="maximize",
    n_trials=20,
)

if __name__ == "__main__":
    main_for_script(STUDY)
