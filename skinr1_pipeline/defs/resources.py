"""Dagster resources: where the pipeline writes (its home), how it tracks runs (MLflow) and which training recipe it
trains with."""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from skinr1_pipeline.storage.run_folders import DEFAULT_KEEP, mark_complete, open_run_folder, prune
from skinr1_pipeline.tracking import mlflow_runs

DATA_VERSION_TAG = "dagster/data_version"  # where Dagster stores a materialization's data version
LIVE_RUN_STATUSES = (
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
)


class PipelineHome(dg.ConfigurableResource):
    """Root folder for demo sources, human-readable exports (Parquet, reports) and the local MLflow store.

    Asset outputs go to run-scoped folders (`run_dir`, sealed by `seal`), so a killed or concurrent run never
    touches the last good materialization; `<asset>/latest` names the newest sealed one.
    """

    home: str
    keep_runs: int = Field(
        default=DEFAULT_KEEP,
        ge=1,
        description="run folders kept per asset (and partition); "
        "the newest complete one and those of live runs are never removed",
    )

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
            context.log.info(
                f"pruned {len(removed)} older run folder(s) under {folder.parent}: {', '.join(p.name for p in removed)}"
            )


def live_run_ids(context: dg.AssetExecutionContext) -> set[str]:
    """Ids of runs queued or in progress on this instance: their folders may be half-written and must stay."""
    records = context.instance.get_run_records(filters=dg.RunsFilter(statuses=list(LIVE_RUN_STATUSES)))
    return {r.dagster_run.run_id for r in records}


class MlflowTracking(dg.ConfigurableResource):
    """MLflow: one parent run per Dagster run, a nested run per asset materialisation, linked into a lineage.

    Our own resource rather than dagster-mlflow's legacy `@resource`: it is typed config, works with asset
    selections and partial materialisations, and tags runs with asset key, partition and code version.

    Lineage, so one logical pipeline is findable although its stages ran in several Dagster runs (each its own
    parent run): every run downstream of `unified_samples` carries `skinr1.lineage` = the digest of the unified
    samples it descends from (also that asset's Dagster data version); search `tags.skinr1.lineage = '<digest>'`
    (or `LIKE '%<digest>%'`: a run whose inputs descend from different samples lists each). Parent runs take the
    lineage of their first child. Each run also tags, per input it consumed, `skinr1.upstream.<input>` = the MLflow
    run that produced it and `skinr1.data_version.<input>` = Dagster's data version of it (`<input>` is
    `<asset>[.<partition>]`). The producing run is found from the input's latest materialization, whose metadata
    carries `mlflow_run_id` (set here); values that name their training run (`mlflow_run_id` in the checkpoint
    dicts) are passed as `upstream` and win, so an evaluation names exactly the run that trained its adapter.
    """

    tracking_uri: str
    experiment_name: str = "skinr1-pipeline"
    enabled: bool = True

    @contextmanager
    def asset_run(
        self,
        context: dg.AssetExecutionContext,
        params: Mapping[str, Any] | None = None,
        *,
        lineage: str = "",
        upstream: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> Iterator[Any]:
        """A nested MLflow run for this materialisation, active inside the block; yields None when disabled.

        `lineage`: this asset's own data version when it defines one (unified samples), else inherited from the
        inputs' runs. `upstream`: input label -> MLflow run id, over what the inputs' materializations say.
        """
        if not self.enabled:
            yield None
            return
        parent = mlflow_runs.ensure_parent_run(
            self.tracking_uri,
            self.experiment_name,
            context.run.run_id,
            run_name=f"{context.job_name} {context.run.run_id[:8]}",
            tags={"dagster.job": context.job_name},
        )
        key = context.asset_key.to_user_string()
        partition = context.partition_key if context.has_partition_key else ""
        consumed = consumed_inputs(context)
        runs = {label: run_id for label, (run_id, _) in consumed.items() if run_id}
        runs.update({label: run_id for label, run_id in (upstream or {}).items() if run_id})
        lineage = lineage or mlflow_runs.inherited_lineage(self.tracking_uri, runs.values())
        run_tags = {
            "dagster.run_id": context.run.run_id,
            "dagster.asset_key": key,
            "dagster.partition": partition,
            "dagster.code_version": str(context.assets_def.code_versions_by_key.get(context.asset_key) or ""),
            **mlflow_runs.lineage_tags(lineage, runs, {label: dv for label, (_, dv) in consumed.items()}),
            **dict(tags or {}),
        }
        status = "FAILED"
        try:
            with mlflow_runs.nested_run(
                self.tracking_uri,
                self.experiment_name,
                parent,
                run_name=f"{key}[{partition}]" if partition else key,
                tags=run_tags,
                params=params,
            ) as run:
                mlflow_runs.tag_parent_lineage(self.tracking_uri, parent, lineage)
                yield run
            status = "FINISHED"
            # Downstream assets find this run from the materialization (see the class docstring).
            context.add_output_metadata(
                {"mlflow_run_id": run.info.run_id, **({"skinr1_lineage": lineage} if lineage else {})},
                output_name=context.assets_def.get_output_name_for_asset_key(context.asset_key),
            )
        finally:
            # The parent's status follows its latest child, so the MLflow UI never shows it running forever.
            mlflow_runs.finish_parent_run(self.tracking_uri, parent, status)


def consumed_inputs(context: dg.AssetExecutionContext) -> dict[str, tuple[str, str]]:
    """Input label -> (MLflow run id, Dagster data version) of the materialization of each input this step reads.

    The latest materialization is the one Dagster loads (and bases data versions on); a partitioned input read by
    an unpartitioned asset counts each of its partitions. Inputs never materialized here (source assets) are left
    out.
    """
    graph = context.job_def.asset_layer.asset_graph
    if not graph.has(context.asset_key):
        return {}
    node = graph.get(context.asset_key)
    out: dict[str, tuple[str, str]] = {}
    for parent_key in sorted(node.parent_keys, key=lambda k: k.to_user_string()):
        if not graph.has(parent_key):
            continue
        partitions_def = graph.get(parent_key).partitions_def
        if partitions_def is None:
            partitions: list[str | None] = [None]
        elif partitions_def == node.partitions_def and context.has_partition_key:
            partitions = [context.partition_key]
        else:
            partitions = list(partitions_def.get_partition_keys(dynamic_partitions_store=context.instance))
        for partition in partitions:
            records = context.instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=parent_key, asset_partitions=[partition] if partition else None),
                limit=1,
            ).records
            if not records or records[0].asset_materialization is None:
                continue
            materialization = records[0].asset_materialization
            run_id = materialization.metadata.get("mlflow_run_id")
            out[mlflow_runs.input_label(parent_key.to_user_string(), partition)] = (
                str(run_id.value) if run_id is not None else "",
                materialization.tags.get(DATA_VERSION_TAG, "") if materialization.tags else "",
            )
    return out


class TrainingRecipe(dg.ConfigurableResource):
    """The recipe the trajectories and training assets follow, chosen per profile in definitions.py (the settings'
    `training_recipe:`; `demo`: the tiny model's short CPU runs; `paper`: the paper's recipe; or a folder of a lab's
    own `sft.yaml`/`grpo.yaml`/`recipe.yaml`).

    Why a resource: the assets ask it for run configs and choices instead of branching on the profile, and the
    Dagster UI shows which recipe a run used. A user's asset-config `overrides` are laid over the recipe's fields.
    """

    recipe: str = Field(default="paper", description="demo | paper | a folder holding sft.yaml and grpo.yaml")

    def choices(self):
        """The recipe's `recipe.yaml` (`training.recipes.RecipeChoices`): rationale style, MCQ construction, answer
        form, system prompt, option-drill rows, report caveat."""
        from skinr1_pipeline.training.recipes import recipe_choices

        return recipe_choices(self.recipe)

    def sft_config(self, **values: Any):
        from skinr1_pipeline.training.recipes import build_run_config
        from skinr1_pipeline.training.sft import SFTRunConfig

        return build_run_config(SFTRunConfig, self.recipe, "sft", **values)

    def grpo_config(self, **values: Any):
        from skinr1_pipeline.training.grpo import GRPORunConfig
        from skinr1_pipeline.training.recipes import build_run_config

        return build_run_config(GRPORunConfig, self.recipe, "grpo", **values)
