"""A sensor that re-ingests exactly the source datasets whose folders (or the ingest code) changed."""

import hashlib
import json
from pathlib import Path

import dagster as dg

from skinr1_pipeline.data.fingerprint import folder_fingerprint, newest_change
from skinr1_pipeline.presets import run_config_for
from skinr1_pipeline.settings import Settings


def build_dataset_change_sensor(
    settings: Settings,
    raw_datasets_key: dg.AssetKey,
    *,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    minimum_interval_seconds: int = 60,
) -> dg.SensorDefinition:
    """The sensor owns every request of `raw_datasets`: a folder seen for the first time, a changed folder, and a new
    ingest code version. Why the sensor and not an automation condition too: both would see a new folder at once and
    ingest it twice. A content-identical re-ingest (a `touch`) stops there: `raw_datasets` reports the digest of what
    it read as its data version, and the automation conditions downstream follow data versions, not materializations.
    """

    @dg.sensor(
        name="dataset_folder_changes",
        asset_selection=dg.AssetSelection.assets(raw_datasets_key),
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        description="Fingerprints each dataset folder (paths, sizes, mtimes) and re-materializes the partitions whose "
        "folder or ingest code version changed, once the assets raw_datasets reads exist.",
    )
    def dataset_folder_changes(context: dg.SensorEvaluationContext):
        graph = context.repository_def.asset_graph
        waiting = [
            key.to_user_string()
            for key in sorted(graph.get(raw_datasets_key).parent_keys)
            if graph.get(key).is_materializable and context.instance.get_latest_materialization_event(key) is None
        ]
        if waiting:  # the cursor stays: these folders are requested once the inputs exist
            return dg.SkipReason(f"waiting for {', '.join(waiting)} before ingesting")
        code_version = graph.get(raw_datasets_key).code_version or ""
        previous: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        current: dict[str, str] = {}
        missing: list[str] = []
        for dataset in settings.datasets:
            fingerprint = folder_fingerprint(settings.dataset_root(dataset))
            if fingerprint is None:
                missing.append(dataset)
                continue
            current[dataset] = hashlib.sha256(f"{fingerprint}:{code_version}".encode()).hexdigest()
        for dataset in sorted(set(current) - set(previous)):  # first look at this folder
            if _ingested_since_last_change(
                context, raw_datasets_key, dataset, settings.dataset_root(dataset), code_version
            ):
                previous[dataset] = current[dataset]
        changed = sorted(d for d, fp in current.items() if previous.get(d) != fp)
        cursor = json.dumps({**previous, **current}, sort_keys=True)
        if not changed:
            reason = "no dataset folder changed"
            if missing:
                reason += f"; not present yet: {', '.join(missing)}"
            return dg.SensorResult(skip_reason=reason, cursor=cursor)
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    run_key=f"{d}:{current[d][:16]}",
                    partition_key=d,
                    tags={"skinr1/trigger": "dataset_change"},
                    run_config=run_config_for(settings.scale, [raw_datasets_key.to_user_string()]),
                )
                for d in changed
            ],
            cursor=cursor,
        )

    return dataset_folder_changes


def _ingested_since_last_change(
    context: dg.SensorEvaluationContext, key: dg.AssetKey, dataset: str, root: Path, code_version: str
) -> bool:
    """Whether the latest ingest of `dataset` ran with this code version after its folder last changed. Why: the
    sensor's cursor starts empty (a new instance, a renamed sensor), and `make ui` after `make demo` would otherwise
    re-ingest every dataset once."""
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[dataset]), limit=1
    ).records
    if not records:
        return False
    changed = newest_change(root)
    event = records[0]
    same_code = (event.asset_materialization.tags or {}).get("dagster/code_version") == code_version
    return same_code and changed is not None and changed < event.timestamp
