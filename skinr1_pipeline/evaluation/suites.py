"""Evaluation suites built from unified samples (paper §7), one row per question, one schema for all suites.

Headline suites are set-first (`tasks.set_first`): the option set is fixed before the answer is known and the gold
is drawn uniformly from it, so every image-blind guesser scores 1/n in expectation and only the image can lift a
model above chance.
  * in_domain:    the dataset's label classes as options (an antichain: exactly one is true), in-distribution images.
  * hierarchical: options at one taxonomy level, asked at every level with enough classes (column `level`);
                  credit = lowest-common-ancestor depth over the gold's depth (partial credit for a sibling).
  * ddx:          clusters of mutual DDx look-alikes, then the gold.
  * ood:          as in_domain, on held-out sources / modalities (demo: clinical photos while training is dermoscopic).
  * malignancy:   3-way benign / malignant / precancerous in situ, fixed order as in the authors' code.
  * open_ended:   free-text diagnosis; scored in `metrics` by mapping the answer onto the taxonomy.
  * ood_omnimedvqa: OmniMedVQA's dermatology questions with their own options (reported per subset, never trained on).
Paper-comparable suites (`<suite>_paper`) keep the authors' construction (gold-first; the gold is the deepest offered
node of the label's path, DDx options are the gold's look-alikes), which leaks the answer to image-blind guessers;
they are reported beside their blind ceiling, never as the headline.

`image_controls` adds, for chosen suites, the same items with the image replaced by another item's (shuffled) and
by a blank image, so a variant's "real minus shuffled" says whether it reads the image.

Every suite requires a malignancy bucket, as the paper builds all suites from its RL test split. Samples that
cannot become an item are returned in `SuiteBuild.dropped` with suite and reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinr1_pipeline.data.holdout import evaluation_only
from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.taxonomy import Taxonomy, normalize_label
from skinr1_pipeline.modeling.prompt_format import (
    DEFAULT_MCQ_QUESTION,
    DEFAULT_OPEN_QUESTION,
    MAX_OPTIONS,
    build_mcq_prompt,
    build_open_prompt,
)
from skinr1_pipeline.tasks.mcq import (
    MALIGNANCY_OPTIONS,
    build_mcq_items,
    dataset_pools,
    drop_record,
    ineligible_distractors,
    labelled_rows,
    make_item,
    malignancy_prompt,
    option_path,
    sample_rng,
)
from skinr1_pipeline.tasks.set_first import SetFirstConfig, build_set_first_items

HEADLINE_SUITES = ("in_domain", "hierarchical", "ddx", "ood")
PAPER_SUFFIX = "_paper"
PAPER_SUITES = tuple(f"{s}{PAPER_SUFFIX}" for s in HEADLINE_SUITES)
SUITES = (*HEADLINE_SUITES, "malignancy", "open_ended", "ood_omnimedvqa", *PAPER_SUITES)
#: Image conditions: the item's own image, another item's image of the same suite, a blank image.
CONDITIONS = ("real", "shuffled", "blank")
SUITE_COLUMNS = (
    "suite",
    "item_id",
    "sample_id",
    "image_path",
    "prompt",
    "options",
    "option_nodes",
    "option_scores",
    "option_buckets",
    "answer_index",
    "bucket",
    "taxonomy_node",
    "taxonomy_depth",
    "source_dataset",
    "modality",
    "split",
    "fitzpatrick",
    "image_sha256",
    "level",
    "construction",
    "gold_class",
    "condition",
    "base_item_id",
)
DROP_COLUMNS = ("suite", "sample_id", "source_dataset", "split", "reason", "detail")
HIERARCHICAL_QUESTION = (
    "Which of these diagnoses describes the skin lesion in this image? Several may be true at "
    "different levels of detail."
)
DDX_QUESTION = "Which of these look-alike diagnoses is the skin lesion in this image?"
LEVEL_QUESTION = "Which of these describes the skin lesion in this image?"


@dataclass(frozen=True)
class SuiteConfig:
    """What to build. `holdout_*` define the OOD domain; everything else in `splits` is in-distribution."""

    splits: tuple[str, ...] = ("test",)
    holdout_sources: tuple[str, ...] = ()
    holdout_modalities: tuple[str, ...] = ("clinical",)
    n_options: int = 4
    ddx_options: int | None = 4  # None: gold + every look-alike (paper, up to 26)
    min_ddx_neighbours: int = 3
    ddx_restrict_to_labels: bool = False  # paper: only look-alikes that occur as labels in the eval split
    ask_status: bool = True  # keep the RL prompt's status request so eval prompts match training prompts
    seed: int = 42
    closeness: float = 3.0  # set-first: how strongly options are drawn from the anchor's close relatives
    items_per_pool: int = 0  # set-first: items per (dataset, level) pool; 0 = one per image in the pool
    paper_suites: bool = True  # also build the paper-comparable (leaky) suites

    def set_first(self, question: str) -> SetFirstConfig:
        return SetFirstConfig(
            n_options=self.n_options,
            seed=self.seed,
            closeness=self.closeness,
            items_per_pool=self.items_per_pool,
            question=question,
            ask_status=self.ask_status,
        )


@dataclass
class SuiteBuild:
    items: pd.DataFrame
    dropped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(DROP_COLUMNS)))

    def suite(self, name: str) -> pd.DataFrame:
        return self.items[self.items["suite"] == name].reset_index(drop=True)

    def summary(self) -> dict[str, Any]:
        counts = self.dropped.groupby(["suite", "reason"]).size()
        return {
            "items": {str(k): int(v) for k, v in self.items["suite"].value_counts().sort_index().items()},
            "dropped": {f"{s}/{r}": int(v) for (s, r), v in counts.items()},
        }


def ood_mask(samples: pd.DataFrame, config: SuiteConfig) -> pd.Series:
    """Rows of the held-out domain; training should exclude them too for the OOD suite to be honest."""
    return samples["source_dataset"].isin(config.holdout_sources) | samples["modality"].isin(config.holdout_modalities)


def _domain(samples: pd.DataFrame, config: SuiteConfig, *, ood: bool) -> pd.DataFrame:
    """One domain's rows of every split; evaluation-only datasets (OmniMedVQA) have their own question suite."""
    mask = ood_mask(samples, config)
    return samples[(mask if ood else ~mask) & ~evaluation_only(samples)]


def _eval_rows(samples: pd.DataFrame, config: SuiteConfig, *, ood: bool) -> pd.DataFrame:
    domain = _domain(samples, config, ood=ood)
    return domain[domain["split"].isin(config.splits)]


def _frame(rows: list[dict[str, Any]], columns: Sequence[str] = SUITE_COLUMNS) -> pd.DataFrame:
    extra = [c for r in rows[:1] for c in r if c not in columns]
    return _real(pd.DataFrame(rows, columns=[*columns, *extra]))


def _real(frame: pd.DataFrame) -> pd.DataFrame:
    """Mark items as shown with their own image (`image_controls` adds the other conditions); `gold_class` names
    the right option's node (the label itself for open-ended items)."""
    if "gold_class" not in frame or frame["gold_class"].isna().all():
        frame["gold_class"] = [
            nodes[int(i)] if len(nodes) else node
            for nodes, i, node in zip(frame["option_nodes"], frame["answer_index"], frame["taxonomy_node"])
        ]
    frame["condition"] = "real"
    frame["base_item_id"] = frame["item_id"]
    return frame


def _with_suite(frame: pd.DataFrame, suite: str) -> pd.DataFrame:
    out = frame.copy()
    out.insert(0, "suite", suite)
    out["item_id"] = suite + "/" + out["sample_id"].astype(str)
    out["level"] = None
    out["construction"] = _construction(suite)
    return _real(out)


def _dropped(records: list[dict[str, Any]], suite: str) -> pd.DataFrame:
    return pd.DataFrame([{"suite": suite, **r} for r in records], columns=list(DROP_COLUMNS))


def _rl_style(
    samples: pd.DataFrame, taxonomy: Taxonomy, config: SuiteConfig, suite: str, ood: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    # Distractor pools come from every split of the same domain; items only from `config.splits`.
    domain = _domain(samples, config, ood=ood)
    build = build_mcq_items(
        domain,
        taxonomy,
        n_options=config.n_options,
        seed=config.seed,
        ask_status=config.ask_status,
        splits=config.splits,
        item_prefix=suite,
    )
    items = _with_suite(build.items, suite)[list(SUITE_COLUMNS)]
    return items, _dropped(build.dropped.to_dict("records"), suite)


def paper_in_domain_suite(
    samples: pd.DataFrame, taxonomy: Taxonomy, config: SuiteConfig = SuiteConfig()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The authors' RL-style items on in-distribution test images (leaks: see module docstring)."""
    return _rl_style(samples, taxonomy, config, "in_domain_paper", ood=False)


def paper_ood_suite(
    samples: pd.DataFrame, taxonomy: Taxonomy, config: SuiteConfig = SuiteConfig()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    return _rl_style(samples, taxonomy, config, "ood_paper", ood=True)


def _set_first(
    samples: pd.DataFrame,
    taxonomy: Taxonomy,
    config: SuiteConfig,
    suite: str,
    *,
    pool: str,
    ood: bool,
    question: str,
    ddx: DDxGraph | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    build = build_set_first_items(
        _domain(samples, config, ood=ood),
        taxonomy,
        pool=pool,
        config=config.set_first(question),
        splits=config.splits,
        ddx=ddx,
        item_prefix=suite,
    )
    items = build.items.copy()
    items.insert(0, "suite", suite)
    items = _real(items)
    return items[list(SUITE_COLUMNS)], _dropped(build.dropped.to_dict("records"), suite)


def in_domain_suite(
    samples: pd.DataFrame, taxonomy: Taxonomy, config: SuiteConfig = SuiteConfig()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Set-first items over each in-distribution dataset's label classes."""
    return _set_first(samples, taxonomy, config, "in_domain", pool="label", ood=False, question=DEFAULT_MCQ_QUESTION)


def ood_suite(
    samples: pd.DataFrame, taxonomy: Taxonomy, config: SuiteConfig = SuiteConfig()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Set-first items over each held-out dataset's label classes."""
    return _set_first(samples, taxonomy, config, "ood", pool="label", ood=True, question=DEFAULT_MCQ_QUESTION)


def hierarchical_suite(
    samples: pd.DataFrame, taxonomy: Taxonomy, config: SuiteConfig = SuiteConfig()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Set-first items at every taxonomy level where a dataset has enough classes (per-level accuracy)."""
    return _set_first(samples, taxonomy, config, "hierarchical", pool="level", ood=False, question=LEVEL_QUESTION)


def ddx_suite(
    samples: pd.DataFrame, taxonomy: Taxonomy, ddx: DDxGraph, config: SuiteConfig = SuiteConfig()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Set-first clusters of DDx look-alikes, then the gold."""
    return _set_first(samples, taxonomy, config, "ddx", pool="ddx", ood=False, question=DDX_QUESTION, ddx=ddx)


def _base(row: Any, taxonomy: Taxonomy, suite: str) -> dict[str, Any]:
    return {
        "suite": suite,
        "item_id": f"{suite}/{row.sample_id}",
        "sample_id": row.sample_id,
        "image_path": row.image_path,
        "bucket": row.bucket,
        "taxonomy_node": row.taxonomy_node,
        "taxonomy_depth": taxonomy.depth(row.taxonomy_node),
        "source_dataset": row.source_dataset,
        "modality": row.modality,
        "split": getattr(row, "split", None),
        "fitzpatrick": getattr(row, "fitzpatrick", None),
        "image_sha256": getattr(row, "image_sha256", None),
        "level": None,
        "construction": _construction(suite),
    }


def _construction(suite: str) -> str:
    """How a suite's options were chosen (the report groups suites by it)."""
    if suite.endswith(PAPER_SUFFIX):
        return "paper"
    return {"malignancy": "fixed_options", "open_ended": "open", "ood_omnimedvqa": "benchmark"}.get(suite, "set_first")


def malignancy_suite(
    samples: pd.DataFrame, taxonomy: Taxonomy, config: SuiteConfig = SuiteConfig()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """3-way status question; the options are the statuses, so the prompt does not ask for a status again."""
    options = [text for text, _ in MALIGNANCY_OPTIONS]
    buckets = [b for _, b in MALIGNANCY_OPTIONS]
    prompt = malignancy_prompt()
    items, dropped = [], []
    for row in labelled_rows(_eval_rows(samples, config, ood=False), taxonomy, dropped):
        gold = buckets.index(row.bucket)
        items.append(
            {
                **_base(row, taxonomy, "malignancy"),
                "prompt": prompt,
                "options": list(options),
                "option_nodes": list(buckets),
                "option_scores": [float(i == gold) for i in range(3)],
                "option_buckets": list(buckets),
                "answer_index": gold,
            }
        )
    return _frame(items), _dropped(dropped, "malignancy")


def _mcq(
    row: Any, taxonomy: Taxonomy, suite: str, nodes: list[str], scores: list[float], question: str, config: SuiteConfig
) -> dict[str, Any]:
    order = sample_rng(config.seed, f"{suite}/{row.sample_id}").permutation(len(nodes))
    item = make_item(row, taxonomy, nodes, scores, order, question, config.ask_status, suite)
    return {
        **_base(row, taxonomy, suite),
        **{
            k: item[k] for k in ("prompt", "options", "option_nodes", "option_scores", "option_buckets", "answer_index")
        },
    }


def paper_hierarchical_suite(
    samples: pd.DataFrame, taxonomy: Taxonomy, config: SuiteConfig = SuiteConfig()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The earlier hierarchical suite (answered 1.0 by "pick the deepest option"): whole path + one same-depth
    distractor, preferring nodes the sample's dataset uses (else any taxonomy node at
    that depth; `distractor_source` records which)."""
    by_level: dict[int, set[str]] = {}
    for node in taxonomy:
        by_level.setdefault(node.level, set()).add(node.id)
    pools = dataset_pools(samples, taxonomy)
    items, dropped = [], []
    for row in labelled_rows(_eval_rows(samples, config, ood=False), taxonomy, dropped):
        path = option_path(taxonomy, row.taxonomy_node)
        if len(path) < 2:
            dropped.append(drop_record(row, "path_too_short", f"{row.taxonomy_node} has {len(path)} non-root node(s)"))
            continue
        level_nodes = by_level[len(path)] - ineligible_distractors(taxonomy, row.taxonomy_node)
        candidates, source = level_nodes & pools.get(row.source_dataset, set()), "dataset"
        if not candidates:
            candidates, source = level_nodes, "taxonomy"
        if not candidates:
            dropped.append(drop_record(row, "insufficient_distractors", f"no other node at depth {len(path)}"))
            continue
        rng = sample_rng(config.seed, f"hierarchical-distractor/{row.sample_id}")
        distractor = sorted(candidates)[int(rng.integers(len(candidates)))]
        scores = [j / len(path) for j in range(1, len(path) + 1)] + [0.0]
        item = _mcq(row, taxonomy, "hierarchical_paper", [*path, distractor], scores, HIERARCHICAL_QUESTION, config)
        items.append({**item, "distractor_source": source})
    return _frame(items), _dropped(dropped, "hierarchical_paper")


def paper_ddx_suite(
    samples: pd.DataFrame, taxonomy: Taxonomy, ddx: DDxGraph, config: SuiteConfig = SuiteConfig()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paper's DDx items (answered 0.96 on the demo by DDx-graph centrality): gold + look-alikes only; too few
    look-alikes means the sample is skipped and counted."""
    rows = _eval_rows(samples, config, ood=False)
    labels = set(rows["taxonomy_node"].dropna())
    n_wanted = (MAX_OPTIONS - 1) if config.ddx_options is None else config.ddx_options - 1
    needed = config.min_ddx_neighbours if config.ddx_options is None else max(config.min_ddx_neighbours, n_wanted)
    items, dropped = [], []
    for row in labelled_rows(rows, taxonomy, dropped):
        node = row.taxonomy_node
        look_alikes = set(ddx.neighbours_with_expansion(node, taxonomy)) - ineligible_distractors(taxonomy, node)
        if config.ddx_restrict_to_labels:
            look_alikes &= labels
        if len(look_alikes) < needed:
            dropped.append(
                drop_record(
                    row, "too_few_ddx_neighbours", f"{node} has {len(look_alikes)} DDx look-alike(s), {needed} required"
                )
            )
            continue
        rng = sample_rng(config.seed, f"ddx/{row.sample_id}")
        ordered = sorted(look_alikes)
        n_pick = min(n_wanted, len(ordered))
        chosen = [ordered[i] for i in rng.choice(len(ordered), size=n_pick, replace=False)]
        items.append(_mcq(row, taxonomy, "ddx_paper", [node, *chosen], [1.0] + [0.0] * n_pick, DDX_QUESTION, config))
    return _frame(items), _dropped(dropped, "ddx_paper")


def open_ended_suite(
    samples: pd.DataFrame, taxonomy: Taxonomy, config: SuiteConfig = SuiteConfig()
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Free-text items: no options (empty lists, answer_index -1); scored against the taxonomy in `metrics`."""
    prompt = build_open_prompt(DEFAULT_OPEN_QUESTION, config.ask_status)
    items, dropped = [], []
    for row in labelled_rows(_eval_rows(samples, config, ood=False), taxonomy, dropped):
        items.append(
            {
                **_base(row, taxonomy, "open_ended"),
                "prompt": prompt,
                "options": [],
                "option_nodes": [],
                "option_scores": [],
                "option_buckets": [],
                "answer_index": -1,
            }
        )
    return _frame(items), _dropped(dropped, "open_ended")


def omnimedvqa_suite(
    questions: pd.DataFrame, taxonomy: Taxonomy, *, records: pd.DataFrame | None = None, ask_status: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """OmniMedVQA questions (`data.loaders.omnimedvqa.load_questions`) as suite items with their own options.

    Options and the gold answer are mapped onto the taxonomy where their text resolves (else node None), so the
    per-class and malignancy metrics work where possible. `records` (sample_id, image_sha256), e.g. the unified
    OmniMedVQA samples, supplies image hashes for the contamination check.
    """
    hashes: dict[str, Any] = {}
    if records is not None and "image_sha256" in records:
        hashes = dict(zip(records["sample_id"], records["image_sha256"]))
    items, dropped = [], []
    for q in questions.itertuples(index=False):
        subset = normalize_label(q.dataset).replace(" ", "_") or "unknown"
        source = f"omnimedvqa/{subset}"
        letters = list(q.option_letters)
        record = {"sample_id": q.sample_id, "source_dataset": source, "split": "test"}
        if q.answer_letter not in letters:
            dropped.append({**record, "reason": "bad_answer", "detail": f"answer {q.answer_letter!r} not in {letters}"})
            continue
        try:
            prompt = build_mcq_prompt(q.question or DEFAULT_MCQ_QUESTION, list(q.options), ask_status)
        except ValueError as exc:
            dropped.append({**record, "reason": "bad_options", "detail": str(exc)})
            continue
        nodes = [taxonomy.resolve(o) for o in q.options]
        gold = letters.index(q.answer_letter)
        gold_node = nodes[gold]
        items.append(
            {
                "suite": "ood_omnimedvqa",
                "item_id": f"ood_omnimedvqa/{q.sample_id}",
                "sample_id": q.sample_id,
                "image_path": q.image_path,
                "prompt": prompt,
                "options": [o.strip() for o in q.options],
                "option_nodes": nodes,
                "option_scores": [float(i == gold) for i in range(len(nodes))],
                "option_buckets": [taxonomy[n].bucket if n else None for n in nodes],
                "answer_index": gold,
                "bucket": taxonomy[gold_node].bucket if gold_node else None,
                "taxonomy_node": gold_node,
                "taxonomy_depth": taxonomy.depth(gold_node) if gold_node else None,
                "source_dataset": source,
                "modality": q.modality,
                "split": "test",
                "fitzpatrick": np.nan,
                "image_sha256": hashes.get(q.sample_id),
                "level": None,
                "construction": "benchmark",
            }
        )
    return _frame(items), _dropped(dropped, "ood_omnimedvqa")


def build_suites(
    samples: pd.DataFrame,
    taxonomy: Taxonomy,
    ddx: DDxGraph,
    config: SuiteConfig = SuiteConfig(),
    *,
    omnimedvqa: pd.DataFrame | None = None,
    omnimedvqa_records: pd.DataFrame | None = None,
) -> SuiteBuild:
    """All suites in one frame (column `suite`), plus every skipped sample with its suite and reason."""
    parts = [
        in_domain_suite(samples, taxonomy, config),
        hierarchical_suite(samples, taxonomy, config),
        ddx_suite(samples, taxonomy, ddx, config),
        ood_suite(samples, taxonomy, config),
        malignancy_suite(samples, taxonomy, config),
        open_ended_suite(samples, taxonomy, config),
    ]
    if omnimedvqa is not None:
        parts.append(omnimedvqa_suite(omnimedvqa, taxonomy, records=omnimedvqa_records, ask_status=config.ask_status))
    if config.paper_suites:
        parts += [
            paper_in_domain_suite(samples, taxonomy, config),
            paper_hierarchical_suite(samples, taxonomy, config),
            paper_ddx_suite(samples, taxonomy, ddx, config),
            paper_ood_suite(samples, taxonomy, config),
        ]
    built = [p[0] for p in parts if len(p[0])]
    items = pd.concat(built, ignore_index=True) if built else pd.DataFrame(columns=list(SUITE_COLUMNS))
    dropped = (
        pd.concat([p[1] for p in parts if len(p[1])], ignore_index=True)
        if any(len(p[1]) for p in parts)
        else pd.DataFrame(columns=list(DROP_COLUMNS))
    )
    return SuiteBuild(items, dropped)


def image_controls(items: pd.DataFrame, *, suites: Sequence[str], blank_image: str, seed: int = 42) -> pd.DataFrame:
    """The real items of `suites` again, shown with another item's image (shuffled) and with `blank_image`.

    Why: accuracy alone cannot say whether a variant reads the image; the drop from real to shuffled can. Shuffling
    is a seeded single cycle over each suite's items (no item keeps its own position); when a suite reuses an image,
    an item may still draw its own picture by chance, which only makes the control conservative. Controls keep the
    original `sample_id` (for clustered statistics) and point `base_item_id` at the real item they pair with.
    """
    unknown = sorted(set(suites) - set(items["suite"]))
    real = items[(items["condition"] == "real") & items["suite"].isin(list(suites))]
    out = []
    for suite, group in real.groupby("suite", sort=True):
        if len(group) < 2:
            continue
        order = sample_rng(seed, f"controls/{suite}").permutation(len(group))
        donors = group["image_path"].to_numpy()[np.roll(order, 1)]
        shuffled = group.iloc[order].copy()
        shuffled["image_path"] = donors
        blank = group.copy()
        blank["image_path"] = blank_image
        for condition, frame in (("shuffled", shuffled), ("blank", blank)):
            frame["condition"] = condition
            frame["item_id"] = frame["base_item_id"] + "#" + condition
            frame["image_sha256"] = None
            out.append(frame)
    frame = pd.concat(out, ignore_index=True) if out else items.iloc[:0].copy()
    frame.attrs["suites_without_items"] = unknown
    return frame.sort_values("item_id", kind="mergesort").reset_index(drop=True)


def write_blank_image(path: str | Path, size: tuple[int, int] = (224, 224)) -> Path:
    """A uniform mid-grey RGB PNG: the 'no image' control (a model must still be given some picture)."""
    from PIL import Image

    from skinr1_pipeline.storage.atomic import atomic_path

    out = Path(path)
    with atomic_path(out) as tmp:
        Image.new("RGB", size, (128, 128, 128)).save(tmp, format="PNG")
    return out
