"""Dagster code location: assets, checks, resources, sensors and jobs, chosen by the active profile.

Each `defs/` stage module returns its own `dg.Definitions` (assets, checks, schedules); they are merged here, where
the profile's automation conditions, sensors, jobs and resources are added.
"""

from __future__ import annotations

import dagster as dg

from skinr1_pipeline.defs.automation import build_sensors, with_conditions
from skinr1_pipeline.defs.compute import Compute, compute_resource
from skinr1_pipeline.defs.data_assets import build_data_defs
from skinr1_pipeline.defs.evaluation_assets import build_evaluation_defs
from skinr1_pipeline.defs.io_manager import AtomicFilesystemIOManager
from skinr1_pipeline.defs.knowledge_assets import build_knowledge_defs
from skinr1_pipeline.defs.resources import MlflowTracking, PipelineHome, TrainingRecipe
from skinr1_pipeline.defs.synthesis_assets import build_synthesis_defs
from skinr1_pipeline.defs.training_assets import build_training_defs
from skinr1_pipeline.settings import Settings, load_settings

STAGES = (build_knowledge_defs, build_data_defs, build_synthesis_defs, build_training_defs, build_evaluation_defs)


def build_definitions(settings: Settings, *, compute: Compute | None = None) -> dg.Definitions:
    """The code location for `settings`; `compute` replaces the profile's compute resource (tests, notebooks)."""
    stages = dg.Definitions.merge(*(build(settings) for build in STAGES))
    assets = with_conditions(settings, list(stages.assets or ()))
    raw_key = dg.AssetKey("raw_datasets")
    ingest_job = dg.define_asset_job(
        "ingest_dataset",
        selection=dg.AssetSelection.assets(raw_key),
        description="Re-ingest one source dataset (partition); used by the folder-change sensor.",
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=list(stages.asset_checks or ()),
        schedules=list(stages.schedules or ()),
        jobs=[ingest_job],
        sensors=build_sensors(settings, assets, raw_key),
        resources={
            "home": PipelineHome(home=str(settings.home)),
            "mlflow": MlflowTracking(
                tracking_uri=settings.mlflow_tracking_uri, experiment_name=settings.mlflow_experiment
            ),
            "io_manager": AtomicFilesystemIOManager(base_dir=str(settings.home / "dagster_storage")),
            "compute": compute or compute_resource(settings),
            "training_recipe": TrainingRecipe(recipe=settings.training_recipe),
        },
    )


defs = build_definitions(load_settings())
