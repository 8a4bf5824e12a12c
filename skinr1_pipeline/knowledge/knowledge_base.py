"""Diagnostic knowledge base: per-diagnosis morphology, typical and absent features, and DDx discriminators.

Why a structured file next to the taxonomy and the DDx graph: Skin-R1 grounds its reasoning trajectories in
textbook rules. Rationale synthesis needs those rules in a form a template can cite and a verifier can check, so
typical/absent features use the closed vocabulary of `lesion_features.yaml` (the words the demo renderer draws), and
every DDx neighbour of an entry carries the sign that separates them. Loading validates everything against the
taxonomy, the DDx graph and the demo feature profiles, and reports every problem with entry id, field and expectation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any

import yaml

from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.lesion_features import (
    ELEVATIONS,
    PALETTE,
    SCALES,
    STRUCTURES,
    SURFACES,
    VESSELS,
    LesionFeatureProfile,
    load_lesion_features,
)
from skinr1_pipeline.knowledge.taxonomy import Taxonomy, normalize_label

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "knowledge_base.yaml"

#: Feature kinds and their closed vocabularies (shared with the demo renderer).
VOCABULARY: dict[str, tuple[str, ...]] = {
    "colours": PALETTE,
    "elevation": ELEVATIONS,
    "vessels": VESSELS,
    "scale": SCALES,
    "surface": SURFACES,
    "structures": STRUCTURES,
}
#: Kinds a rationale can *claim* in words we can read back reliably. Colours and elevation are left out on purpose:
#: "red" or "nodular" also describe vessels and diagnosis names ("nodular melanoma"), so reading them as claims
#: would reject sound rationales.
CHECKABLE_KINDS: tuple[str, ...] = ("vessels", "scale", "surface", "structures")
Feature = tuple[str, str]  # (kind, value)

#: Surface forms of each checkable feature, as they are written in rationales (normalised like taxonomy labels).
LEXICON: dict[Feature, tuple[str, ...]] = {
    ("structures", "network"): ("regular pigment network", "regular network", "pigment network", "typical network"),
    ("structures", "atypical_network"): (
        "atypical pigment network",
        "atypical network",
        "irregular pigment network",
        "irregular network",
    ),
    ("structures", "peripheral_network"): (
        "delicate peripheral network",
        "peripheral pigment network",
        "peripheral network",
    ),
    ("structures", "regular_globules"): (
        "regular dots and globules",
        "regular brown globules",
        "regular globules",
        "evenly spread globules",
    ),
    ("structures", "irregular_dots"): ("irregular dots and globules", "irregular dots", "irregular globules"),
    ("structures", "blue_white_veil"): ("blue white veil", "blue whitish veil"),
    ("structures", "regression"): ("regression structures", "regression areas", "regression", "peppering"),
    ("structures", "milia_like_cysts"): ("milia like cysts", "milia like cyst"),
    ("structures", "comedo_like_openings"): ("comedo like openings", "comedo like opening"),
    ("structures", "central_white_patch"): (
        "central white scar like patch",
        "central white patch",
        "white scar like patch",
    ),
    ("structures", "pearly_border"): ("pearly rolled border", "rolled pearly border", "pearly border", "pearly edge"),
    ("structures", "blue_grey_ovoid_nests"): ("blue grey ovoid nests", "blue gray ovoid nests", "ovoid nests"),
    ("structures", "red_lacunae"): ("red to purple lacunae", "red purple lacunae", "red lacunae"),
    ("structures", "keratin_mass"): ("central keratin mass", "keratin mass", "keratin plug"),
    ("structures", "strawberry_pattern"): ("strawberry pattern",),
    ("vessels", "arborizing"): (
        "arborizing vessels",
        "arborising vessels",
        "branching vessels",
        "arborizing",
        "arborising",
    ),
    ("vessels", "dotted"): ("dotted vessels", "pinpoint vessels"),
    ("vessels", "glomerular"): ("glomerular vessels", "coiled vessels"),
    ("vessels", "lacunae"): ("lacunar vascular pattern", "lacunar pattern", "vascular lacunae", "lacunae"),
    ("scale", "fine"): ("fine white scale", "fine scale", "powdery scale"),
    ("scale", "thick"): (
        "thick white yellow keratin scale",
        "thick keratin scale",
        "thick white yellow scale",
        "thick scale",
    ),
    ("surface", "verrucous"): ("verrucous surface", "verrucous", "warty surface"),
    ("surface", "ulcerated"): ("ulcerated surface", "ulcerated", "ulceration"),
    ("surface", "keratotic"): ("keratotic surface", "keratotic"),
    ("surface", "waxy"): ("waxy surface", "waxy"),
    ("surface", "smooth"): ("smooth surface",),
}
#: How the template writes each vocabulary value (first lexicon form for checkable kinds).
_COLOUR_WORDS = {c: c.replace("_", " ").replace("blue grey", "blue-grey") for c in PALETTE}
_ELEVATION_WORDS = {"flat": "flat", "raised": "raised", "nodular": "nodular"}

_ENTRY_KEYS = {"source", "morphology", "dermoscopy", "sites", "demographics", "behaviour", "features", "absent", "ddx"}
_TEXT_KEYS = ("source", "morphology", "dermoscopy", "demographics", "behaviour")
_LEVEL_KEYS = {"rationale", "cues"}
EDGE = "edge"  # ddx value meaning "use the DDx edge's own distinguish sentence"


class KnowledgeBaseError(ValueError):
    """The knowledge-base file breaks the schema; the message lists every problem (entry id, field, expectation)."""


def phrase(kind: str, value: str) -> str:
    """Plain-English words for a vocabulary value, as the template writes them (and the verifier reads them)."""
    if kind == "colours":
        return _COLOUR_WORDS[value]
    if kind == "elevation":
        return _ELEVATION_WORDS[value]
    forms = LEXICON.get((kind, value))
    if forms is None:
        raise KeyError(f"no words for feature {kind}={value!r}")
    return _PREFERRED.get((kind, value), forms[0]).replace("blue grey", "blue-grey")


_PREFERRED: dict[Feature, str] = {
    ("structures", "network"): "regular pigment network",
    ("structures", "milia_like_cysts"): "milia-like cysts",
    ("structures", "comedo_like_openings"): "comedo-like openings",
    ("structures", "central_white_patch"): "central white scar-like patch",
    ("structures", "blue_white_veil"): "blue-white veil",
    ("structures", "red_lacunae"): "red lacunae",
    ("vessels", "lacunae"): "lacunar vascular pattern",
    ("scale", "thick"): "thick keratin scale",
    ("vessels", "arborizing"): "arborizing vessels",
}

_MENTION_RE = re.compile(
    r"(?<![a-z0-9])("
    + "|".join(sorted({re.escape(f) for forms in LEXICON.values() for f in forms}, key=len, reverse=True))
    + r")(?![a-z0-9])"
)
_FORM_TO_FEATURE = {form: feat for feat, forms in LEXICON.items() for form in forms}


_APOSTROPHE_RE = re.compile(r"['\u2019`]")
_NON_ALNUM_RE = re.compile(r"[^0-9a-z]+")


def fast_normalize(text: str) -> str:
    """`normalize_label` with an ASCII fast path (verification normalises every sentence of every trajectory)."""
    if not text.isascii():
        return normalize_label(text)
    return _NON_ALNUM_RE.sub(" ", _APOSTROPHE_RE.sub("", text.lower())).strip()


def find_feature_mentions(normalized_text: str) -> list[tuple[Feature, int, int]]:
    """Checkable features named in text already passed through `normalize_label` (longest form wins)."""
    return [(_FORM_TO_FEATURE[m.group(1)], m.start(), m.end()) for m in _MENTION_RE.finditer(normalized_text)]


@dataclass(frozen=True)
class KBEntry:
    node: str
    source: str
    morphology: str
    dermoscopy: str
    sites: tuple[str, ...]
    demographics: str
    behaviour: str
    features: dict[str, tuple[str, ...]]  # kind -> values, most typical first
    absent: dict[str, tuple[str, ...]]
    ddx: dict[str, str | None]  # neighbour -> own sentence, or None = use the DDx edge

    @cached_property
    def absent_set(self) -> frozenset[Feature]:
        return frozenset((k, v) for k, vs in self.absent.items() for v in vs)

    @cached_property
    def feature_set(self) -> frozenset[Feature]:
        return frozenset((k, v) for k, vs in self.features.items() for v in vs)

    def typical(self) -> dict[str, Any]:
        """One concrete, most-typical feature set in the demo image-feature layout (for samples without one)."""
        f = self.features
        return {
            "colours": list(f.get("colours", ())[:2]),
            "elevation": (f.get("elevation") or ("",))[0] or None,
            "vessels": (f.get("vessels") or ("none",))[0],
            "scale": (f.get("scale") or ("none",))[0],
            "surface": (f.get("surface") or ("",))[0] or None,
            "structures": list(f.get("structures", ())[:2]),
        }


@dataclass(frozen=True)
class LevelNote:
    node: str
    rationale: str
    cues: tuple[str, ...]


class KnowledgeBase:
    """Validated entries plus lookups that follow the taxonomy and the DDx graph. Build with `load_knowledge_base`."""

    def __init__(
        self, entries: dict[str, KBEntry], levels: dict[str, LevelNote], taxonomy: Taxonomy, ddx: DDxGraph, source: str
    ) -> None:
        self.entries, self.levels, self.taxonomy, self.ddx, self.source = entries, levels, taxonomy, ddx, source

    def __contains__(self, node: object) -> bool:
        return node in self.entries

    def __len__(self) -> int:
        return len(self.entries)

    def entry_for(self, node: str) -> KBEntry | None:
        """The entry of `node` or of its nearest ancestor that has one (a subtype inherits its parent's rules)."""
        if node not in self.taxonomy:
            return None
        for ancestor in reversed(self.taxonomy.path(node)):
            if ancestor in self.entries:
                return self.entries[ancestor]
        return None

    def level_text(self, node: str) -> LevelNote | None:
        return self.levels.get(node)

    def _edge(self, node: str, neighbour: str) -> tuple[str | None, dict[str, Any] | None]:
        """(family member the edge starts from, edge data): the node itself first, then its ancestors/descendants."""
        family = [node] + [a for a in reversed(self.taxonomy.path(node)[:-1])] + sorted(self.taxonomy.descendants(node))
        for member in family:
            if self.ddx.graph.has_edge(member, neighbour):
                return member, self.ddx.edge(member, neighbour)
        return None, None

    def discriminator(self, node: str, neighbour: str) -> str | None:
        """The sign that tells `node` from its DDx neighbour: the KB's own sentence, else the DDx edge's."""
        member, edge = self._edge(node, neighbour)
        for owner in ([member] if member else []) + [node]:
            entry = self.entries.get(owner)
            text = entry.ddx.get(neighbour) if entry else None
            if text:
                return text
        return edge["distinguish"][0] if edge else None

    def shared(self, node: str, neighbour: str) -> str | None:
        """Why the two are confused (DDx edge data), for 'first impression' openings."""
        _, edge = self._edge(node, neighbour)
        return edge["shared"][0] if edge else None

    def citation(self, node: str) -> str | None:
        entry = self.entry_for(node)
        return f"kb:{entry.node} ({entry.source})" if entry else None


def load_knowledge_base(
    taxonomy: Taxonomy,
    ddx: DDxGraph,
    path: str | Path | None = None,
    *,
    profiles: Mapping[str, LesionFeatureProfile] | None = None,
) -> KnowledgeBase:
    """Load and validate; raises KnowledgeBaseError listing every problem. `profiles` default to the demo profiles."""
    source = Path(path) if path is not None else DEFAULT_PATH
    try:
        data = yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KnowledgeBaseError(f"{source}: cannot read knowledge base ({exc})") from exc
    except yaml.YAMLError as exc:
        raise KnowledgeBaseError(f"{source}: not valid YAML ({exc})") from exc
    return knowledge_base_from_dict(
        data, taxonomy, ddx, source=str(source), profiles=load_lesion_features() if profiles is None else profiles
    )


def knowledge_base_from_dict(
    data: Any,
    taxonomy: Taxonomy,
    ddx: DDxGraph,
    *,
    source: str = "<memory>",
    profiles: Mapping[str, LesionFeatureProfile] | None = None,
) -> KnowledgeBase:
    problems: list[str] = []
    if not isinstance(data, dict) or not isinstance(data.get("entries"), dict) or not data["entries"]:
        raise KnowledgeBaseError(f"{source}: expected a top-level mapping 'entries' of taxonomy node id -> entry")
    levels_raw = data.get("levels") or {}
    if not isinstance(levels_raw, dict):
        raise KnowledgeBaseError(f"{source}: 'levels' must be a mapping of taxonomy node id -> level note")
    entries: dict[str, KBEntry] = {}
    for node, raw in data["entries"].items():
        entry = _Checker(source, "entry", str(node), problems).entry(raw, taxonomy, ddx)
        if entry is not None:
            entries[entry.node] = entry
    levels: dict[str, LevelNote] = {}
    for node, raw in levels_raw.items():
        note = _Checker(source, "level", str(node), problems).level(raw, taxonomy)
        if note is not None:
            levels[note.node] = note
    for node in entries:
        for ancestor in taxonomy.path(node)[:-1]:
            if ancestor not in entries and ancestor not in levels:
                problems.append(
                    f"{source}: entry {node!r}, field 'levels': expected a level note for its ancestor "
                    f"{ancestor!r} (taxonomy path level), got nothing"
                )
    for dx, profile in (profiles or {}).items():
        _check_against_profile(source, dx, profile, entries, taxonomy, problems)
    if problems:
        raise KnowledgeBaseError(f"{len(problems)} problem(s) in the knowledge base:\n" + "\n".join(problems))
    return KnowledgeBase(entries, levels, taxonomy, ddx, source)


def _drawable(profile: LesionFeatureProfile) -> set[Feature]:
    out = {("colours", c) for c in profile.colours}
    for kind in ("elevation", "vessels", "scale", "surface", "structures"):
        out |= {(kind, v) for v, _ in getattr(profile, kind)}
    return out


def _check_against_profile(
    source: str,
    dx: str,
    profile: LesionFeatureProfile,
    entries: dict[str, KBEntry],
    taxonomy: Taxonomy,
    problems: list[str],
) -> None:
    """Demo images must never show what the KB calls absent, and the KB must list what they typically show."""
    if dx not in entries:
        problems.append(
            f"{source}: entry {dx!r}: expected an entry for this demo diagnosis (lesion_features.yaml), got nothing"
        )
        return
    drawable = _drawable(profile)
    missing = sorted(f"{k}={v}" for k, v in drawable if v != "none" and (k, v) not in entries[dx].feature_set)
    if missing:
        problems.append(
            f"{source}: entry {dx!r}, field 'features': expected every feature the demo images can show, "
            f"missing {missing}"
        )
    for node in taxonomy.path(dx):
        if node in entries:
            clash = sorted(f"{k}={v}" for k, v in drawable if (k, v) in entries[node].absent_set)
            if clash:
                problems.append(
                    f"{source}: entry {node!r}, field 'absent': expected no feature the {dx} demo images "
                    f"show, got {clash}"
                )


class _Checker:
    """Validates one entry or level note, recording problems instead of stopping at the first."""

    def __init__(self, source: str, what: str, node: str, problems: list[str]) -> None:
        self.source, self.what, self.node, self.problems = source, what, node, problems

    def fail(self, field: str, expected: str, got: Any) -> None:
        self.problems.append(
            f"{self.source}: {self.what} {self.node!r}, field {field!r}: expected {expected}, got {got!r}"
        )

    def text(self, field: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            self.fail(field, "a non-empty string", value)
            return ""
        return " ".join(value.split())

    def node_ok(self, taxonomy: Taxonomy) -> bool:
        if self.node not in taxonomy:
            self.fail("<id>", "a taxonomy node id", self.node)
            return False
        return True

    def features(self, field: str, value: Any, allow_none: bool) -> dict[str, tuple[str, ...]]:
        kinds = VOCABULARY if allow_none else {k: VOCABULARY[k] for k in CHECKABLE_KINDS}
        if value is None and not allow_none:
            return {}
        if not isinstance(value, dict):
            self.fail(field, f"a mapping of {sorted(kinds)} -> list of vocabulary values", value)
            return {}
        out: dict[str, tuple[str, ...]] = {}
        for kind, values in value.items():
            if kind not in kinds:
                self.fail(f"{field}.{kind}", f"one of {sorted(kinds)}", kind)
                continue
            allowed = [v for v in kinds[kind] if allow_none or v != "none"]
            if not isinstance(values, list) or any(v not in allowed for v in values) or len(set(values)) != len(values):
                self.fail(f"{field}.{kind}", f"a list of distinct values from {allowed}", values)
                continue
            out[kind] = tuple(values)
        return out

    def entry(self, raw: Any, taxonomy: Taxonomy, ddx: DDxGraph) -> KBEntry | None:
        before = len(self.problems)
        ok = self.node_ok(taxonomy)
        if not isinstance(raw, dict):
            self.fail("<entry>", "a mapping", raw)
            return None
        for key in sorted(set(raw) - _ENTRY_KEYS):
            self.fail(str(key), f"one of the known keys {sorted(_ENTRY_KEYS)}", key)
        for key in sorted(_ENTRY_KEYS - set(raw)):
            self.fail(key, "this key to be present", "nothing")
        if len(self.problems) > before:
            return None
        texts = {k: self.text(k, raw[k]) for k in _TEXT_KEYS}
        sites = raw["sites"]
        if not isinstance(sites, list) or not sites or not all(isinstance(s, str) and s.strip() for s in sites):
            self.fail("sites", "a non-empty list of strings", sites)
            sites = []
        features = self.features("features", raw["features"], allow_none=True)
        absent = self.features("absent", raw["absent"], allow_none=False)
        citable = [(k, v) for k in CHECKABLE_KINDS for v in features.get(k, ()) if v != "none"]
        if isinstance(raw["features"], dict) and not citable:
            self.fail(
                "features",
                "at least one citable feature (vessels, scale, surface or structures other than none)",
                raw["features"],
            )
        clash = sorted(f"{k}={v}" for k, vs in absent.items() for v in vs if v in features.get(k, ()))
        if clash:
            self.fail("absent", "no value that is also listed under 'features'", clash)
        table = self.ddx_map(raw["ddx"], ddx) if ok else {}
        if len(self.problems) > before or not ok:
            return None
        return KBEntry(
            node=self.node, sites=tuple(s.strip() for s in sites), features=features, absent=absent, ddx=table, **texts
        )

    def ddx_map(self, value: Any, ddx: DDxGraph) -> dict[str, str | None]:
        neighbours = ddx.neighbours(self.node)
        if not isinstance(value, dict):
            self.fail("ddx", f"a mapping of DDx neighbour -> sentence or {EDGE!r} (neighbours: {neighbours})", value)
            return {}
        out: dict[str, str | None] = {}
        for other, text in value.items():
            if other not in neighbours:
                self.fail(f"ddx.{other}", f"a DDx neighbour of {self.node!r} in ddx.yaml, one of {neighbours}", other)
            elif text == EDGE:
                out[str(other)] = None
            elif not isinstance(text, str) or not text.strip():
                self.fail(f"ddx.{other}", f"one sentence or {EDGE!r}", text)
            else:
                out[str(other)] = " ".join(text.split())
        missing = [n for n in neighbours if n not in value]
        if missing:
            self.fail("ddx", f"a discriminating feature for every DDx neighbour, missing {missing}", sorted(value))
        return out

    def level(self, raw: Any, taxonomy: Taxonomy) -> LevelNote | None:
        before = len(self.problems)
        self.node_ok(taxonomy)
        if not isinstance(raw, dict):
            self.fail("<level>", "a mapping with 'rationale' and 'cues'", raw)
            return None
        for key in sorted(set(raw) - _LEVEL_KEYS):
            self.fail(str(key), f"one of {sorted(_LEVEL_KEYS)}", key)
        rationale = self.text("rationale", raw.get("rationale"))
        if rationale and find_feature_mentions(normalize_label(rationale)):
            self.fail("rationale", "no lesion-feature words (list them under 'cues' instead)", rationale)
        cues = raw.get("cues") or []
        known = {v for values in VOCABULARY.values() for v in values if v != "none"}
        if not isinstance(cues, list) or any(c not in known for c in cues):
            self.fail("cues", f"a list of vocabulary values from {sorted(known)}", cues)
            cues = []
        if len(self.problems) > before:
            return None
        return LevelNote(self.node, rationale, tuple(cues))


def value_kind(value: str) -> str:
    """The vocabulary kind a value belongs to (values are unique across kinds, checked at import)."""
    return _VALUE_KIND[value]


_VALUE_KIND: dict[str, str] = {}
for _kind, _values in VOCABULARY.items():
    for _v in _values:
        if _v != "none":
            assert _v not in _VALUE_KIND, f"vocabulary value {_v!r} appears in two kinds"
            _VALUE_KIND[_v] = _kind


def observed_features(features: Mapping[str, Any]) -> set[Feature]:
    """Checkable (kind, value) pairs present in an image-feature record (demo `features` dict layout)."""
    out: set[Feature] = set()
    for kind in ("vessels", "scale", "surface"):
        value = features.get(kind)
        if isinstance(value, str) and value and value != "none":
            out.add((kind, value))
    for value in features.get("structures") or ():
        out.add(("structures", str(value)))
    return out


# Ordinary words that are also taxonomy synonyms; read as words, never as a diagnosis being named.
_AMBIGUOUS_WORDS = frozenset(
    "normal healthy ten pan dress corn burn burns boil bites ulcer clubbing lice scald bruise excoriation abrasion "
    "hemorrhage haemorrhage mole moles freckle freckles scar scars comedones hives sarcoid dandruff baldness "
    "photosensitivity photodamage prurigo".split()
)


class MentionFinder:
    """Finds taxonomy diagnoses named in normalised text (longest match, left to right).

    Abbreviations (3 letters or fewer), single-word names of group/category nodes ("benign", "neoplasm") and
    ordinary English words that happen to be synonyms are not read as mentions, so plain prose does not "name"
    diagnoses by accident.
    """

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.forms: dict[tuple[str, ...], str] = {}
        for node in taxonomy:
            for surface in (node.name, *node.synonyms):
                words = tuple(normalize_label(surface).split())
                if not words or (
                    len(words) == 1 and (len(words[0]) <= 3 or words[0] in _AMBIGUOUS_WORDS or node.kind != "diagnosis")
                ):
                    continue
                self.forms.setdefault(words, node.id)
        self.first_len: dict[str, int] = {}
        for words in self.forms:
            self.first_len[words[0]] = max(self.first_len.get(words[0], 0), len(words))

    def find(self, normalized: str) -> list[str]:
        words = normalized.split()
        out, i = [], 0
        while i < len(words):
            longest = self.first_len.get(words[i], 0)
            for n in range(min(longest, len(words) - i), 0, -1):
                node = self.forms.get(tuple(words[i : i + n]))
                if node is not None:
                    out.append(node)
                    i += n
                    break
            else:
                i += 1
        return out


@lru_cache(maxsize=8)
def mention_finder(taxonomy: Taxonomy) -> MentionFinder:
    """One finder per taxonomy object (building it indexes every name and synonym)."""
    return MentionFinder(taxonomy)
