"""MLflow run layout: one parent run per orchestrator run, one nested run per asset (or training entry point).

Plain functions over `mlflow`, no Dagster import, so a training script started by Dagster Pipes or by
`accelerate launch` attaches to the same parent by passing the same `orchestrator_run_id`. Steps of one run
may execute in separate processes; a file lock makes "find or create the parent" safe between them.
"""

from __future__ import annotations

import fcntl
import warnings
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import pandas as pd

PARENT_TAG = "skinr1.role"
RUN_ID_TAG = "dagster.run_id"


def _mlflow():
    import mlflow  # imported lazily: it costs seconds and only tracked steps need it

    return mlflow


def default_artifact_location(tracking_uri: str) -> str | None:
    """For a local sqlite store, keep artifacts beside the database instead of MLflow's ./mlruns default."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None


def ensure_experiment(tracking_uri: str, experiment: str) -> str:
    mlflow = _mlflow()
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(experiment, artifact_location=default_artifact_location(tracking_uri))
    except Exception:  # another process created it first
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


@contextmanager
def _lock(tracking_uri: str) -> Iterator[None]:
    if tracking_uri.startswith("sqlite:///"):
        lock_path = Path(tracking_uri.removeprefix("sqlite:///")).parent / ".parent-run.lock"
    else:
        lock_path = Path.home() / ".skinr1-mlflow-parent.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_parent_run(
    tracking_uri: str, experiment: str, orchestrator_run_id: str, run_name: str, tags: Mapping[str, str] | None = None
) -> str:
    """The MLflow run id standing for one orchestrator run, created on first use."""
    mlflow = _mlflow()
    experiment_id = ensure_experiment(tracking_uri, experiment)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    query = f"tags.`{RUN_ID_TAG}` = '{orchestrator_run_id}' and tags.`{PARENT_TAG}` = 'parent'"
    with _lock(tracking_uri):
        existing = client.search_runs([experiment_id], filter_string=query, max_results=1)
        if existing:
            return existing[0].info.run_id
        run = client.create_run(
            experiment_id,
            run_name=run_name,
            tags={PARENT_TAG: "parent", RUN_ID_TAG: orchestrator_run_id, **dict(tags or {})},
        )
        return run.info.run_id


def finish_parent_run(tracking_uri: str, parent_run_id: str, status: str = "FINISHED") -> None:
    _mlflow().MlflowClient(tracking_uri=tracking_uri).set_terminated(parent_run_id, status=status)


@contextmanager
def nested_run(
    tracking_uri: str,
    experiment: str,
    parent_run_id: str,
    run_name: str,
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """Start a child run under `parent_run_id`, made active for `mlflow.log_*` calls inside the block."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, experiment)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        nested=True,
        parent_run_id=parent_run_id,
        tags={PARENT_TAG: "child", "mlflow.parentRunId": parent_run_id, **dict(tags or {})},
    ) as run:
        if params:
            mlflow.log_params({k: _param(v) for k, v in params.items()})
        yield run


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text[:6000]


def log_dataframe_input(frame: pd.DataFrame, name: str, source: str, context: str, tags: Mapping[str, str] | None = None) -> str:
    """Log a table as an MLflow dataset input of the active run; returns its digest.

    List- and dict-valued columns (taxonomy paths) are rendered as strings first, because MLflow's digest
    hashes cell values.
    """
    mlflow = _mlflow()
    flat = frame.copy()
    for column in flat.columns:
        if flat[column].map(lambda v: isinstance(v, (list, tuple, dict))).any():
            flat[column] = flat[column].map(lambda v: ">".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v))
    with warnings.catch_warnings():
        # A local path matches two equivalent source classes, and the integer-column schema hint concerns
        # model serving; neither says anything about this dataset.
        warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted", category=UserWarning)
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        dataset = mlflow.data.from_pandas(flat, source=source, name=name)
        mlflow.log_input(dataset, context=context, tags=dict(tags or {}))
    return dataset.digest


def run_url(tracking_uri: str, experiment_id: str, run_id: str, ui_base: str = "http://127.0.0.1:5000") -> str:
    """Where a person finds the run in `mlflow ui --backend-store-uri <tracking_uri>`."""
    return f"{ui_base}/#/experiments/{experiment_id}/runs/{run_id}"
