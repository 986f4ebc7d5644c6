"""What the report reads from MLflow, in a few batched calls.

Final metrics (test metrics among them) and config params come from one paged
`search_runs` over the studies' experiments; per-epoch histories from one bulk query per
metric key over many runs, never one call per trial and metric.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tuner.locations import redact

FINAL_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc")
HISTORY_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "samples_per_second")
CONFIG_FIELDS = (
    "optimizer",
    "lr_schedule",
    "lr",
    "batch_size",
    "weight_decay",
    "l1",
    "dropout",
    "momentum",
    "epochs",
    "seed",
)
SQL_CHUNK = 500  # run ids per query: below SQLite's 999 bound variables
REST_CHUNK = 100  # the server's limit for get-history-bulk
REST_MAX_RESULTS = 25000


@dataclass
class RunRecords:
    """MLflow's side of the trials, keyed by run id."""

    finals: dict[str, dict[str, float]] = field(default_factory=dict)  # run id -> last value of each metric
    configs: dict[str, dict[str, str]] = field(default_factory=dict)  # run id -> config params
    parent_params: dict[str, dict[str, str]] = field(default_factory=dict)  # parent run id -> study settings
    histories: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=["run_id", "key", "epoch", "value"]))
    notes: list[str] = field(default_factory=list)


def read_runs(tracking_uri: str | None, parents: dict[str, str], run_ids: list[str]) -> RunRecords:
    """The runs of the trials in `run_ids`, found through the studies' parent runs."""
    records = RunRecords()
    if not tracking_uri or not (parents or run_ids):
        return records  # studies made without MLflow: nothing to read, and no store is created
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        records.notes.append(
            f"MLflow store {redact(tracking_uri)} not found: test metrics and per-epoch metrics other than "
            "the objective are missing; give --tracking-uri of the store the studies used"
        )
        return records
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from tuner.record_writer import quiet_mlflow

    quiet_mlflow()
    client = MlflowClient(tracking_uri)
    experiments: set[str] = set()
    for study, parent in parents.items():
        try:
            run = client.get_run(parent)
        except MlflowException:
            records.notes.append(f"{study}: its MLflow parent run {parent} is not in {redact(tracking_uri)}")
            continue
        experiments.add(run.info.experiment_id)
        records.parent_params[parent] = dict(run.data.params)
    wanted = set(run_ids)
    for run in _search_trial_runs(client, sorted(experiments)):
        if run.info.run_id in wanted:
            metrics = run.data.metrics
            records.finals[run.info.run_id] = {k: float(metrics[k]) for k in FINAL_KEYS if k in metrics}
            records.configs[run.info.run_id] = {k: v for k, v in run.data.params.items() if k in CONFIG_FIELDS}
    found = sorted(records.finals)
    if found:
        try:
            records.histories = _histories(client, found)
        except (MlflowException, OSError) as exc:
            records.notes.append(f"per-epoch MLflow metrics not read: {redact(' '.join(str(exc).split()))[:200]}")
    return records


def _search_trial_runs(client: Any, experiment_ids: list[str]) -> list[Any]:
    if not experiment_ids:
        return []
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids, filter_string="tags.`tuner.role` = 'trial'", max_results=50000, page_token=token
        )
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _histories(client: Any, run_ids: list[str]) -> pd.DataFrame:
    """Every per-epoch value of HISTORY_KEYS for `run_ids`: one query per key and chunk of runs."""
    store = client._tracking_client.store  # the bulk reads are not on MlflowClient's public surface
    rows: list[tuple[str, str, int, float]] = []
    if hasattr(store, "get_metric_history_bulk"):  # SQL stores
        for key in HISTORY_KEYS:
            for i in range(0, len(run_ids), SQL_CHUNK):
                for m in store.get_metric_history_bulk(run_ids[i : i + SQL_CHUNK], key, max_results=10**8):
                    rows.append((m.run_id, key, int(m.step), float(m.value)))
    elif hasattr(store, "get_host_creds"):  # a tracking server: the bulk endpoint its UI uses
        from mlflow.utils.rest_utils import http_request_safe

        for key in HISTORY_KEYS:
            for i in range(0, len(run_ids), REST_CHUNK):
                response = http_request_safe(
                    store.get_host_creds(),
                    "/ajax-api/2.0/mlflow/metrics/get-history-bulk",
                    "GET",
                    params={"run_id": run_ids[i : i + REST_CHUNK], "metric_key": key, "max_results": REST_MAX_RESULTS},
                )
                for m in response.json().get("metrics", []):
                    rows.append((m["run_id"], key, int(m.get("step", 0)), float(m["value"])))
    else:
        logging.getLogger(__name__).info("tracking store %s has no bulk metric reads", type(store).__name__)
    return pd.DataFrame(rows, columns=["run_id", "key", "epoch", "value"])
