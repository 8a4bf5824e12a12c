"""GRPO training items: which multiple-choice construction RL learns from, and data-scaling subsets (paper §5.1).

Why set-first by default: under the paper's construction (`tasks.mcq.build_mcq_items`) a policy that never looks at
the image collects more granularity reward than a uniform one (on the demo's RL items 0.35 vs 0.28 for "pick the
option with the most offered ancestors", oracle 0.75), so RL can be paid for reading the option list. Set-first items
(`tasks.set_first`) give every image-blind policy exactly the uniform policy's chance of the gold; the granularity
reward becomes lowest-common-ancestor partial credit over options asked at every taxonomy level (the gold scores the
paper's 0.75, a sibling less, an unrelated class 0). `construction="paper"` reproduces the authors' items exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.tasks.mcq import DROP_COLUMNS, TOP_SCORE, McqBuild, build_mcq_items, sample_rng
from skinr1_pipeline.tasks.set_first import SET_FIRST_COLUMNS, SetFirstConfig, build_set_first_items

CONSTRUCTIONS = ("set_first", "paper")
DEFAULT_FRACTIONS = (0.01, 0.05, 0.1, 0.2)


def build_rl_items(
    samples: pd.DataFrame,
    taxonomy: Taxonomy,
    *,
    construction: str = "set_first",
    ddx: DDxGraph | None = None,
    n_options: int = 4,
    hard_negative_fraction: float = 0.0,
    seed: int = 42,
) -> McqBuild:
    """RL items for every split of `samples` (GRPO reads the train split; the others stay for held-out checks)."""
    if construction == "paper":
        return build_mcq_items(
            samples, taxonomy, ddx=ddx, n_options=n_options, hard_negative_fraction=hard_negative_fraction, seed=seed
        )
    if construction != "set_first":
        raise ValueError(f"construction {construction!r} is not one of {', '.join(CONSTRUCTIONS)}")
    if hard_negative_fraction:
        raise ValueError(
            "hard_negative_fraction applies to the paper's construction only; set-first items already "
            "prefer close relatives of the anchor (SetFirstConfig.closeness)"
        )
    config = SetFirstConfig(n_options=n_options, seed=seed, top_score=TOP_SCORE)
    parts = [
        build_set_first_items(samples, taxonomy, pool="level", config=config, splits=[split], item_prefix=f"rl/{split}")
        for split in sorted(samples["split"].dropna().unique())
    ]
    return McqBuild(
        _concat([p.items for p in parts], SET_FIRST_COLUMNS), _concat([p.dropped for p in parts], DROP_COLUMNS)
    )


def _concat(frames: list[pd.DataFrame], columns: Sequence[str]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=list(columns))


def train_subsets(
    items: pd.DataFrame, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 42
) -> dict[float, pd.DataFrame]:
    """Per-source fractions of the train items for data-scaling runs (paper §5.1 step 6).

    Each source is permuted once and every fraction takes a prefix, so the subsets are nested (1 % ⊂ 5 % ⊂ ...)
    and a scaling curve compares more data against a superset, not against a different draw. A source with
    any train items contributes at least one.
    """
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise ValueError(f"fractions must be in (0, 1], got {f}")
    train = items[items["split"] == "train"]
    orders = {}
    for source, group in train.groupby("source_dataset", sort=True):
        ids = sorted(group["item_id"])
        perm = sample_rng(seed, f"subset/{source}").permutation(len(ids))
        orders[source] = [ids[i] for i in perm]
    out = {}
    for f in fractions:
        keep = {i for ids in orders.values() for i in ids[: max(1, int(round(f * len(ids))))]}
        out[f] = train[train["item_id"].isin(keep)].reset_index(drop=True)
    return out
