"""Differential-diagnosis graph: which taxonomy nodes are clinically confused with which, and why.

Why curated groups with sentences rather than an LLM-extracted edge list (what Skin-R1 does from textbook
text): the DDx trajectories and the DDx evaluation need a neighbour to be a genuine look-alike, and the
synthesis prompts need the reason it is confused and the sign that separates it. Each edge keeps both.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from skinr1_pipeline.knowledge.taxonomy import Taxonomy

_TOP_KEYS = {"version", "groups"}
_GROUP_KEYS = {"id", "title", "index", "do_not_miss", "neighbours", "note"}
_NEIGHBOUR_KEYS = {"node", "shared", "distinguish"}


class DDxError(ValueError):
    """The DDx file is malformed or names unknown nodes; the message lists every problem with group and field."""


@dataclass(frozen=True)
class DDxGroup:
    id: str
    title: str
    index: str
    do_not_miss: tuple[str, ...]
    neighbours: tuple[str, ...]


class DDxGraph:
    """Undirected graph over taxonomy node ids. Build with `DDxGraph.load(taxonomy)` or `from_dict`."""

    def __init__(self, graph: nx.Graph, groups: list[DDxGroup], source: str = "<memory>") -> None:
        self.graph = graph
        self.groups = {g.id: g for g in groups}
        self.source = source

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def load(cls, taxonomy: Taxonomy, path: str | Path | None = None) -> DDxGraph:
        if path is None:
            text = resources.files("skinr1_pipeline.knowledge").joinpath("data/ddx.yaml").read_text("utf-8")
            source = "skinr1_pipeline/knowledge/data/ddx.yaml"
        else:
            text = Path(path).read_text("utf-8")
            source = str(path)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise DDxError(f"{source}: not valid YAML: {exc}") from exc
        return cls.from_dict(data, taxonomy, source=source)

    @classmethod
    def from_dict(cls, data: Any, taxonomy: Taxonomy, source: str = "<memory>") -> DDxGraph:
        problems: list[str] = []
        if not isinstance(data, dict) or not isinstance(data.get("groups"), list):
            raise DDxError(f"{source}: expected a mapping with a 'groups' list")
        if set(data) - _TOP_KEYS:
            problems.append(f"top level: unknown keys {sorted(set(data) - _TOP_KEYS)}; allowed {sorted(_TOP_KEYS)}")
        parsed = [(raw, _parse_group(raw, i, taxonomy, problems)) for i, raw in enumerate(data["groups"])]
        seen: set[str] = set()
        for raw in data["groups"]:
            gid = raw.get("id") if isinstance(raw, dict) else None
            if isinstance(gid, str) and gid in seen:
                problems.append(f"group {gid}: duplicate group id")
            seen.add(gid)  # type: ignore[arg-type]
        if problems:
            raise DDxError(f"{source}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))

        pairs = [(raw, group) for raw, group in parsed if group is not None]
        graph = nx.Graph()
        for _, group in pairs:
            for node in (group.index, *group.neighbours):
                graph.add_node(node, do_not_miss=False, groups=[])
        for raw, group in pairs:
            for node in (group.index, *group.neighbours):
                if group.id not in graph.nodes[node]["groups"]:
                    graph.nodes[node]["groups"].append(group.id)
            for node in group.do_not_miss:
                graph.nodes[node]["do_not_miss"] = True
            for item in raw["neighbours"]:
                a, b = group.index, item["node"]
                if not graph.has_edge(a, b):
                    graph.add_edge(a, b, groups=[], shared=[], distinguish=[])
                edge = graph.edges[a, b]
                _append_unique(edge["groups"], group.id)
                _append_unique(edge["shared"], item["shared"].strip())
                _append_unique(edge["distinguish"], item["distinguish"].strip())
        return cls(graph, [g for _, g in pairs], source=source)

    # ---- queries ------------------------------------------------------------------------------------
    def neighbours(self, node_id: str) -> list[str]:
        """Direct look-alikes of a node (empty when the node is in no group)."""
        if node_id not in self.graph:
            return []
        return sorted(self.graph.neighbors(node_id))

    def edge(self, a: str, b: str) -> dict[str, Any]:
        if not self.graph.has_edge(a, b):
            raise KeyError(f"no DDx edge between {a!r} and {b!r}")
        data = self.graph.edges[a, b]
        return {"a": a, "b": b, **{k: list(v) for k, v in data.items()}}

    def is_do_not_miss(self, node_id: str) -> bool:
        return bool(node_id in self.graph and self.graph.nodes[node_id]["do_not_miss"])

    def neighbours_with_expansion(self, node_id: str, taxonomy: Taxonomy) -> list[str]:
        """Look-alikes of a node, its non-category ancestors and its descendants (Skin-R1's parent/child expansion).

        A sample labelled `nodular_bcc` thus inherits the look-alikes listed for `basal_cell_carcinoma`, and a
        sample labelled with a group node inherits those of its members. The expanded family itself is excluded.
        """
        family = {node_id} | taxonomy.descendants(node_id)
        for ancestor in taxonomy.path(node_id)[:-1]:
            if taxonomy[ancestor].kind != "category":
                family.add(ancestor)
        found: set[str] = set()
        for member in family:
            if member in self.graph:
                found.update(self.graph.neighbors(member))
        return sorted(found - family)

    # ---- views --------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        degrees = [d for _, d in self.graph.degree()] or [0]
        return {
            "groups": len(self.groups),
            "nodes": self.graph.number_of_nodes(),
            "edges": self.graph.number_of_edges(),
            "do_not_miss_nodes": sum(1 for _, d in self.graph.nodes(data=True) if d["do_not_miss"]),
            "multi_group_edges": sum(1 for *_, d in self.graph.edges(data=True) if len(d["groups"]) > 1),
            "components": nx.number_connected_components(self.graph) if self.graph.number_of_nodes() else 0,
            "degree_min": min(degrees),
            "degree_max": max(degrees),
            "degree_mean": round(statistics.fmean(degrees), 3),
            "degree_median": float(statistics.median(degrees)),
        }

    def to_records(self) -> list[dict[str, Any]]:
        """One row per edge (endpoints sorted), sentences joined, for tables and asset metadata."""
        rows = []
        for a, b, data in self.graph.edges(data=True):
            a, b = sorted((a, b))
            rows.append(
                {
                    "a": a,
                    "b": b,
                    "groups": ", ".join(data["groups"]),
                    "shared": " | ".join(data["shared"]),
                    "distinguish": " | ".join(data["distinguish"]),
                }
            )
        return sorted(rows, key=lambda r: (r["a"], r["b"]))


def _append_unique(items: list[str], value: str) -> None:
    if value not in items:
        items.append(value)


def _parse_group(raw: Any, position: int, taxonomy: Taxonomy, problems: list[str]) -> DDxGroup | None:
    """Validate one group, appending every problem found; None when it is too broken to use."""
    if not isinstance(raw, dict):
        problems.append(f"groups[{position}]: a group must be a mapping")
        return None
    gid = raw.get("id")
    where = f"group {gid}" if isinstance(gid, str) and gid else f"groups[{position}]"
    start = len(problems)
    if not isinstance(gid, str) or not gid:
        problems.append(f"{where}: 'id' must be a non-empty string")
    if set(raw) - _GROUP_KEYS:
        problems.append(f"{where}: unknown keys {sorted(set(raw) - _GROUP_KEYS)}; allowed {sorted(_GROUP_KEYS)}")
    if not isinstance(raw.get("title"), str) or not raw["title"].strip():
        problems.append(f"{where}: 'title' must be a non-empty string")
    index = raw.get("index")
    if not isinstance(index, str) or index not in taxonomy:
        problems.append(f"{where}: index {index!r} is not a taxonomy node id")
    dnm = raw.get("do_not_miss") or []
    if not isinstance(dnm, list):
        problems.append(f"{where}: 'do_not_miss' must be a list of node ids")
        dnm = []
    items = raw.get("neighbours")
    if not isinstance(items, list) or not items:
        problems.append(f"{where}: 'neighbours' needs at least one neighbour")
        items = []
    members: list[str] = []
    for i, item in enumerate(items):
        field = f"{where}: neighbours[{i}]"
        if not isinstance(item, dict):
            problems.append(f"{field}: must be a mapping with node, shared, distinguish")
            continue
        if set(item) - _NEIGHBOUR_KEYS:
            problems.append(
                f"{field}: unknown keys {sorted(set(item) - _NEIGHBOUR_KEYS)}; allowed {sorted(_NEIGHBOUR_KEYS)}"
            )
        node = item.get("node")
        if not isinstance(node, str) or node not in taxonomy:
            problems.append(f"{field}.node: {node!r} is not a taxonomy node id")
        elif node == index:
            problems.append(f"{field}.node: {node!r} is the group's own index (self-loop)")
        elif node in members:
            problems.append(f"{field}.node: {node!r} is listed twice")
        else:
            members.append(node)
        for key in ("shared", "distinguish"):
            value = item.get(key)
            if not isinstance(value, str) or not value.strip():
                problems.append(f"{field}.{key}: must be a non-empty sentence")
    for node in dnm:
        if node not in taxonomy:
            problems.append(f"{where}: do_not_miss {node!r} is not a taxonomy node id")
        elif node != index and node not in members:
            problems.append(f"{where}: do_not_miss {node!r} is neither the index nor a neighbour of this group")
    if len(problems) > start:
        return None
    return DDxGroup(
        id=gid,  # type: ignore[arg-type]
        title=raw["title"].strip(),
        index=index,  # type: ignore[arg-type]
        do_not_miss=tuple(dnm),
        neighbours=tuple(members),
    )
