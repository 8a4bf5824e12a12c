"""Visual feature profiles of the demo diagnoses, loaded from `data/lesion_features.yaml`.

One schema serves two consumers that must agree: the demo renderer draws only what a profile allows, and
rationale synthesis cites the same vocabulary (with the per-feature sentences), so a rationale that names a
feature names something actually drawn. Validation collects every problem with file, diagnosis, field and
expectation, because a silently ignored typo here would make the demo images lie about their labels.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

DEFAULT_PATH = Path(__file__).resolve().parent / "data" / "lesion_features.yaml"

PALETTE: tuple[str, ...] = (
    "light_brown",
    "dark_brown",
    "black",
    "blue_grey",
    "red",
    "pink",
    "white",
    "yellow",
    "tan",
)
ELEVATIONS: tuple[str, ...] = ("flat", "raised", "nodular")
VESSELS: tuple[str, ...] = ("none", "arborizing", "dotted", "glomerular", "lacunae")
SCALES: tuple[str, ...] = ("none", "fine", "thick")
SURFACES: tuple[str, ...] = ("smooth", "verrucous", "ulcerated", "keratotic", "waxy")
STRUCTURES: tuple[str, ...] = (
    "network",
    "atypical_network",
    "peripheral_network",
    "regular_globules",
    "irregular_dots",
    "blue_white_veil",
    "regression",
    "milia_like_cysts",
    "comedo_like_openings",
    "central_white_patch",
    "pearly_border",
    "blue_grey_ovoid_nests",
    "red_lacunae",
    "keratin_mass",
    "strawberry_pattern",
)
# The eight taxonomy node ids the embedded demo renders.
DEMO_DIAGNOSES: tuple[str, ...] = (
    "melanoma",
    "melanocytic_nevus",
    "seborrheic_keratosis",
    "basal_cell_carcinoma",
    "squamous_cell_carcinoma",
    "actinic_keratosis",
    "dermatofibroma",
    "benign_vascular",
)

# feature -> (lower bound, upper bound, integer?)
RANGE_FEATURES: dict[str, tuple[float, float, bool]] = {
    "asymmetry": (0.0, 1.0, False),
    "border_irregularity": (0.0, 1.0, False),
    "border_sharpness": (0.0, 1.0, False),
    "colour_count": (1, len(PALETTE), True),
    "diameter_mm": (0.5, 100.0, False),
}
CHOICE_FEATURES: dict[str, tuple[str, ...]] = {
    "elevation": ELEVATIONS,
    "vessels": VESSELS,
    "scale": SCALES,
    "surface": SURFACES,
}
FEATURES: tuple[str, ...] = (*RANGE_FEATURES, "colours", *CHOICE_FEATURES, "structures")
_ENTRY_KEYS = {"name", "summary", *FEATURES}
_VALUE_KEYS: dict[str, set[str]] = {"colours": {"required", "optional"}, **{f: {"range"} for f in RANGE_FEATURES}}
_ID_RE = re.compile(r"^[a-z][a-z0-9_]*$")

Range = tuple[float, float]
Options = tuple[tuple[str, float], ...]


class LesionFeatureError(ValueError):
    """The feature file breaks the schema; the message lists every problem, one per line."""


@dataclass(frozen=True)
class LesionFeatureProfile:
    """What a diagnosis may look like in the demo images. Choice options carry weights summing to 1."""

    diagnosis: str
    name: str
    summary: str
    asymmetry: Range
    border_irregularity: Range
    border_sharpness: Range
    colours_required: tuple[str, ...]
    colours_optional: tuple[str, ...]
    colour_count: tuple[int, int]
    diameter_mm: Range
    elevation: Options
    vessels: Options
    scale: Options
    surface: Options
    structures: Options  # (structure, probability drawn), independent of each other
    descriptions: tuple[tuple[str, str], ...]  # (feature, one sentence)

    @property
    def colours(self) -> tuple[str, ...]:
        return self.colours_required + self.colours_optional

    def options(self, feature: str) -> dict[str, float]:
        if feature not in CHOICE_FEATURES and feature != "structures":
            raise KeyError(f"{feature!r} is not a choice feature; choose from {[*CHOICE_FEATURES, 'structures']}")
        return dict(getattr(self, feature))

    def describe(self, feature: str) -> str:
        for name, sentence in self.descriptions:
            if name == feature:
                return sentence
        raise KeyError(f"no description for feature {feature!r}; known: {list(FEATURES)}")


def load_lesion_features(path: str | Path | None = None) -> dict[str, LesionFeatureProfile]:
    """Profiles keyed by taxonomy node id, in file order; raises LesionFeatureError listing all problems."""
    source, data = _read(path)
    problems: list[str] = []
    entries = data.get("diagnoses") if isinstance(data, dict) else None
    if not isinstance(entries, dict) or not entries:
        raise LesionFeatureError(f"{source}: expected a top-level mapping 'diagnoses' of node id -> profile")
    glossary = data.get("glossary") or {}
    profiles: dict[str, LesionFeatureProfile] = {}
    for dx, entry in entries.items():
        checker = _EntryChecker(source, str(dx), problems)
        profile = checker.profile(entry)
        if profile is not None:
            profiles[str(dx)] = profile
            for term in _terms_used(profile):
                if term not in glossary:
                    checker.fail("glossary", f"a glossary sentence for {term!r}", "nothing")
    if problems:
        raise LesionFeatureError(f"{len(problems)} problem(s) in lesion feature profiles:\n" + "\n".join(problems))
    return profiles


def load_feature_glossary(path: str | Path | None = None) -> dict[str, str]:
    """One plain-English sentence per vocabulary term (colours, structures, vessel patterns, ...)."""
    source, data = _read(path)
    glossary = data.get("glossary") if isinstance(data, dict) else None
    if not isinstance(glossary, dict) or not all(isinstance(v, str) and v.strip() for v in glossary.values()):
        raise LesionFeatureError(f"{source}: expected a top-level mapping 'glossary' of term -> sentence")
    return {str(k): v.strip() for k, v in glossary.items()}


def _read(path: str | Path | None) -> tuple[Path, Any]:
    source = Path(path) if path is not None else DEFAULT_PATH
    try:
        return source, yaml.safe_load(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise LesionFeatureError(f"{source}: cannot read lesion feature file ({exc})") from exc
    except yaml.YAMLError as exc:
        raise LesionFeatureError(f"{source}: not valid YAML ({exc})") from exc


def _terms_used(profile: LesionFeatureProfile) -> set[str]:
    terms = set(profile.colours)
    for feature in (*CHOICE_FEATURES, "structures"):
        terms.update(name for name, _ in getattr(profile, feature))
    return terms


class _EntryChecker:
    """Validates one diagnosis entry, recording problems instead of stopping at the first."""

    def __init__(self, source: Path, dx: str, problems: list[str]) -> None:
        self.source, self.dx, self.problems = source, dx, problems

    def fail(self, field: str, expected: str, got: Any) -> None:
        self.problems.append(f"{self.source}: diagnosis {self.dx!r}, field {field!r}: expected {expected}, got {got!r}")

    def profile(self, entry: Any) -> LesionFeatureProfile | None:
        before = len(self.problems)
        if not _ID_RE.match(self.dx):
            self.fail("<id>", "a taxonomy node id (lower_snake_case)", self.dx)
        if not isinstance(entry, dict):
            self.fail("<entry>", "a mapping of feature -> spec", entry)
            return None
        for key in sorted(set(entry) - _ENTRY_KEYS):
            self.fail(str(key), f"one of the known keys {sorted(_ENTRY_KEYS)}", key)
        for key in [k for k in ("name", "summary", *FEATURES) if k not in entry]:
            self.fail(key, "this key to be present", "nothing")
        if len(self.problems) > before:
            return None
        name, summary = self.text("name", entry["name"]), self.text("summary", entry["summary"])
        descriptions: list[tuple[str, str]] = []
        values: dict[str, Any] = {}
        for feature in FEATURES:
            spec = entry[feature]
            if not isinstance(spec, dict):
                self.fail(feature, "a mapping with a value key and 'description'", spec)
                continue
            descriptions.append((feature, self.text(f"{feature}.description", spec.get("description"))))
            value_keys = _VALUE_KEYS.get(feature, {"values"})
            for key in sorted(set(spec) - value_keys - {"description"}):
                self.fail(f"{feature}.{key}", f"only keys {sorted(value_keys | {'description'})}", key)
            if feature in RANGE_FEATURES:
                values[feature] = self.range(feature, spec.get("range"))
            elif feature == "colours":
                values["colours_required"] = self.colour_list("colours.required", spec.get("required"), True)
                values["colours_optional"] = self.colour_list("colours.optional", spec.get("optional", []), False)
            elif feature == "structures":
                values[feature] = self.probabilities(spec.get("values"))
            else:
                values[feature] = self.choices(feature, spec.get("values"), CHOICE_FEATURES[feature])
        if len(self.problems) > before:
            return None
        self.check_colours(values)
        if len(self.problems) > before:
            return None
        return LesionFeatureProfile(
            diagnosis=self.dx, name=name, summary=summary, descriptions=tuple(descriptions), **values
        )

    def text(self, field: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip() or "\n" in value.strip():
            self.fail(field, "one non-empty sentence of plain text", value)
            return ""
        return value.strip()

    def range(self, feature: str, value: Any) -> tuple:
        lo_bound, hi_bound, integer = RANGE_FEATURES[feature]
        kind = "integers" if integer else "numbers"
        expected = f"[lo, hi] {kind} with {lo_bound} <= lo <= hi <= {hi_bound}"
        ok = (
            isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        )
        if ok and integer:
            ok = all(float(v).is_integer() for v in value)
        if not ok or not lo_bound <= value[0] <= value[1] <= hi_bound:
            self.fail(f"{feature}.range", expected, value)
            return (lo_bound, hi_bound)
        return (int(value[0]), int(value[1])) if integer else (float(value[0]), float(value[1]))

    def choices(self, feature: str, value: Any, vocabulary: tuple[str, ...]) -> tuple[tuple[str, float], ...]:
        expected = f"a non-empty list of {list(vocabulary)} or a mapping of those to positive weights"
        if isinstance(value, list):
            value = {v: 1.0 for v in value} if len(set(map(str, value))) == len(value) else None
        if not isinstance(value, dict) or not value:
            self.fail(f"{feature}.values", expected, value)
            return ()
        bad = [k for k, w in value.items() if k not in vocabulary or not _positive(w)]
        if bad:
            self.fail(f"{feature}.values", expected, bad)
            return ()
        total = float(sum(value.values()))
        return tuple((str(k), float(w) / total) for k, w in value.items())

    def probabilities(self, value: Any) -> tuple[tuple[str, float], ...]:
        expected = f"a mapping of structures from {list(STRUCTURES)} to probabilities in [0, 1]"
        if value in (None, {}):
            return ()
        if not isinstance(value, dict):
            self.fail("structures.values", expected, value)
            return ()
        bad = {k: p for k, p in value.items() if k not in STRUCTURES or not _probability(p)}
        if bad:
            self.fail("structures.values", expected, bad)
            return ()
        return tuple((str(k), float(p)) for k, p in value.items())

    def colour_list(self, field: str, value: Any, required: bool) -> tuple[str, ...]:
        expected = f"a list of distinct colours from {list(PALETTE)}" + (" (at least one)" if required else "")
        if (
            not isinstance(value, list)
            or (required and not value)
            or any(v not in PALETTE for v in value)
            or len(set(value)) != len(value)
        ):
            self.fail(field, expected, value)
            return ()
        return tuple(value)

    def check_colours(self, values: dict[str, Any]) -> None:
        required, optional = values["colours_required"], values["colours_optional"]
        lo, hi = values["colour_count"]
        if set(required) & set(optional):
            self.fail("colours", "required and optional colours to be disjoint", sorted(set(required) & set(optional)))
        if len(required) > lo:
            self.fail("colour_count.range", f"lo >= number of required colours ({len(required)})", [lo, hi])
        if len(required) + len(optional) < hi:
            self.fail(
                "colour_count.range", f"hi <= required + optional colours ({len(required) + len(optional)})", [lo, hi]
            )


def _positive(weight: Any) -> bool:
    return isinstance(weight, (int, float)) and not isinstance(weight, bool) and math.isfinite(weight) and weight > 0


def _probability(p: Any) -> bool:
    return isinstance(p, (int, float)) and not isinstance(p, bool) and 0.0 <= p <= 1.0
