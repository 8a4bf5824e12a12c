"""Materialize the whole asset graph in process, in the order a backfill from the Dagster UI would use.

Three phases: everything upstream of the partitioned `raw_datasets`, then one run per source-dataset
partition, then everything else (downstream, plus assets such as the DDx graph that only later stages
read). A failed phase stops the sequence so a broken gate never feeds the next stage. Used by `skinr1 demo` (against the project's persistent Dagster
instance, so the runs show in `dagster dev`) and by the end-to-end test (against a temporary instance).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

RAW_KEY = dg.AssetKey("raw_datasets")


@dataclass
class PipelineRun:
    results: list[dg.ExecuteInProcessResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def success(self) -> bool:
        return all(r.success for r in self.results)

    def check_evaluations(self) -> list[dg.AssetCheckEvaluation]:
        return [e for r in self.results for e in r.get_asset_check_evaluations()]

    def materialized_keys(self) -> set[str]:
        return {
            e.asset_key.to_user_string()
            for r in self.results
            for e in r.get_asset_materialization_events()
            if e.asset_key is not None
        }


def materialize_all(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    *,
    run_config: dict | None = None,
    log: Callable[[str], None] = print,
) -> PipelineRun:
    repo = defs.get_repository_def()
    graph = repo.asset_graph
    all_assets = list(defs.assets or [])
    checks = list(defs.asset_checks or [])
    resources = dict(defs.resources or {})
    partitions = graph.get(RAW_KEY).partitions_def
    partition_keys = partitions.get_partition_keys() if partitions else []

    upstream = dg.AssetSelection.keys(RAW_KEY).upstream() - dg.AssetSelection.keys(RAW_KEY)
    rest = dg.AssetSelection.all() - upstream - dg.AssetSelection.keys(RAW_KEY)
    outcome = PipelineRun()
    start = time.perf_counter()

    def run(selection: dg.AssetSelection, label: str, partition_key: str | None = None) -> bool:
        t0 = time.perf_counter()
        result = dg.materialize(
            [*all_assets, *checks],
            selection=selection,
            partition_key=partition_key,
            instance=instance,
            resources=resources,
            run_config=_config_for(run_config, selection, graph),
            tags={"skinr1/phase": label},
            raise_on_error=False,
        )
        outcome.results.append(result)
        log(f"  {label}: {'ok' if result.success else 'FAILED'} in {time.perf_counter() - t0:.1f}s (run {result.run_id[:8]})")
        return result.success

    log("materializing upstream of raw_datasets (knowledge, demo data)")
    ok = run(upstream, "upstream")
    for key in partition_keys:
        if ok:
            log(f"ingesting raw_datasets[{key}]")
            ok = run(dg.AssetSelection.keys(RAW_KEY), f"raw_datasets[{key}]", partition_key=key)
    if ok:
        log("materializing the rest of the graph")
        run(rest, "downstream")
    outcome.seconds = time.perf_counter() - start
    return outcome


def _config_for(run_config: dict | None, selection: dg.AssetSelection, graph) -> dict | None:
    """Keep only the `ops` entries of assets in this phase: Dagster rejects config for ops not in the run."""
    if not run_config:
        return None
    selected = {k.to_user_string() for k in selection.resolve(graph)}
    ops = {name: cfg for name, cfg in (run_config.get("ops") or {}).items() if name in selected}
    rest = {k: v for k, v in run_config.items() if k != "ops"}
    return {**rest, "ops": ops} if ops else (rest or None)
