"""Multiple-choice item rules shared by synthesis, training and evaluation, and the paper's item construction.

Why here, below the stages: SkinRationale's option scans, GRPO's items and the evaluation suites must agree on what
an option, a distractor and a dropped sample are, so the rules live once, under all three.

The paper's construction (Skin-R1 §5.1, `build_mcq_items`), for each labelled image with path P = (p_1 .. p_L)
below the root:
  * k ~ U{1 .. min(3, L)} correct options: a random set S of path depths j (1-based);
  * n_options - k distractors from the path nodes of the *same source dataset* that are not on P;
  * a correct option at depth j scores 0.75 * j / max(S) (relative to the deepest option shown), distractors 0;
  * options shuffled; samples without a malignancy bucket are dropped.
It leaks the answer to a guesser that never sees the image (the gold is the tip of the offered ancestor chain), so
it is kept for exact reproduction and as the "paper-comparable" suites; `tasks.set_first` builds items that do not.

Decisions the paper leaves open, taken here on purpose:
  * The taxonomy root ("skin condition") is never an option: it is true of every image, so it would be a free
    correct answer carrying no information. Depth j is therefore the taxonomy level (root = level 0).
  * Descendants of the labelled node are never distractors: a "nevus" label does not rule out "clark nevus", so
    scoring it 0 would punish an answer the label cannot refute.
  * Optional hard negatives: a fraction of distractor slots is filled from the true node's DDx look-alikes.
  * Items without enough distinct distractors are dropped with reason `insufficient_distractors`, listed in
    `McqBuild.dropped` with the shortfall, never silently.
  * Randomness is drawn from a per-sample stream keyed by (seed, sample_id), so an item does not change when
    other samples are added, removed or reordered (only its dataset's distractor pool can change it).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.modeling.prompt_format import DEFAULT_MCQ_QUESTION, STATUSES, build_mcq_prompt

MAX_CORRECT = 3
TOP_SCORE = 0.75
ITEM_COLUMNS = (
    "item_id",
    "sample_id",
    "image_path",
    "source_dataset",
    "modality",
    "split",
    "prompt",
    "options",
    "option_nodes",
    "option_scores",
    "option_buckets",
    "answer_index",
    "bucket",
    "taxonomy_node",
    "taxonomy_depth",
    "image_sha256",
    "fitzpatrick",
    "n_correct",
    "n_hard_negatives",
)
DROP_COLUMNS = ("sample_id", "source_dataset", "split", "reason", "detail")
DROP_REASONS = ("no_bucket", "unknown_node", "root_label", "insufficient_distractors")


#: Malignancy options in the authors' order (A benign, B malignant, C precancerous in situ): (text, bucket).
MALIGNANCY_OPTIONS = (
    ("benign", "benign"),
    ("malignant", "malignant"),
    ("precancerous in situ", "precancerous_in_situ"),
)
MALIGNANCY_QUESTION = "Is the skin lesion in this image benign, malignant or precancerous (in situ)?"


def malignancy_prompt() -> str:
    """The 3-way status question; its options are the statuses, so it does not ask for a status again."""
    return build_mcq_prompt(MALIGNANCY_QUESTION, [text for text, _ in MALIGNANCY_OPTIONS], ask_status=False)


@dataclass
class McqBuild:
    """Items plus every sample that did not become one, with its reason."""

    items: pd.DataFrame
    dropped: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(DROP_COLUMNS)))

    @property
    def drop_counts(self) -> dict[str, int]:
        return _counts(self.dropped["reason"])

    def summary(self) -> dict[str, Any]:
        items = self.items
        return {
            "items": len(items),
            "dropped": len(self.dropped),
            "drop_reasons": self.drop_counts,
            "items_per_split": _counts(items["split"]),
            "items_per_source": _counts(items["source_dataset"]),
            "n_correct_hist": _counts(items["n_correct"]),
            "hard_negatives": int(items["n_hard_negatives"].sum()) if len(items) else 0,
        }


def _counts(column: pd.Series) -> dict[Any, int]:
    """Value counts as a plain, JSON-friendly dict (integer keys stay integers) for asset metadata."""
    return {
        (int(k) if isinstance(k, (int, np.integer)) else str(k)): int(v)
        for k, v in column.value_counts().sort_index().items()
    }


def sample_rng(seed: int, key: str) -> np.random.Generator:
    """Random stream for one sample, independent of row order."""
    digest = hashlib.sha256(f"{seed}\x00{key}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def option_path(taxonomy: Taxonomy, node: str) -> list[str]:
    """The sample's path without the root: the nodes that may be shown as correct options (index j-1 = depth j)."""
    return taxonomy.path(node)[1:]


def hierarchical_scores(depths: Sequence[int], top: float = TOP_SCORE) -> list[float]:
    """Score of each shown correct option: top * j / max(S) (the deepest shown option scores `top`)."""
    deepest = max(depths)
    return [top * j / deepest for j in depths]


def dataset_pools(samples: pd.DataFrame, taxonomy: Taxonomy) -> dict[str, set[str]]:
    """Per source dataset, every non-root node on any of its samples' paths: the paper's distractor pool."""
    pools: dict[str, set[str]] = {}
    for source, node in samples[["source_dataset", "taxonomy_node"]].drop_duplicates().itertuples(index=False):
        if isinstance(node, str) and node in taxonomy:
            pools.setdefault(source, set()).update(option_path(taxonomy, node))
    return pools


def ineligible_distractors(taxonomy: Taxonomy, node: str) -> set[str]:
    """Nodes that must not be scored 0 for this label: its path (root included) and its descendants."""
    return set(taxonomy.path(node)) | taxonomy.descendants(node)


def _valid_bucket(value: Any) -> bool:
    return isinstance(value, str) and value in STATUSES


def drop_record(row: Any, reason: str, detail: str) -> dict[str, Any]:
    return {
        "sample_id": row.sample_id,
        "source_dataset": row.source_dataset,
        "split": getattr(row, "split", None),
        "reason": reason,
        "detail": detail,
    }


def label_problem(row: Any, taxonomy: Taxonomy) -> dict[str, Any] | None:
    """A drop record when the row cannot become an item, else None."""
    node = row.taxonomy_node
    if not isinstance(node, str) or node not in taxonomy:
        return drop_record(row, "unknown_node", f"taxonomy_node {node!r} is not a taxonomy node")
    if node == taxonomy.root:
        return drop_record(row, "root_label", "labelled with the taxonomy root; no informative option exists")
    if not _valid_bucket(row.bucket):
        return drop_record(row, "no_bucket", f"bucket {row.bucket!r} (node {node}) is not one of {STATUSES}")
    return None


def labelled_rows(rows: pd.DataFrame, taxonomy: Taxonomy, dropped: list[dict[str, Any]]) -> Iterator[Any]:
    """The rows that can become items; every other row goes to `dropped` with its reason."""
    for row in rows.itertuples(index=False):
        problem = label_problem(row, taxonomy)
        if problem:
            dropped.append(problem)
        else:
            yield row


def _pick(rng: np.random.Generator, pool: Iterable[str], n: int) -> list[str]:
    ordered = sorted(pool)
    if n <= 0 or not ordered:
        return []
    return [ordered[i] for i in rng.choice(len(ordered), size=min(n, len(ordered)), replace=False)]


def _draw_distractors(
    rng: np.random.Generator, needed: int, pool: set[str], hard_pool: set[str], hard_fraction: float
) -> tuple[list[str], int]:
    """(distractors, how many are hard negatives). Draws nothing extra when hard_fraction is 0, so builds with and
    without a DDx graph agree exactly at fraction 0."""
    n_hard = int((rng.random(needed) < hard_fraction).sum()) if hard_fraction > 0 and hard_pool else 0
    hard = _pick(rng, hard_pool, n_hard)
    rest = _pick(rng, pool - set(hard), needed - len(hard))
    return hard + rest, len(hard)


def make_item(
    row: Any,
    taxonomy: Taxonomy,
    nodes: list[str],
    scores: list[float],
    order: np.ndarray,
    question: str,
    ask_status: bool,
    prefix: str,
) -> dict[str, Any]:
    nodes = [nodes[i] for i in order]
    scores = [float(scores[i]) for i in order]
    options = [taxonomy[n].name for n in nodes]
    return {
        "item_id": f"{prefix}/{row.sample_id}",
        "sample_id": row.sample_id,
        "image_path": row.image_path,
        "source_dataset": row.source_dataset,
        "modality": row.modality,
        "split": getattr(row, "split", None),
        "prompt": build_mcq_prompt(question, options, ask_status),
        "options": options,
        "option_nodes": nodes,
        "option_scores": scores,
        "option_buckets": [taxonomy[n].bucket for n in nodes],
        "answer_index": int(np.argmax(scores)),
        "bucket": row.bucket,
        "taxonomy_node": row.taxonomy_node,
        "taxonomy_depth": taxonomy.depth(row.taxonomy_node),
        "image_sha256": getattr(row, "image_sha256", None),
        "fitzpatrick": getattr(row, "fitzpatrick", None),
    }


def build_mcq_items(
    samples: pd.DataFrame,
    taxonomy: Taxonomy,
    *,
    ddx: DDxGraph | None = None,
    n_options: int = 4,
    hard_negative_fraction: float = 0.0,
    seed: int = 42,
    question: str = DEFAULT_MCQ_QUESTION,
    ask_status: bool = True,
    splits: Sequence[str] | None = None,
    item_prefix: str = "mcq",
) -> McqBuild:
    """Skin-R1 RL items (see module docstring) for the rows of `samples` whose split is in `splits` (all if None).

    The distractor pool of a dataset is built from *all* rows of `samples` (labels, not images, so no leakage), so
    test items can be built against the same pool as training items.
    """
    if n_options < 2:
        raise ValueError(f"n_options must be at least 2, got {n_options}")
    if not 0.0 <= hard_negative_fraction <= 1.0:
        raise ValueError(f"hard_negative_fraction must be in [0, 1], got {hard_negative_fraction}")
    if hard_negative_fraction > 0 and ddx is None:
        raise ValueError("hard_negative_fraction > 0 needs a DDx graph (ddx=...)")
    pools = dataset_pools(samples, taxonomy)
    rows = samples if splits is None else samples[samples["split"].isin(list(splits))]
    items, dropped = [], []
    for row in labelled_rows(rows, taxonomy, dropped):
        node = row.taxonomy_node
        path = option_path(taxonomy, node)
        rng = sample_rng(seed, str(row.sample_id))
        k = int(rng.integers(1, min(MAX_CORRECT, len(path), n_options - 1) + 1))
        depths = sorted(int(j) + 1 for j in rng.choice(len(path), size=k, replace=False))
        banned = ineligible_distractors(taxonomy, node)
        pool = pools.get(row.source_dataset, set()) - banned
        hard_pool = set(ddx.neighbours_with_expansion(node, taxonomy)) - banned if ddx is not None else set()
        needed = n_options - k
        distractors, n_hard = _draw_distractors(rng, needed, pool, hard_pool, hard_negative_fraction)
        if len(distractors) < needed:
            dropped.append(
                drop_record(
                    row,
                    "insufficient_distractors",
                    f"{row.source_dataset} offers {len(distractors)} distractor(s) for {node}, {needed} needed",
                )
            )
            continue
        nodes = [path[j - 1] for j in depths] + distractors
        scores = hierarchical_scores(depths) + [0.0] * needed
        item = make_item(row, taxonomy, nodes, scores, rng.permutation(len(nodes)), question, ask_status, item_prefix)
        item.update(n_correct=k, n_hard_negatives=n_hard)
        items.append(item)
    return McqBuild(pd.DataFrame(items, columns=list(ITEM_COLUMNS)), pd.DataFrame(dropped, columns=list(DROP_COLUMNS)))


def option_scan_lines(options: Sequence[str], option_nodes: Sequence[str], path: Sequence[str]) -> list[str]:
    """One line per option, in the order offered, placing it on the diagnosis's taxonomy path (`path`: root
    excluded, index k-1 = level k): "A. benign neoplasm: fits, level 2." or "C. melanoma: does not fit." Several
    options can fit (the label and its ancestors); the deepest one is the answer, as in the item scoring.

    Why this shape: each step is one a 2-layer LM can learn. Copying an option line follows the prompt in order (match
    "B." and copy what came next there), and each verdict relates two names in view. The earlier walk up the path
    ("Option check, nevus: not offered." ... "offered as A.") needed the reverse lookup, from a name back to the letter
    before it in the prompt (README, "The option-reading drill", has the measured difference).
    """
    if len(options) != len(option_nodes):
        raise ValueError(f"{len(options)} option texts but {len(option_nodes)} option nodes")
    depth = {node: k for k, node in enumerate(path, start=1)}
    return [
        f"{chr(ord('A') + i)}. {name}: " + (f"fits, level {depth[node]}." if node in depth else "does not fit.")
        for i, (name, node) in enumerate(zip(options, option_nodes))
    ]


def path_line(names: Sequence[str]) -> str:
    """The diagnosis's taxonomy path from level 1 down, "Path: neoplasm > benign neoplasm > nevus.": where a `text`
    answer (`prompt_format.ANSWER_FORMS`) copies the deepest offered name from."""
    return "Path: " + " > ".join(names) + "."


def impression_line(name: str) -> str:
    """The opening line: the diagnosis read off the image, before any feature is named.

    Why first: the demo model learns image -> diagnosis name in its warm-up; opening with the name lets SFT reuse that
    reading directly instead of deriving the diagnosis from a feature sentence a tiny model cannot ground. Switch types
    open with "First thought:" instead, so the two openings never share a prefix.
    """
    return f"Impression: {name}."
