"""Trajectory types of SkinRationale (paper §2.5) as request builders plus deterministic template renderers.

Each type turns one labelled sample into a `GenerationRequest`: chat messages for a teacher LLM and the same facts as
a structured `TrajectoryContext`, so a model-free template can write the trajectory too. Types, following the
authors' code (types 1-5):

* `hierarchy`     - walk the taxonomy path root→label, justifying each level from visible features (type 1);
* `ddx`           - propose the label, name its DDx-graph neighbours and exclude each by its discriminating sign (2);
* `ddx_switch`    - start from a DDx neighbour as first impression, then self-correct to the label (3);
* `contrast`      - compare with a random non-DDx diagnosis to sharpen the argument, keep the label (4);
* `contrast_switch` - start from that random diagnosis, then switch to the label (5).

Every item is asked either as an open question or as a 4-option MCQ built like the GRPO items of
`tasks.mcq` (1-3 nodes of the label's own taxonomy path + distractors from the path nodes of the same dataset;
the answer is the best-scoring option, i.e. the most specific correct one), so SFT teaches both answer formats of
`modeling.prompt_format` and, for MCQs, to pick an ancestor when the label itself is not offered.

Two rendering styles share the same facts and the same verifier: "full" (the long template) and "compact" (the
impression first, one short sentence of visible features, the type's key reasoning in one short sentence per step and,
for MCQs, a walk up the label's path to the first offered option; about 50-100 tokens) for cheap SFT of small models.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Any

from skinr1_pipeline.knowledge.corpus import Passage
from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.knowledge_base import (
    CHECKABLE_KINDS,
    Feature,
    KBEntry,
    KnowledgeBase,
    fast_normalize,
    find_feature_mentions,
    mention_finder,
    observed_features,
    phrase,
    value_kind,
)
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.modeling.prompt_format import (
    DEFAULT_MCQ_QUESTION,
    DEFAULT_OPEN_QUESTION,
    STATUSES,
    SYSTEM_PROMPT,
    build_mcq_prompt,
    build_open_prompt,
    checked_answer_form,
    format_completion,
    format_mcq_answer,
    format_open_answer,
)
from skinr1_pipeline.tasks.mcq import (
    MAX_CORRECT,
    TOP_SCORE,
    hierarchical_scores,
    impression_line,
    ineligible_distractors,
    option_path,
    option_scan_lines,
    path_line,
)

QUESTION_FORMS = ("open", "mcq")
N_OPTIONS = 4
STYLES = ("full", "compact")
MCQ_CONSTRUCTIONS = ("paper", "set_first")


class NotApplicable(Exception):
    """A type cannot be built for this sample (no KB entry, no DDx neighbour...); `reason` is counted as a skip."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True)
class SamplingParams:
    """What an LLM generator should sample with; the template ignores all but `seed`."""

    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 1024
    seed: int | None = None


@dataclass(frozen=True)
class Alternative:
    """A diagnosis the trajectory names and rules out (or starts from, in switch types)."""

    node: str
    name: str
    relation: str  # "ddx" | "random"
    discriminator: str  # one sentence: the sign that separates it from the label
    shared: str | None  # why it is confused with the label (DDx edge), if known
    missing_here: tuple[str, ...]  # phrases: its typical features that this lesion does not show
    against: tuple[str, ...]  # phrases: features this lesion shows that its KB entry lists as absent
    do_not_miss: bool = False


@dataclass(frozen=True)
class Level:
    node: str
    name: str
    rationale: str
    support: tuple[str, ...]  # phrases of observed features that support this level


@dataclass(frozen=True)
class TrajectoryContext:
    """Everything a template needs; the verifier re-derives what it checks from taxonomy and KB instead."""

    node: str
    name: str
    bucket: str | None
    path: tuple[str, ...]
    levels: tuple[Level, ...]
    observed: Mapping[str, Any]
    observed_source: str  # "image" | "knowledge_base"
    modality: str
    key_features: tuple[str, ...]  # phrases of observed features that the label's KB entry lists as typical
    rule: str  # the KB's morphology sentence for the label
    taxonomy_sentence: str
    alternatives: tuple[Alternative, ...] = ()
    first: Alternative | None = None  # switch types: the wrong first impression
    question_form: str = "open"
    options: tuple[str, ...] = ()
    option_nodes: tuple[str, ...] = ()
    answer_index: int | None = None
    citations: tuple[str, ...] = ()
    passages: tuple[Passage, ...] = ()
    option_scores: tuple[float, ...] = ()  # MCQ: rl_data's hierarchical scores (answer_index = best-scoring option)
    style: str = "full"  # "full" | "compact": how the template (and the teacher instruction) writes the rationale
    answer_form: str = "letter"  # `ANSWER_FORMS`: how a multiple-choice answer names its option

    @property
    def answer_node(self) -> str:
        """The node the answer names: the chosen option for MCQs (may be an ancestor of the label), else the label."""
        if self.question_form == "mcq" and self.answer_index is not None:
            return self.option_nodes[self.answer_index]
        return self.node

    @property
    def answer_name(self) -> str:
        if self.question_form == "mcq" and self.answer_index is not None:
            return self.options[self.answer_index]
        return self.name


@dataclass(frozen=True)
class GenerationRequest:
    """One generation job. `messages` drive an LLM; `context` drives the template; `prompt` is the SFT user text."""

    request_id: str
    sample_id: str
    trajectory_type: str
    prompt: str
    options: tuple[str, ...]
    sampling: SamplingParams
    context: TrajectoryContext
    image_path: str | None = None

    @cached_property
    def messages(self) -> tuple[dict[str, Any], ...]:
        """Teacher chat messages, built on first access (the template generator never needs them)."""
        return teacher_messages(self.trajectory_type, self.context, self.prompt, self.image_path)


@dataclass(frozen=True)
class BuildExtras:
    """Per-sample inputs beyond (sample, taxonomy, ddx, knowledge, rng)."""

    image_features: Mapping[str, Any] | None = None
    options_pool: Sequence[str] = ()  # taxonomy nodes labelled in the sample's dataset (DDx preference; MCQ pool)
    mcq_pool: Sequence[str] = ()  # labels of the dataset for MCQ distractors (their path nodes); options_pool if empty
    mcq_fraction: float = 0.5
    mcq_construction: str = "paper"  # `MCQ_CONSTRUCTIONS`: how a trajectory's multiple-choice options are drawn
    passages: Sequence[Passage] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)
    index: int = 0  # k-th request of this type for this sample
    style: str = "full"  # rendering style recorded in the context ("full" | "compact")
    answer_form: str = "letter"  # `ANSWER_FORMS`, recorded in the context


# ---------------------------------------------------------------------------------------------------- shared steps


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _one_sentence(text: str) -> str:
    """Knowledge text embedded mid-sentence: no trailing period, inner sentence breaks turned into commas."""
    text = " ".join(text.split()).rstrip(". ")
    text = text.replace(". ", ", ")
    if text[:1].isupper() and not text[1:2].isupper():
        text = text[0].lower() + text[1:]
    return text


def _join(items: Sequence[str]) -> str:
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def taxonomy_sentence(node: str, taxonomy: Taxonomy, bucket: str | None) -> str:
    """Skin-R1's taxonomy sentence: "{dx} is a subtype of {parent}, ..., and is generally classified as {bucket}"."""
    name = taxonomy[node].name
    ancestors = [taxonomy[a].name for a in reversed(taxonomy.path(node)[1:-1]) if taxonomy[a].kind != "category"]
    cls = {"benign": "benign", "precancerous_in_situ": "precancerous (in situ)", "malignant": "malignant"}.get(
        bucket or "", ""
    )
    parts = [_cap(name)]
    if ancestors:
        parts.append(f" is a subtype of {_join(ancestors)}")
    if cls:
        parts.append((", and" if ancestors else "") + f" is generally classified as {cls}")
    if len(parts) == 1:
        return f"{_cap(name)} is not a neoplasm, so no benign or malignant status applies."
    return "".join(parts) + "."


def _bucket(sample: Mapping[str, Any]) -> str | None:
    value = sample.get("bucket")
    return value if value in STATUSES else None


def _feature_record(entry: KBEntry, extras: BuildExtras) -> tuple[Mapping[str, Any], str]:
    if extras.image_features is not None:
        return extras.image_features, "image"
    return entry.typical(), "knowledge_base"


def _all_observed(record: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Every observed (kind, value): colours, elevation and the checkable kinds, in a stable order."""
    out = [("colours", c) for c in record.get("colours") or ()]
    if record.get("elevation"):
        out.append(("elevation", record["elevation"]))
    out += sorted(observed_features(record))
    return out


def _support_phrase(kind: str, value: str) -> str:
    if kind == "colours":
        return f"{phrase(kind, value)} colour"
    if kind == "elevation":
        return f"{phrase(kind, value)} profile"
    return phrase(kind, value)


def _question(
    sample: Mapping[str, Any],
    node: str,
    taxonomy: Taxonomy,
    ddx: DDxGraph,
    knowledge: KnowledgeBase,
    rng: random.Random,
    extras: BuildExtras,
) -> tuple[str, tuple[str, ...], tuple[str, ...], int | None, tuple[float, ...]]:
    """(form, options, option nodes, answer index, option scores).

    `paper` MCQs follow `tasks.mcq.build_mcq_items`: k ~ U{1..min(3, L)} nodes of the label's path below the root
    (scored 0.75 * depth / deepest shown), distractors from the path nodes of the dataset's labels that are neither
    on the path nor below the label (scored 0); the answer is the best-scoring option. When the dataset pool is too
    small, DDx look-alikes and then knowledge-base diagnoses fill the remaining slots (RL drops such items instead).
    `set_first` MCQs (`_level_options`) offer one taxonomy level, so nothing in the option list points at the answer.
    """
    if rng.random() >= extras.mcq_fraction:
        return "open", (), (), None, ()
    path = option_path(taxonomy, node)
    if extras.mcq_construction == "set_first":
        drawn = _level_options(taxonomy, path, extras.mcq_pool or extras.options_pool, rng)
        if drawn is None:
            return "open", (), (), None, ()
        nodes, answer = drawn
        scores = tuple(TOP_SCORE if i == answer else 0.0 for i in range(len(nodes)))
        return "mcq", tuple(taxonomy[n].name for n in nodes), tuple(nodes), answer, scores
    k = rng.randint(1, max(1, min(MAX_CORRECT, len(path), N_OPTIONS - 1)))
    depths = sorted(j + 1 for j in rng.sample(range(len(path)), k))
    correct = [path[j - 1] for j in depths]
    banned = ineligible_distractors(taxonomy, node)
    names_taken = {taxonomy[c].name for c in correct}
    labels = [n for n in (extras.mcq_pool or extras.options_pool) if n in taxonomy]
    pool = sorted({p for n in labels for p in option_path(taxonomy, n)} - banned)
    rng.shuffle(pool)
    fallback: list[str] = []
    for group in (_expanded_neighbours(ddx, taxonomy, node), sorted(knowledge.entries)):
        group = [g for g in group if g in taxonomy and g not in banned and taxonomy[g].kind != "category"]
        rng.shuffle(group)
        fallback += group
    distractors: list[str] = []
    for cand in pool + fallback:
        if len(distractors) == N_OPTIONS - k:
            break
        if cand not in distractors and taxonomy[cand].name not in names_taken:
            distractors.append(cand)
            names_taken.add(taxonomy[cand].name)
    nodes = correct + distractors
    scores = hierarchical_scores(depths) + [0.0] * len(distractors)
    order = list(range(len(nodes)))
    rng.shuffle(order)
    nodes, scores = [nodes[i] for i in order], [float(scores[i]) for i in order]
    answer = max(range(len(nodes)), key=lambda i: scores[i])
    return "mcq", tuple(taxonomy[n].name for n in nodes), tuple(nodes), answer, tuple(scores)


def _level_options(
    taxonomy: Taxonomy, path: Sequence[str], labels: Sequence[str], rng: random.Random
) -> tuple[list[str], int] | None:
    """`N_OPTIONS` nodes of one level of the taxonomy, the label's own node at that level among them, in random order
    (level drawn among those where the labels' paths offer enough nodes); None where no level does (the sample then
    gets an open question).

    Why: the paper's options (the label's ancestors plus distractors, the deepest offered ancestor correct) teach a
    shortcut that answers without the image; options of one level are never ancestors of each other, so the option
    list says nothing about which one fits.
    """
    by_level: dict[int, set[str]] = {}
    for label in labels:
        if label in taxonomy:
            for depth, node in enumerate(option_path(taxonomy, label), start=1):
                by_level.setdefault(depth, set()).add(node)
    usable = [d for d in range(1, len(path) + 1) if len(by_level.get(d, set()) - {path[d - 1]}) >= N_OPTIONS - 1]
    if not usable:
        return None
    depth = rng.choice(usable)
    gold = path[depth - 1]
    nodes = [*rng.sample(sorted(by_level[depth] - {gold}), N_OPTIONS - 1), gold]
    rng.shuffle(nodes)
    return nodes, nodes.index(gold)


@lru_cache(maxsize=4096)
def _related(taxonomy: Taxonomy, node: str) -> frozenset[str]:
    """The node, its ancestors and its descendants: naming any of them is not naming another diagnosis."""
    return frozenset(taxonomy.path(node)) | frozenset(taxonomy.descendants(node))


@lru_cache(maxsize=4096)
def _expanded_neighbours(ddx: DDxGraph, taxonomy: Taxonomy, node: str) -> tuple[str, ...]:
    return tuple(ddx.neighbours_with_expansion(node, taxonomy))


def _names_only(text: str | None, allowed: frozenset[str], taxonomy: Taxonomy) -> str | None:
    """`text` if every diagnosis it names is in `allowed`, else None (a DDx sentence naming a third diagnosis
    would make the trajectory exclude something that is not a neighbour)."""
    if not text:
        return None
    norm = fast_normalize(text)
    for _, start, end in find_feature_mentions(norm):
        norm = norm[:start] + "#" * (end - start) + norm[end:]
    named = set(mention_finder(taxonomy).find(norm))
    return text if named <= allowed else None


def _alternative(
    node: str,
    other: str,
    relation: str,
    observed: set[Feature],
    taxonomy: Taxonomy,
    ddx: DDxGraph,
    knowledge: KnowledgeBase,
) -> Alternative:
    other_entry = knowledge.entry_for(other)
    missing: tuple[str, ...] = ()
    against: tuple[str, ...] = ()
    if other_entry is not None:
        typical = [
            (k, v)
            for k in ("structures", "vessels", "scale", "surface")
            for v in other_entry.features.get(k, ())
            if v != "none"
        ]
        missing = tuple(phrase(k, v) for k, v in typical if (k, v) not in observed)[:2]
        against = tuple(phrase(k, v) for k, v in sorted(observed) if (k, v) in other_entry.absent_set)[:2]
    allowed = _related(taxonomy, node) | _related(taxonomy, other)
    disc = _names_only(knowledge.discriminator(node, other), allowed, taxonomy) if relation == "ddx" else None
    if disc is None and other_entry is not None:
        disc = _names_only(
            f"{_cap(taxonomy[other].name)} typically presents differently: {_one_sentence(other_entry.morphology)}.",
            allowed,
            taxonomy,
        )
    if disc is None:
        disc = f"The visible features fit {taxonomy[node].name} better than {taxonomy[other].name}."
    return Alternative(
        other,
        taxonomy[other].name,
        relation,
        disc,
        _names_only(knowledge.shared(node, other), allowed, taxonomy) if relation == "ddx" else None,
        missing,
        against,
        ddx.is_do_not_miss(other),
    )


def _ddx_candidates(node: str, taxonomy: Taxonomy, ddx: DDxGraph, extras: BuildExtras) -> list[str]:
    related = _related(taxonomy, node)
    direct = [n for n in ddx.neighbours(node) if n not in related]
    cands = direct or _expanded_neighbours(ddx, taxonomy, node)
    pool = set(extras.options_pool)
    return sorted(cands, key=lambda n: (n not in pool, n))


def _random_candidates(node: str, taxonomy: Taxonomy, ddx: DDxGraph, knowledge: KnowledgeBase) -> list[str]:
    excluded = _related(taxonomy, node) | set(_expanded_neighbours(ddx, taxonomy, node))
    return [n for n in sorted(knowledge.entries) if n not in excluded]


def _context(
    sample: Mapping[str, Any],
    taxonomy: Taxonomy,
    ddx: DDxGraph,
    knowledge: KnowledgeBase,
    rng: random.Random,
    extras: BuildExtras,
) -> tuple[TrajectoryContext, KBEntry]:
    node = str(sample["taxonomy_node"])
    if node not in taxonomy:
        raise NotApplicable("unknown_node", node)
    entry = knowledge.entry_for(node)
    if entry is None:
        raise NotApplicable("no_knowledge", f"no knowledge-base entry for {node} or its ancestors")
    record, source = _feature_record(entry, extras)
    observed_all = _all_observed(record)
    key = tuple(_support_phrase(k, v) for k, v in observed_all if k in CHECKABLE_KINDS and (k, v) in entry.feature_set)
    if not key:
        key = tuple(_support_phrase(k, v) for k, v in observed_all if k in CHECKABLE_KINDS)
    levels = []
    for level_node in taxonomy.path(node)[1:]:
        name = taxonomy[level_node].name
        note = knowledge.level_text(level_node)
        if level_node in knowledge.entries:
            lvl_entry = knowledge.entries[level_node]
            support = tuple(_support_phrase(k, v) for k, v in observed_all if (k, v) in lvl_entry.feature_set)
            rationale = f"{_cap(name)} fits the overall picture."
        else:
            cues = set(note.cues) if note else set()
            support = tuple(_support_phrase(k, v) for k, v in observed_all if v in cues and value_kind(v) == k)
            rationale = note.rationale if note else f"The lesion belongs to {name}."
        levels.append(Level(level_node, name, rationale, support[:3]))
    if extras.style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {extras.style!r}")
    checked_answer_form(extras.answer_form)
    form, options, option_nodes, answer, scores = _question(sample, node, taxonomy, ddx, knowledge, rng, extras)
    citations = tuple(x for x in (knowledge.citation(node),) if x) + tuple(p.chunk_id for p in extras.passages)
    ctx = TrajectoryContext(
        node=node,
        name=taxonomy[node].name,
        bucket=_bucket(sample),
        path=tuple(taxonomy.path(node)),
        levels=tuple(levels),
        observed=dict(record),
        observed_source=source,
        modality=str(sample.get("modality") or record.get("domain") or "dermoscopic"),
        key_features=key[:3],
        rule=entry.morphology,
        taxonomy_sentence=taxonomy_sentence(node, taxonomy, _bucket(sample)),
        question_form=form,
        options=options,
        option_nodes=option_nodes,
        answer_index=answer,
        citations=citations,
        passages=tuple(extras.passages),
        option_scores=scores,
        style=extras.style,
        answer_form=extras.answer_form,
    )
    return ctx, entry


def _with_alternatives(
    ctx: TrajectoryContext,
    alts: Sequence[Alternative],
    first: Alternative | None,
    taxonomy: Taxonomy,
    ddx: DDxGraph,
    knowledge: KnowledgeBase,
) -> TrajectoryContext:
    extra = []
    for alt in ([first] if first else []) + list(alts):
        _, edge = knowledge._edge(ctx.node, alt.node)
        if edge is not None:
            extra.append(f"ddx:{min(edge['a'], edge['b'])}|{max(edge['a'], edge['b'])}")
        cite = knowledge.citation(alt.node)
        if cite:
            extra.append(cite)
    return TrajectoryContext(
        **{
            **ctx.__dict__,
            "alternatives": tuple(alts),
            "first": first,
            "citations": tuple(dict.fromkeys(ctx.citations + tuple(extra))),
        }
    )


# ---------------------------------------------------------------------------------------------------- teacher prompt

TEACHER_SYSTEM = (
    "You are a dermatology educator writing worked reasoning for a training set. You are shown a skin image, the "
    "question a student model will be asked, the correct answer and reference facts. Write the reasoning the student "
    "should produce, in the student's voice, describing only what is visible and never mentioning that you were given "
    "the answer or the reference facts. Then give the answer exactly as requested.\n\n" + SYSTEM_PROMPT
)

_TYPE_INSTRUCTIONS = {
    "hierarchy": "Describe the visible features, then walk the disease hierarchy from the broadest level down to the "
    "answer, naming each level in order ({levels}) and justifying each from visible features.",
    "ddx": "Describe the visible features, propose the answer, then name each of these differential diagnoses "
    "({alternatives}) and rule each out with its discriminating feature. Name no other diagnosis.",
    "ddx_switch": "Describe the visible features, state {first} as the first impression and why it is tempting, then "
    "notice the discriminating features and revise the diagnosis to the answer. Name no other diagnosis.",
    "contrast": "Describe the visible features, propose the answer, then compare it with {alternatives} to strengthen "
    "the argument, naming the signs of that diagnosis that are absent here.",
    "contrast_switch": "Describe the visible features, state {first} as the first impression, then compare and revise "
    "the diagnosis to the answer.",
}


def _answer_text(ctx: TrajectoryContext) -> str:
    if ctx.question_form == "mcq":
        return format_mcq_answer(list(ctx.options), ctx.answer_index, ctx.bucket, form=ctx.answer_form)  # type: ignore[arg-type]
    return format_open_answer(ctx.name, ctx.bucket)


def teacher_messages(ttype: str, ctx: TrajectoryContext, prompt: str, image_path: str | None) -> tuple[dict, ...]:
    """Chat messages for an LLM teacher (OpenAI/vLLM style; the image as a typed content part when known)."""
    facts = [
        f"Correct answer block: <diagnosis>{_answer_text(ctx)}</diagnosis>",
        f"Taxonomy path: {' > '.join(level.name for level in ctx.levels)}",
        f"{ctx.taxonomy_sentence}",
        f"Visible features ({ctx.observed_source}): {describe_features(ctx.observed)}",
        f"Textbook rule for {ctx.name}: {ctx.rule}",
    ]
    for alt in ([ctx.first] if ctx.first else []) + list(ctx.alternatives):
        facts.append(
            f"Alternative {alt.name}: {alt.discriminator}"
            + (f" Typical of it but absent here: {_join(alt.missing_here)}." if alt.missing_here else "")
        )
    for p in ctx.passages:
        facts.append(f"Textbook passage [{p.chunk_id}]: {p.text}")
    instruction = _TYPE_INSTRUCTIONS[ttype].format(
        levels=", ".join(level.name for level in ctx.levels),
        alternatives=", ".join(a.name for a in ctx.alternatives) or "the alternatives",
        first=ctx.first.name if ctx.first else "the alternative",
    )
    if ctx.question_form == "mcq" and ctx.answer_node != ctx.node:
        instruction += (
            f" {_cap(ctx.name)} is not among the options; explain that the most specific correct option "
            f"is {ctx.answer_name}."
        )
    if ctx.style == "compact":
        instruction += (
            " Be very brief (under 60 words): open with 'Impression: <diagnosis>.' (or 'First thought: "
            "<diagnosis>.' when you revise it), the visible features in one short sentence, one short "
            "sentence per reasoning step, then the chosen option."
        )
        if ctx.question_form == "mcq" and ctx.answer_form == "text":
            instruction += (
                " Before the answer, write the diagnosis's taxonomy path ('Path: <level 1> > ... > <diagnosis>.'); "
                "answer with the text of the deepest offered option on it, without its letter."
            )
        elif ctx.question_form == "mcq":
            instruction += (
                " Before the answer, check each option in the order offered against the diagnosis's "
                "taxonomy path, one line each ('<letter>. <option>: fits, level <depth>.' or '<letter>. "
                "<option>: does not fit.'); answer with the deepest fitting option."
            )
    text = f"Student question:\n{prompt}\n\nReference facts:\n- " + "\n- ".join(facts) + f"\n\nTask: {instruction}"
    user: list[dict[str, Any]] = [{"type": "image", "image": image_path}] if image_path else []
    user.append({"type": "text", "text": text})
    return ({"role": "system", "content": TEACHER_SYSTEM}, {"role": "user", "content": user})


# ---------------------------------------------------------------------------------------------------- descriptions


def _grade(value: Any, cuts: Sequence[tuple[float, str]], last: str) -> str | None:
    if not isinstance(value, (int, float)):
        return None
    for cut, word in cuts:
        if value < cut:
            return word
    return last


def describe_features(record: Mapping[str, Any]) -> str:
    """One-line plain description of a feature record (teacher prompt)."""
    return " ".join(describe_sentences(record, random.Random(0)))


def describe_sentences(record: Mapping[str, Any], rng: random.Random) -> list[str]:
    """Observation sentences for a feature record; only features present in it are claimed."""
    out = []
    shape = [
        w
        for w in (
            _grade(record.get("asymmetry"), [(0.25, "symmetric"), (0.5, "mildly asymmetric")], "clearly asymmetric"),
            _grade(
                record.get("border_irregularity"),
                [(0.25, "with a regular border"), (0.5, "with a slightly irregular border")],
                "with an irregular, notched border",
            ),
        )
        if w
    ]
    size = record.get("diameter_mm")
    opener = rng.choice(("The lesion is", "It is", "This lesion is"))
    bits = []
    if record.get("elevation"):
        bits.append(str(record["elevation"]))
    bits += shape
    if isinstance(size, (int, float)):
        bits.append(f"about {size:.0f} mm across")
    if bits:
        out.append(f"{opener} {_join(bits)}.")
    sharp = _grade(
        record.get("border_sharpness"),
        [(0.4, "ill-defined, blending into the surrounding skin"), (0.75, "moderately well defined")],
        "sharply demarcated",
    )
    if sharp:
        out.append(f"Its edge is {sharp}.")
    colours = [phrase("colours", c) for c in record.get("colours") or ()]
    if colours:
        out.append(f"{rng.choice(('Colours present', 'The colours seen'))}: {_join(colours)}.")
    surface, scale = record.get("surface"), record.get("scale")
    if surface:
        scale_txt = f" with {phrase('scale', scale)}" if scale and scale != "none" else ""
        surface_text = phrase("surface", surface)
        article = "an" if surface_text[:1].lower() in "aeiou" else "a"
        out.append(f"It has {article} {surface_text}{scale_txt}.")
    if scale in (None, "none"):
        out.append("There is no scale.")
    vessels = record.get("vessels")
    if vessels and vessels != "none":
        out.append(f"{_cap(phrase('vessels', vessels))} {rng.choice(('are visible', 'can be seen', 'are present'))}.")
    elif vessels == "none":
        out.append("No vessels are visible.")
    structures = [phrase("structures", s) for s in record.get("structures") or ()]
    if structures:
        out.append(
            f"{rng.choice(('Dermoscopic structures include', 'The structures seen are', 'I can see'))} "
            f"{_join(structures)}."
        )
    else:
        out.append("No specific dermoscopic structures are seen.")
    return out


# ---------------------------------------------------------------------------------------------------- builders

Builder = Callable[
    [Mapping[str, Any], Taxonomy, DDxGraph, KnowledgeBase, random.Random, BuildExtras], GenerationRequest
]
Renderer = Callable[[TrajectoryContext, random.Random], str]


def _request(
    ttype: str, sample: Mapping[str, Any], ctx: TrajectoryContext, prompt: str, extras: BuildExtras
) -> GenerationRequest:
    image = sample.get("image_path")
    image = str(image) if image else None
    return GenerationRequest(
        request_id=f"{sample['sample_id']}::{ttype}::{extras.index}",
        sample_id=str(sample["sample_id"]),
        trajectory_type=ttype,
        prompt=prompt,
        options=ctx.options,
        sampling=extras.sampling,
        context=ctx,
        image_path=image,
    )


def _prompt_of(ctx: TrajectoryContext, sample: Mapping[str, Any]) -> str:
    """The student's user text: open question or lettered MCQ (status asked only when the label has a bucket)."""
    if ctx.question_form == "mcq":
        return build_mcq_prompt(DEFAULT_MCQ_QUESTION, list(ctx.options), ask_status=ctx.bucket is not None)
    return build_open_prompt(DEFAULT_OPEN_QUESTION, ask_status=ctx.bucket is not None)


def build_hierarchy(sample, taxonomy, ddx, knowledge, rng, extras=BuildExtras()) -> GenerationRequest:
    ctx, _ = _context(sample, taxonomy, ddx, knowledge, rng, extras)
    return _request("hierarchy", sample, ctx, _prompt_of(ctx, sample), extras)


def _build_ddx(ttype: str, sample, taxonomy, ddx, knowledge, rng, extras) -> GenerationRequest:
    ctx, _ = _context(sample, taxonomy, ddx, knowledge, rng, extras)
    cands = _ddx_candidates(ctx.node, taxonomy, ddx, extras)
    if not cands:
        raise NotApplicable("no_ddx_neighbour", ctx.node)
    observed = observed_features(ctx.observed)
    pool = [c for c in cands if c in set(extras.options_pool)]
    head = pool if pool else cands
    k = min(len(cands), rng.randint(1, 3))
    chosen = rng.sample(head, min(k, len(head)))
    rest = [c for c in cands if c not in chosen]
    chosen += rng.sample(rest, min(k - len(chosen), len(rest)))
    alts = [_alternative(ctx.node, c, "ddx", observed, taxonomy, ddx, knowledge) for c in chosen]
    first = None
    if ttype == "ddx_switch":
        first, alts = alts[0], alts[1:]
    ctx = _with_alternatives(ctx, alts, first, taxonomy, ddx, knowledge)
    return _request(ttype, sample, ctx, _prompt_of(ctx, sample), extras)


def build_ddx(sample, taxonomy, ddx, knowledge, rng, extras=BuildExtras()) -> GenerationRequest:
    return _build_ddx("ddx", sample, taxonomy, ddx, knowledge, rng, extras)


def build_ddx_switch(sample, taxonomy, ddx, knowledge, rng, extras=BuildExtras()) -> GenerationRequest:
    return _build_ddx("ddx_switch", sample, taxonomy, ddx, knowledge, rng, extras)


def _build_contrast(ttype: str, sample, taxonomy, ddx, knowledge, rng, extras) -> GenerationRequest:
    ctx, _ = _context(sample, taxonomy, ddx, knowledge, rng, extras)
    cands = _random_candidates(ctx.node, taxonomy, ddx, knowledge)
    if not cands:
        raise NotApplicable("no_random_candidate", ctx.node)
    other = rng.choice(cands)
    alt = _alternative(ctx.node, other, "random", observed_features(ctx.observed), taxonomy, ddx, knowledge)
    first, alts = (alt, []) if ttype == "contrast_switch" else (None, [alt])
    ctx = _with_alternatives(ctx, alts, first, taxonomy, ddx, knowledge)
    return _request(ttype, sample, ctx, _prompt_of(ctx, sample), extras)


def build_contrast(sample, taxonomy, ddx, knowledge, rng, extras=BuildExtras()) -> GenerationRequest:
    return _build_contrast("contrast", sample, taxonomy, ddx, knowledge, rng, extras)


def build_contrast_switch(sample, taxonomy, ddx, knowledge, rng, extras=BuildExtras()) -> GenerationRequest:
    return _build_contrast("contrast_switch", sample, taxonomy, ddx, knowledge, rng, extras)


# ---------------------------------------------------------------------------------------------------- templates


def _conclusion(ctx: TrajectoryContext, lead: str) -> list[str]:
    out = [f"{lead} {ctx.name}.", ctx.taxonomy_sentence]
    if ctx.question_form == "mcq":
        letter = chr(ord("A") + int(ctx.answer_index or 0))
        if ctx.answer_node == ctx.node:
            out.append(f"Among the options this is {letter} ({ctx.name}).")
        else:
            out.append(
                f"{_cap(ctx.name)} is not offered, so the most specific correct option is {letter} ({ctx.answer_name})."
            )
    return out


def _exclusion(alt: Alternative, rng: random.Random) -> list[str]:
    verb = rng.choice(("is less likely", "is unlikely", "does not fit as well"))
    out = [f"{_cap(alt.name)} {verb}: {_one_sentence(alt.discriminator)}."]
    if alt.missing_here:
        out.append(f"The {_join(alt.missing_here)} expected in {alt.name} are not seen here.")
    if alt.against:
        out.append(f"The {_join(alt.against)} seen here argue against {alt.name}.")
    if alt.do_not_miss:
        out.append(f"Because {alt.name} must not be missed, I checked for its signs specifically.")
    return out


def _key_sentence(ctx: TrajectoryContext) -> str:
    if not ctx.key_features:
        return f"The overall picture fits {ctx.name}."
    return f"The {_join(ctx.key_features)} fit {ctx.name}."


def _rule_sentence(ctx: TrajectoryContext) -> str:
    return f"As a rule, {ctx.name} typically presents as {_one_sentence(ctx.rule)}."


def render_hierarchy(ctx: TrajectoryContext, rng: random.Random) -> str:
    lines = describe_sentences(ctx.observed, rng)
    lines.append(
        rng.choice(
            (
                "Now I place the lesion in the disease hierarchy, from the broadest level down.",
                "Next I walk down the disease hierarchy one level at a time.",
                "I now narrow the diagnosis level by level, from the broadest category to the most specific one.",
            )
        )
    )
    label = rng.choice(("Level {d}, {name}: ", "Step {d} ({name}): ", "At level {d}, {name}. "))
    for depth, level in enumerate(ctx.levels, start=1):
        head = label.format(d=depth, name=level.name)
        lines.append(head + (level.rationale if level.node != ctx.node else _key_sentence(ctx)))
        if level.support and level.node != ctx.node:
            lines.append(
                rng.choice(
                    (
                        "Here the {f} support {n}.",
                        "The {f} seen here are consistent with {n}.",
                        "In this lesion, the {f} point the same way.",
                    )
                ).format(f=_join(level.support), n=level.name)
            )
    lines.append(_rule_sentence(ctx))
    lines += _conclusion(ctx, "The most specific diagnosis is")
    return _finish(ctx, lines)


def render_ddx(ctx: TrajectoryContext, rng: random.Random) -> str:
    lines = describe_sentences(ctx.observed, rng)
    lines.append(f"My leading diagnosis is {ctx.name}. {_key_sentence(ctx)}")
    lines.append(f"The differential diagnosis of {ctx.name} includes {_join([a.name for a in ctx.alternatives])}.")
    for alt in ctx.alternatives:
        lines += _exclusion(alt, rng)
    lines.append(_rule_sentence(ctx))
    lines += _conclusion(ctx, "Therefore the most likely diagnosis is")
    return _finish(ctx, lines)


def _opening_guess(first: Alternative) -> str:
    reason = f", because {_one_sentence(first.shared)}" if first.shared else ""
    return f"At first glance this could be {first.name}{reason}."


def render_ddx_switch(ctx: TrajectoryContext, rng: random.Random) -> str:
    assert ctx.first is not None
    lines = describe_sentences(ctx.observed, rng)
    lines.append(_opening_guess(ctx.first))
    lines.append("On closer inspection, the discriminating features need checking.")
    lines += _exclusion(ctx.first, rng)
    lines.append(f"Instead, {_key_sentence(ctx)[0].lower()}{_key_sentence(ctx)[1:]}")
    for alt in ctx.alternatives:
        lines += _exclusion(alt, rng)
    lines.append(_rule_sentence(ctx))
    lines += _conclusion(ctx, f"So I revise my first impression of {ctx.first.name}: the most likely diagnosis is")
    return _finish(ctx, lines)


def _contrast_lines(alt: Alternative, rng: random.Random) -> list[str]:
    out = [f"To strengthen the reasoning, I compare with {alt.name}: {_one_sentence(alt.discriminator)}."]
    if alt.missing_here:
        out.append(f"The {_join(alt.missing_here)} that would point to {alt.name} are absent.")
    if alt.against:
        out.append(f"The {_join(alt.against)} seen here would be unusual in {alt.name}.")
    return out


def render_contrast(ctx: TrajectoryContext, rng: random.Random) -> str:
    lines = describe_sentences(ctx.observed, rng)
    lines.append(f"My leading diagnosis is {ctx.name}. {_key_sentence(ctx)}")
    for alt in ctx.alternatives:
        lines += _contrast_lines(alt, rng)
    lines.append(_rule_sentence(ctx))
    lines += _conclusion(ctx, "Therefore the most likely diagnosis is")
    return _finish(ctx, lines)


def render_contrast_switch(ctx: TrajectoryContext, rng: random.Random) -> str:
    assert ctx.first is not None
    lines = describe_sentences(ctx.observed, rng)
    lines.append(f"One possibility to consider first is {ctx.first.name}.")
    lines += _contrast_lines(ctx.first, rng)
    lines.append(f"Instead, {_key_sentence(ctx)[0].lower()}{_key_sentence(ctx)[1:]}")
    lines.append(_rule_sentence(ctx))
    lines += _conclusion(ctx, f"So I set aside {ctx.first.name}: the most likely diagnosis is")
    return _finish(ctx, lines)


def _finish(ctx: TrajectoryContext, lines: list[str]) -> str:
    return format_completion("\n".join(lines), _answer_text(ctx))


# ---------------------------------------------------------------------------------------------------- compact style


def _compact_seen(ctx: TrajectoryContext) -> str:
    """One short observation sentence (no hedging cue, no other diagnosis): up to two colours + key features."""
    colours = [phrase("colours", c) for c in (ctx.observed.get("colours") or ())][:2]
    bits = ([f"{_join(colours)} colour"] if colours else []) + list(ctx.key_features[:2])
    if not bits:
        return "The lesion shows few distinctive features."
    return f"I see {_join(bits)}."


def _compact_exclusion(alt: Alternative, lead: str = "Not") -> str:
    if alt.missing_here:
        return f"{lead} {alt.name}: no {alt.missing_here[0]}."
    if alt.against:
        return f"{lead} {alt.name}: {alt.against[0]} argues against it."
    return f"{lead} {alt.name}: the signs fit less well."


def _compact_key(ctx: TrajectoryContext) -> str:
    return f"These fit {ctx.name}." if ctx.key_features else f"The picture fits {ctx.name}."


def _compact_path(ctx: TrajectoryContext) -> str:
    return path_line([level.name for level in ctx.levels])


def _compact_end(ctx: TrajectoryContext, lines: list[str]) -> str:
    """The rationale's last lines before the answer: for a multiple-choice question, one line per option placing it
    on the path (`letter` answers), or the path itself, where the answer's text is copied from (`text` answers)."""
    if ctx.question_form == "mcq" and ctx.answer_form == "text":
        if _compact_path(ctx) not in lines:
            lines.append(_compact_path(ctx))
    elif ctx.question_form == "mcq":
        lines += option_scan_lines(ctx.options, ctx.option_nodes, [level.node for level in ctx.levels])
    return _finish(ctx, lines)


def render_hierarchy_compact(ctx: TrajectoryContext, rng: random.Random) -> str:
    return _compact_end(
        ctx,
        [
            impression_line(ctx.name),
            _compact_seen(ctx),
            _compact_path(ctx),
        ],
    )


def render_ddx_compact(ctx: TrajectoryContext, rng: random.Random) -> str:
    lines = [impression_line(ctx.name), _compact_seen(ctx), _compact_key(ctx)]
    lines += [_compact_exclusion(alt) for alt in ctx.alternatives]
    return _compact_end(ctx, lines)


def render_ddx_switch_compact(ctx: TrajectoryContext, rng: random.Random) -> str:
    assert ctx.first is not None
    lines = [
        f"First thought: {ctx.first.name}.",
        _compact_seen(ctx),
        _compact_exclusion(ctx.first, "But not"),
        _compact_key(ctx),
    ]
    lines += [_compact_exclusion(alt) for alt in ctx.alternatives]
    return _compact_end(ctx, lines)


def render_contrast_compact(ctx: TrajectoryContext, rng: random.Random) -> str:
    lines = [impression_line(ctx.name), _compact_seen(ctx), _compact_key(ctx)]
    lines += [_compact_exclusion(alt, "Unlike") for alt in ctx.alternatives]
    return _compact_end(ctx, lines)


def render_contrast_switch_compact(ctx: TrajectoryContext, rng: random.Random) -> str:
    assert ctx.first is not None
    lines = [
        f"First thought: {ctx.first.name}.",
        _compact_seen(ctx),
        _compact_exclusion(ctx.first, "But not"),
        _compact_key(ctx),
    ]
    return _compact_end(ctx, lines)


@dataclass(frozen=True)
class TrajectoryType:
    name: str
    paper_type: int
    build: Builder
    render: Renderer
    checks_ddx: bool  # verifier: every other diagnosis named must be a DDx neighbour
    description: str
    render_compact: Renderer | None = None  # the "compact" style; None falls back to `render`

    def renderer(self, style: str = "full") -> Renderer:
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style!r}")
        return self.render_compact if style == "compact" and self.render_compact is not None else self.render


TYPES: dict[str, TrajectoryType] = {
    t.name: t
    for t in (
        TrajectoryType(
            "hierarchy",
            1,
            build_hierarchy,
            render_hierarchy,
            False,
            "taxonomy walk root to label",
            render_hierarchy_compact,
        ),
        TrajectoryType(
            "ddx", 2, build_ddx, render_ddx, True, "exclude DDx neighbours, keep the label", render_ddx_compact
        ),
        TrajectoryType(
            "ddx_switch",
            3,
            build_ddx_switch,
            render_ddx_switch,
            True,
            "start from a DDx neighbour, self-correct to the label",
            render_ddx_switch_compact,
        ),
        TrajectoryType(
            "contrast",
            4,
            build_contrast,
            render_contrast,
            False,
            "compare with a random diagnosis",
            render_contrast_compact,
        ),
        TrajectoryType(
            "contrast_switch",
            5,
            build_contrast_switch,
            render_contrast_switch,
            False,
            "start from a random diagnosis, switch to the label",
            render_contrast_switch_compact,
        ),
    )
}
