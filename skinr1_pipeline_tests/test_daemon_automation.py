"""Declarative automation under the real `dagster-daemon`: a changed demo image re-ingests its dataset and re-runs
the whole chain once, in dependency order, through the report; a `touch` that keeps the bytes re-trains nothing.

The home is toy scale (`scale: toy`, ten images per class) with the model steps stood in (daemon_location.py); the
project's `dagster.yaml` (pools, run queue, no onboarding dialog) is the instance's, with storage in a temp folder.
"""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml
from PIL import Image

from skinr1_pipeline.presets import run_config_for
from skinr1_pipeline.settings import load_settings

pytestmark = [pytest.mark.slow, pytest.mark.daemon]
REPO = Path(__file__).resolve().parent.parent
TICK = 5  # seconds between sensor evaluations (automation.interval_seconds)
SETTLE = 3 * TICK + 5  # long enough for both sensors to have looked twice after the last run ended
CHAIN = [
    "unified_samples",
    "skin_rationale_trajectories",
    "rl_mcq_dataset",
    "base_model",
    "sft_checkpoint",
    "grpo_checkpoint",
    "rl_only_checkpoint",
    "eval_suites",
    "variant_evaluations",
    "ablation_table",
    "evaluation_reports",
]
TRAINING = [
    "skin_rationale_trajectories",
    "rl_mcq_dataset",
    "base_model",
    "sft_checkpoint",
    "grpo_checkpoint",
    "rl_only_checkpoint",
]
KNOWLEDGE = ["taxonomy_graph", "ddx_graph", "label_mapping", "knowledge_base"]
VARIANTS = ["base", "rl_only", "sft", "sft_grpo"]


def write_instance(dagster_home: Path) -> None:
    """The project's dagster.yaml with its storage folders moved under `dagster_home`."""
    config = yaml.safe_load((REPO / "dagster.yaml").read_text("utf-8"))
    config["storage"]["sqlite"]["base_dir"] = str(dagster_home / "storage")
    for section in ("local_artifact_storage", "compute_logs"):
        config[section]["config"]["base_dir"] = str(dagster_home / section)
    dagster_home.mkdir(parents=True, exist_ok=True)
    (dagster_home / "dagster.yaml").write_text(yaml.safe_dump(config), "utf-8")


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """A toy home materialized once in process, then `dagster-daemon run` on its instance (stopped at the end)."""
    from skinr1_pipeline_tests.toy_chain import StandInCompute

    root = tmp_path_factory.mktemp("daemon")
    config = root / "skinr1.yaml"
    config.write_text(
        yaml.safe_dump({"scale": "toy", "demo_images_per_class": 10, "automation": {"interval_seconds": TICK}}), "utf-8"
    )
    env = {
        **os.environ,
        "SKINR1_PROFILE": "demo",
        "SKINR1_HOME": str(root / "home"),
        "SKINR1_CONFIG": str(config),
        "DAGSTER_HOME": str(root / "dagster_home"),
    }
    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "SKINR1_DEMO_IMAGES_PER_CLASS", "SKINR1_DEMO_SEED"):
        env.pop(key, None)
    write_instance(root / "dagster_home")
    workspace = root / "workspace.yaml"
    workspace.write_text(
        yaml.safe_dump(
            {
                "load_from": [
                    {
                        "python_module": {
                            "module_name": "skinr1_pipeline_tests.daemon_location",
                            "working_directory": str(REPO),
                            "location_name": "skinr1_pipeline",
                        }
                    }
                ]
            }
        ),
        "utf-8",
    )

    from skinr1_pipeline.definitions import build_definitions
    from skinr1_pipeline.runner import materialize_all

    settings = load_settings(env)
    assert settings.scale == "toy" and settings.automation.interval_seconds == TICK
    defs = build_definitions(settings, compute=StandInCompute())
    names = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    instance = dg.DagsterInstance.from_config(str(root / "dagster_home"))
    start = time.monotonic()
    first = materialize_all(defs, instance, run_config=run_config_for("toy", names, executor=False), log=print)
    assert first.success, "the in-process first materialization failed"
    print(f"first materialization in process: {time.monotonic() - start:.0f}s")

    log = (root / "daemon.log").open("w")
    started = time.time()
    process = subprocess.Popen(
        [str(Path(sys.executable).with_name("dagster-daemon")), "run", "-w", str(workspace)],
        cwd=root,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield settings, defs, instance, process, root, started
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
        instance.dispose()


def materializations(instance, name: str, after: float) -> list:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(name), after_timestamp=after), limit=100
    ).records
    return sorted(records, key=lambda r: r.timestamp)


def runs_since(instance, after: float) -> list:
    created = datetime.datetime.fromtimestamp(after, tz=datetime.UTC)
    return instance.get_run_records(filters=dg.RunsFilter(created_after=created), ascending=True)


def wait_until(condition, timeout: float, what: str, process, root: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, f"dagster-daemon exited: {(root / 'daemon.log').read_text()[-3000:]}"
        value = condition()
        if value:
            return value
        time.sleep(2)
    pytest.fail(
        f"timed out after {timeout:.0f}s waiting for {what}; daemon log tail:\n"
        f"{(root / 'daemon.log').read_text()[-3000:]}"
    )


def settled(instance, after: float) -> bool:
    """Every run since `after` finished, the last one over SETTLE seconds ago (the sensors had their say)."""
    records = runs_since(instance, after)
    if any(not r.dagster_run.is_finished for r in records):
        return False
    last = max((r.end_time or 0 for r in records), default=after)
    return time.time() - last > SETTLE


def chain_table(instance, after: float) -> str:
    rows = []
    for record in runs_since(instance, after):
        run = record.dagster_run
        assets = ",".join(sorted(k.to_user_string() for k in run.asset_selection or ()))
        partition = run.tags.get("dagster/partition", "")
        seconds = (record.end_time or 0) - (record.start_time or record.end_time or 0)
        rows.append(
            f"{run.run_id[:8]}  {run.status.value:<8} {seconds:6.1f}s  {assets}"
            f"{f'[{partition}]' if partition else ''}  ({run.tags.get('dagster/sensor_name', 'manual')})"
        )
    return "\n".join(rows)


def report_lineage_names_the_new_data(settings, instance, ingest, after: float) -> None:
    """The report the edit produced descends, in MLflow, from the new HAM10000 ingest and the new samples digest."""
    import json

    from mlflow import MlflowClient

    from skinr1_pipeline.tracking import mlflow_runs

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    reports = [
        r
        for r in client.search_runs(
            [e.experiment_id for e in client.search_experiments()],
            filter_string=f"tags.`{mlflow_runs.ASSET_TAG}` = 'evaluation_reports'",
            order_by=["start_time DESC"],
        )
        if r.info.start_time / 1000 >= after
    ]
    assert len(reports) == 1, [r.info.run_id for r in reports]
    samples = materializations(instance, "unified_samples", after)[-1]
    new_digest = samples.asset_materialization.tags["dagster/data_version"]
    assert reports[0].data.tags[mlflow_runs.LINEAGE_TAG] == new_digest
    lineage = json.loads(Path(client.download_artifacts(reports[0].info.run_id, "lineage.json")).read_text("utf-8"))
    assert lineage["lineage"] == new_digest
    chain = {step["input"]: step["runs"] for step in lineage["chain"]}
    ham = [r for r in chain["raw_datasets.*"] if r["partition"] == "ham10000"]
    assert [r["orchestrator_run_id"] for r in ham] == [ingest.run_id], chain["raw_datasets.*"]
    [samples_run] = chain["unified_samples"]
    assert samples_run["orchestrator_run_id"] == samples.run_id
    label = mlflow_runs.input_label("raw_datasets", "ham10000")
    ham_version = ingest.asset_materialization.tags["dagster/data_version"]
    assert lineage["runs"][samples_run["run_id"]]["data_versions"][label] == ham_version


def test_a_changed_file_reruns_its_partition_and_the_chain_once_and_a_touch_retrains_nothing(daemon):
    settings, defs, instance, process, root, started = daemon

    # 1. One HAM10000 image changes content: its partition alone is re-ingested (the sensor's first look finds the
    #    other folders unchanged since their ingest), then every asset below it runs once, after its inputs.
    manifest = yaml.safe_load((settings.demo_dir / "demo_manifest.json").read_text("utf-8"))
    broken = {b["path"] for b in manifest["broken"] if b["dataset"] == "ham10000"}
    ham = settings.dataset_root("ham10000")
    image = next(p for p in sorted(ham.rglob("*.jpg")) if str(p.relative_to(ham)) not in broken)
    edited = time.time()
    with Image.open(image) as img:
        pixels = img.convert("RGB")
    pixels.rotate(90).save(image, quality=95)
    wait_until(
        lambda: materializations(instance, "evaluation_reports", edited),
        900,
        "evaluation_reports after the edit",
        process,
        root,
    )
    wait_until(lambda: settled(instance, edited), 300, "the chain to settle", process, root)
    chain = chain_table(instance, edited)
    print(f"one edit: daemon start to settled chain {time.time() - started:.0f}s\n{chain}")
    assert all(r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in runs_since(instance, edited)), chain
    ingested = materializations(instance, "raw_datasets", edited)
    assert [r.partition_key for r in ingested] == ["ham10000"], chain
    for name in KNOWLEDGE:
        assert not materializations(instance, name, edited), (name, chain)
    last: dict[str, float] = {"raw_datasets": ingested[0].timestamp}
    for name in CHAIN:  # each once (each variant partition once)
        got = materializations(instance, name, edited)
        expected = VARIANTS if name == "variant_evaluations" else [""]
        assert sorted(r.partition_key or "" for r in got) == expected, (name, chain)
        last[name] = max(r.timestamp for r in got)
    report_lineage_names_the_new_data(settings, instance, ingested[0], edited)
    graph = defs.resolve_asset_graph()
    for name in CHAIN:  # dependency order: no asset ran before the last materialization of any of its inputs
        first = min(r.timestamp for r in materializations(instance, name, edited))
        for parent in graph.get(dg.AssetKey(name)).parent_keys:
            assert first >= last.get(parent.to_user_string(), 0), (name, parent.to_user_string(), chain)

    # 2. A touch keeps the bytes: the sensor re-ingests (its fingerprint reads mtimes), the data version stays the
    #    same, and nothing below raw_datasets runs again.
    version_before = ingested[0].asset_materialization.tags["dagster/data_version"]
    touched = time.time()
    os.utime(image, (touched + 1, touched + 1))
    wait_until(
        lambda: materializations(instance, "raw_datasets", touched), 300, "the re-ingest after the touch", process, root
    )
    wait_until(lambda: settled(instance, touched), 300, "the touch to settle", process, root)
    after_touch = materializations(instance, "raw_datasets", touched)
    assert [r.partition_key for r in after_touch] == ["ham10000"]
    assert after_touch[0].asset_materialization.tags["dagster/data_version"] == version_before
    for name in CHAIN:
        assert not materializations(instance, name, touched), (name, chain_table(instance, touched))
    print(f"touch settled {time.time() - started:.0f}s after the daemon started")
