"""Per-dataset maps from raw labels to taxonomy nodes, and the frame-level mapping every loader's rows go through.

Why a map per dataset instead of free-text matching: the same string means different things in different
datasets (`df`, `SCC` with Bowen merged in, `unknown`), and a label that silently lands on the wrong node
corrupts the hierarchical reward. So every raw label must be listed, lookups only forgive case and punctuation,
and anything unlisted stops the run with the full list of what is missing (rows are never dropped).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from skinr1_pipeline.knowledge.taxonomy import Taxonomy, normalize_label
from skinr1_pipeline.messages import capped, capped_list

PACKAGED_DIR = "data/label_maps"
_FILE_KEYS = {"dataset", "label_field", "labels", "refine", "fine_labels", "refine_within", "extends"}
_TRAILING_NUMBER = re.compile(r"(\s+\d+)+$")


class LabelMapError(ValueError):
    """A label-map file is malformed or points at nodes the taxonomy does not have; lists every problem."""


class UnmappedLabelsError(ValueError):
    """Some rows carry labels the dataset's map does not know; `.unmapped` lists each (label, file) with its count.

    The message quotes each label capped (`capped`: a 20 MB label must not become a 20 MB log line) and points at
    the first row of each, in the label field, so the user can find it; `.unmapped` keeps the full labels.
    """

    def __init__(
        self, dataset: str, unmapped: list[dict[str, Any]], *, field: str = "", first_rows: list[Any] | None = None
    ) -> None:
        self.dataset = dataset
        self.unmapped = unmapped
        rows = sum(int(u["count"]) for u in unmapped)
        firsts = first_rows or [None] * len(unmapped)
        lines = [
            f"  - {capped(u['label'])!r}: {u['count']} row(s) in {u['file']}" + (f" (first: row {r})" if r else "")
            for u, r in zip(unmapped, firsts)
        ]
        super().__init__(
            f"{dataset}: {len(unmapped)} unmapped label(s) on {rows} row(s)"
            + (f" (field: {capped(field)})" if field else "")
            + "; add them to the dataset's label map (or an override file in the label-map directory):\n"
            + "\n".join(lines)
        )


@dataclass
class LabelMap:
    """One dataset's vocabulary. Keys of `labels`, `fine_labels` and `refine_within` are normalised labels."""

    dataset: str
    label_field: str
    labels: dict[str, str]
    refine: bool = False
    fine_labels: dict[str, str] = field(default_factory=dict)
    refine_within: dict[str, tuple[str, ...]] = field(default_factory=dict)
    source: str = "<memory>"

    def lookup(self, raw: Any) -> str | None:
        """Node for a raw label (the folder part for refining maps), or None."""
        if raw is None or (isinstance(raw, float) and pd.isna(raw)):
            return None
        coarse = str(raw).split("|", 1)[0] if self.refine else str(raw)
        return self.labels.get(normalize_label(coarse))

    def resolve(self, raw: Any, taxonomy: Taxonomy) -> tuple[str, bool] | None:
        """(node, refined) for a raw label, or None if unmapped. `refined` is True when the fine part was used."""
        coarse_node = self.lookup(raw)
        if coarse_node is None or not self.refine:
            return None if coarse_node is None else (coarse_node, False)
        folder, _, fine = str(raw).partition("|")
        fine_node = self._refine(normalize_label(folder), coarse_node, fine, taxonomy)
        return (fine_node, True) if fine_node else (coarse_node, False)

    def _refine(self, folder_key: str, folder_node: str, fine: str, taxonomy: Taxonomy) -> str | None:
        """Most specific node named by the fine text, if it sits where the folder allows; else None."""
        text = _TRAILING_NUMBER.sub("", normalize_label(fine))
        words = text.split()
        found = None
        for size in range(len(words), 0, -1):  # longest leading run of words that names something
            candidate = " ".join(words[:size])
            found = self.fine_labels.get(candidate) or taxonomy.resolve(candidate)
            if found:
                break
        if not found or taxonomy.is_ancestor(found, folder_node):  # never coarser than the folder itself
            return None
        if taxonomy.is_ancestor(folder_node, found):
            return found
        if any(taxonomy.is_ancestor(extra, found) for extra in self.refine_within.get(folder_key, ())):
            return found
        return None

    def map_frame(self, records: pd.DataFrame, taxonomy: Taxonomy) -> tuple[pd.DataFrame, dict[str, Any]]:
        """A copy of `records` with MAPPED_COLUMNS added, plus a report; raises UnmappedLabelsError, never drops
        rows."""
        if "raw_label" not in records.columns:
            raise ValueError(f"{self.dataset}: records have no 'raw_label' column (columns: {list(records.columns)})")
        files = records["metadata_file"] if "metadata_file" in records.columns else pd.Series(None, index=records.index)
        keys = records["raw_label"].map(_display)  # None/NaN become one hashable "<missing>" key
        resolved: dict[str, tuple[str, bool] | None] = {}
        for key, raw in zip(keys, records["raw_label"]):
            if key not in resolved:
                resolved[key] = None if key == _MISSING else self.resolve(raw, taxonomy)

        missing_mask = keys.map(lambda k: resolved[k] is None)
        if bool(missing_mask.any()):
            rows = records.get("metadata_row", pd.Series(None, index=records.index))
            unmapped, first_rows = self._unmapped(keys[missing_mask], files[missing_mask], rows[missing_mask])
            raise UnmappedLabelsError(self.dataset, unmapped, field=self.label_field, first_rows=first_rows)

        paths = {node: taxonomy.path(node) for node, _ in set(v for v in resolved.values() if v)}
        out = records.copy()
        nodes = keys.map(lambda k: resolved[k][0])  # type: ignore[index]
        out["taxonomy_node"] = nodes.astype("object")
        out["taxonomy_path"] = nodes.map(lambda n: list(paths[n]))
        out["taxonomy_depth"] = nodes.map(lambda n: len(paths[n]) - 1).astype("int64")
        out["bucket"] = nodes.map(lambda n: taxonomy[n].bucket).astype("object")
        return out, self._report(keys, resolved, nodes)

    def _unmapped(self, keys: pd.Series, files: pd.Series, rows: pd.Series) -> tuple[list[dict[str, Any]], list[Any]]:
        """Each unmapped (label, file) with its count, and the first row it is on (None where rows are unknown)."""
        shown = keys.map(lambda k: k.split("|", 1)[0] if self.refine else k)  # a refining map fails on its folder
        table = pd.DataFrame({"label": shown, "file": files.map(_display), "row": pd.to_numeric(rows, errors="coerce")})
        groups = table.groupby(["label", "file"], sort=True, dropna=False)["row"]
        counts, first = groups.size(), groups.min()
        unmapped = [
            {"dataset": self.dataset, "label": label, "count": int(n), "file": file}
            for (label, file), n in counts.items()
        ]
        return unmapped, [None if pd.isna(first[key]) else int(first[key]) for key in counts.index]

    def _report(
        self, keys: pd.Series, resolved: dict[str, tuple[str, bool] | None], nodes: pd.Series
    ) -> dict[str, Any]:
        per_label = {
            key: {"node": resolved[key][0], "count": int(n), "refined": bool(resolved[key][1])}  # type: ignore[index]
            for key, n in keys.value_counts().items()
        }
        refined = sum(v["count"] for v in per_label.values() if v["refined"])
        fallback = {k: v["count"] for k, v in per_label.items() if self.refine and not v["refined"]}
        return {
            "dataset": self.dataset,
            "rows": int(len(keys)),
            "mapped_rows": int(len(keys)),
            "coverage": 1.0,
            "labels": per_label,
            "nodes": {str(k): int(v) for k, v in nodes.value_counts().sort_index().items()},
            "refined_rows": int(refined),
            "coarse_fallback_rows": int(sum(fallback.values())),
            "coarse_fallback_labels": dict(sorted(fallback.items(), key=lambda kv: -kv[1])),
        }


_MISSING = "<missing>"


def _display(value: Any) -> str:
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return _MISSING
    return str(value)


# ---- loading ----------------------------------------------------------------------------------------------
def load_label_maps(taxonomy: Taxonomy, extra_dir: Path | str | None = None) -> dict[str, LabelMap]:
    """Packaged maps, extended/overridden by same-format YAML files in `extra_dir`; every target is validated.

    An override file for a packaged dataset adds or replaces individual labels (and fine labels); other keys it
    sets replace the packaged value. A file for a new dataset key adds a new map.
    """
    docs: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for source, text in _packaged_texts():
        _merge_doc(docs, _parse(source, text, problems), source, override=False, problems=problems)
    if extra_dir is not None:
        extra = Path(extra_dir)
        if not extra.is_dir():
            raise LabelMapError(f"label-map override directory {extra} does not exist or is not a folder")
        for path in sorted([*extra.glob("*.yaml"), *extra.glob("*.yml")]):
            _merge_doc(
                docs, _parse(str(path), path.read_text("utf-8"), problems), str(path), override=True, problems=problems
            )
    maps = {key: _build(key, docs, taxonomy, problems) for key in sorted(docs)}
    problems = list(dict.fromkeys(problems))  # a parent reached through 'extends' is checked more than once
    if problems:
        raise LabelMapError(f"{len(problems)} label-map problem(s):\n  - " + "\n  - ".join(problems))
    return maps


def _packaged_texts() -> Iterable[tuple[str, str]]:
    folder = resources.files("skinr1_pipeline.knowledge").joinpath(PACKAGED_DIR)
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith((".yaml", ".yml")):
            yield f"skinr1_pipeline/knowledge/{PACKAGED_DIR}/{entry.name}", entry.read_text("utf-8")


def _parse(source: str, text: str, problems: list[str]) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problems.append(f"{source}: not valid YAML: {capped(exc, 500)}")
        return None
    if not isinstance(data, dict):
        problems.append(f"{source}: expected a mapping with 'dataset', 'label_field' and 'labels'")
        return None
    unknown = set(data) - _FILE_KEYS
    if unknown:
        shown = capped_list(sorted(map(str, unknown)))
        problems.append(f"{source}: unknown keys {shown}; allowed {sorted(_FILE_KEYS)}")
    if not isinstance(data.get("dataset"), str) or not data["dataset"].strip():
        problems.append(f"{source}: 'dataset' must be a non-empty string")
        return None
    for key in ("labels", "fine_labels", "refine_within"):
        if key in data and not isinstance(data[key] or {}, dict):
            problems.append(f"{source}: '{key}' must be a mapping")
            data[key] = {}
    data["_sources"] = {}
    for key in ("labels", "fine_labels"):
        data[key] = _normalised(data.get(key) or {}, source, key, problems, data["_sources"])
    data["refine_within"] = {normalize_label(k): v for k, v in (data.get("refine_within") or {}).items()}
    return data


def _normalised(entries: dict[Any, Any], source: str, key: str, problems: list[str], sources: dict) -> dict[str, str]:
    out: dict[str, str] = {}
    raw_of: dict[str, Any] = {}
    for raw, node in entries.items():
        norm = normalize_label(str(raw))
        if not norm:
            problems.append(f"{source}: {key} has an empty label {capped(raw)!r}")
            continue
        if not isinstance(node, str):
            problems.append(f"{source}: {key}[{capped(raw)!r}] must name one taxonomy node id, got {capped(node)!r}")
            continue
        if norm in out and out[norm] != node:
            problems.append(
                f"{source}: {key} {capped(raw)!r} and {capped(raw_of[norm])!r} are the same label but map "
                f"to {capped(node)} and {capped(out[norm])}"
            )
            continue
        out[norm], raw_of[norm] = node, raw
        sources[(key, norm)] = (source, raw)
    return out


def _merge_doc(docs: dict, doc: dict | None, source: str, *, override: bool, problems: list[str]) -> None:
    if doc is None:
        return
    key = doc["dataset"].strip()
    if key not in docs:
        docs[key] = doc
        return
    if not override:
        problems.append(f"{source}: dataset {capped(key)!r} is already defined by another packaged file")
        return
    base = docs[key]
    for name in ("labels", "fine_labels", "refine_within", "_sources"):
        base[name] = {**base.get(name, {}), **doc.get(name, {})}
    for name in ("label_field", "refine", "extends"):
        if name in doc:
            base[name] = doc[name]


def _build(key: str, docs: dict, taxonomy: Taxonomy, problems: list[str], seen: tuple[str, ...] = ()) -> LabelMap:
    doc = docs[key]
    labels: dict[str, str] = {}
    sources: dict = {}
    for parent in _as_list(doc.get("extends")):
        if parent == key or parent in seen:
            problems.append(f"dataset {capped(key)!r}: 'extends' forms a cycle through {capped(parent)!r}")
        elif parent not in docs:
            problems.append(f"dataset {capped(key)!r}: 'extends' names unknown dataset {capped(parent)!r}")
        else:
            labels.update(_build(parent, docs, taxonomy, problems, (*seen, key)).labels)
    labels.update(doc.get("labels") or {})
    sources.update(doc.get("_sources", {}))
    for name, mapping in (("labels", doc.get("labels") or {}), ("fine_labels", doc.get("fine_labels") or {})):
        for norm, node in mapping.items():
            if node not in taxonomy:
                file, raw = sources.get((name, norm), ("<unknown file>", norm))
                problems.append(f"{file}: {name} {capped(raw)!r} -> {capped(node)!r} is not a taxonomy node id")
    refine_within: dict[str, tuple[str, ...]] = {}
    for folder, ids in (doc.get("refine_within") or {}).items():
        ids = _as_list(ids)
        for node in ids:
            if node not in taxonomy:
                problems.append(
                    f"dataset {capped(key)!r}: refine_within[{capped(folder)!r}] -> {capped(node)!r} "
                    "is not a taxonomy node id"
                )
        if folder not in labels:
            problems.append(
                f"dataset {capped(key)!r}: refine_within names folder {capped(folder)!r} that is not in 'labels'"
            )
        refine_within[folder] = tuple(ids)
    if not labels:
        problems.append(f"dataset {capped(key)!r}: no labels")
    return LabelMap(
        dataset=key,
        label_field=str(doc.get("label_field") or "label"),
        labels=labels,
        refine=bool(doc.get("refine", False)),
        fine_labels=dict(doc.get("fine_labels") or {}),
        refine_within=refine_within,
        source=", ".join(sorted({s for s, _ in sources.values()})) or "<memory>",
    )


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
