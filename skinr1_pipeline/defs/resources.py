"""Dagster resources: where the pipeline writes (its home) and how it tracks runs (MLflow)."""


from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import dagster as dg

from skinr1_pipeline.tracking import mlflow_runs


class PipelineHome(dg.ConfigurableResource):
    """Root folder for demo sources, human-readable exports (Parquet, reports) and the local MLflow store."""

    home: str

    def path(self, *parts: str, mkdir: bool = True) -> Path:
        target = Path(self.home, *parts)
        if mkdir:
            target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def dir(self, *parts: str) -> Path:
        target = Path(self.home, *parts)
        target.mkdir(parents=True, exist_ok=True)
        return target


class MlflowTracking(dg.ConfigurableResource):
    """MLflow: one parent run per Dagster run, a nested run per asset materialisation.

    Our own resource rather than dagster-mlflow's legacy `@resource`: it is typed config, works with asset
    selections and partial materialisations, and tags runs with asset key, partition and code version.
    """

    tracking_uri: str
    experiment_name: str = "skinr1-pipeline"
    enabled: bool = True

    @contextmanager
    def asset_run(
        self, context: dg.AssetExecutionContext, params: Mapping[str, Any] | None = None
    ) -> Iterator[Any]:
        if not self.enabled:
            yield None
            return
        parent = mlflow_runs.ensure_parent_run(
            self.tracking_uri,
            self.experiment_name,
            context.run_id,
            run_name=f"{context.job_name} {context.run_id[:8]}",
            tags={"dagster.job": context.job_name},
        )
        key = context.asset_key.to_user_string()
        partition = context.partition_key if context.has_partition_key else ""
        tags = {
            "dagster.run_id": context.run_id,
            "dagster.asset_key": key,
            "dagster.partition": partition,
            "dagster.code_version": str(context.assets_def.code_versions_by_key.get(context.asset_key) or ""),
        }
        status = "FAILED"
        try:
            with mlflow_runs.nested_run(
                self.tracking_uri,
                self.experiment_name,
                parent,
                run_name=f"{key}[{partition}]" if partition else key,
                tags=tags,
                params=params,
            ) as run:
                yield run
            status = "FINISHED"
        finally:
            # The parent's status follows its latest child, so the MLflow UI never shows it running forever.
            mlflow_runs.finish_parent_run(self.tracking_uri, parent, status)
