"""Hierarchical disease taxonomy: a tree of skin conditions loaded from a YAML data file into networkx.

Why a tree with per-node behaviour: Skin-R1's granularity reward credits a deeper correct node more, and its
malignancy reward needs each label's benign / precancerous_in_situ / malignant bucket. Datasets label at
different depths (HAM10000 `bkl` is a group, Derm7pt `clark nevus` a subtype), so every label maps to a node,
internal or leaf, and the path root -> node is the unit of credit.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

BEHAVIOURS = ("benign", "premalignant", "in_situ", "malignant", "indeterminate", "non_neoplastic", "mixed")
BUCKETS = ("benign", "precancerous_in_situ", "malignant")
NODE_KINDS = ("category", "group", "diagnosis")
_ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_ICD10_RE = re.compile(r"^[A-Z][0-9]{2}(\.[0-9A-Z]{1,4})?$")
_NODE_KEYS = {"id", "name", "synonyms", "icd10", "behaviour", "lineage", "kind", "children", "note"}


class TaxonomyError(ValueError):
    """The taxonomy file breaks an invariant; the message lists every problem found, not just the first."""


def normalize_label(text: str) -> str:
    """Canonical surface form for matching names, synonyms and raw dataset labels.

    Lower case, accents removed (Sézary -> sezary), apostrophes dropped (Bowen's -> bowens), every other
    non-alphanumeric run (`_`, `-`, `/`, brackets) turned into one space.
    """
    text = unicodedata.normalize("NFKD", str(text))
    text = "".join(ch for ch in text if not unicodedata.combining(ch)).lower()
    text = re.sub(r"['\u2019`]", "", text)
    text = re.sub(r"[^0-9a-z]+", " ", text)
    return text.strip()


def bucket_for(behaviour: str, lineage: str) -> str | None:
    """Skin-R1's 3-way bucket from a node's behaviour.

    Convention (kept from the authors' code so results stay comparable): melanoma in situ / lentigo maligna sit
    under melanoma and count as `malignant`; keratinocytic in-situ disease (Bowen) is `precancerous_in_situ`.
    """
    if behaviour == "benign":
        return "benign"
    if behaviour == "premalignant":
        return "precancerous_in_situ"
    if behaviour == "in_situ":
        return "malignant" if lineage == "melanocytic" else "precancerous_in_situ"
    if behaviour == "malignant":
        return "malignant"
    return None


@dataclass(frozen=True)
class TaxonomyNode:
    id: str
    name: str
    synonyms: tuple[str, ...]
    parent: str | None
    level: int
    kind: str
    behaviour: str
    lineage: str
    icd10: tuple[str, ...]
    bucket: str | None
    children: tuple[str, ...] = field(default=())

    def as_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "synonyms": list(self.synonyms),
            "parent": self.parent,
            "level": self.level,
            "kind": self.kind,
            "behaviour": self.behaviour,
            "lineage": self.lineage,
            "icd10": list(self.icd10),
            "bucket": self.bucket,
        }


class Taxonomy:
    """Immutable view over the taxonomy tree. Build with `Taxonomy.load()` or `Taxonomy.from_dict()`."""

    def __init__(self, nodes: dict[str, TaxonomyNode], root: str, source: str = "<memory>") -> None:
        self.nodes = nodes
        self.root = root
        self.source = source
        self.graph = nx.DiGraph()
        for node in nodes.values():
            self.graph.add_node(node.id, **node.as_record())
        for node in nodes.values():
            if node.parent is not None:
                self.graph.add_edge(node.parent, node.id)
        self._index = self._build_index()

    # ---- construction -------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None) -> Taxonomy:
        if path is None:
            text = resources.files("skinr1_pipeline.knowledge").joinpath("data/taxonomy.yaml").read_text("utf-8")
            source = "skinr1_pipeline/knowledge/data/taxonomy.yaml"
        else:
            text = Path(path).read_text("utf-8")
            source = str(path)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TaxonomyError(f"{source}: not valid YAML: {exc}") from exc
        return cls.from_dict(data, source=source)

    @classmethod
    def from_dict(cls, data: Any, source: str = "<memory>") -> Taxonomy:
        if not isinstance(data, dict) or not isinstance(data.get("root"), dict):
            raise TaxonomyError(f"{source}: expected a mapping with a 'root' node mapping at the top level")
        problems: list[str] = []
        nodes: dict[str, TaxonomyNode] = {}
        children_of: dict[str, list[str]] = {}

        def walk(raw: Any, parent: TaxonomyNode | None, where: str) -> None:
            if not isinstance(raw, dict):
                problems.append(f"{where}: a node must be a mapping, got {type(raw).__name__}")
                return
            unknown = set(raw) - _NODE_KEYS
            node_id = raw.get("id")
            label = f"{where} (id={node_id!r})"
            if unknown:
                problems.append(f"{label}: unknown keys {sorted(unknown)}; allowed {sorted(_NODE_KEYS)}")
            if not isinstance(node_id, str) or not _ID_RE.match(node_id):
                problems.append(f"{label}: 'id' must be snake_case ([a-z][a-z0-9_]*)")
                return
            if node_id in nodes:
                problems.append(f"{label}: duplicate id {node_id!r}")
                return
            name = raw.get("name") or node_id.replace("_", " ")
            synonyms = raw.get("synonyms") or []
            icd10 = raw.get("icd10") or []
            if not isinstance(synonyms, list) or not all(isinstance(s, str) and s.strip() for s in synonyms):
                problems.append(f"{label}: 'synonyms' must be a list of non-empty strings")
                synonyms = []
            if not isinstance(icd10, list) or not all(isinstance(c, str) for c in icd10):
                problems.append(f"{label}: 'icd10' must be a list of strings")
                icd10 = []
            for code in icd10:
                if not _ICD10_RE.match(code):
                    problems.append(f"{label}: ICD-10 code {code!r} is not of the form L57 or L57.0")
            behaviour = raw.get("behaviour", parent.behaviour if parent else None)
            if behaviour not in BEHAVIOURS:
                problems.append(f"{label}: behaviour {behaviour!r} not in {BEHAVIOURS} (set it here or on an ancestor)")
                behaviour = "mixed"
            lineage = raw.get("lineage", parent.lineage if parent else None)
            if not isinstance(lineage, str) or not lineage:
                problems.append(f"{label}: lineage missing (set it here or on an ancestor)")
                lineage = "unknown"
            kind = raw.get("kind", "diagnosis")
            if kind not in NODE_KINDS:
                problems.append(f"{label}: kind {kind!r} not in {NODE_KINDS}")
                kind = "diagnosis"
            node = TaxonomyNode(
                id=node_id,
                name=str(name).strip().lower(),
                synonyms=tuple(s.strip().lower() for s in synonyms),
                parent=parent.id if parent else None,
                level=(parent.level + 1) if parent else 0,
                kind=kind,
                behaviour=behaviour,
                lineage=lineage,
                icd10=tuple(icd10),
                bucket=None,  # derived below, once the whole subtree is known
            )
            nodes[node_id] = node
            children_of[node_id] = []
            if parent is not None:
                children_of[parent.id].append(node_id)
            kids = raw.get("children") or []
            if not isinstance(kids, list):
                problems.append(f"{label}: 'children' must be a list")
                kids = []
            for i, child in enumerate(kids):
                walk(child, node, f"{where}/{node_id}.children[{i}]")

        walk(data["root"], None, source)
        if problems:
            raise TaxonomyError(f"{source}: {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
        root_id = data["root"]["id"]
        final = _derive_buckets(nodes, children_of, root_id)
        tax = cls(final, root_id, source=source)
        tax.validate()
        return tax

    # ---- invariants ---------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise TaxonomyError listing every broken invariant."""
        problems: list[str] = []
        roots = [n for n, d in self.graph.in_degree() if d == 0]
        if roots != [self.root]:
            problems.append(f"expected exactly one root {self.root!r}, found {roots}")
        if not nx.is_arborescence(self.graph):
            problems.append("the parent links do not form a tree")
        seen: dict[str, str] = {}
        for node in self.nodes.values():
            for surface in (node.name, *node.synonyms):
                key = normalize_label(surface)
                if not key:
                    problems.append(f"{node.id}: empty name or synonym {surface!r}")
                    continue
                if key in seen and seen[key] != node.id:
                    problems.append(f"name/synonym {surface!r} of {node.id} already names {seen[key]}")
                seen.setdefault(key, node.id)
            if node.bucket is not None:
                for desc in nx.descendants(self.graph, node.id):
                    if self.nodes[desc].bucket != node.bucket:
                        problems.append(
                            f"{desc} has bucket {self.nodes[desc].bucket!r} under {node.id} with bucket {node.bucket!r}"
                        )
            if node.behaviour == "non_neoplastic" and node.bucket is not None:
                problems.append(f"{node.id}: non-neoplastic node with bucket {node.bucket}")
        # An id that reads like another node's name would make resolve() depend on file order.
        for node in self.nodes.values():
            owner = seen.get(normalize_label(node.id))
            if owner is not None and owner != node.id:
                problems.append(f"id {node.id!r} reads as a name/synonym of {owner}")
        if problems:
            raise TaxonomyError(f"{self.source}: {len(problems)} invariant(s) broken:\n  - " + "\n  - ".join(problems))

    # ---- lookups ------------------------------------------------------------------------------------
    def _build_index(self) -> dict[str, str]:
        index: dict[str, str] = {}
        for node in self.nodes.values():
            for surface in (node.id, node.name, *node.synonyms):
                index.setdefault(normalize_label(surface), node.id)
        return index

    def __contains__(self, node_id: object) -> bool:
        return node_id in self.nodes

    def __getitem__(self, node_id: str) -> TaxonomyNode:
        try:
            return self.nodes[node_id]
        except KeyError:
            raise KeyError(f"unknown taxonomy node {node_id!r}") from None

    def __iter__(self) -> Iterator[TaxonomyNode]:
        return iter(self.nodes.values())

    def __len__(self) -> int:
        return len(self.nodes)

    def resolve(self, text: str) -> str | None:
        """Node id whose id, name or synonym matches `text` after normalisation, else None."""
        return self._index.get(normalize_label(text))

    def path(self, node_id: str) -> list[str]:
        """Node ids from the root down to `node_id`, both included."""
        out = [self[node_id].id]
        while self.nodes[out[-1]].parent is not None:
            out.append(self.nodes[out[-1]].parent)  # type: ignore[arg-type]
        return out[::-1]

    def depth(self, node_id: str) -> int:
        return self[node_id].level

    def is_ancestor(self, ancestor: str, node_id: str, *, strict: bool = False) -> bool:
        if ancestor == node_id:
            return not strict
        return ancestor in self.path(node_id)

    def descendants(self, node_id: str) -> set[str]:
        return set(nx.descendants(self.graph, node_id))

    def lowest_common_ancestor(self, node_ids: Iterable[str]) -> str:
        paths = [self.path(n) for n in node_ids]
        if not paths:
            raise ValueError("lowest_common_ancestor needs at least one node")
        common = self.root
        for level_nodes in zip(*paths):
            if len(set(level_nodes)) != 1:
                break
            common = level_nodes[0]
        return common

    @cached_property
    def max_depth(self) -> int:
        return max(n.level for n in self.nodes.values())

    def diagnosis_nodes(self) -> list[TaxonomyNode]:
        return [n for n in self.nodes.values() if n.kind == "diagnosis"]

    # ---- views --------------------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        by_level: dict[int, int] = {}
        for n in self.nodes.values():
            by_level[n.level] = by_level.get(n.level, 0) + 1
        by_bucket: dict[str, int] = {}
        for n in self.diagnosis_nodes():
            by_bucket[str(n.bucket)] = by_bucket.get(str(n.bucket), 0) + 1
        return {
            "nodes": len(self.nodes),
            "edges": self.graph.number_of_edges(),
            "diagnosis_nodes": len(self.diagnosis_nodes()),
            "leaves": sum(1 for n in self.nodes.values() if not n.children),
            "max_depth": self.max_depth,
            "nodes_per_level": dict(sorted(by_level.items())),
            "diagnoses_per_bucket": dict(sorted(by_bucket.items())),
        }

    def render_markdown(self, max_depth: int = 3) -> str:
        """An indented outline for people (asset metadata), down to `max_depth`, with counts of what is folded."""
        lines: list[str] = []

        def visit(node_id: str) -> None:
            node = self.nodes[node_id]
            bucket = f" — {node.bucket}" if node.bucket else ""
            icd = f" [{', '.join(node.icd10)}]" if node.icd10 else ""
            hidden = ""
            if node.level == max_depth and node.children:
                hidden = f" (+{len(self.descendants(node_id))} below)"
            lines.append(f"{'  ' * node.level}- **{node.name}**{icd}{bucket}{hidden}")
            if node.level < max_depth:
                for child in node.children:
                    visit(child)

        visit(self.root)
        return "\n".join(lines)


def _derive_buckets(
    nodes: dict[str, TaxonomyNode], children_of: dict[str, list[str]], root: str
) -> dict[str, TaxonomyNode]:
    """Fill `bucket` and `children`: from behaviour, or for `mixed` nodes the one bucket all children share."""
    out: dict[str, TaxonomyNode] = {}

    def visit(node_id: str) -> str | None:
        node = nodes[node_id]
        child_buckets = [visit(c) for c in children_of[node_id]]
        if node.behaviour == "mixed":
            distinct = set(child_buckets)
            bucket = child_buckets[0] if child_buckets and len(distinct) == 1 else None
        else:
            bucket = bucket_for(node.behaviour, node.lineage)
        out[node_id] = TaxonomyNode(**{**node.__dict__, "bucket": bucket, "children": tuple(children_of[node_id])})
        return bucket

    visit(root)
    return out
