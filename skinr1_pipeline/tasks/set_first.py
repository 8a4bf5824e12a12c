"""Multiple-choice items that no image-blind guesser can pass: the option set is fixed before the answer is known.

Why: the paper's construction (`tasks.mcq.build_mcq_items`) picks the gold first and builds the options around it,
so the option texts carry the answer: on 7,500 items from the six RL label maps "pick the option with the most
offered ancestors" scores 0.47 and a learned option-feature guesser 0.50, and "pick the option adjacent to the most
offered look-alikes" answers 0.96 of the DDx suite (../shared research note, reproduced by `evaluation.baselines`).

Here, per item: draw an option set from the classes a dataset can show, shuffle it, draw the gold index uniformly,
and only then take an image of the gold class. For any function f of the option texts, P(f picks the gold) = 1/n
exactly, so the only way above chance is the image. Hard items come from *which* sets are drawn, never from the
gold: an anchor class, then the others weighted toward the anchor's close relatives (`closeness` ** depth of the
shared ancestor), or, for DDx items, toward nodes that look like the options already drawn.

Option pools (one per source dataset, since a dataset's label space is what its images can show):
  * `label`: the dataset's label classes. Options are kept an antichain (none is an ancestor of another), so
    exactly one option is true of the image; an image labelled below a class (e.g. "blue nevus" for "nevus")
    serves that class.
  * `level`: the dataset's nodes at one taxonomy level (ask at several levels for granularity).
  * `ddx`: classes in the DDx graph; after the anchor, options adjacent to more already-drawn options are
    preferred, so a set is a cluster of mutual look-alikes where the graph has one.
A pool is asked only where it has at least `n_options` classes with an image; otherwise its images are reported
as dropped (`too_few_classes`). Items per pool default to the number of images in it; images of the gold class are
used round-robin in a seeded order, so rare classes repeat images (statistics resample by sample, see
`evaluation.paired_tests`). Credit for a wrong option is the depth of its lowest common ancestor with the gold
class over the gold class's depth (partial credit for a sibling), times `top_score`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.modeling.prompt_format import DEFAULT_MCQ_QUESTION
from skinr1_pipeline.tasks.mcq import (
    DROP_COLUMNS,
    ITEM_COLUMNS,
    McqBuild,
    drop_record,
    labelled_rows,
    make_item,
    sample_rng,
)

POOLS = ("label", "level", "ddx")
SET_FIRST_COLUMNS = (*ITEM_COLUMNS, "level", "gold_class", "construction")
CONSTRUCTION = "set_first"
_REDRAWS = 20


@dataclass(frozen=True)
class SetFirstConfig:
    n_options: int = 4
    seed: int = 42
    closeness: float = 3.0  # a relative sharing a level-d ancestor with the anchor is drawn closeness**d as often
    items_per_pool: int = 0  # 0: as many items as the pool has images
    top_score: float = 1.0  # credit of the gold option (GRPO uses the paper's 0.75)
    question: str = DEFAULT_MCQ_QUESTION
    ask_status: bool = True

    def __post_init__(self) -> None:
        if self.n_options < 2:
            raise ValueError(f"n_options must be at least 2, got {self.n_options}")
        if self.closeness < 1.0:
            raise ValueError(f"closeness must be >= 1 (1 = no preference for relatives), got {self.closeness}")
        if self.items_per_pool < 0:
            raise ValueError(f"items_per_pool must be >= 0 (0 = one item per image), got {self.items_per_pool}")


@dataclass
class _Pool:
    """The classes one dataset can show for one question, with the images that serve each class."""

    dataset: str
    name: str  # "label", "level3", "ddx"
    level: int | None
    classes: list[str]
    images: dict[str, list[Any]]  # class -> rows whose label is the class or below it
    partners: np.ndarray  # [anchor, other]: may be offered together with the anchor
    nested: np.ndarray  # [a, b]: one is an ancestor of the other (never offered together)
    affinity: np.ndarray  # [anchor, other]: relative preference (label/level pools)
    ddx_adjacent: np.ndarray | None = None  # ddx pool: look-alike edges

    def admissible_anchors(self, n: int) -> np.ndarray:
        return np.flatnonzero(self.partners.sum(axis=1) >= n - 1)


def _class_rows(rows: list[Any], class_of: Any) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for row in rows:
        for node in class_of(row):
            out.setdefault(node, []).append(row)
    return {k: sorted(v, key=lambda r: str(r.sample_id)) for k, v in sorted(out.items())}


def _nested(taxonomy: Taxonomy, classes: Sequence[str]) -> np.ndarray:
    paths = [set(taxonomy.path(c)) for c in classes]
    return np.array(
        [[a != b and (a in paths[j] or b in paths[i]) for j, b in enumerate(classes)] for i, a in enumerate(classes)],
        dtype=bool,
    )


def _taxonomy_pool(
    taxonomy: Taxonomy, dataset: str, name: str, level: int | None, images: dict[str, list[Any]], closeness: float
) -> _Pool:
    classes = list(images)
    nested = _nested(taxonomy, classes)
    shared = np.array(
        [[taxonomy.depth(taxonomy.lowest_common_ancestor([a, b])) for b in classes] for a in classes], dtype=float
    ).reshape(len(classes), len(classes))
    partners = ~nested & ~np.eye(len(classes), dtype=bool)
    return _Pool(dataset, name, level, classes, images, partners, nested, np.power(closeness, shared))


def _pools(
    rows: list[Any],
    taxonomy: Taxonomy,
    dataset: str,
    pool: str,
    config: SetFirstConfig,
    levels: Sequence[int] | None,
    ddx: DDxGraph | None,
) -> list[_Pool]:
    if pool == "label":
        labels = {r.taxonomy_node for r in rows}
        images = _class_rows(rows, lambda r: [n for n in taxonomy.path(r.taxonomy_node)[1:] if n in labels])
        return [_taxonomy_pool(taxonomy, dataset, "label", None, images, config.closeness)]
    if pool == "level":
        deepest = max((taxonomy.depth(r.taxonomy_node) for r in rows), default=0)
        return [
            _taxonomy_pool(
                taxonomy,
                dataset,
                f"level{level}",
                level,
                _class_rows(rows, lambda r, lv=level: taxonomy.path(r.taxonomy_node)[lv : lv + 1]),
                config.closeness,
            )
            for level in (levels or range(1, deepest + 1))
        ]
    if pool == "ddx":
        if ddx is None:
            raise ValueError("the ddx option pool needs a DDx graph (ddx=...)")
        images = _class_rows(rows, lambda r: [n for n in taxonomy.path(r.taxonomy_node)[1:] if n in ddx.graph])
        classes = list(images)
        nested = _nested(taxonomy, classes)
        adjacent = np.array([[ddx.graph.has_edge(a, b) for b in classes] for a in classes], dtype=bool).reshape(
            len(classes), len(classes)
        )
        return [
            _Pool(
                dataset,
                "ddx",
                None,
                classes,
                images,
                adjacent & ~nested,
                nested,
                np.ones((len(classes), len(classes))),
                adjacent & ~nested,
            )
        ]
    raise ValueError(f"unknown option pool {pool!r}; allowed: {', '.join(POOLS)}")


def _draw_options(pool: _Pool, rng: np.random.Generator, n: int, closeness: float) -> list[int] | None:
    """An anchor, then n-1 others by preference; None when the draw runs out of admissible classes."""
    anchors = pool.admissible_anchors(n)
    anchor = int(anchors[rng.integers(len(anchors))])
    chosen = [anchor]
    open_ = pool.partners[anchor].copy()
    for _ in range(n - 1):
        if pool.ddx_adjacent is not None:
            # Prefer look-alikes of every option drawn so far: a cluster, not a star around the anchor.
            weights = np.power(closeness, pool.ddx_adjacent[chosen].sum(axis=0).astype(float))
        else:
            weights = pool.affinity[anchor]
        weights = np.where(open_, weights, 0.0)
        if weights.sum() <= 0:
            return None
        pick = int(rng.choice(len(weights), p=weights / weights.sum()))
        chosen.append(pick)
        open_[pick] = False
        open_ &= ~pool.nested[pick]  # keep the set an antichain: exactly one option is true of the image
    return chosen


def _credit(taxonomy: Taxonomy, option: str, gold: str, top: float) -> float:
    if option == gold:
        return top
    return top * taxonomy.depth(taxonomy.lowest_common_ancestor([option, gold])) / taxonomy.depth(gold)


def build_set_first_items(
    samples: pd.DataFrame,
    taxonomy: Taxonomy,
    *,
    pool: str = "label",
    config: SetFirstConfig = SetFirstConfig(),
    splits: Sequence[str] | None = None,
    levels: Sequence[int] | None = None,
    ddx: DDxGraph | None = None,
    item_prefix: str = "set_first",
) -> McqBuild:
    """Set-first items (module docstring) from the rows of `samples` whose split is in `splits` (all if None).

    Item ids are `<prefix>/<dataset>/<pool>/<index>`; `sample_id` names the image used, which may serve several
    items. Every row that cannot serve any item is listed in `dropped` with its reason.
    """
    rows_frame = samples if splits is None else samples[samples["split"].isin(list(splits))]
    dropped: list[dict[str, Any]] = []
    usable = list(labelled_rows(rows_frame, taxonomy, dropped))
    items: list[dict[str, Any]] = []
    by_dataset: dict[str, list[Any]] = {}
    for row in usable:
        by_dataset.setdefault(str(row.source_dataset), []).append(row)
    for dataset in sorted(by_dataset):
        rows = by_dataset[dataset]
        for spec in _pools(rows, taxonomy, dataset, pool, config, levels, ddx):
            items.extend(_pool_items(spec, rows, taxonomy, config, item_prefix, dropped))
    frame = pd.DataFrame(items, columns=list(SET_FIRST_COLUMNS))
    return McqBuild(frame, pd.DataFrame(dropped, columns=list(DROP_COLUMNS)))


def _pool_items(
    spec: _Pool, rows: list[Any], taxonomy: Taxonomy, config: SetFirstConfig, prefix: str, dropped: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    n = config.n_options
    served = {str(r.sample_id) for members in spec.images.values() for r in members}
    base = f"{prefix}/{spec.dataset}/{spec.name}"
    admissible = len(spec.admissible_anchors(n))
    if len(spec.classes) < n or admissible == 0:
        for row in rows:
            if str(row.sample_id) in served:
                dropped.append(
                    drop_record(
                        row,
                        "too_few_classes",
                        f"{spec.dataset} {spec.name}: {len(spec.classes)} classes with an image, "
                        f"{admissible} with {n - 1} admissible partners; {n} options needed",
                    )
                )
        return []
    # Each class's images in a seeded order, used round-robin so every image serves before any repeats.
    orders = {
        c: [members[i] for i in sample_rng(config.seed, f"{base}/order/{c}").permutation(len(members))]
        for c, members in spec.images.items()
    }
    used = dict.fromkeys(spec.classes, 0)
    out = []
    for index in range(config.items_per_pool or len(served)):
        rng = sample_rng(config.seed, f"{base}/{index}")
        chosen = None
        for _ in range(_REDRAWS):  # a redraw depends on the option draw only, never on the gold
            chosen = _draw_options(spec, rng, n, config.closeness)
            if chosen is not None:
                break
        if chosen is None:
            continue
        nodes = [spec.classes[i] for i in rng.permutation(chosen)]
        gold = nodes[int(rng.integers(n))]  # drawn after the options are fixed: P(gold | options) = 1/n
        image = orders[gold][used[gold] % len(orders[gold])]
        used[gold] += 1
        scores = [_credit(taxonomy, node, gold, config.top_score) for node in nodes]
        item = make_item(image, taxonomy, nodes, scores, np.arange(n), config.question, config.ask_status, prefix)
        item.update(
            item_id=f"{base}/{index:05d}",
            n_correct=1,
            n_hard_negatives=0,
            level=spec.level,
            gold_class=gold,
            construction=CONSTRUCTION,
        )
        out.append(item)
    return out
