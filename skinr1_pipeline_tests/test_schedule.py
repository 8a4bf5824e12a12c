"""The weekly evaluation schedule: a tick asks for one run per model variant, and the runs it asks for succeed.

It used to request one run without a partition key against the variant-partitioned asset, which cannot run. The
runs here execute against a toy home whose model steps are stand-ins (toy_chain.py): what is under test is what the
tick asks for and that Dagster can run it, not the models.
"""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import mlflow
import pytest

from skinr1_pipeline.defs.evaluation_assets import VARIANTS, WEEKLY_TAG, weekly_run_config
from skinr1_pipeline.settings import load_settings
from skinr1_pipeline.tracking.mlflow_runs import LINEAGE_TAG
from skinr1_pipeline_tests.toy_chain import materialize_chain

pytestmark = pytest.mark.slow
TARGET = dg.AssetKey("variant_evaluations")


@pytest.fixture(scope="module")
def before_the_tick(tmp_path_factory):
    """A toy home with everything the weekly runs read (models, suites), and nothing they write yet."""
    settings = load_settings({"SKINR1_HOME": str(tmp_path_factory.mktemp("schedule_home"))})
    later = dg.AssetSelection.assets(TARGET).downstream()
    with dg.instance_for_test() as instance:
        defs, _ = materialize_chain(settings, instance, selection=dg.AssetSelection.all() - later)
        yield settings, defs, instance


def test_weekly_tick_requests_one_run_per_variant_and_the_runs_succeed(before_the_tick):
    settings, defs, instance = before_the_tick
    schedule = defs.resolve_schedule_def("weekly_evaluation")
    tick = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=tick, repository_def=defs.get_repository_def()
    )
    requests = schedule.evaluate_tick(context).run_requests

    assert sorted(r.partition_key for r in requests) == sorted(VARIANTS)
    assert len({r.run_key for r in requests}) == len(VARIANTS)  # one run per variant, none deduplicated away
    assert {r.tags[WEEKLY_TAG] for r in requests} == {"2026-12-07T03:00"}
    assert all(r.run_config == weekly_run_config(settings) for r in requests)
    job = defs.resolve_job_def(schedule.job_name)
    assert [k for k in job.asset_layer.selected_asset_keys] == [TARGET]
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    suites = instance.fetch_materializations(dg.AssetKey("eval_suites"), limit=1).records[0].asset_materialization
    suites_run = suites.metadata["mlflow_run_id"].value
    lineage = client.get_run(suites_run).data.tags[LINEAGE_TAG]

    for request in requests:
        result = job.execute_in_process(
            partition_key=request.partition_key,
            run_config=request.run_config,
            tags=request.tags,
            instance=instance,
            raise_on_error=False,
        )
        assert result.success, [e.message for e in result.all_events if e.is_failure]
        (event,) = result.get_asset_materialization_events()
        assert event.partition == request.partition_key and event.asset_key == TARGET
        assert instance.get_run_by_id(result.run_id).tags[WEEKLY_TAG] == "2026-12-07T03:00"
        # A weekly run joins the pipeline's lineage like any other run of it.
        tags = client.get_run(event.materialization.metadata["mlflow_run_id"].value).data.tags
        assert tags[LINEAGE_TAG] == lineage and tags["skinr1.upstream.eval_suites"] == suites_run

    scored = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=TARGET), limit=10).records
    assert sorted(r.partition_key for r in scored) == sorted(VARIANTS)
