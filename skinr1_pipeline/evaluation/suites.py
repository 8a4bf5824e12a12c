"""Evaluation suites built from unified samples (paper §7), one row per question, one schema for all suites.

Suites (all on the test split by default):
  * in_domain:    RL-style 4-option items (`training.rl_data`) on in-distribution samples; gold = deepest correct
                  option shown, ancestors shown count as wrong (credit keeps the hierarchical partial score).
  * malignancy:   3-way benign / malignant / precancerous in situ, fixed order as in the authors' code.
  * hierarchical: every non-root node of the sample's own path (needs >= 2) plus one distractor at the label's
                  depth; gold = the label, credit = depth / label depth.
  * ddx:          gold + DDx look-alikes (parent/child expansion) only; samples with fewer than
                  `min_ddx_neighbours` look-alikes are skipped and counted (`too_few_ddx_neighbours`), never
                  padded with random nodes.
  * ood:          RL-style items on held-out sources / modalities (demo: clinical photos while training is
                  dermoscopic); `omnimedvqa_suite` turns OmniMedVQA questions into the same schema.
  * open_ended:   free-text diagnosis; scored in `metrics` by mapping the answer onto the taxonomy.

Every suite requires a malignancy bucket, as the paper builds all suites from its RL test split. Samples that
cannot become an item are returned in `SuiteBuild.dropped` with suite and reason.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.taxonomy import Taxonomy, normalize_label
from skinr1_pipeline.modeling.prompt_format import (
    DEFAULT_MCQ_QUESTION,
    DEFAULT_OPEN_QUESTION,
    MAX_OPTIONS,
    build_mcq_prompt,
    build_open_prompt,
)
from skinr1_pipeline.training.rl_data import (
    build_mcq_items,
    dataset_pools,
    drop_record,
    ineligible_distractors,
    labelled_rows,
    make_item,
    option_path,
    sample_rng,
)

SUITES = ("in_domain", "malignancy", "hierarchical", "ddx", "ood", "open_ended", "ood_omnimedvqa")
SUITE_COLUMNS = (
    "suite", "item_id", "sample_id", "image_path", "prompt", "options", "option_nodes", "option_scores",
    "option_buckets", "answer_index", "bucket", "taxonomy_node", "taxonomy_depth", "source_dataset", "modality",
    "split", "fitzpatrick", "image_sha256",
)  # fmt: skip
DROP_COLUMNS = ("suite", "sample_id", "source_dataset", "split", "reason", "detail")
#: Malignancy options in the authors' order (A benign, B malignant, C precancerous in situ).
MALIGNANCY_OPTIONS = (("benign", "benign"), ("malignant", "malignant"),
                      ("precancerous in situ", "precancerous_in_situ"))
MALIGNANCY_QUESTION = "Is the skin lesion in this image benign, malignant or precancerous (in situ)?"
HIERARCHICAL_QUESTION = ("Which of these diagnoses describes the skin lesion in this image? Several may be true at "
                         "different levels of detail.")
DDX_QUESTION = "Which of these look-alike diagnoses is the skin lesion in this image?"


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


def _eval_rows(samples: pd.DataFrame, config: SuiteConfig, *, ood: bool) -> pd.DataFrame:
    mask = ood_mask(samples, config)
    return samples[(mask if ood else ~mask) & samples["split"].isin(config.splits)]


def _frame(rows: list[dict[str, Any]], columns: Sequence[str] = SUITE_COLUMNS) -> pd.DataFrame:
    extra = [c for r in rows[:1] for c in r if c not in columns]
    return pd.DataFrame(rows, columns=[*columns, *extra])


def _with_suite(frame: pd.DataFrame, suite: str) -> pd.DataFrame:
    out = frame.copy()
    out.insert(0, "suite", suite)
    out["item_id"] = suite + "/" + out["sample_id"].astype(str)
    return out


def _dropped(records: list[dict[str, Any]], suite: str) -> pd.DataFrame:
    return pd.DataFrame([{"suite": suite, **r} for r in records], columns=list(DROP_COLUMNS))


def _rl_style(samples: pd.DataFrame, taxonomy: Taxonomy, config: SuiteConfig, suite: str,
              ood: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    # Distractor pools come from every split of the same domain; items only from `config.splits`.
    domain = samples[ood_mask(samples, config) == ood]
    build = build_mcq_items(domain, taxonomy, n_options=config.n_options, seed=config.seed,
                            ask_status=config.ask_status, splits=config.splits, item_prefix=suite)
    items = _with_suite(build.items, suite)[list(SUITE_COLUMNS)]
    return items, _dropped(build.dropped.to_dict("records"), suite)


def in_domain_suite(samples: pd.DataFrame, taxonomy: Taxonomy,
                    config: SuiteConfig = SuiteConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    return _rl_style(samples, taxonomy, config, "in_domain", ood=False)


def ood_suite(samples: pd.DataFrame, taxonomy: Taxonomy,
              config: SuiteConfig = SuiteConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    return _rl_style(samples, taxonomy, config, "ood", ood=True)


def _base(row: Any, taxonomy: Taxonomy, suite: str) -> dict[str, Any]:
    return {
        "suite": suite, "item_id": f"{suite}/{row.sample_id}", "sample_id": row.sample_id,
        "image_path": row.image_path, "bucket": row.bucket, "taxonomy_node": row.taxonomy_node,
        "taxonomy_depth": taxonomy.depth(row.taxonomy_node), "source_dataset": row.source_dataset,
        "modality": row.modality, "split": getattr(row, "split", None),
        "fitzpatrick": getattr(row, "fitzpatrick", None), "image_sha256": getattr(row, "image_sha256", None),
    }  # fmt: skip


def malignancy_suite(samples: pd.DataFrame, taxonomy: Taxonomy,
                     config: SuiteConfig = SuiteConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """3-way status question; the options are the statuses, so the prompt does not ask for a status again."""
    options = [text for text, _ in MALIGNANCY_OPTIONS]
    buckets = [b for _, b in MALIGNANCY_OPTIONS]
    prompt = build_mcq_prompt(MALIGNANCY_QUESTION, options, ask_status=False)
    items, dropped = [], []
    for row in labelled_rows(_eval_rows(samples, config, ood=False), taxonomy, dropped):
        gold = buckets.index(row.bucket)
        items.append({**_base(row, taxonomy, "malignancy"), "prompt": prompt, "options": list(options),
                      "option_nodes": list(buckets), "option_scores": [float(i == gold) for i in range(3)],
                      "option_buckets": list(buckets), "answer_index": gold})
    return _frame(items), _dropped(dropped, "malignancy")


def _mcq(row: Any, taxonomy: Taxonomy, suite: str, nodes: list[str], scores: list[float], question: str,
         config: SuiteConfig) -> dict[str, Any]:
    order = sample_rng(config.seed, f"{suite}/{row.sample_id}").permutation(len(nodes))
    item = make_item(row, taxonomy, nodes, scores, order, question, config.ask_status, suite)
    return {**_base(row, taxonomy, suite), **{k: item[k] for k in
            ("prompt", "options", "option_nodes", "option_scores", "option_buckets", "answer_index")}}


def hierarchical_suite(samples: pd.DataFrame, taxonomy: Taxonomy,
                       config: SuiteConfig = SuiteConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Whole path + one same-depth distractor, preferring nodes the sample's dataset uses (else any taxonomy node at
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
        item = _mcq(row, taxonomy, "hierarchical", [*path, distractor], scores, HIERARCHICAL_QUESTION, config)
        items.append({**item, "distractor_source": source})
    return _frame(items), _dropped(dropped, "hierarchical")


def ddx_suite(samples: pd.DataFrame, taxonomy: Taxonomy, ddx: DDxGraph,
              config: SuiteConfig = SuiteConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Gold + look-alikes from the DDx graph only; too few look-alikes means the sample is skipped and counted."""
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
            dropped.append(drop_record(row, "too_few_ddx_neighbours",
                                       f"{node} has {len(look_alikes)} DDx look-alike(s), {needed} required"))
            continue
        rng = sample_rng(config.seed, f"ddx/{row.sample_id}")
        ordered = sorted(look_alikes)
        n_pick = min(n_wanted, len(ordered))
        chosen = [ordered[i] for i in rng.choice(len(ordered), size=n_pick, replace=False)]
        items.append(_mcq(row, taxonomy, "ddx", [node, *chosen], [1.0] + [0.0] * n_pick, DDX_QUESTION, config))
    return _frame(items), _dropped(dropped, "ddx")


def open_ended_suite(samples: pd.DataFrame, taxonomy: Taxonomy,
                     config: SuiteConfig = SuiteConfig()) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Free-text items: no options (empty lists, answer_index -1); scored against the taxonomy in `metrics`."""
    prompt = build_open_prompt(DEFAULT_OPEN_QUESTION, config.ask_status)
    items, dropped = [], []
    for row in labelled_rows(_eval_rows(samples, config, ood=False), taxonomy, dropped):
        items.append({**_base(row, taxonomy, "open_ended"), "prompt": prompt, "options": [], "option_nodes": [],
                      "option_scores": [], "option_buckets": [], "answer_index": -1})
    return _frame(items), _dropped(dropped, "open_ended")


def omnimedvqa_suite(questions: pd.DataFrame, taxonomy: Taxonomy, *, records: pd.DataFrame | None = None,
                     ask_status: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
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
        items.append({
            "suite": "ood_omnimedvqa", "item_id": f"ood_omnimedvqa/{q.sample_id}", "sample_id": q.sample_id,
            "image_path": q.image_path, "prompt": prompt, "options": [o.strip() for o in q.options],
            "option_nodes": nodes, "option_scores": [float(i == gold) for i in range(len(nodes))],
            "option_buckets": [taxonomy[n].bucket if n else None for n in nodes], "answer_index": gold,
            "bucket": taxonomy[gold_node].bucket if gold_node else None, "taxonomy_node": gold_node,
            "taxonomy_depth": taxonomy.depth(gold_node) if gold_node else None, "source_dataset": source,
            "modality": q.modality, "split": "test", "fitzpatrick": np.nan,
            "image_sha256": hashes.get(q.sample_id),
        })  # fmt: skip
    return _frame(items), _dropped(dropped, "ood_omnimedvqa")


def build_suites(samples: pd.DataFrame, taxonomy: Taxonomy, ddx: DDxGraph, config: SuiteConfig = SuiteConfig(), *,
                 omnimedvqa: pd.DataFrame | None = None, omnimedvqa_records: pd.DataFrame | None = None) -> SuiteBuild:
    """All suites in one frame (column `suite`), plus every skipped sample with its suite and reason."""
    parts = [
        in_domain_suite(samples, taxonomy, config),
        malignancy_suite(samples, taxonomy, config),
        hierarchical_suite(samples, taxonomy, config),
        ddx_suite(samples, taxonomy, ddx, config),
        ood_suite(samples, taxonomy, config),
        open_ended_suite(samples, taxonomy, config),
    ]
    if omnimedvqa is not None:
        parts.append(omnimedvqa_suite(omnimedvqa, taxonomy, records=omnimedvqa_records, ask_status=config.ask_status))
    items = pd.concat([p[0] for p in parts if len(p[0])], ignore_index=True) if any(len(p[0]) for p in parts) \
        else pd.DataFrame(columns=list(SUITE_COLUMNS))
    dropped = pd.concat([p[1] for p in parts], ignore_index=True)
    return SuiteBuild(items, dropped)
