"""Dagster code location: assets, checks, resources, sensors and jobs, chosen by the active profile."""

from __future__ import annotations

import dagster as dg

from skinr1_pipeline.defs.automation import build_sensors, with_conditions
from skinr1_pipeline.defs.compute import Compute, compute_resource
from skinr1_pipeline.defs.data_assets import build_data_assets
from skinr1_pipeline.defs.evaluation_assets import build_evaluation_assets
from skinr1_pipeline.defs.io_manager import AtomicFilesystemIOManager
from skinr1_pipeline.defs.knowledge_assets import (
    build_label_mapping_asset,
    ddx_graph,
    ddx_graph_valid,
    taxonomy_graph,
    taxonomy_invariants,
)
from skinr1_pipeline.defs.resources import MlflowTracking, PipelineHome
from skinr1_pipeline.defs.synthesis_assets import build_synthesis_assets
from skinr1_pipeline.defs.training_assets import build_training_assets
from skinr1_pipeline.settings import Settings, load_settings


def build_definitions(settings: Settings, *, compute: Compute | None = None) -> dg.Definitions:
    """The code location for `settings`; `compute` replaces the profile's compute resource (tests, notebooks)."""
    data_assets, data_checks, _ = build_data_assets(settings)
    synthesis_assets, synthesis_checks = build_synthesis_assets(settings)
    training_assets, training_checks = build_training_assets(settings)
    evaluation_assets, evaluation_checks, schedules = build_evaluation_assets(settings)
    assets = with_conditions(
        settings,
        [
            taxonomy_graph,
            ddx_graph,
            build_label_mapping_asset(settings),
            *data_assets,
            *synthesis_assets,
            *training_assets,
            *evaluation_assets,
        ],
    )
    raw_key = dg.AssetKey("raw_datasets")
    ingest_job = dg.define_asset_job(
        "ingest_dataset",
        selection=dg.AssetSelection.assets(raw_key),
        description="Re-ingest one source dataset (partition); used by the folder-change sensor.",
    )
    return dg.Definitions(
        assets=assets,
        asset_checks=[
            taxonomy_invariants,
            ddx_graph_valid,
            *data_checks,
            *synthesis_checks,
            *training_checks,
            *evaluation_checks,
        ],
        schedules=schedules,
        jobs=[ingest_job],
        sensors=build_sensors(settings, assets, raw_key),
        resources={
            "home": PipelineHome(home=str(settings.home)),
            "mlflow": MlflowTracking(
                tracking_uri=settings.mlflow_tracking_uri, experiment_name=settings.mlflow_experiment
            ),
            "io_manager": AtomicFilesystemIOManager(base_dir=str(settings.home / "dagster_storage")),
            "compute": compute or compute_resource(settings),
        },
    )


defs = build_definitions(load_settings())
