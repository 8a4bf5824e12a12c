"""A sensor that re-ingests exactly the source datasets whose folders changed."""


import json

import dagster as dg

from skinr1_pipeline.data.fingerprint import folder_fingerprint
from skinr1_pipeline.settings import Settings


def build_dataset_change_sensor(settings: Settings, raw_datasets_key: dg.AssetKey) -> dg.SensorDefinition:
    @dg.sensor(
        name="dataset_folder_changes",
        asset_selection=dg.AssetSelection.keys(raw_datasets_key),
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Fingerprints each dataset folder (paths, sizes, mtimes) and re-materializes changed partitions.",
    )
    def dataset_folder_changes(context: dg.SensorEvaluationContext):
        previous: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        current: dict[str, str] = {}
        missing: list[str] = []
        for dataset in settings.datasets:
            fingerprint = folder_fingerprint(settings.dataset_root(dataset))
            if fingerprint is None:
                missing.append(dataset)
                continue
            current[dataset] = fingerprint
        changed = sorted(d for d, fp in current.items() if previous.get(d) != fp)
        cursor = json.dumps({**previous, **current}, sort_keys=True)
        if not changed:
            reason = "no dataset folder changed"
            if missing:
                reason += f"; not present yet: {', '.join(missing)}"
            return dg.SensorResult(skip_reason=reason, cursor=cursor)
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(run_key=f"{d}:{current[d][:16]}", partition_key=d, tags={"skinr1/trigger": "dataset_change"})
                for d in changed
            ],
            cursor=cursor,
        )

    return dataset_folder_changes
