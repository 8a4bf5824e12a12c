"""Dagster resources: where the pipeline writes (its home) and how it tracks runs (MLflow)."""


from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import dagster as dg
from pydantic import Field

from skinr1_pipeline.storage.run_folders import DEFAULT_KEEP, mark_complete, open_run_folder, prune
from skinr1_pipeline.tracking import mlflow_runs

LIVE_RUN_STATUSES = (dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
                     dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


class PipelineHome(dg.ConfigurableResource):
    """Root folder for demo sources, human-readable exports (Parquet, reports) and the local MLflow store.

    Asset outputs go to run-scoped folders (`run_dir`, sealed by `seal`), so a killed or concurrent run never
    touches the last good materialization; `<asset>/latest` names the newest sealed one.
    """

    home: str
    keep_runs: int = Field(default=DEFAULT_KEEP, ge=1, description="run folders kept per asset (and partition); "
                           "the newest complete one and those of live runs are never removed")

    def path(self, *parts: str, mkdir: bool = True) -> Path:
        target = Path(self.home, *parts)
        if mkdir:
            target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def dir(self, *parts: str) -> Path:
        target = Path(self.home, *parts)
        target.mkdir(parents=True, exist_ok=True)
        return target

    def run_parent(self, context: dg.AssetExecutionContext, *parts: str) -> Path:
        """`<home>/<parts>[/<partition>]`: the folder holding this asset's (partition's) run folders."""
        partition = [context.partition_key] if context.has_partition_key else []
        return Path(self.home, *parts, *partition)

    def run_dir(self, context: dg.AssetExecutionContext, *parts: str) -> Path:
        """This run's own folder for the asset: `<home>/<parts>[/<partition>]/<run id>/`."""
        return open_run_folder(self.run_parent(context, *parts), context.run.run_id)

    def seal(self, context: dg.AssetExecutionContext, folder: Path) -> None:
        """Mark `folder` complete, point `latest` at it and prune older run folders (never a live run's)."""
        mark_complete(folder, context.run.run_id)
        removed = prune(folder.parent, keep=self.keep_runs, protect={folder.name, *live_run_ids(context)})
        if removed:
            context.log.info(f"pruned {len(removed)} older run folder(s) under {folder.parent}: "
                             f"{', '.join(p.name for p in removed)}")


def live_run_ids(context: dg.AssetExecutionContext) -> set[str]:
    """Ids of runs queued or in progress on this instance: their folders may be half-written and must stay."""
    records = context.instance.get_run_records(filters=dg.RunsFilter(statuses=list(LIVE_RUN_STATUSES)))
    return {r.dagster_run.run_id for r in records}


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
