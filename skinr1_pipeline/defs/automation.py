"""Declarative automation: the profile's `automation:` settings as Dagster automation conditions, and the sensors
that act on them, on by default wherever the profile automates a stage.

A dataset folder changes -> `dataset_folder_changes` re-ingests that partition -> every automatic asset below it
runs once, in dependency order: the unpartitioned ones in one run as soon as their inputs' data changed, each variant
evaluation in its own run once the models exist, the ablation table and report after the last variant. Nothing here
schedules: Dagster's automation condition sensor evaluates the conditions on every tick.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import dagster as dg
from dagster_shared.record import copy

from skinr1_pipeline.defs.sensors import build_dataset_change_sensor
from skinr1_pipeline.presets import run_config_for
from skinr1_pipeline.settings import AUTOMATION_STAGES, Settings

# Stages of the `automation:` settings, by Dagster asset group (what the UI shows).
STAGE_OF_GROUP = {
    "knowledge": "ingest",
    "data": "ingest",
    "synthesis": "training",
    "training": "training",
    "evaluation": "evaluation",
}
# Materialized on request only: `demo_source_data` would overwrite the folders a person edits, and `raw_datasets`
# is requested by the dataset sensor (a condition too would ingest a new folder twice).
NOT_BY_CONDITION = frozenset({"demo_source_data", "raw_datasets"})
SENSOR_NAME = "pipeline_automation"


def follows_inputs(ignore: Iterable[dg.AssetKey] = ()) -> dg.AutomationCondition:
    """Dagster's `eager()` with data versions in place of materializations: run when missing, when the code version
    changed, or when an input's *data version* changed (or the input runs in this same run), never while an input is
    missing or running. Why data versions: a re-ingest that read identical content (a `touch`) reports the same
    data version, so nothing below it re-trains; an asset whose inputs did not change keeps its data version too, so
    the chain stops wherever the data stops changing. Changes of the inputs in `ignore` do not trigger (see
    `trigger_ignores`); they still hold the asset back while missing or running."""
    ac = dg.AutomationCondition
    changed = (ac.data_version_changed() & ~ac.executed_with_root_target()).with_label(
        "input data changed"
    ) | ac.will_be_requested()
    inputs = ac.any_deps_match(changed)
    if ignore:
        inputs = inputs.ignore(dg.AssetSelection.assets(*ignore))
    trigger = ac.newly_missing() | ac.code_version_changed() | inputs.with_label("inputs changed")
    return (
        trigger.since_last_handled() & ~ac.any_deps_missing() & ~ac.any_deps_in_progress() & ~ac.in_progress()
    ).with_label("follows_inputs")


def trigger_ignores(
    parents: Mapping[dg.AssetKey, set[dg.AssetKey]], automated: set[dg.AssetKey]
) -> dict[dg.AssetKey, set[dg.AssetKey]]:
    """Per asset, the inputs whose changes reach it anyway through another of its inputs, by automated assets only.

    Why: an asset must run once, after the last of its inputs changed. `ablation_table` reads `eval_suites` and the
    variant evaluations made from it; reacting to `eval_suites` would run the table before the variants re-ran (a
    variant partition never runs in the same run as an unpartitioned asset) and again after. So each asset reacts
    only to the inputs that no other automated input sits below; where training waits for a person, the path is not
    automated and the earlier input counts again.
    """
    reach: dict[dg.AssetKey, set[dg.AssetKey]] = {}

    def upstream(key: dg.AssetKey) -> set[dg.AssetKey]:  # everything a change reaches `key` from, automatically
        if key not in reach:
            reach[key] = set()
            for parent in parents.get(key, ()):
                reach[key] |= {parent, *(upstream(parent) if parent in automated else ())}
        return reach[key]

    return {
        key: {a for a in deps for b in deps if b != a and b in automated and a in upstream(b)}
        for key, deps in parents.items()
    }


def stage_of(spec: dg.AssetSpec) -> str | None:
    """The automation stage an asset belongs to, or None when no condition may request it."""
    if spec.key.to_user_string() in NOT_BY_CONDITION:
        return None
    return STAGE_OF_GROUP.get(spec.group_name or "")


def with_conditions(settings: Settings, assets: Sequence[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """`assets` with the profile's conditions: `follows_inputs` on every asset of an automatic stage, none elsewhere
    (a condition written on an asset decorator would bypass the settings, so it is replaced too)."""
    on = {stage for stage in AUTOMATION_STAGES if getattr(settings.automation, stage)}
    specs = [spec for asset in assets for spec in asset.specs]
    automated = {spec.key for spec in specs if stage_of(spec) in on}
    ignores = trigger_ignores({spec.key: {dep.asset_key for dep in spec.deps} for spec in specs}, automated)

    def condition(spec: dg.AssetSpec) -> dg.AssetSpec:
        chosen = follows_inputs(ignores.get(spec.key, ())) if spec.key in automated else None
        return spec.replace_attributes(automation_condition=chosen)

    return [asset.map_asset_specs(condition) for asset in assets]


def automated_keys(assets: Sequence[dg.AssetsDefinition]) -> list[dg.AssetKey]:
    return sorted(spec.key for asset in assets for spec in asset.specs if spec.automation_condition is not None)


class PresetAutomationSensor(dg.AutomationConditionSensorDefinition):
    """Dagster's automation condition sensor, evaluated in the code location, whose runs carry the profile's scale
    preset (`presets.run_config_for`). Why: the runs it launches have no run config, so toy scale (the daemon test)
    could not otherwise reach them. With `scale: full` the preset is empty and the runs are exactly Dagster's.
    It overrides two methods of Dagster's class (`evaluate_tick`, `with_attributes`); Dagster is pinned (1.13.27)
    and test_automation.py fails if either stops taking effect."""

    def __init__(self, name: str, *, scale: str, **kwargs: Any):
        self._scale = scale
        with warnings.catch_warnings():  # `use_user_code_server` is beta in Dagster 1.13 (pinned); said once here
            warnings.simplefilter("ignore", dg.BetaWarning)
            super().__init__(name, use_user_code_server=True, **kwargs)

    def evaluate_tick(self, context: dg.SensorEvaluationContext):
        data = super().evaluate_tick(context)
        if not data.run_requests:
            return data
        requests = []
        for request in data.run_requests:
            names = {key.to_user_string() for key in request.asset_selection or ()}
            config = run_config_for(self._scale, names)
            requests.append(request.with_replaced_attrs(run_config=config) if config else request)
        return copy(data, run_requests=requests)

    def with_attributes(self, *, jobs=None, metadata=None) -> PresetAutomationSensor:
        """Dagster copies sensors when it resolves definitions; the copy must keep the preset."""
        return PresetAutomationSensor(
            self.name,
            scale=self._scale,
            target=self._sensor_target,
            tags=self._tags,
            run_tags=self.run_tags,
            default_status=self.default_status,
            minimum_interval_seconds=self.minimum_interval_seconds,
            description=self.description,
            metadata=metadata if metadata is not None else self._metadata,
            emit_backfills=self.emit_backfills,
        )


def build_sensors(
    settings: Settings, assets: Sequence[dg.AssetsDefinition], raw_datasets_key: dg.AssetKey
) -> list[dg.SensorDefinition]:
    """The dataset sensor (running when ingest is automatic) and the automation condition sensor over every asset
    with a condition (running when any stage is). Both tick every `automation.interval_seconds`."""
    running, stopped = dg.DefaultSensorStatus.RUNNING, dg.DefaultSensorStatus.STOPPED
    interval = settings.automation.interval_seconds
    sensors: list[dg.SensorDefinition] = [
        build_dataset_change_sensor(
            settings,
            raw_datasets_key,
            default_status=running if settings.automation.ingest else stopped,
            minimum_interval_seconds=interval,
        )
    ]
    keys = automated_keys(assets)
    if keys:
        sensors.append(
            PresetAutomationSensor(
                SENSOR_NAME,
                scale=settings.scale,
                target=dg.AssetSelection.assets(*keys),
                default_status=running,
                minimum_interval_seconds=interval,
                # One run per partition (variants, datasets) rather than a backfill, so each run carries the preset.
                emit_backfills=False,
                description="Evaluates the automation conditions of the stages the profile's `automation:` settings "
                "make automatic; launches each asset once its inputs' data changed.",
            )
        )
    return sensors
