"""Verification of synthesized trajectories: every rejection carries one reason code.

Why strict: SFT imitates whatever it is given, so a trajectory that reaches the right answer through a feature the
image does not show, or that "excludes" a diagnosis nobody confuses with the label, teaches the wrong reasoning.
Checks, in order (first failure wins):

* `bad_format`: `parse_completion` fails (exactly one thinking and one diagnosis block; detail = parser code);
* `too_short` / `too_long`: completion length outside [min_chars, max_chars];
* `unknown_diagnosis` / `ambiguous_diagnosis` / `wrong_diagnosis`: open answers must name (name or synonym) the label,
  a non-category ancestor of it, or - for a group label - one of its members; MCQ answers must pick such an option,
  or - when the request carries `tasks.mcq`-style option scores - exactly the best-scoring option (the most
  specific correct one, which may be any node of the label's path);
* `wrong_status`: the status must equal the label's bucket (and be absent when the label has none);
* feature rules, applied to *observation sentences*: sentences with no negation/hedging cue (no, not, without,
  would, typically, less likely, ...) and naming no diagnosis outside the label's path. The checkable features they
  name are *claims*.
  - `no_features_cited`: fewer than `min_features` claims (garbage and generic text land here);
  - `kb_contradiction`: a claim the knowledge base lists as absent for the label (or the answered node);
  - `unsupported_feature`: with per-image features, a claim the image does not show;
* `ddx_missing` / `ddx_not_neighbour` (DDx types): at least one other diagnosis must be named and each must be a DDx
  neighbour of the label (with Skin-R1's parent/child expansion, or a taxonomy relative of such a neighbour);
* `hierarchy_incomplete` (hierarchy type): every level of the label's path below the root must be named;
* `near_duplicate` (batch step `dedup`): word-shingle Jaccard of the thinking >= threshold against an earlier kept
  trajectory of the same sample (or class).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.knowledge_base import (
    KnowledgeBase,
    MentionFinder,
    fast_normalize,
    find_feature_mentions,
    mention_finder,
    observed_features,
)
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.modeling.prompt_format import parse_completion, without_status_clause
from skinr1_pipeline.synthesis.trajectories import TYPES, GenerationRequest

REASONS = (
    "bad_format",
    "too_short",
    "too_long",
    "unknown_diagnosis",
    "ambiguous_diagnosis",
    "wrong_diagnosis",
    "wrong_status",
    "no_features_cited",
    "kb_contradiction",
    "unsupported_feature",
    "ddx_missing",
    "ddx_not_neighbour",
    "hierarchy_incomplete",
    "near_duplicate",
)

_CUE_RE = re.compile(
    r"\b(no|not|without|absent|absence|lacks?|lacking|neither|nor|none|rather than|instead of|unlike|would|could|"
    r"might|may|should|expected|typically|typical|usually|classically|as a rule|less likely|unlikely|rules? out|"
    r"argues? against|exclude[sd]?|if|versus|vs)\b"
)
_SENTENCE_RE = re.compile(r"(?<=[.!?])\s+|\n+")


@dataclass(frozen=True)
class VerifyConfig:
    min_chars: int = 200  # the "compact" style uses COMPACT_MIN_CHARS (see `VerifyConfig.for_style`)
    max_chars: int = 8000
    min_features: int = 1
    dup_threshold: float = 0.9
    shingle: int = 5
    dedup_scope: str = "sample"  # "sample" | "class"

    @classmethod
    def for_style(cls, style: str = "full", **overrides: Any) -> VerifyConfig:
        """Default config for a rendering style: compact rationales are short by design, so only min_chars differs."""
        values: dict[str, Any] = {"min_chars": COMPACT_MIN_CHARS} if style == "compact" else {}
        values.update(overrides)
        return cls(**values)


COMPACT_MIN_CHARS = 80


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str | None = None
    detail: str = ""


def _mask_features(normalized: str) -> tuple[str, list[tuple[str, str]]]:
    mentions = find_feature_mentions(normalized)
    chars = list(normalized)
    for _, start, end in mentions:
        chars[start:end] = "#" * (end - start)
    return "".join(chars), [feat for feat, _, _ in mentions]


def shingles(text: str, n: int = 5) -> frozenset[tuple[str, ...]]:
    """Word n-grams of the normalised text (the whole text as one shingle when shorter than n words)."""
    words = fast_normalize(text).split()
    if len(words) < n:
        return frozenset({tuple(words)}) if words else frozenset()
    return frozenset(zip(*(words[i:] for i in range(n))))


def jaccard(a: frozenset, b: frozenset) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


class Verifier:
    """Checks one completion against its request; `dedup` then removes near-duplicates across a batch."""

    def __init__(
        self, taxonomy: Taxonomy, ddx: DDxGraph, knowledge: KnowledgeBase, config: VerifyConfig = VerifyConfig()
    ) -> None:
        self.taxonomy, self.ddx, self.knowledge, self.config = taxonomy, ddx, knowledge, config
        self.finder: MentionFinder = mention_finder(taxonomy)
        self._cache: dict[str, Any] = {}
        self._sentences: dict[str, tuple[list[str], list[tuple[str, str]], bool]] = {}

    # ---- label-derived sets (cached per node) --------------------------------------------------------------
    def _allowed_answers(self, node: str) -> set[str]:
        key = f"allowed:{node}"
        if key not in self._cache:
            tax = self.taxonomy
            allowed = {node} | {a for a in tax.path(node)[:-1] if tax[a].kind != "category"}
            if tax[node].kind == "group":
                allowed |= tax.descendants(node)
            self._cache[key] = allowed
        return self._cache[key]

    def _in_path(self, node: str) -> set[str]:
        key = f"path:{node}"
        if key not in self._cache:
            self._cache[key] = set(self.taxonomy.path(node)) | self.taxonomy.descendants(node)
        return self._cache[key]

    def _neighbour_ok(self, node: str) -> set[str]:
        """Diagnoses a DDx trajectory of `node` may name: its (expanded) neighbours and their taxonomy relatives."""
        key = f"nb:{node}"
        if key not in self._cache:
            tax = self.taxonomy
            neighbours = set(self.ddx.neighbours(node)) | set(self.ddx.neighbours_with_expansion(node, tax))
            ok = set(neighbours)
            for n in neighbours:
                ok |= {a for a in tax.path(n) if tax[a].kind != "category"} | tax.descendants(n)
            self._cache[key] = ok
        return self._cache[key]

    # ---- the single-item check ----------------------------------------------------------------------------
    def check(
        self,
        text: Any,
        request: GenerationRequest,
        *,
        label: str | None = None,
        bucket: str | None = None,
        image_features: Mapping[str, Any] | None = None,
    ) -> Verdict:
        """Verdict for one completion. Label/bucket/image features default to those the request was built with."""
        ctx = request.context
        node = label or ctx.node
        bucket = bucket if label else ctx.bucket
        if image_features is None and ctx.observed_source == "image":
            image_features = ctx.observed
        options = list(request.options) or None
        parsed = parse_completion(text, options)
        if not parsed.ok:
            return Verdict(False, "bad_format", parsed.error or "")
        if len(text) < self.config.min_chars:
            return Verdict(False, "too_short", f"{len(text)} < {self.config.min_chars} chars")
        if len(text) > self.config.max_chars:
            return Verdict(False, "too_long", f"{len(text)} > {self.config.max_chars} chars")
        answer, verdict = self._answer(parsed, request, node)
        if verdict is not None:
            return verdict
        if parsed.status != bucket:
            return Verdict(False, "wrong_status", f"status {parsed.status!r}, label bucket {bucket!r}")
        return self._reasoning(parsed.thinking or "", request, node, answer, image_features)

    def _answer(self, parsed, request: GenerationRequest, node: str) -> tuple[str | None, Verdict | None]:
        allowed = self._allowed_answers(node)
        if request.options:
            ctx = request.context
            chosen = ctx.option_nodes[parsed.option_index]
            scores = ctx.option_scores
            if scores and node == ctx.node:  # rl_data-style options: only the best-scoring option is correct
                best = max(scores)
                if best <= 0 or scores[parsed.option_index] < best:
                    return chosen, Verdict(
                        False,
                        "wrong_diagnosis",
                        f"chose option {parsed.option_letter} ({chosen}, score "
                        f"{scores[parsed.option_index]:.2f}), best-scoring option scores {best:.2f}",
                    )
                return chosen, None
            if chosen not in allowed:
                return chosen, Verdict(
                    False, "wrong_diagnosis", f"chose option {parsed.option_letter} ({chosen}), label {node}"
                )
            return chosen, None
        name = without_status_clause(parsed.diagnosis or "").split(";", 1)[0].strip(" .,:")
        found = self.taxonomy.resolve(name)
        if found is None:
            masked, _ = _mask_features(fast_normalize(name))
            named = list(dict.fromkeys(self.finder.find(masked)))
            if not named:
                return None, Verdict(False, "unknown_diagnosis", f"no taxonomy diagnosis in {name!r}")
            if len(named) > 1:
                return None, Verdict(False, "ambiguous_diagnosis", f"{named} named in {name!r}")
            found = named[0]
        if found not in allowed:
            return found, Verdict(False, "wrong_diagnosis", f"answered {found}, label {node}")
        return found, None

    def _reasoning(
        self,
        thinking: str,
        request: GenerationRequest,
        node: str,
        answer: str | None,
        image_features: Mapping[str, Any] | None,
    ) -> Verdict:
        in_path = self._in_path(node) | (set(self.taxonomy.path(answer)) if answer else set())
        claims: list[tuple[str, str]] = []
        named: list[str] = []
        for sentence in _SENTENCE_RE.split(thinking):
            mentions, features, hedged = self._sentence(sentence)
            mentioned = [m for m in mentions if m not in in_path]
            named += mentioned
            if not mentioned and not hedged:
                claims += features
        if len(claims) < self.config.min_features:
            return Verdict(False, "no_features_cited", f"{len(claims)} feature claim(s) in observation sentences")
        absent: set[tuple[str, str]] = set()
        for n in {node, answer} - {None}:
            entry = self.knowledge.entry_for(n)  # type: ignore[arg-type]
            if entry is not None:
                absent |= entry.absent_set
        bad = sorted({f"{k}={v}" for k, v in claims if (k, v) in absent})
        if bad:
            return Verdict(False, "kb_contradiction", f"claims {bad}, listed as absent for {node}")
        if image_features is not None:
            seen = observed_features(image_features)
            unsupported = sorted({f"{k}={v}" for k, v in claims if (k, v) not in seen})
            if unsupported:
                return Verdict(False, "unsupported_feature", f"claims {unsupported}, not in the image features")
        ttype = TYPES.get(request.trajectory_type)
        if ttype is not None and ttype.checks_ddx:
            # Groups outside the DDx graph are descriptive phrases ("sun-damaged skin"), not alternatives.
            others = [n for n in dict.fromkeys(named) if self.taxonomy[n].kind == "diagnosis" or n in self.ddx.graph]
            if not others:
                return Verdict(False, "ddx_missing", "no differential diagnosis named")
            # Offered options may be discussed whatever the DDx graph says: the question put them there.
            offered = set(request.context.option_nodes) if request.options else set()
            foreign = [n for n in others if n not in self._neighbour_ok(node) and n not in offered]
            if foreign:
                return Verdict(False, "ddx_not_neighbour", f"{foreign} are not DDx neighbours of {node}")
        if request.trajectory_type == "hierarchy":
            missing = self._missing_levels(thinking, node)
            if missing:
                return Verdict(False, "hierarchy_incomplete", f"levels not named: {missing}")
        return Verdict(True)

    def _sentence(self, sentence: str) -> tuple[list[str], list[tuple[str, str]], bool]:
        """(diagnoses named, features named, has a negation/hedging cue); cached, as templates repeat sentences."""
        hit = self._sentences.get(sentence)
        if hit is None:
            norm = fast_normalize(sentence)
            masked, features = _mask_features(norm)
            hit = (self.finder.find(masked), features, bool(_CUE_RE.search(norm)))
            if len(self._sentences) > 200_000:
                self._sentences.clear()
            self._sentences[sentence] = hit
        return hit

    def _missing_levels(self, thinking: str, node: str) -> list[str]:
        text = f" {fast_normalize(thinking)} "
        missing = []
        for level in self.taxonomy.path(node)[1:]:
            n = self.taxonomy[level]
            forms = [fast_normalize(s) for s in (n.name, *n.synonyms, n.id)]
            if not any(f and f" {f} " in text for f in forms):
                missing.append(level)
        return missing

    # ---- batch step ---------------------------------------------------------------------------------------
    def dedup(self, items: Sequence[tuple[str, str, str]]) -> list[Verdict]:
        """items: (group key, item id, thinking). Keeps the first of each near-duplicate cluster, in input order."""
        kept: dict[str, list[tuple[str, frozenset]]] = {}
        out = []
        for group, item_id, thinking in items:
            sh = shingles(thinking, self.config.shingle)
            verdict = Verdict(True)
            for other_id, other in kept.get(group, ()):
                score = jaccard(sh, other)
                if score >= self.config.dup_threshold:
                    verdict = Verdict(False, "near_duplicate", f"jaccard {score:.2f} with {other_id}")
                    break
            if verdict.ok:
                kept.setdefault(group, []).append((item_id, sh))
            out.append(verdict)
        return out
