"""Registering a study's kept model in the MLflow Model Registry: `tuner best STUDY --register NAME`.

The model registered is the one the run logged to the trial's MLflow run as the MLflow model
`model` (`tuner.run.models.log_kept_models`); when that logging failed, the kept file is
logged first. Every check that can fail (the name, the tracking store, the study, the trial,
its run, loading the model) runs before anything is written, so bad input creates nothing.
Registering under an existing name adds a version, as MLflow does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from tuner.errors import UserError, first_line
from tuner.locations import check_tracking_uri, redact
from tuner.tracking import RUN_ID_ATTR

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # set_tracking_uri writes it, for subprocesses
LOGGED_NAME = "model"  # the name `tuner.run.models.log_model` gives the MLflow model it logs
TAG_STUDY, TAG_TRIAL, TAG_METRIC, TAG_VALUE = "tuner.study", "tuner.trial", "tuner.metric", "tuner.metric_value"


@dataclass(frozen=True)
class Registered:
    """A model version just created in the registry."""

    name: str
    version: str
    trial: int
    metric: str
    value: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def register_best(
    study: Any,
    tracking_uri: str,
    name: str,
    best_model: Callable[[Any, int | None], tuple[Path, int]],
    trial: int | None = None,
) -> Registered:
    """Register the kept model of the study's best trial (or of `trial`) as a new version of model `name`.

    `best_model(study, trial)`: the kept model's file and trial number (`tuner.results.best_model`)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    check_model_name(name)
    check_tracking_store(tracking_uri)
    path, number = best_model(study, trial)  # first: a study that kept no model says so
    if trial is None and len(study.directions) > 1:
        front = ", ".join(str(t.number) for t in sorted(study.best_trials, key=lambda t: t.number)) or "none yet"
        raise UserError(
            f"study {study.study_name!r} has several objectives, so which trial's model to register is ambiguous: "
            f"choose one of its Pareto front with --trial N (front: {front})"
        )
    frozen = study.get_trials(deepcopy=False)[number]  # a trial's number is its index in its study
    run_id = frozen.user_attrs.get(RUN_ID_ATTR)
    if run_id is None:
        raise UserError(
            f"trial {number} of study {study.study_name!r} has no MLflow run recorded, so no model to register"
        )
    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise UserError(
            f"the MLflow run of trial {number} of study {study.study_name!r} is not in {redact(tracking_uri)}; "
            "give the --tracking-uri the study ran with"
        ) from None
    metric, value = _objectives(study), ",".join(str(v) for v in frozen.values)
    tags = {TAG_STUDY: study.study_name, TAG_TRIAL: str(number), TAG_METRIC: metric, TAG_VALUE: value}
    with _global_tracking_uri(tracking_uri):
        model_id = _logged_model(client, run, path, tracking_uri, _recorded(study, "import_paths") or [])
        version = _create_version(client, name, model_id, run_id, tags)
    return Registered(name, str(version.version), number, metric, value)


def check_model_name(name: str) -> None:
    """MLflow's own check of a registered model's name, as one line, before anything is written."""
    from mlflow.exceptions import MlflowException
    from mlflow.utils.validation import _validate_model_name

    try:
        _validate_model_name(name)
    except MlflowException as exc:
        raise UserError(f"--register {name!r}: MLflow rejects this model name: {first_line(exc)}") from None


def check_tracking_store(tracking_uri: str) -> None:
    """A tracking URI that holds the study's runs: a local SQLite file must exist (MLflow would create an empty one)."""
    check_tracking_uri(tracking_uri)
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise UserError(
            f"--tracking-uri {tracking_uri}: no MLflow store there; give the --tracking-uri the study ran with"
        )


def _recorded(study: Any, key: str) -> Any:
    """A field of the spec the run recorded in the study; None when absent."""
    from tuner.run.open import SPEC_ATTR

    record = study.user_attrs.get(SPEC_ATTR)
    return record.get(key) if isinstance(record, dict) else None


def _objectives(study: Any) -> str:
    """The study's metric names, comma-separated, as its spec recorded them (Optuna's names otherwise)."""
    metric = _recorded(study, "metric") or study.metric_names
    if metric is None:
        return ",".join("value" for _ in study.directions)
    return metric if isinstance(metric, str) else ",".join(metric)


@contextlib.contextmanager
def _global_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """MLflow's SQL registry store looks a `models:/<id>` source up through the process-global tracking URI.

    Restored as it was, unset included, so that a Python caller's process is left as it found it.
    """
    import mlflow
    from mlflow.tracking._tracking_service import utils

    previous, environ = utils._tracking_uri, os.environ.get(TRACKING_URI_ENV)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(cast(str, previous))  # None unsets it (MLflow's own `_use_tracking_uri` does so)
        if environ is not None:
            os.environ[TRACKING_URI_ENV] = environ


def _logged_model(client: Any, run: Any, path: Path, tracking_uri: str, import_paths: list[str]) -> str:
    """The id of the run's logged MLflow model `model`; logged now from `path` when the run has none.

    Loading the file to log it unpickles the trainable's model class: it imports from the
    folders the study recorded (a study script's), as `tuner worker` does.
    """
    found = _ready_models(client, run)
    if found:
        return str(max(found, key=lambda m: m.creation_timestamp).model_id)
    from tuner.run.models import log_model
    from tuner.run.plan import add_import_paths

    add_import_paths(tuple(import_paths))
    before = {m.model_id for m in _models_of(client, run)}
    try:
        log_model(path, run.info.run_id, tracking_uri)
    except Exception as exc:
        for model in _models_of(client, run):  # a model left pending by this attempt: nothing half created
            if model.model_id not in before:
                client.delete_logged_model(model.model_id)
        if isinstance(exc, ImportError | AttributeError):  # unpickling needs the model's class
            raise UserError(
                f"the kept model {path} was never logged to MLflow and cannot be loaded to log it now "
                f"({first_line(exc)}); make its module importable (PYTHONPATH) and run again"
            ) from None
        raise
    found = _ready_models(client, run)
    if not found:
        raise UserError(f"the kept model {path} could not be logged to MLflow run {run.info.run_id}")
    return str(found[0].model_id)


def _models_of(client: Any, run: Any) -> list[Any]:
    return list(
        client.search_logged_models(
            experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run.info.run_id}'"
        )
    )


def _ready_models(client: Any, run: Any) -> list[Any]:
    from mlflow.entities import LoggedModelStatus

    return [m for m in _models_of(client, run) if m.name == LOGGED_NAME and m.status == LoggedModelStatus.READY]


def _create_version(client: Any, name: str, model_id: str, run_id: str, tags: dict[str, str]) -> Any:
    """A new version of registered model `name` (created when new, and removed again if its version fails)."""
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import ALREADY_EXISTS, RESOURCE_ALREADY_EXISTS, ErrorCode

    created = False
    try:
        client.create_registered_model(name)
        created = True
    except MlflowException as exc:
        if exc.error_code not in (ErrorCode.Name(RESOURCE_ALREADY_EXISTS), ErrorCode.Name(ALREADY_EXISTS)):
            raise UserError(f"--register {name!r}: {first_line(exc)}") from None
    try:
        version = client.create_model_version(
            name, source=f"models:/{model_id}", run_id=run_id, tags=tags, model_id=model_id
        )
    except MlflowException as exc:
        if created:
            client.delete_registered_model(name)
        raise UserError(f"--register {name!r}: {first_line(exc)}") from None
    _link_logged_model(client, model_id, name, str(version.version))
    return version


def _link_logged_model(client: Any, model_id: str, name: str, version: str) -> None:
    """Tag the logged model with its registered versions, as `mlflow.register_model` does (the UI shows them)."""
    from mlflow.utils.mlflow_tags import MLFLOW_MODEL_VERSIONS

    try:
        existing = client.get_logged_model(model_id).tags.get(MLFLOW_MODEL_VERSIONS)
        versions = [*(json.loads(existing) if existing else []), {"name": name, "version": version}]
        client.set_logged_model_tags(model_id, {MLFLOW_MODEL_VERSIONS: json.dumps(versions)})
    except Exception as exc:  # the version is registered; only the UI's link back to it is missing
        logging.getLogger(__name__).warning("tuner: could not tag logged model %s with its version: %s", model_id, exc)
