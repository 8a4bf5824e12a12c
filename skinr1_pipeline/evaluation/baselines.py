"""Image-blind baselines: what a guesser that never looks at the image scores on each suite.

Why: "beats chance" needs a number, and for the paper's multiple-choice construction 1/n is not it. Correct options
come from the label's own taxonomy path, so the gold is the tip of a visible ancestor chain; DDx options are the gold's
look-alikes, so the gold sits at the centre of the offered DDx neighbourhood (measurements:
shared/research/evaluation-leak.md). Each guesser sees only the option texts and nodes, the public taxonomy and the
public DDx graph, never the image or the gold of the item it scores:

  * `uniform`: a uniformly random offered option (open-ended: a uniformly random class of the suite);
  * `answer_prior`: the offered node that is gold most often in the OTHER folds (cross-fitted; open-ended: the single
    answer right most often in the other folds). Never in-sample, which would read the item's own gold;
  * `most_ancestors`: the option with the most other offered options among its strict taxonomy ancestors;
  * `deepest`: the deepest offered taxonomy node;
  * `longest_text`: the option with the longest text;
  * `lexical`: the option with the highest `lexical_scores` (texts of other options it contains + options sharing its
    head noun);
  * `ddx_centrality`: the option with the most other offered options among its DDx look-alikes (NaN without a graph);
  * `learned`: a cross-fitted conditional logit over the item's options on all of the above as features.

Every guesser scores its expected hit per item: ties at the top share the hit, so no random draw is involved.
Cross-fitting: items fall into `K_FOLDS` folds by a stable hash of `cluster` (when the items have that column, so
images of one lesion/patient never straddle folds) else of `item_id`; an item is scored only by frequencies or a model
fitted on the other folds. The best guesser is the maximum of several estimates, so it is a slightly optimistic bar,
which is the safe direction for a bar.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from skinr1_pipeline.evaluation.paired_tests import wilson_interval
from skinr1_pipeline.evaluation.suites import SUITES
from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.taxonomy import Taxonomy, normalize_label

GUESSERS = (
    "uniform",
    "answer_prior",
    "most_ancestors",
    "deepest",
    "longest_text",
    "lexical",
    "ddx_centrality",
    "learned",
)
#: Guessers whose choice is a fixed rule of one item (no fitting), so they also act as policies on RL rewards.
RULE_GUESSERS = ("most_ancestors", "deepest", "longest_text", "lexical", "ddx_centrality")
BASELINE_COLUMNS = (
    "suite",
    "n",
    *GUESSERS,
    "best",
    "best_guesser",
    "chance",
    "best_margin",
    "best_ci_low",
    "best_ci_high",
)
K_FOLDS = 5
_NEEDED = ("suite", "item_id", "options", "option_nodes", "answer_index", "taxonomy_node")
_MAX_POSITION = 4  # positions 0..3 get their own feature; 4 and later share one
_L2 = 1.0  # ridge on standardised features, in units of one item's log-likelihood


# ---- shared helpers -------------------------------------------------------------------------------------------------
def _tie_share(values: Sequence[float], gold: int) -> float:
    """Expected hit of picking uniformly among the maximal `values` when the right one is `gold`."""
    top = np.flatnonzero(np.asarray(values, dtype=float) == max(values))
    return 1.0 / len(top) if gold in top else 0.0


def _top_mean(values: Sequence[float], payoff: Sequence[float]) -> float:
    """Expected `payoff` of picking uniformly among the maximal `values` (ties averaged)."""
    values = np.asarray(values, dtype=float)
    return float(np.asarray(payoff, dtype=float)[values == values.max()].mean())


def _check(items: pd.DataFrame, needed: Sequence[str] = _NEEDED) -> None:
    missing = [c for c in needed if c not in items.columns]
    if missing:
        raise ValueError(f"image-blind baselines need item columns {list(needed)}; missing {missing}")
    for row in items.itertuples(index=False):
        n = len(row.options)
        if len(row.option_nodes) != n:
            raise ValueError(f"item {row.item_id}: {len(row.option_nodes)} option_nodes for {n} options")
        if "answer_index" in needed and n and not 0 <= int(row.answer_index) < n:
            raise ValueError(
                f"item {row.item_id}: answer_index {row.answer_index} is not an offered option (0..{n - 1})"
            )
        if "option_scores" in needed and len(row.option_scores) != n:
            raise ValueError(f"item {row.item_id}: {len(row.option_scores)} option_scores for {n} options")


def _fold_keys(items: pd.DataFrame) -> list[str]:
    clusters = items["cluster"] if "cluster" in items.columns else [None] * len(items)
    return [f"c:{c}" if pd.notna(c) else f"i:{i}" for c, i in zip(clusters, items["item_id"])]


def fold_ids(items: pd.DataFrame, k: int = K_FOLDS, *, seed: int = 0) -> np.ndarray:
    """Fold (0..k-1) of each item: a stable hash of its `cluster` when that column is present and set, else of its
    `item_id`. Stable across runs and machines (no Python `hash`), so cross-fitted numbers are reproducible."""
    return np.array(
        [int(hashlib.sha256(f"{seed}/{key}".encode()).hexdigest()[:12], 16) % k for key in _fold_keys(items)], dtype=int
    )


def _option_key(node: Any, text: Any) -> Hashable:
    """What the answer prior counts: the taxonomy node, or the normalised text for options without one."""
    return node if isinstance(node, str) and node else ("text", normalize_label(str(text)))


class _Blind:
    """Per-call caches of the public knowledge (taxonomy paths are walked in Python, so cache them)."""

    def __init__(self, taxonomy: Taxonomy, ddx: DDxGraph | None) -> None:
        self.taxonomy, self.ddx = taxonomy, ddx
        self._paths: dict[str, frozenset[str]] = {}
        self._lookalikes: dict[str, frozenset[str]] = {}

    def known(self, node: Any) -> bool:
        return isinstance(node, str) and node in self.taxonomy

    def path(self, node: str) -> frozenset[str]:
        if node not in self._paths:
            self._paths[node] = frozenset(self.taxonomy.path(node))
        return self._paths[node]

    def depth(self, node: Any) -> int:
        return self.taxonomy.depth(node) if self.known(node) else -1

    def lookalikes(self, node: Any) -> frozenset[str]:
        if self.ddx is None or not self.known(node):
            return frozenset()
        if node not in self._lookalikes:
            self._lookalikes[node] = frozenset(self.ddx.neighbours_with_expansion(node, self.taxonomy))
        return self._lookalikes[node]

    def ancestors(self, nodes: Sequence[Any]) -> list[int]:
        return [
            sum(1 for m in nodes if m != n and self.known(m) and m in self.path(n)) if self.known(n) else 0
            for n in nodes
        ]

    def descendants(self, nodes: Sequence[Any]) -> list[int]:
        return [
            sum(1 for m in nodes if m != n and self.known(m) and n in self.path(m)) if self.known(n) else 0
            for n in nodes
        ]

    def ddx_degree(self, nodes: Sequence[Any]) -> list[int]:
        return [sum(1 for m in nodes if m != n and m in self.lookalikes(n)) for n in nodes]


# ---- per-option scores (one rule each) -------------------------------------------------------------------------------
def offered_ancestors(nodes: Sequence[Any], taxonomy: Taxonomy) -> list[int]:
    """For each offered node, how many of the other offered nodes are its strict taxonomy ancestors."""
    return _Blind(taxonomy, None).ancestors(list(nodes))


def offered_descendants(nodes: Sequence[Any], taxonomy: Taxonomy) -> list[int]:
    """For each offered node, how many of the other offered nodes are its strict taxonomy descendants."""
    return _Blind(taxonomy, None).descendants(list(nodes))


def lexical_scores(options: Sequence[Any]) -> list[int]:
    """Per option: other options whose normalised text occurs in its text as whole words (it is the more specific
    phrase, "nodular basal cell carcinoma" ⊃ "basal cell carcinoma"), plus other options sharing its head noun (last
    word, so "... carcinoma" options back each other). Catches the ancestor chain when only texts are known."""
    texts = [normalize_label(str(o)) for o in options]
    heads = [t.split()[-1] if t else "" for t in texts]
    out = []
    for i, t in enumerate(texts):
        contains = sum(1 for j, u in enumerate(texts) if j != i and u and u != t and f" {u} " in f" {t} ")
        shares = sum(1 for j, h in enumerate(heads) if j != i and h and h == heads[i])
        out.append(contains + shares)
    return out


def ddx_degrees(nodes: Sequence[Any], taxonomy: Taxonomy, ddx: DDxGraph) -> list[int]:
    """Per option: other offered options among its DDx look-alikes, with the parent/child expansion
    (`neighbours_with_expansion`), the relation the DDx suite draws its distractors from, so a blind guesser that
    knows the public graph would use exactly it (plain neighbours miss look-alikes inherited from a parent node)."""
    return _Blind(taxonomy, ddx).ddx_degree(list(nodes))


def _rule_values(row: Any, blind: _Blind) -> dict[str, list[float]]:
    nodes, options = list(row.option_nodes), list(row.options)
    out: dict[str, list[float]] = {
        "most_ancestors": blind.ancestors(nodes),
        "deepest": [blind.depth(n) for n in nodes],
        "longest_text": [len(str(o).strip()) for o in options],
        "lexical": lexical_scores(options),
    }
    if blind.ddx is not None:
        out["ddx_centrality"] = blind.ddx_degree(nodes)
    return out


# ---- guessers over items --------------------------------------------------------------------------------------------
def uniform_hits(items: pd.DataFrame) -> np.ndarray:
    """1/n per multiple-choice item."""
    return np.array([1.0 / len(options) for options in items["options"]], dtype=float)


def _gold_keys(items: pd.DataFrame) -> list[Hashable]:
    return [
        _option_key(row.option_nodes[int(row.answer_index)], row.options[int(row.answer_index)])
        for row in items.itertuples(index=False)
    ]


def answer_prior_hits(items: pd.DataFrame, *, seed: int = 0) -> np.ndarray:
    """Per item, the expected hit of choosing the offered option that is gold most often in the other folds (ties,
    including "never gold elsewhere", share the hit)."""
    folds, gold = fold_ids(items, seed=seed), _gold_keys(items)
    per_fold = [Counter(g for g, f in zip(gold, folds) if f == k) for k in range(K_FOLDS)]
    total = sum(per_fold, Counter())
    out = []
    for row, f in zip(items.itertuples(index=False), folds):
        counts = total - per_fold[f]
        keys = [_option_key(n, o) for n, o in zip(row.option_nodes, row.options)]
        out.append(_tie_share([counts[k] for k in keys], int(row.answer_index)))
    return np.array(out, dtype=float)


def rule_hits(items: pd.DataFrame, taxonomy: Taxonomy, ddx: DDxGraph | None = None) -> dict[str, np.ndarray]:
    """Expected hits of the fixed-rule guessers (`RULE_GUESSERS`); `ddx_centrality` is NaN without a graph."""
    blind = _Blind(taxonomy, ddx)
    out = {g: np.full(len(items), np.nan) for g in RULE_GUESSERS}
    for i, row in enumerate(items.itertuples(index=False)):
        for g, values in _rule_values(row, blind).items():
            out[g][i] = _tie_share(values, int(row.answer_index))
    return out


def most_ancestors_hits(items: pd.DataFrame, taxonomy: Taxonomy) -> np.ndarray:
    """Per item, the expected hit of choosing the deepest node of the longest offered ancestor chain."""
    return rule_hits(items, taxonomy)["most_ancestors"]


structure_hits = most_ancestors_hits  # the name the first version used


def _features(items: pd.DataFrame, blind: _Blind) -> tuple[np.ndarray, np.ndarray, list[list[Hashable]]]:
    """Option features without the node prior: (items, max options, features) padded, the mask, option keys."""
    m = max(len(o) for o in items["options"])
    names = ("ancestors", "descendants", "depth", "in_taxonomy", "text_length", "lexical", "ddx_degree")
    x = np.zeros((len(items), m, len(names) + _MAX_POSITION + 1))
    mask = np.zeros((len(items), m), dtype=bool)
    keys = []
    for i, row in enumerate(items.itertuples(index=False)):
        nodes, options, n = list(row.option_nodes), list(row.options), len(row.options)
        mask[i, :n] = True
        cols = [
            blind.ancestors(nodes),
            blind.descendants(nodes),
            [max(blind.depth(v), 0) for v in nodes],
            [float(blind.known(v)) for v in nodes],
            [len(str(o).strip()) for o in options],
            lexical_scores(options),
            blind.ddx_degree(nodes),
        ]
        x[i, :n, : len(names)] = np.array(cols, dtype=float).T
        x[i, np.arange(n), len(names) + np.minimum(np.arange(n), _MAX_POSITION)] = 1.0
        keys.append([_option_key(v, o) for v, o in zip(nodes, options)])
    return x, mask, keys


def _softmax(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    s = np.where(mask, scores, -np.inf)
    s = s - s.max(axis=1, keepdims=True)
    e = np.where(mask, np.exp(s), 0.0)
    return e / e.sum(axis=1, keepdims=True)


def _fit_conditional_logit(
    x: np.ndarray, mask: np.ndarray, gold: np.ndarray, l2: float = _L2, iterations: int = 50
) -> np.ndarray:
    """Ridge conditional logit (softmax over each item's options) by damped Newton: concave, so deterministic and
    fast for a dozen features; the ridge keeps the weights finite when a feature separates the gold perfectly."""
    d = x.shape[2]
    w = np.zeros(d)
    rows = np.arange(len(x))

    def objective(v: np.ndarray) -> float:
        s = np.where(mask, x @ v, -np.inf)
        top = s.max(axis=1)
        lse = top + np.log(np.exp(s - top[:, None]).sum(axis=1))
        return float((s[rows, gold] - lse).sum() - 0.5 * l2 * v @ v)

    current = objective(w)
    for _ in range(iterations):
        p = _softmax(x @ w, mask)
        mean = np.einsum("nm,nmd->nd", p, x)
        grad = (x[rows, gold] - mean).sum(axis=0) - l2 * w
        centred = (x - mean[:, None, :]).reshape(-1, d)
        hess = (centred * p.reshape(-1, 1)).T @ centred + l2 * np.eye(d)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while t > 1e-6:
            candidate = objective(w + t * step)
            if candidate >= current:
                break
            t /= 2
        else:
            break
        gain = candidate - current
        w, current = w + t * step, candidate
        if gain < 1e-10:
            break
    return w


def learned_hits(items: pd.DataFrame, taxonomy: Taxonomy, ddx: DDxGraph | None = None, *, seed: int = 0) -> np.ndarray:
    """Per item, the expected hit of the argmax of a conditional logit fitted on the other folds (ties share).

    Features: offered ancestors and descendants, depth, in-taxonomy flag, text length, `lexical_scores`, DDx degree
    among the offered options, log(1 + times the option was gold in the training items) and the option position.
    A training item's node prior leaves out its own gold (its cluster's, with clusters), as a scored item's prior
    leaves out its fold, so the model does not learn to trust a count that contains the answer. Features are
    standardised on the training options.
    """
    x, mask, keys = _features(items, _Blind(taxonomy, ddx))
    gold = items["answer_index"].to_numpy(dtype=int)
    gold_keys = [k[g] for k, g in zip(keys, gold)]
    folds = fold_ids(items, seed=seed)
    groups = _fold_keys(items)
    group_counts: dict[Hashable, Counter] = {}
    for g, key in zip(groups, gold_keys):
        group_counts.setdefault(g, Counter())[key] += 1
    out = np.zeros(len(items))
    for k in range(K_FOLDS):
        test, train = np.flatnonzero(folds == k), np.flatnonzero(folds != k)
        if not len(test):
            continue
        counts = Counter(gold_keys[i] for i in train)
        prior = np.zeros(mask.shape)
        for i in range(len(items)):
            own = group_counts[groups[i]] if folds[i] != k else Counter()
            prior[i, : len(keys[i])] = [np.log1p(counts[key] - own[key]) for key in keys[i]]
        xk = np.concatenate([x, prior[:, :, None]], axis=2)
        if len(train):
            flat = xk[train][mask[train]]
            centre, scale = flat.mean(axis=0), flat.std(axis=0)
            scale[scale == 0] = 1.0
            z = np.where(mask[:, :, None], (xk - centre) / scale, 0.0)
            w = _fit_conditional_logit(z[train], mask[train], gold[train])
        else:
            z, w = np.zeros_like(xk), np.zeros(xk.shape[2])
        scores = np.round(z[test] @ w, 9)
        for i, s in zip(test, scores):
            out[i] = _tie_share(s[mask[i]], gold[i])
    return out


# ---- open-ended -----------------------------------------------------------------------------------------------------
def open_answer_hits(labels: Sequence[str], guess: str, taxonomy: Taxonomy) -> np.ndarray:
    """Open-ended scoring of one fixed answer: right when it names the label or a node below it."""
    on_path = set(taxonomy.path(guess))
    return np.array([label in on_path for label in labels], dtype=float)


def _prior_answer(labels: Sequence[str], taxonomy: Taxonomy) -> str:
    """The single answer right for the most `labels` (ties: first by id)."""
    counts = Counter(labels)
    return max(sorted(n.id for n in taxonomy), key=lambda x: sum(counts[p] for p in taxonomy.path(x)))


def _open_hits(items: pd.DataFrame, taxonomy: Taxonomy, seed: int) -> dict[str, np.ndarray]:
    labels = list(items["taxonomy_node"])
    unknown = sorted({x for x in labels if not isinstance(x, str) or x not in taxonomy}, key=str)
    if unknown:
        raise ValueError(f"open-ended items whose taxonomy_node is not a taxonomy node: {unknown}")
    classes = sorted(set(labels))
    uniform = np.mean([open_answer_hits(labels, c, taxonomy) for c in classes], axis=0)
    folds = fold_ids(items, seed=seed)
    prior = np.zeros(len(labels))
    for k in range(K_FOLDS):
        test = np.flatnonzero(folds == k)
        if len(test):
            answer = _prior_answer([lab for lab, f in zip(labels, folds) if f != k], taxonomy)
            prior[test] = open_answer_hits([labels[i] for i in test], answer, taxonomy)
    return {"uniform": uniform, "answer_prior": prior}


def open_baselines(items: pd.DataFrame, taxonomy: Taxonomy, *, seed: int = 0) -> dict[str, Any]:
    """Uniform guess among the suite's classes, and the cross-fitted single answer right most often;
    `prior_answer` is that answer fitted on the whole suite (what the guesser would say, not how it is scored)."""
    hits = _open_hits(items, taxonomy, seed)
    return {
        **{g: float("nan") for g in GUESSERS},
        **{g: float(v.mean()) for g, v in hits.items()},
        "prior_answer": _prior_answer(list(items["taxonomy_node"]), taxonomy),
    }


# ---- tables ---------------------------------------------------------------------------------------------------------
def _suite_order(groups: Sequence[str]) -> list[str]:
    return [s for s in SUITES if s in groups] + sorted(set(groups) - set(SUITES))


def _suite_hits(items: pd.DataFrame, taxonomy: Taxonomy, ddx: DDxGraph | None, seed: int) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "item_id": items["item_id"].to_numpy(),
            "suite": items["suite"].to_numpy(),
            **{g: np.full(len(items), np.nan) for g in GUESSERS},
        }
    )
    is_open = (items["options"].map(len) == 0).to_numpy()
    if is_open.all():
        for g, v in _open_hits(items, taxonomy, seed).items():
            out[g] = v
        return out
    if is_open.any():
        raise ValueError(f"suite {items['suite'].iloc[0]!r} mixes open-ended and multiple-choice items")
    out["uniform"] = uniform_hits(items)
    out["answer_prior"] = answer_prior_hits(items, seed=seed)
    for g, v in rule_hits(items, taxonomy, ddx).items():
        out[g] = v
    out["learned"] = learned_hits(items, taxonomy, ddx, seed=seed)
    return out


def blind_hits(items: pd.DataFrame, taxonomy: Taxonomy, ddx: DDxGraph | None = None, *, seed: int = 0) -> pd.DataFrame:
    """Per item (suites in `SUITES` order, items in input order within a suite): item_id, suite and each guesser's
    expected hit (NaN where a guesser does not apply), for paired tests of a model against the best guesser.
    Cross-fitting is within each suite."""
    _check(items)
    groups = {s: g for s, g in items.groupby("suite", sort=False)}
    frames = [_suite_hits(groups[s].reset_index(drop=True), taxonomy, ddx, seed) for s in _suite_order(list(groups))]
    if not frames:
        return pd.DataFrame(columns=["item_id", "suite", *GUESSERS])
    return pd.concat(frames, ignore_index=True)


def blind_baselines(
    items: pd.DataFrame, taxonomy: Taxonomy, ddx: DDxGraph | None = None, *, seed: int = 0
) -> pd.DataFrame:
    """One row per suite (in `SUITES` order, then others): n, each guesser's expected accuracy, the best of them
    (the bar to clear), `chance` (mean 1/n; open-ended: `uniform`), `best_margin` = best - chance, and a 95% Wilson
    interval of the best guesser's accuracy on the summed expected hits."""
    return summarize_hits(blind_hits(items, taxonomy, ddx, seed=seed))


def summarize_hits(hits: pd.DataFrame) -> pd.DataFrame:
    """`blind_baselines`' table from per-item hits already computed (so a caller that also needs the hits for paired
    tests fits the cross-fitted guessers once)."""
    rows = []
    for suite, group in hits.groupby("suite", sort=False):
        scores = {g: float(group[g].mean()) for g in GUESSERS}
        known = {g: v for g, v in scores.items() if not math.isnan(v)}
        best = max(known, key=known.get) if known else ""
        value = known.get(best, float("nan"))
        low, high = wilson_interval(float(group[best].sum()), len(group)) if best else (float("nan"), float("nan"))
        chance = scores["uniform"]
        rows.append(
            {
                "suite": suite,
                "n": len(group),
                **scores,
                "best": value,
                "best_guesser": best,
                "chance": chance,
                "best_margin": value - chance,
                "best_ci_low": low,
                "best_ci_high": high,
            }
        )
    return pd.DataFrame(rows, columns=list(BASELINE_COLUMNS))


def best_blind_policy_reward(items: pd.DataFrame, taxonomy: Taxonomy, ddx: DDxGraph | None = None) -> dict[str, Any]:
    """Mean `option_scores` (e.g. the granularity reward of each option) collected per item by each rule guesser's
    choice (ties averaged), by the uniform policy and by the oracle (the best option); `best_margin` = best - uniform
    (compare margins, not rewards, across constructions whose partial credit differs).

    Why: the GRPO reward leaks like the accuracy does; a policy's reward is read against the best blind policy. The
    fitted guessers (`answer_prior`, `learned`) are left out: they need a single gold to fit, and RL rewards give
    partial credit to several options. `ddx_centrality` is left out without a graph. Open-ended items are skipped;
    no gold or suite is needed, so RL training items can be passed as they are.
    """
    _check(items, needed=("item_id", "options", "option_nodes", "option_scores"))
    blind = _Blind(taxonomy, ddx)
    totals: dict[str, list[float]] = {g: [] for g in ("uniform", *RULE_GUESSERS, "oracle")}
    for row in items.itertuples(index=False):
        scores = np.asarray(list(row.option_scores), dtype=float)
        if not len(scores):
            continue
        totals["uniform"].append(float(scores.mean()))
        totals["oracle"].append(float(scores.max()))
        for g, values in _rule_values(row, blind).items():
            totals[g].append(_top_mean(values, scores))
    if ddx is None:
        del totals["ddx_centrality"]
    means = {g: float(np.mean(v)) if v else float("nan") for g, v in totals.items()}
    candidates = {g: v for g, v in means.items() if g != "oracle" and not math.isnan(v)}
    best = max(candidates, key=candidates.get) if candidates else ""
    return {
        **{g: v for g, v in means.items() if g != "oracle"},
        "best": best,
        "best_reward": candidates.get(best, float("nan")),
        "oracle": means["oracle"],
        "n": len(totals["oracle"]),
        "best_margin": candidates.get(best, float("nan")) - means["uniform"],
    }


def above_chance(hits: pd.DataFrame, *, alpha: float = 0.05) -> pd.DataFrame:
    """Per (suite, guesser) of `blind_hits`: is the guesser above chance beyond doubt? The Wilson lower bound is taken
    at alpha divided by the number of (suite, guesser) pairs tested (Bonferroni), because the question is whether
    the *best* of many guessers beats chance, and with eight guessers on a small suite one of them will look lucky.
    Set-first suites must show no row with `above_chance`; the paper's construction shows many."""
    guessers = [g for g in GUESSERS if g in hits and g != "uniform"]
    pairs = [
        (suite, g, group)
        for suite, group in hits.groupby("suite", sort=False)
        for g in guessers
        if group[g].notna().all()
    ]
    level = alpha / max(len(pairs), 1)
    rows = []
    for suite, g, group in pairs:
        chance, n = float(group["uniform"].mean()), len(group)
        accuracy = float(group[g].mean())
        low, _ = wilson_interval(float(group[g].sum()), n, alpha=level)
        rows.append(
            {
                "suite": suite,
                "guesser": g,
                "n": n,
                "accuracy": accuracy,
                "chance": chance,
                "ci_low": low,
                "alpha": level,
                "above_chance": low > chance,
            }
        )
    return pd.DataFrame(
        rows, columns=["suite", "guesser", "n", "accuracy", "chance", "ci_low", "alpha", "above_chance"]
    )
