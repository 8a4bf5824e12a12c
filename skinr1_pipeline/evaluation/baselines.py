"""Image-blind baselines: what a guesser that never looks at the image scores on each suite.

Why: "beats chance" needs a number, and for the paper's multiple-choice construction 1/n is not it. Correct options
come from the label's own taxonomy path, so when two or three path nodes are offered they form an ancestor chain
that the distractors (other labels' nodes) rarely join, and the gold answer is the chain's deepest node. A guesser
that knows only the taxonomy finds it without the image. Each accuracy in the report is read against the best of:

  * `uniform`: a uniformly random offered option (open-ended: a uniformly random class of the suite);
  * `answer_prior`: the offered option that is gold most often in this suite (open-ended: the single answer that
    is right most often). Its frequencies come from the suite itself, so it is an optimistic guesser;
  * `taxonomy_structure`: the offered option with the most other offered options among its taxonomy ancestors
    (multiple choice only; options outside the taxonomy have none).

Every guesser scores its expected accuracy: ties at the top share the hit, so no random draw is involved.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from skinr1_pipeline.evaluation.suites import SUITES
from skinr1_pipeline.knowledge.taxonomy import Taxonomy

GUESSERS = ("uniform", "answer_prior", "taxonomy_structure")
BASELINE_COLUMNS = ("suite", "n", *GUESSERS, "best", "best_guesser")
_NEEDED = ("suite", "item_id", "options", "option_nodes", "answer_index", "taxonomy_node")


def _tie_share(values: Sequence[float], gold: int) -> float:
    """Expected hit of picking uniformly among the maximal `values` when the right one is `gold`."""
    top = np.flatnonzero(np.asarray(values, dtype=float) == max(values))
    return 1.0 / len(top) if gold in top else 0.0


def _check(items: pd.DataFrame) -> None:
    missing = [c for c in _NEEDED if c not in items.columns]
    if missing:
        raise ValueError(f"image-blind baselines need item columns {list(_NEEDED)}; missing {missing}")
    for row in items.itertuples(index=False):
        n = len(row.options)
        if len(row.option_nodes) != n:
            raise ValueError(f"item {row.item_id}: {len(row.option_nodes)} option_nodes for {n} options")
        if n and not 0 <= int(row.answer_index) < n:
            raise ValueError(f"item {row.item_id}: answer_index {row.answer_index} is not an offered option "
                             f"(0..{n - 1})")


def uniform_hits(items: pd.DataFrame) -> np.ndarray:
    """1/n per multiple-choice item."""
    return np.array([1.0 / len(options) for options in items["options"]], dtype=float)


def answer_prior_hits(items: pd.DataFrame) -> np.ndarray:
    """Per item, the expected hit of choosing the offered node that is gold most often across `items`."""
    gold = Counter(row.option_nodes[int(row.answer_index)] for row in items.itertuples(index=False))
    return np.array([_tie_share([gold[n] for n in row.option_nodes], int(row.answer_index))
                     for row in items.itertuples(index=False)], dtype=float)


def offered_ancestors(nodes: Sequence[str], taxonomy: Taxonomy) -> list[int]:
    """For each offered node, how many of the other offered nodes are its strict taxonomy ancestors."""
    return [sum(1 for m in nodes if m != n and m in taxonomy and taxonomy.is_ancestor(m, n, strict=True))
            if n in taxonomy else 0 for n in nodes]


def structure_hits(items: pd.DataFrame, taxonomy: Taxonomy) -> np.ndarray:
    """Per item, the expected hit of choosing the deepest node of the longest offered ancestor chain."""
    return np.array([_tie_share(offered_ancestors(list(row.option_nodes), taxonomy), int(row.answer_index))
                     for row in items.itertuples(index=False)], dtype=float)


def open_answer_hits(labels: Sequence[str], guess: str, taxonomy: Taxonomy) -> np.ndarray:
    """Open-ended scoring of one fixed answer: right when it names the label or a node below it."""
    on_path = set(taxonomy.path(guess))
    return np.array([label in on_path for label in labels], dtype=float)


def open_baselines(items: pd.DataFrame, taxonomy: Taxonomy) -> dict[str, Any]:
    """Uniform guess among the suite's classes, and the single answer right most often (ties: first by id)."""
    labels = [x for x in items["taxonomy_node"]]
    unknown = sorted({x for x in labels if not isinstance(x, str) or x not in taxonomy}, key=str)
    if unknown:
        raise ValueError(f"open-ended items whose taxonomy_node is not a taxonomy node: {unknown}")
    classes = sorted(set(labels))
    uniform = float(np.mean([open_answer_hits(labels, c, taxonomy) for c in classes], axis=0).mean())
    counts = Counter(labels)
    best_node = max(sorted(n.id for n in taxonomy), key=lambda x: sum(counts[p] for p in taxonomy.path(x)))
    prior = float(open_answer_hits(labels, best_node, taxonomy).mean())
    return {"uniform": uniform, "answer_prior": prior, "taxonomy_structure": float("nan"), "prior_answer": best_node}


def suite_baselines(items: pd.DataFrame, taxonomy: Taxonomy) -> dict[str, float]:
    """The three guessers' expected accuracy on one suite's items (all multiple-choice or all open-ended)."""
    if items.empty:
        return {g: float("nan") for g in GUESSERS}
    is_open = items["options"].map(len) == 0
    if is_open.all():
        return {g: v for g, v in open_baselines(items, taxonomy).items() if g in GUESSERS}
    if is_open.any():
        raise ValueError(f"suite {items['suite'].iloc[0]!r} mixes open-ended and multiple-choice items")
    return {"uniform": float(uniform_hits(items).mean()), "answer_prior": float(answer_prior_hits(items).mean()),
            "taxonomy_structure": float(structure_hits(items, taxonomy).mean())}


def blind_baselines(items: pd.DataFrame, taxonomy: Taxonomy) -> pd.DataFrame:
    """One row per suite (in `SUITES` order, then others): n, each guesser's expected accuracy, and the best of them
    (the bar to clear)."""
    _check(items)
    rows = []
    groups = dict(list(items.groupby("suite", sort=True)))
    for suite in [s for s in SUITES if s in groups] + sorted(set(groups) - set(SUITES)):
        group = groups[suite]
        scores = suite_baselines(group, taxonomy)
        known = {g: v for g, v in scores.items() if v == v}
        best = max(known, key=known.get) if known else ""
        rows.append({"suite": suite, "n": len(group), **scores, "best": known.get(best, float("nan")),
                     "best_guesser": best})
    return pd.DataFrame(rows, columns=list(BASELINE_COLUMNS))
