"""Tidy tables read back from a real journal storage and a real MLflow store."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from tests.tuner.report.conftest import (
    BASE_ACC,
    DEFAULT_LR,
    DEFAULT_PENALTY,
    EPOCHS,
    SEED_OFFSETS,
    TRIALS_PER_OPTIMIZER,
    Store,
)
from tuner.errors import UserError
from tuner.report.extract import Tables, extract
from tuner.report.load import load_studies, resolve_names
from tuner.storage import open_storage


@pytest.fixture(scope="module")
def tables(comparison: Store) -> Tables:
    return extract(load_studies(["cmp"], comparison.storage), comparison.tracking_uri)


def test_a_comparison_name_expands_to_its_studies_tuning_ones_first(comparison: Store) -> None:
    names = [s.study_name for s in load_studies(["cmp"], comparison.storage)]
    assert names == ["cmp.adam", "cmp.momentum", "cmp.sgd", "cmp.seeds"]
    assert resolve_names(["cmp.adam", "cmp"], ["cmp.adam", "cmp.sgd", "cmpx"], "s") == ["cmp.adam", "cmp.sgd"]


def test_unknown_names_are_one_user_error_naming_them(comparison: Store) -> None:
    with pytest.raises(UserError, match=r"no study named 'nope', 'cm' \(nor any named NAME\.<x>\)"):
        load_studies(["nope", "cmp.adam", "cm"], comparison.storage)


def test_a_missing_storage_file_is_a_user_error_and_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        load_studies(["x"], str(tmp_path / "none.journal"))
    assert not (tmp_path / "none.journal").exists()


def test_one_row_per_trial_with_what_it_trained(tables: Tables) -> None:
    trials = tables.trials
    assert len(trials) == 3 * TRIALS_PER_OPTIMIZER + 3 * 2 * len(SEED_OFFSETS)
    tuning = trials[trials["kind"] == "optimizer_tuning"]
    assert set(tuning["optimizer"]) == set(BASE_ACC)  # from the study's user attribute
    pruned = tuning[tuning["state"] == "PRUNED"]
    assert len(pruned) > 0, "the scripted data prunes trials with far-off learning rates"
    assert (pruned["epochs_run"] == 2).all() and pruned["value"].isna().all()
    assert (pruned["reason"] == "pruned at epoch 2").all() and (pruned["pruned_at_epoch"] == 2).all()
    complete = tuning[tuning["state"] == "COMPLETE"]
    assert (complete["epochs_run"] == EPOCHS).all() and (complete["value"] == complete["last_value"]).all()


def test_seed_runs_carry_their_group_and_test_metric_from_mlflow(tables: Tables) -> None:
    seeds = tables.trials[tables.trials["kind"] == "seeds"].set_index(["optimizer", "group", "seed"])
    for optimizer, base in BASE_ACC.items():
        for seed, offset in enumerate(SEED_OFFSETS):
            assert seeds.loc[(optimizer, "tuned", seed), "test_acc"] == pytest.approx(base + offset)
            assert seeds.loc[(optimizer, "default", seed), "test_acc"] == pytest.approx(base - DEFAULT_PENALTY + offset)
            # the seed study samples nothing: its learning rate is read from the MLflow run's params
            assert seeds.loc[(optimizer, "default", seed), "lr"] == pytest.approx(DEFAULT_LR[optimizer])


def test_one_row_per_trial_and_epoch_with_mlflow_metrics_beside_the_objective(tables: Tables) -> None:
    epochs = tables.epochs
    assert len(epochs) == tables.trials["epochs_run"].sum()
    assert epochs["value"].to_numpy() == pytest.approx(epochs["val_acc"].to_numpy())
    first = tables.trials.iloc[0]
    lrs = epochs[(epochs["study"] == first["study"]) & (epochs["number"] == first["number"])]["lr"]
    assert list(lrs) == pytest.approx([first["lr"] * 0.5**e for e in range(len(lrs))])  # per-epoch lr from MLflow


def test_importances_are_skipped_with_a_note_below_five_complete_trials(tables: Tables) -> None:
    complete = tables.studies.set_index("study")["n_complete"]
    for study, n in complete.items():
        skipped = any(note.startswith(f"{study}: parameter importances skipped") for note in tables.notes)
        has_rows = (tables.importances["study"] == study).any()
        if n < 5 or study == "cmp.seeds":
            assert skipped and not has_rows
        else:
            assert has_rows and not skipped


def test_studies_without_mlflow_runs_touch_no_mlflow_store(tmp_path: Path) -> None:
    storage = str(tmp_path / "plain.journal")
    study = optuna.create_study(study_name="plain", storage=open_storage(storage, heartbeat=False))
    for x in range(6):
        trial = study.ask()
        trial.report(trial.suggest_float("lr", 1e-3, 1.0, log=True), 1)
        study.tell(trial, float(x))
    db = tmp_path / "mlflow.db"
    tables = extract(load_studies(["plain"], storage), f"sqlite:///{db}")
    assert not db.exists()
    assert len(tables.trials) == 6 and tables.trials["test_acc"].isna().all()
    assert set(tables.importances["param"]) == {"lr"}
    assert tables.studies.loc[0, "direction"] == "minimize" and tables.metric == "val_acc"


def test_a_missing_mlflow_store_is_a_note_not_a_crash(comparison: Store, tmp_path: Path) -> None:
    tables = extract(load_studies(["cmp.adam"], comparison.storage), f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert any("MLflow store" in n and "not found" in n for n in tables.notes)
    assert tables.trials["test_acc"].isna().all() and len(tables.trials) == TRIALS_PER_OPTIMIZER
