"""Lineage in MLflow, from raw data to the report, over a toy pipeline spread across many Dagster runs (one per
segment and partition, as `skinr1 demo` runs it; model steps are stand-ins, toy_chain.py).

Before: SFT, GRPO and evaluation runs logged no dataset inputs, five assets had no run, runs of one pipeline sat
under unlinked parents, the report drew curves from the latest run of each training asset, and registering a model
copied the base model into the artifacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
import pytest

from skinr1_pipeline.settings import Settings, load_settings
from skinr1_pipeline.tracking.mlflow_runs import (
    EVALUATED_RUN_TAG,
    LINEAGE_TAG,
    NOTE_TAG,
    REGISTERED_MODEL,
    frame_digest,
)
from skinr1_pipeline.tracking.pyfunc_model import base_model_digest
from skinr1_pipeline_tests.toy_chain import materialize_chain

pytestmark = pytest.mark.slow


@dataclass
class Pipeline:
    settings: Settings
    defs: dg.Definitions
    instance: dg.DagsterInstance
    first: object  # runner.PipelineRun of the whole chain

    @property
    def client(self) -> mlflow.MlflowClient:
        return mlflow.MlflowClient(tracking_uri=self.settings.mlflow_tracking_uri)

    def runs(self, asset: str | None = None, partition: str = "") -> list:
        """Child runs (of `asset`, `partition`), oldest first."""
        experiment = self.client.get_experiment_by_name(self.settings.mlflow_experiment)
        found = [
            r
            for r in self.client.search_runs([experiment.experiment_id], max_results=1000)
            if r.data.tags.get("skinr1.role") == "child"
        ]
        if asset is not None:
            found = [
                r
                for r in found
                if r.data.tags["dagster.asset_key"] == asset and r.data.tags["dagster.partition"] == partition
            ]
        return sorted(found, key=lambda r: r.info.start_time)

    def run(self, asset: str, partition: str = "", *, newest: bool = False):
        found = self.runs(asset, partition)
        assert found, (asset, partition)
        return found[-1] if newest else found[0]

    def value(self, asset: str):
        return self.defs.load_asset_value(asset, instance=self.instance)


def inputs(run) -> dict[str, str]:
    """Dataset name -> digest of a run's dataset inputs."""
    return {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}


def test_dataset_digest_covers_every_row_and_list_column(tmp_path) -> None:
    """MLflow's own dataset digest hashes the first 10,000 rows' string and number columns only."""
    from mlflow.data.digest_utils import compute_pandas_digest

    rows = 10_005
    frame = pd.DataFrame(
        {"sample_id": [f"s{i}" for i in range(rows)], "taxonomy_path": [["root", f"node{i % 7}"] for i in range(rows)]}
    )
    late_row, other_path = frame.copy(), frame.copy()
    late_row.loc[rows - 2, "sample_id"] = "changed"
    other_path.at[0, "taxonomy_path"] = ["root", "elsewhere"]
    assert compute_pandas_digest(late_row) == compute_pandas_digest(other_path) == compute_pandas_digest(frame)
    assert len({frame_digest(f) for f in (frame, late_row, other_path)}) == 3
    frame.to_parquet(tmp_path / "frame.parquet")
    assert frame_digest(pd.read_parquet(tmp_path / "frame.parquet")) == frame_digest(frame)  # lists come back arrays


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    """The whole chain; then SFT alone again (a newer SFT run that no evaluation used), then the report alone."""
    settings = load_settings({"SKINR1_HOME": str(tmp_path_factory.mktemp("lineage_home"))})
    with dg.instance_for_test() as instance:
        defs, first = materialize_chain(settings, instance)
        materialize_chain(settings, instance, dg.AssetSelection.assets("sft_checkpoint"))
        materialize_chain(settings, instance, dg.AssetSelection.assets("evaluation_reports"))
        yield Pipeline(settings, defs, instance, first)


def test_every_asset_has_a_run_that_its_materialization_names(pipeline):
    graph = pipeline.defs.resolve_asset_graph()
    assets = {k.to_user_string() for k in graph.get_all_asset_keys() if graph.get(k).is_materializable}
    assert {r.data.tags["dagster.asset_key"] for r in pipeline.runs()} == assets
    events = [e for result in pipeline.first.results for e in result.get_asset_materialization_events()]
    assert {e.asset_key.to_user_string() for e in events} == assets
    for event in events:
        run = pipeline.client.get_run(event.materialization.metadata["mlflow_run_id"].value)
        assert run.data.tags["dagster.asset_key"] == event.asset_key.to_user_string()
        assert run.data.tags["dagster.partition"] == (event.partition or "")


def test_runs_of_one_pipeline_share_the_samples_digest_across_dagster_runs(pipeline):
    samples = pipeline.value("unified_samples")
    digest = frame_digest(samples)
    record = pipeline.instance.fetch_materializations(dg.AssetKey("unified_samples"), limit=1).records[0]
    assert record.asset_materialization.tags["dagster/data_version"] == digest  # Dagster's data version, too
    graph = pipeline.defs.resolve_asset_graph()
    downstream = {k.to_user_string() for k in dg.AssetSelection.assets("unified_samples").downstream().resolve(graph)}
    for run in pipeline.runs():
        expected = digest if run.data.tags["dagster.asset_key"] in downstream else None
        assert run.data.tags.get(LINEAGE_TAG) == expected, run.data.tags["dagster.asset_key"]

    experiment = pipeline.client.get_experiment_by_name(pipeline.settings.mlflow_experiment)
    found = pipeline.client.search_runs(
        [experiment.experiment_id], f"tags.`{LINEAGE_TAG}` = '{digest}'", max_results=1000
    )
    children = [r for r in found if r.data.tags["skinr1.role"] == "child"]
    parents = {r.info.run_id for r in found if r.data.tags["skinr1.role"] == "parent"}
    assert {r.data.tags["dagster.asset_key"] for r in children} == downstream
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == parents
    assert len(parents) >= 7  # samples..training, four variants, ablation+report, SFT again, report again


def test_training_and_evaluation_runs_log_their_inputs_and_the_runs_that_made_them(pipeline):
    trajectories, rl_items, suites = (
        pipeline.run(a) for a in ("skin_rationale_trajectories", "rl_mcq_dataset", "eval_suites")
    )
    sft, grpo, rl_only = (pipeline.run(a) for a in ("sft_checkpoint", "grpo_checkpoint", "rl_only_checkpoint"))
    digest = inputs(trajectories)["skin_rationale_trajectories"]
    assert digest == frame_digest(pd.read_parquet(pipeline.value("skin_rationale_trajectories")))
    assert inputs(sft)["skin_rationale_trajectories"] == digest  # the SFT run names the data it trained on
    assert inputs(sft)["rl_mcq_valid"] == inputs(grpo)["rl_mcq_valid"] == inputs(rl_items)["rl_mcq_valid"]
    assert inputs(grpo)["rl_mcq_train"] == inputs(rl_only)["rl_mcq_train"] == inputs(rl_items)["rl_mcq_train"]
    assert sft.data.tags["skinr1.upstream.skin_rationale_trajectories"] == trajectories.info.run_id
    assert sft.data.tags["skinr1.data_version.unified_samples"] == sft.data.tags[LINEAGE_TAG]
    assert grpo.data.tags["skinr1.upstream.sft_checkpoint"] == sft.info.run_id
    grpo_value = pipeline.value("grpo_checkpoint")
    assert (grpo_value["mlflow_run_id"], grpo_value["sft_mlflow_run_id"]) == (grpo.info.run_id, sft.info.run_id)
    trained_by = {"sft": sft, "rl_only": rl_only, "sft_grpo": grpo}
    for variant in ("base", "sft", "rl_only", "sft_grpo"):
        evaluation = pipeline.run("variant_evaluations", variant)
        assert inputs(evaluation) == {"eval_suites": inputs(suites)["eval_suites"]}
        assert evaluation.data.tags["skinr1.upstream.eval_suites"] == suites.info.run_id
        assert evaluation.data.tags.get(EVALUATED_RUN_TAG) == (
            trained_by[variant].info.run_id if variant in trained_by else None
        )


def test_report_run_links_raw_digests_to_samples_trajectories_sft_grpo_and_evaluation(pipeline):
    report = pipeline.run("evaluation_reports")
    lineage = mlflow.artifacts.load_dict(f"{report.info.artifact_uri}/lineage.json")
    chain = {step["input"]: [r["run_id"] for r in step["runs"]] for step in lineage["chain"]}
    raw = {d: pipeline.run("raw_datasets", d) for d in pipeline.settings.datasets}
    expected = {
        "raw_datasets.*": sorted(r.info.run_id for r in raw.values()),
        "unified_samples": [pipeline.run("unified_samples").info.run_id],
        "skin_rationale_trajectories": [pipeline.run("skin_rationale_trajectories").info.run_id],
        "sft_checkpoint": [pipeline.run("sft_checkpoint").info.run_id],
        "grpo_checkpoint": [pipeline.run("grpo_checkpoint").info.run_id],
        "variant_evaluations.sft_grpo": [pipeline.run("variant_evaluations", "sft_grpo").info.run_id],
    }
    assert list(chain) == list(expected)  # data first, evaluation last
    assert {k: sorted(v) for k, v in chain.items()} == expected
    raw_digests = report.data.tags["skinr1.chain.raw_datasets.datasets"]
    for dataset, run in raw.items():
        assert f"raw_{dataset}={inputs(run)[f'raw_{dataset}']}" in raw_digests
    assert report.data.tags["skinr1.chain.sft_checkpoint"] == expected["sft_checkpoint"][0]
    assert lineage["lineage"] == report.data.tags[LINEAGE_TAG] == frame_digest(pipeline.value("unified_samples"))
    note = report.data.tags[NOTE_TAG]  # the run page's description: a link per run of the chain
    links = [
        note.index(f"/runs/{expected[k][0]})")
        for k in ("unified_samples", "sft_checkpoint", "grpo_checkpoint", "variant_evaluations.sft_grpo")
    ]
    assert links == sorted(links)
    assert set(inputs(report)) == {"eval_suites", *(f"scored_{v}" for v in ("base", "sft", "rl_only", "sft_grpo"))}


def test_report_curves_come_from_the_runs_that_trained_the_evaluated_adapters(pipeline):
    """After SFT ran again, the newest SFT run trained no evaluated adapter; the report used to plot it anyway."""
    first_sft, newest_sft = pipeline.run("sft_checkpoint"), pipeline.run("sft_checkpoint", newest=True)
    assert first_sft.info.run_id != newest_sft.info.run_id
    report = pipeline.run("evaluation_reports", newest=True)
    assert report.info.run_id != pipeline.run("evaluation_reports").info.run_id
    tags = report.data.tags
    assert tags["skinr1.curves_from.sft_checkpoint"] == first_sft.info.run_id
    assert tags["skinr1.curves_from.grpo_checkpoint"] == pipeline.run("grpo_checkpoint").info.run_id
    assert tags["skinr1.curves_from.rl_only_checkpoint"] == pipeline.run("rl_only_checkpoint").info.run_id
    assert tags["skinr1.chain.sft_checkpoint"] == first_sft.info.run_id


def test_registered_candidate_references_the_base_model_run_by_digest(pipeline):
    client = pipeline.client
    base_run = pipeline.run("base_model")
    base_dir = pipeline.value("base_model")
    version = client.get_model_version_by_alias(REGISTERED_MODEL, "candidate")
    assert version.tags["base_model_digest"] == base_run.data.tags["skinr1.base_model_digest"]
    assert version.tags["base_model_digest"] == base_model_digest(base_dir)["digest"]
    assert version.tags["training_run"] == pipeline.run("grpo_checkpoint").info.run_id
    model_dir = mlflow.artifacts.download_artifacts(
        f"models:/{REGISTERED_MODEL}/{version.version}", tracking_uri=pipeline.settings.mlflow_tracking_uri
    )
    stored = [p for p in Path(model_dir, "artifacts").rglob("*") if p.is_file()]
    assert not [p for p in stored if p.name in ("config.json", "model.safetensors")]  # no copy of the base
