"""Which knowledge-base entry each dataset class would be reasoned from, and which classes have none.

Why: rationale synthesis (`synthesis/trajectories.py`) grounds a sample in `KnowledgeBase.entry_for(node)`, the entry
of the label's node or of its nearest ancestor that has one. A class whose whole taxonomy path has no entry is
skipped as `no_knowledge`, so it silently drops out of SFT. This module lists, per dataset, every taxonomy node its
label map can produce and the entry that would be used, so gaps are visible (and testable) before any synthesis run.

Pure pandas over the taxonomy, the label maps and the set of nodes with an entry; no orchestration imports.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from skinr1_pipeline.knowledge.label_maps import LabelMap
from skinr1_pipeline.knowledge.taxonomy import Taxonomy

if TYPE_CHECKING:
    from skinr1_pipeline.knowledge.knowledge_base import KnowledgeBase

#: Where a producible class comes from: a `labels` target, a `fine_labels` target, or (refining maps only, and only
#: with `include_refinement=True`) any other node a fine name may refine to under the map's rules.
SOURCES = ("label", "fine_label", "refinement")
COVERAGE_COLUMNS = ["dataset", "node", "name", "kind", "bucket", "source", "raw_labels", "entry", "covered_by"]
SUMMARY_COLUMNS = [
    "dataset",
    "classes",
    "covered",
    "own_entry",
    "ancestor_entry",
    "uncovered",
    "coverage",
    "uncovered_nodes",
]


def nearest_entry(taxonomy: Taxonomy, entry_nodes: Collection[str], node: str) -> str | None:
    """Node id whose entry `KnowledgeBase.entry_for(node)` returns: `node` itself, else its nearest ancestor with an
    entry, else None (also None for a node the taxonomy does not have)."""
    if node not in taxonomy:
        return None
    for ancestor in reversed(taxonomy.path(node)):
        if ancestor in entry_nodes:
            return ancestor
    return None


def producible_classes(
    label_maps: Mapping[str, LabelMap],
    taxonomy: Taxonomy,
    *,
    datasets: Iterable[str] | None = None,
    include_refinement: bool = False,
) -> pd.DataFrame:
    """One row per (dataset, taxonomy node) a dataset's label map can produce: columns dataset, node, source,
    raw_labels (sorted normalised raw labels and fine labels naming the node; empty for refinement rows).

    A node reached several ways keeps the first source in `SOURCES` order. Refinement rows follow
    `LabelMap._refine`: a fine name may land strictly below its folder's node, or anywhere inside the folder's
    `refine_within` subtrees, but never on the folder node's own ancestors.
    """
    names = list(label_maps) if datasets is None else list(datasets)
    unknown = [d for d in names if d not in label_maps]
    if unknown:
        raise KeyError(f"no label map for dataset(s) {unknown}; known: {sorted(label_maps)}")
    rows: list[dict[str, Any]] = []
    for dataset in names:
        lmap = label_maps[dataset]
        found: dict[str, dict[str, Any]] = {}
        sources = [("label", raw, node) for raw, node in sorted(lmap.labels.items())]
        sources += [("fine_label", raw, node) for raw, node in sorted(lmap.fine_labels.items())]
        if include_refinement and lmap.refine:
            sources += [("refinement", None, node) for node in sorted(_refinable(lmap, taxonomy))]
        for source, raw, node in sources:
            row = found.setdefault(node, {"dataset": dataset, "node": node, "source": source, "raw_labels": set()})
            if raw is not None:
                row["raw_labels"].add(raw)
        rows += [{**row, "raw_labels": tuple(sorted(row["raw_labels"]))} for row in found.values()]
    frame = pd.DataFrame(rows, columns=["dataset", "node", "source", "raw_labels"])
    order = {s: i for i, s in enumerate(SOURCES)}
    return (
        frame.assign(_o=frame["source"].map(order))
        .sort_values(["dataset", "_o", "node"], kind="stable")
        .drop(columns="_o")
        .reset_index(drop=True)
    )


def _refinable(lmap: LabelMap, taxonomy: Taxonomy) -> set[str]:
    out: set[str] = set()
    for folder_key, folder_node in lmap.labels.items():
        if folder_node not in taxonomy:
            continue
        reach = set(taxonomy.descendants(folder_node))
        for extra in lmap.refine_within.get(folder_key, ()):
            if extra in taxonomy:
                reach |= {extra} | taxonomy.descendants(extra)
        out |= {n for n in reach if not taxonomy.is_ancestor(n, folder_node)}
    return out


def knowledge_coverage(
    taxonomy: Taxonomy,
    knowledge_base: KnowledgeBase | Collection[str],
    label_maps: Mapping[str, LabelMap],
    *,
    datasets: Iterable[str] | None = None,
    include_refinement: bool = False,
) -> pd.DataFrame:
    """One row per (dataset, producible taxonomy node) with the knowledge entry rationale synthesis would use.

    `knowledge_base` is a loaded `KnowledgeBase` or just the node ids that have an entry. Columns (COVERAGE_COLUMNS):
    dataset, node, name, kind, bucket, source ("label" | "fine_label" | "refinement"), raw_labels, entry (node id of
    the entry used, or None), covered_by ("self" | "ancestor" | None).
    """
    entry_nodes = _entry_nodes(knowledge_base)
    classes = producible_classes(label_maps, taxonomy, datasets=datasets, include_refinement=include_refinement)
    entries = [nearest_entry(taxonomy, entry_nodes, n) for n in classes["node"]]
    out = classes.assign(
        name=[taxonomy[n].name if n in taxonomy else None for n in classes["node"]],
        kind=[taxonomy[n].kind if n in taxonomy else None for n in classes["node"]],
        bucket=[taxonomy[n].bucket if n in taxonomy else None for n in classes["node"]],
        entry=pd.Series(entries, index=classes.index, dtype="object"),
        covered_by=pd.Series(
            [None if e is None else ("self" if e == n else "ancestor") for n, e in zip(classes["node"], entries)],
            index=classes.index,
            dtype="object",
        ),
    )
    return out[COVERAGE_COLUMNS]


def coverage_summary(coverage: pd.DataFrame) -> pd.DataFrame:
    """Per dataset (COVERAGE order kept): classes, covered, own_entry, ancestor_entry, uncovered, coverage (fraction
    of classes with an entry, 1.0 for a dataset without classes) and uncovered_nodes (sorted node ids)."""
    rows = []
    for dataset, group in coverage.groupby("dataset", sort=False):
        how = group["covered_by"]
        missing = sorted(group.loc[how.isna(), "node"])
        total = len(group)
        rows.append(
            {
                "dataset": dataset,
                "classes": total,
                "covered": int(how.notna().sum()),
                "own_entry": int((how == "self").sum()),
                "ancestor_entry": int((how == "ancestor").sum()),
                "uncovered": len(missing),
                "coverage": (total - len(missing)) / total if total else 1.0,
                "uncovered_nodes": missing,
            }
        )
    return pd.DataFrame(rows, columns=SUMMARY_COLUMNS)


def uncovered_classes(coverage: pd.DataFrame) -> dict[str, list[str]]:
    """dataset -> sorted node ids with no entry on their taxonomy path (datasets with none are left out)."""
    summary = coverage_summary(coverage)
    return {row.dataset: list(row.uncovered_nodes) for row in summary.itertuples() if row.uncovered_nodes}


def _entry_nodes(knowledge_base: Any) -> frozenset[str]:
    entries = getattr(knowledge_base, "entries", knowledge_base)
    if isinstance(entries, (str, bytes)):
        raise TypeError("knowledge_base must be a KnowledgeBase or a collection of node ids, not a string")
    return frozenset(str(n) for n in entries)
