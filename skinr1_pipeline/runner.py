"""Materialize the whole asset graph in process, in the order a backfill from the Dagster UI would use.

The graph is walked in topological order and cut into segments of assets that share a partitioning: an
unpartitioned segment is one run, a partitioned segment (source datasets, model variants) is one run per
partition key. A failed run stops the walk so a broken gate never feeds the next stage. Used by `skinr1 demo`
(against the project's persistent Dagster instance, so the runs show in `dagster dev`) and by the end-to-end
test (against a temporary instance).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import dagster as dg


@dataclass
class PipelineRun:
    results: list[dg.ExecuteInProcessResult] = field(default_factory=list)
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    # Wall seconds per asset step (`asset[partition]`), from the runs' step start/end events: a segment's run holds
    # several assets, and a newcomer wants to know which stage the time goes to.
    step_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def success(self) -> bool:
        return bool(self.results) and all(r.success for r in self.results)

    def check_evaluations(self) -> list[dg.AssetCheckEvaluation]:
        return [e for r in self.results for e in r.get_asset_check_evaluations()]

    def materialized_keys(self) -> set[str]:
        return {
            e.asset_key.to_user_string()
            for r in self.results
            for e in r.get_asset_materialization_events()
            if e.asset_key is not None
        }


@dataclass
class Segment:
    keys: list[dg.AssetKey]
    partitions: dg.PartitionsDefinition | None

    @property
    def label(self) -> str:
        names = [k.to_user_string() for k in self.keys]
        return names[0] if len(names) == 1 else f"{names[0]} .. {names[-1]} ({len(names)} assets)"


def plan_segments(defs: dg.Definitions, selection: dg.AssetSelection | None = None) -> list[Segment]:
    """Topological order; each asset joins the latest segment with its partitioning that no parent of it comes
    after, else opens a new one. Fewer segments means fewer runs (each run pays Dagster's start-up)."""
    graph = defs.get_repository_def().asset_graph
    wanted = (selection or dg.AssetSelection.all()).resolve(graph)
    segments: list[Segment] = []
    where: dict[dg.AssetKey, int] = {}
    for level in graph.toposorted_asset_keys_by_level:
        for key in sorted(level, key=lambda k: k.to_user_string()):
            node = graph.get(key)
            if key not in wanted or not node.is_materializable:
                continue
            earliest = max((where[p] for p in node.parent_keys if p in where), default=0)
            target = next(
                (
                    i
                    for i in range(len(segments) - 1, earliest - 1, -1)
                    if segments[i].partitions == node.partitions_def
                ),
                None,
            )
            if target is None:
                segments.append(Segment([], node.partitions_def))
                target = len(segments) - 1
            segments[target].keys.append(key)
            where[key] = target
    return segments


def materialize_all(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    *,
    run_config: dict | None = None,
    selection: dg.AssetSelection | None = None,
    log: Callable[[str], None] = print,
) -> PipelineRun:
    graph = defs.get_repository_def().asset_graph
    assets = [*(defs.assets or []), *(defs.asset_checks or [])]
    resources = dict(defs.resources or {})
    outcome = PipelineRun()
    start = time.perf_counter()
    for segment in plan_segments(defs, selection):
        chosen = dg.AssetSelection.assets(*segment.keys)
        keys = segment.partitions.get_partition_keys() if segment.partitions else [None]
        for partition_key in keys:
            label = f"{segment.label}[{partition_key}]" if partition_key else segment.label
            log(f"materializing {label}")
            t0 = time.perf_counter()
            result = dg.materialize(
                assets,
                selection=chosen,
                partition_key=partition_key,
                instance=instance,
                resources=resources,
                run_config=_config_for(run_config, chosen, graph),
                tags={"skinr1/phase": label},
                raise_on_error=False,
            )
            outcome.results.append(result)
            outcome.phase_seconds[label] = time.perf_counter() - t0
            for step, seconds in step_durations(instance, result.run_id).items():
                outcome.step_seconds[f"{step}[{partition_key}]" if partition_key else step] = seconds
            status = "ok" if result.success else "FAILED"
            log(f"  {status} in {outcome.phase_seconds[label]:.1f}s (run {result.run_id[:8]})")
            if not result.success:
                outcome.seconds = time.perf_counter() - start
                return outcome
    outcome.seconds = time.perf_counter() - start
    return outcome


def step_durations(instance: dg.DagsterInstance, run_id: str) -> dict[str, float]:
    """Seconds from each step's start to its success or failure, in the order the steps started."""
    kinds = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE}
    started: dict[str, float] = {}
    durations: dict[str, float] = {}
    for entry in instance.all_logs(run_id, of_type=kinds):
        step = entry.step_key
        if step is None or entry.dagster_event is None:
            continue
        if entry.dagster_event.event_type == dg.DagsterEventType.STEP_START:
            started[step] = entry.timestamp
        elif step in started:
            durations[step] = entry.timestamp - started[step]
    return durations


def stage_shares(step_seconds: dict[str, float], total: float) -> list[tuple[str, float, float]]:
    """(step, seconds, share of `total`) for every step, longest first; what is not inside a step (run start-up,
    Dagster's own bookkeeping) is reported as one more row so the shares add up to the whole."""
    rows = sorted(step_seconds.items(), key=lambda item: -item[1])
    outside = max(total - sum(step_seconds.values()), 0.0)
    rows.append(("(outside steps: run start-up, event log)", outside))
    return [(name, seconds, seconds / total if total > 0 else 0.0) for name, seconds in rows]


def _config_for(run_config: dict | None, selection: dg.AssetSelection, graph) -> dict | None:
    """Keep only the `ops` entries of assets in this run: Dagster rejects config for ops not in the run."""
    if not run_config:
        return None
    selected = {k.to_user_string() for k in selection.resolve(graph)}
    ops = {name: cfg for name, cfg in (run_config.get("ops") or {}).items() if name in selected}
    rest = {k: v for k, v in run_config.items() if k != "ops"}
    return {**rest, "ops": ops} if ops else (rest or None)
