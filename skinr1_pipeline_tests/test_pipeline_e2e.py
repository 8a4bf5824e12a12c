"""The whole asset graph materializes in process on the embedded demo, exactly as `skinr1 demo` runs it."""

from __future__ import annotations

import dagster as dg
import mlflow
import pandas as pd
import pytest

from skinr1_pipeline.definitions import build_definitions
from skinr1_pipeline.runner import materialize_all
from skinr1_pipeline.settings import load_settings


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("skinr1_home")
    settings = load_settings({"SKINR1_HOME": str(home)})
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        outcome = materialize_all(
            defs, instance, run_config={"ops": {"demo_source_data": {"config": {"images_per_class": 10}}}}, log=lambda _: None
        )
        yield settings, defs, outcome


def test_every_asset_materializes(demo_run):
    settings, defs, outcome = demo_run
    assert outcome.success
    expected = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert outcome.materialized_keys() == expected
    assert {"demo_source_data", "taxonomy_graph", "ddx_graph", "label_mapping", "raw_datasets", "unified_samples"} <= expected


def test_gate_checks_pass(demo_run):
    _, _, outcome = demo_run
    results = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in outcome.check_evaluations()}
    for gate in [("taxonomy_graph", "taxonomy_invariants"), ("ddx_graph", "ddx_graph_valid"),
                 ("raw_datasets", "every_label_mapped"), ("unified_samples", "no_split_leakage"),
                 ("unified_samples", "splits_populated")]:
        assert results.get(gate) is True, gate


def test_broken_demo_files_are_quarantined_with_their_reasons(demo_run):
    settings, _, _ = demo_run
    import json

    manifest = json.loads((settings.demo_dir / "demo_manifest.json").read_text())
    quarantine = pd.concat(
        pd.read_parquet(settings.outputs_dir / "raw_datasets" / d / "quarantine.parquet") for d in settings.datasets
    )
    found = {(str(p).split("/")[-1], r) for p, r in zip(quarantine["image_path"], quarantine["reason"])}
    for broken in manifest["broken"]:
        assert (str(broken["path"]).split("/")[-1], broken["reason"]) in found, broken
    assert len(quarantine) == len(manifest["broken"])  # nothing else lost


def test_unified_samples_cover_demo_domains_and_splits(demo_run):
    settings, _, _ = demo_run
    samples = pd.read_parquet(settings.outputs_dir / "unified_samples.parquet")
    assert set(samples["source_dataset"]) == set(settings.datasets)
    assert set(samples["modality"]) == {"dermoscopic", "clinical"}
    assert set(samples["split"]) == {"train", "valid", "test"}
    assert samples["image_sha256"].is_unique
    assert samples["bucket"].isin(["benign", "precancerous_in_situ", "malignant"]).all()
    # Derm7pt contributes two images (clinical + dermoscopic) of one lesion, always in the same split.
    derm7pt = samples[samples["source_dataset"] == "derm7pt"]
    assert (derm7pt.groupby("lesion_id")["split"].nunique() == 1).all()


def test_mlflow_has_a_parent_run_per_dagster_run_with_nested_asset_runs(demo_run):
    settings, _, outcome = demo_run
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("skinr1.role") == "parent"}
    children = [r for r in runs if r.data.tags.get("skinr1.role") == "child"]
    assert {r.data.tags["dagster.run_id"] for r in parents.values()} == {res.run_id for res in outcome.results}
    assert all(r.data.tags["mlflow.parentRunId"] in parents for r in children)
    assets = {(r.data.tags["dagster.asset_key"], r.data.tags["dagster.partition"]) for r in children}
    assert {("raw_datasets", d) for d in settings.datasets} <= assets
    assert ("unified_samples", "") in assets
    unified = next(r for r in children if r.data.tags["dagster.asset_key"] == "unified_samples")
    inputs = client.get_run(unified.info.run_id).inputs.dataset_inputs
    assert {i.dataset.name for i in inputs} == {"unified_train", "unified_valid", "unified_test"}
    assert all(i.dataset.digest for i in inputs)
