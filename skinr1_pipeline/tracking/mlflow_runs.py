"""MLflow run layout: one parent run per orchestrator run, one nested run per asset (or training entry point).

Plain functions over `mlflow`, no Dagster import, so a training script started by Dagster Pipes or by
`accelerate launch` attaches to the same parent by passing the same `orchestrator_run_id`. Steps of one run
may execute in separate processes; a file lock makes "find or create the parent" safe between them.

Lineage lives in tags, so a plain runs search finds it: `skinr1.lineage` (the data version a run descends from),
`skinr1.upstream.<input>` (the run that produced each input) and `skinr1.data_version.<input>`. `collect_lineage`
walks those tags upward from any run; dataset inputs carry full-content digests (`frame_digest`), not MLflow's
default digest of the first 10,000 rows' string and number columns.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import re
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

PARENT_TAG = "skinr1.role"
RUN_ID_TAG = "dagster.run_id"
ASSET_TAG, PARTITION_TAG = "dagster.asset_key", "dagster.partition"
LINEAGE_TAG = "skinr1.lineage"
UPSTREAM_PREFIX = "skinr1.upstream."
DATA_VERSION_PREFIX = "skinr1.data_version."
EVALUATED_RUN_TAG = "skinr1.evaluated_run"  # an evaluation run: the run that trained the adapter it scored
CHAIN_PREFIX = "skinr1.chain."
NOTE_TAG = "mlflow.note.content"  # the run page's Markdown description
DIGEST_CHARS = 16
#: The registered model the pipeline's candidates and champion are versions of. Here, not in registry.py, which
#: imports MLflow at module level: the Dagster definitions and `diagnose` name it without loading MLflow.
REGISTERED_MODEL = "skinr1-grpo"


def _mlflow():
    import mlflow  # imported lazily: it costs seconds and only tracked steps need it

    return mlflow


def default_artifact_location(tracking_uri: str) -> str | None:
    """For a local sqlite store, keep artifacts beside the database instead of MLflow's ./mlruns default."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "artifacts").resolve().as_uri()
    return None


def ensure_experiment(tracking_uri: str, experiment: str) -> str:
    mlflow = _mlflow()
    if tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(experiment, artifact_location=default_artifact_location(tracking_uri))
    except Exception:  # another process created it first
        found = client.get_experiment_by_name(experiment)
        if found is None:
            raise
        return found.experiment_id


@contextmanager
def _lock(tracking_uri: str) -> Iterator[None]:
    if tracking_uri.startswith("sqlite:///"):
        lock_path = Path(tracking_uri.removeprefix("sqlite:///")).parent / ".parent-run.lock"
    else:
        lock_path = Path.home() / ".skinr1-mlflow-parent.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with lock_path.open("w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_parent_run(
    tracking_uri: str, experiment: str, orchestrator_run_id: str, run_name: str, tags: Mapping[str, str] | None = None
) -> str:
    """The MLflow run id standing for one orchestrator run, created on first use."""
    mlflow = _mlflow()
    experiment_id = ensure_experiment(tracking_uri, experiment)
    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    query = f"tags.`{RUN_ID_TAG}` = '{orchestrator_run_id}' and tags.`{PARENT_TAG}` = 'parent'"
    with _lock(tracking_uri):
        existing = client.search_runs([experiment_id], filter_string=query, max_results=1)
        if existing:
            return existing[0].info.run_id
        run = client.create_run(
            experiment_id,
            run_name=run_name,
            tags={PARENT_TAG: "parent", RUN_ID_TAG: orchestrator_run_id, **dict(tags or {})},
        )
        return run.info.run_id


def finish_parent_run(tracking_uri: str, parent_run_id: str, status: str = "FINISHED") -> None:
    _mlflow().MlflowClient(tracking_uri=tracking_uri).set_terminated(parent_run_id, status=status)


@contextmanager
def nested_run(
    tracking_uri: str,
    experiment: str,
    parent_run_id: str,
    run_name: str,
    tags: Mapping[str, str] | None = None,
    params: Mapping[str, Any] | None = None,
) -> Iterator[Any]:
    """Start a child run under `parent_run_id`, made active for `mlflow.log_*` calls inside the block."""
    mlflow = _mlflow()
    mlflow.set_tracking_uri(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, experiment)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=run_name,
        nested=True,
        parent_run_id=parent_run_id,
        tags={PARENT_TAG: "child", "mlflow.parentRunId": parent_run_id, **dict(tags or {})},
    ) as run:
        if params:
            mlflow.log_params({k: _param(v) for k, v in params.items()})
        yield run


def _param(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text[:6000]


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (list, tuple)) or (getattr(value, "ndim", 0) > 0 and hasattr(value, "tolist"))


def _cell_text(value: Any) -> str | None:
    """A cell of a list-valued column as a stable string (taxonomy paths read back from Parquet are numpy arrays;
    dicts as sorted JSON); missing stays missing."""
    if _is_sequence(value):
        return ">".join(map(str, list(value)))
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True, default=str)
    return None if value is None else str(value)


def flat_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with list-, array- and dict-valued cells rendered as strings, so they can be hashed and typed."""
    flat = frame.copy()
    for column in flat.columns:
        if flat[column].dtype == object and flat[column].map(lambda v: _is_sequence(v) or isinstance(v, dict)).any():
            flat[column] = flat[column].map(_cell_text)
    return flat


def frame_digest(frame: pd.DataFrame) -> str:
    """Digest of every row and column of `frame` (names, dtypes, cell values, order), index excluded.

    Why not MLflow's dataset digest: it hashes only the first 10,000 rows and only string and number columns, so two
    training sets differing in row 10,001 or in a list column would share a digest.
    """
    flat = flat_frame(frame)
    for column in flat.columns:
        if flat[column].dtype == object:
            flat[column] = flat[column].map(lambda v: f"{type(v).__name__}:{v}")
    digest = hashlib.sha256()
    digest.update(json.dumps([[str(c), str(t)] for c, t in flat.dtypes.items()]).encode())
    digest.update(str(len(flat)).encode())
    if len(flat.columns):
        digest.update(pd.util.hash_pandas_object(flat, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:DIGEST_CHARS]


def log_dataframe_input(
    frame: pd.DataFrame, name: str, source: str, context: str, tags: Mapping[str, str] | None = None
) -> str:
    """Log a table as an MLflow dataset input of the active run, with its full-content digest; returns the digest.

    List- and dict-valued columns (taxonomy paths) are rendered as strings first, because MLflow infers a schema
    from the cells.
    """
    mlflow = _mlflow()
    flat = flat_frame(frame)
    digest = frame_digest(frame)
    with warnings.catch_warnings():
        # A local path matches two equivalent source classes, and the integer-column schema hint concerns
        # model serving; neither says anything about this dataset.
        warnings.filterwarnings(
            "ignore", message="The specified dataset source can be interpreted", category=UserWarning
        )
        warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer", category=UserWarning)
        dataset = mlflow.data.from_pandas(flat, source=source, name=name, digest=digest)
        mlflow.log_input(dataset, context=context, tags=dict(tags or {}))
    return digest


def log_parquet_input(path: str | Path, name: str, context: str, *, split: str | None = None) -> str:
    """Log a Parquet file (its rows of one `split`, when given) as a dataset input; returns the digest.

    Read back from the file rather than taken from memory, so the producing run and every consuming run log the
    same digest for the same file (and MLflow shows them as one dataset).
    """
    frame = pd.read_parquet(path)
    if split is not None:
        frame = frame[frame["split"] == split].reset_index(drop=True)
    return log_dataframe_input(frame, name, str(path), context)


def _tag_part(text: str) -> str:
    return re.sub(r"[^\w\-. /]", "_", text)


def input_label(asset_key: str, partition: str | None = None) -> str:
    """How a consumed input is named in tags: `<asset>` or `<asset>.<partition>`."""
    return _tag_part(f"{asset_key}.{partition}" if partition else asset_key)


def lineage_tags(lineage: str, upstream_runs: Mapping[str, str], data_versions: Mapping[str, str]) -> dict[str, str]:
    """Tags naming the data version a run descends from and, per consumed input, its run and data version."""
    tags = {f"{UPSTREAM_PREFIX}{label}": run_id for label, run_id in upstream_runs.items() if run_id}
    tags.update({f"{DATA_VERSION_PREFIX}{label}": version for label, version in data_versions.items() if version})
    if lineage:
        tags[LINEAGE_TAG] = lineage
    return tags


def inherited_lineage(tracking_uri: str, run_ids: Iterable[str]) -> str:
    """The `skinr1.lineage` of the given (input) runs: one value, or several comma-joined when inputs descend from
    different data versions (then a `LIKE '%<digest>%'` search still finds the run)."""
    client = _mlflow().MlflowClient(tracking_uri=tracking_uri)
    found: set[str] = set()
    for run_id in set(run_ids):
        try:
            value = client.get_run(run_id).data.tags.get(LINEAGE_TAG, "")
        except Exception:  # noqa: BLE001 - a deleted or foreign run: nothing to inherit from it
            continue
        found.update(v for v in value.split(",") if v)
    return ",".join(sorted(found))


def tag_parent_lineage(tracking_uri: str, parent_run_id: str, lineage: str) -> None:
    """Give the parent (one orchestrator run) the lineage of its first child that has one, so a search by lineage
    also lists the parents of that pipeline's runs."""
    client = _mlflow().MlflowClient(tracking_uri=tracking_uri)
    if lineage and LINEAGE_TAG not in client.get_run(parent_run_id).data.tags:
        client.set_tag(parent_run_id, LINEAGE_TAG, lineage)


def collect_lineage(tracking_uri: str, run_id: str, *, max_runs: int = 500) -> dict[str, dict[str, Any]]:
    """Every run reachable from `run_id` through `skinr1.upstream.*` tags: run id -> asset, partition, orchestrator
    run, lineage, its inputs' runs and data versions, and the datasets it logged (name, digest, context)."""
    client = _mlflow().MlflowClient(tracking_uri=tracking_uri)
    nodes: dict[str, dict[str, Any]] = {}
    queue = [run_id]
    while queue and len(nodes) < max_runs:
        current = queue.pop(0)
        if current in nodes:
            continue
        try:
            run = client.get_run(current)
        except Exception as exc:  # noqa: BLE001 - deleted run or other store: say so, keep walking
            nodes[current] = {"missing": f"{type(exc).__name__}: {str(exc)[:200]}"}
            continue
        tags = run.data.tags
        upstream = {
            k.removeprefix(UPSTREAM_PREFIX): v for k, v in sorted(tags.items()) if k.startswith(UPSTREAM_PREFIX)
        }
        nodes[current] = {
            "asset": tags.get(ASSET_TAG, ""),
            "partition": tags.get(PARTITION_TAG, ""),
            "run_name": run.info.run_name,
            "experiment_id": run.info.experiment_id,
            "orchestrator_run_id": tags.get(RUN_ID_TAG, ""),
            "lineage": tags.get(LINEAGE_TAG, ""),
            "code_version": tags.get("dagster.code_version", ""),
            "status": run.info.status,
            "evaluated_run": tags.get(EVALUATED_RUN_TAG, ""),
            "upstream": upstream,
            "data_versions": {
                k.removeprefix(DATA_VERSION_PREFIX): v
                for k, v in sorted(tags.items())
                if k.startswith(DATA_VERSION_PREFIX)
            },
            "datasets": [
                {
                    "name": i.dataset.name,
                    "digest": i.dataset.digest,
                    "context": next((t.value for t in i.tags if t.key == "mlflow.data.context"), ""),
                }
                for i in (run.inputs.dataset_inputs if run.inputs else [])
            ],
        }
        queue.extend(upstream.values())
    return nodes


def follow(nodes: Mapping[str, Mapping[str, Any]], start: str, route: Sequence[str]) -> list[dict[str, Any]]:
    """The runs met walking `route` (input labels, `<asset>.*` for every partition) upward from `start`.

    Returns one step per label that was found: {"input": label, "runs": [run id, ...]}; the walk stops where a
    label is missing (a run logged before lineage was recorded, or an input the pipeline no longer has).
    """
    steps, current = [], [start]
    for label in route:
        found = []
        for run_id in current:
            upstream = nodes.get(run_id, {}).get("upstream", {})
            if label.endswith(".*"):
                prefix = label[:-1]
                found += [r for k, r in sorted(upstream.items()) if k.startswith(prefix)]
            elif label in upstream:
                found.append(upstream[label])
        found = list(dict.fromkeys(found))
        if not found:
            break
        steps.append({"input": label, "runs": found})
        current = found
    return steps


def chain_tags(nodes: Mapping[str, Mapping[str, Any]], steps: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Tags summarising a chain (`follow`): per step, its run ids and the datasets those runs logged as
    `name=digest` (what the MLflow UI shows in the run's tag table)."""
    tags: dict[str, str] = {}
    for step in steps:
        key = _tag_part(step["input"].removesuffix(".*"))
        tags[f"{CHAIN_PREFIX}{key}"] = ",".join(step["runs"])
        datasets = sorted(
            {f"{d['name']}={d['digest']}" for r in step["runs"] for d in nodes.get(r, {}).get("datasets", [])}
        )
        if datasets:
            tags[f"{CHAIN_PREFIX}{key}.datasets"] = ",".join(datasets)[:5000]
    return tags


def chain_markdown(
    nodes: Mapping[str, Mapping[str, Any]], steps: Sequence[Mapping[str, Any]], title: str = "Lineage"
) -> str:
    """The chain, data first, as Markdown with a link to each run (for the run page's description)."""
    lines = [f"**{title}** (data first; full graph in `lineage.json`):", ""]
    for step in reversed(steps):
        parts = []
        for run_id in step["runs"]:
            node = nodes.get(run_id, {})
            name = node.get("run_name") or run_id
            link = f"[{name}](#/experiments/{node.get('experiment_id', '')}/runs/{run_id})"
            digests = ", ".join(f"{d['name']} `{d['digest']}`" for d in node.get("datasets", []))
            parts.append(f"{link}{f' ({digests})' if digests else ''}")
        lines.append(f"1. {step['input'].removesuffix('.*')}: " + "; ".join(parts))
    lines.append("1. this run")
    return "\n".join(lines)
