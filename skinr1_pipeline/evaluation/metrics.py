"""Scoring completions against suite items, and the metrics reported on them.

Everything reads completions through the strict parser of `modeling.prompt_format`, the one that pays the GRPO
rewards, so an answer the reward would not honour never counts as correct here. Conventions:
  * `correct`: the chosen option is the gold one (ancestors shown count as wrong, as in the paper);
  * `credit`: the chosen option's score over the item's best score (hierarchical partial credit, 0..1);
  * open-ended answers are mapped onto the taxonomy by name/synonym; credit = depth of LCA(answer, label) over the
    label's depth (root = 0), correct when the answer is the label or a node below it;
  * an unreadable answer is never a safe answer: it counts as a miss for malignant lesions and as a non-benign
    call for benign ones;
  * `likely_correct` (only where the runner scored `answer_logprobs`): the offered answer the model finds most
    probable after its own reasoning is the gold one. It never replaces `correct`; it says whether a wrong or
    unreadable answer came from not knowing or from not writing it down.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from skinr1_pipeline.evaluation.paired_tests import wilson_interval
from skinr1_pipeline.knowledge.taxonomy import Taxonomy, normalize_label
from skinr1_pipeline.modeling.prompt_format import STATUSES, completion_text, parse_completion, without_status_clause

POSITIVE_BUCKETS = ("malignant", "precancerous_in_situ")
OPTION_ERRORS = ("no_option", "option_not_offered", "ambiguous_option")
NO_ANSWER = "<no answer>"
_CARRIED = (
    "item_id",
    "suite",
    "sample_id",
    "source_dataset",
    "modality",
    "taxonomy_node",
    "taxonomy_depth",
    "fitzpatrick",
    "bucket",
    "answer_index",
    "option_logprobs",
    "answer_logprobs",
    "level",
    "construction",
    "condition",
    "base_item_id",
)


class AnswerMapper:
    """Maps a free-text diagnosis onto one taxonomy node through ids, names and synonyms (normalised).

    The whole answer is tried first; otherwise every name found as a whole-word phrase counts, names inside a
    longer found name are ignored, and more than one distinct node left means the answer is ambiguous (None),
    mirroring the MCQ parser's refusal to credit hedged answers.
    """

    def __init__(self, taxonomy: Taxonomy) -> None:
        self.taxonomy = taxonomy
        self.surfaces: dict[tuple[str, ...], str] = {}
        for node in taxonomy:
            for surface in (node.id, node.name, *node.synonyms):
                key = tuple(normalize_label(surface).split())
                if key:
                    self.surfaces.setdefault(key, node.id)
        self.max_words = max(len(k) for k in self.surfaces)

    def __call__(self, text: str | None) -> str | None:
        if not text:
            return None
        words = normalize_label(without_status_clause(text)).split()
        if not words:
            return None
        whole = self.surfaces.get(tuple(words))
        if whole:
            return whole
        kept = self._mentioned(words)
        return kept.pop() if len(kept) == 1 else None

    def mentions(self, text: str | None) -> set[str]:
        """Every node named as a whole-word phrase in `text` (names inside a longer found name ignored)."""
        return self._mentioned(normalize_label(text).split()) if text else set()

    def _mentioned(self, words: list[str]) -> set[str]:
        spans = []
        for i in range(len(words)):
            for n in range(min(self.max_words, len(words) - i), 0, -1):
                node = self.surfaces.get(tuple(words[i : i + n]))
                if node:
                    spans.append((i, i + n, node))
        return {
            node for s, e, node in spans if not any(s2 <= s and e <= e2 and (e2 - s2) > (e - s) for s2, e2, _ in spans)
        }


def _texts(items: pd.DataFrame, completions: Sequence[Any] | Mapping[str, Any]) -> list[str | None]:
    if isinstance(completions, Mapping):
        return [completion_text(completions.get(i)) for i in items["item_id"]]
    if isinstance(completions, str) or len(completions) != len(items):
        raise ValueError(
            f"completions must align with the {len(items)} items (a list of that length or a mapping "
            "item_id -> completion)"
        )
    return [completion_text(c) for c in completions]


def _score_open(text: str | None, row: Any, mapper: AnswerMapper) -> dict[str, Any]:
    parsed = parse_completion(text, None)
    node = mapper(parsed.diagnosis) if parsed.ok else None
    credit, correct = 0.0, False
    if node is not None:
        tax = mapper.taxonomy
        lca = tax.lowest_common_ancestor([node, row.taxonomy_node])
        credit = tax.depth(lca) / max(tax.depth(row.taxonomy_node), 1)
        correct = lca == row.taxonomy_node
    status = parsed.status if parsed.ok else None
    bucket = (mapper.taxonomy[node].bucket if node else None) or status
    return {
        "parsed": node is not None,
        "format_ok": parsed.ok,
        "error": parsed.error,
        "chosen_index": -1,
        "chosen_node": node,
        "correct": correct,
        "credit": credit,
        "predicted_status": status,
        "predicted_bucket": bucket,
    }


def _score_mcq(text: str | None, row: Any) -> dict[str, Any]:
    parsed = parse_completion(text, list(row.options))
    ok = parsed.ok
    idx = parsed.option_index if ok else -1
    scores = list(row.option_scores)
    best = max(scores) if scores else 0.0
    status = parsed.status if ok else None
    bucket = (row.option_buckets[idx] if ok and "option_buckets" in row._fields else None) or status
    return {
        "parsed": ok,
        "format_ok": ok or parsed.error in OPTION_ERRORS,
        "error": parsed.error,
        "chosen_index": idx,
        "chosen_node": row.option_nodes[idx] if ok else None,
        "correct": ok and idx == row.answer_index,
        "credit": float(scores[idx]) / best if ok and best > 0 else 0.0,
        "predicted_status": status,
        "predicted_bucket": bucket,
    }


def score_predictions(
    items: pd.DataFrame,
    completions: Sequence[Any] | Mapping[str, Any],
    *,
    taxonomy: Taxonomy | None = None,
    exclude: Collection[str] = (),
) -> pd.DataFrame:
    """One row per item: parsed, format_ok, error, chosen_index/node, correct, credit, predicted status/bucket.

    `completions` align with `items` by position, or map item_id -> completion. Items in `exclude` (e.g. those the
    contamination check flags) are left out; how many is in `result.attrs["excluded"]`. Open-ended items need
    `taxonomy`.
    """
    texts = _texts(items, completions)
    mapper = None
    rows = []
    for text, row in zip(texts, items.itertuples(index=False)):
        if row.item_id in exclude:
            continue
        if len(row.options) == 0:
            if taxonomy is None:
                raise ValueError("open-ended items need taxonomy= to map answers onto the taxonomy")
            mapper = mapper or AnswerMapper(taxonomy)
            scored = _score_open(text, row, mapper)
        else:
            scored = _score_mcq(text, row)
        rows.append({**{c: getattr(row, c) for c in _CARRIED if c in row._fields}, **scored})
    out = pd.DataFrame(rows)
    if "answer_logprobs" in out:
        out["likely_index"] = [likeliest(lp) for lp in out["answer_logprobs"]]
        out["likely_correct"] = [i >= 0 and i == int(gold) for i, gold in zip(out["likely_index"], out["answer_index"])]
    out.attrs["excluded"] = len(items) - len(out)
    return out


def likeliest(logprobs: Any) -> int:
    """Index of the largest finite log-prob; -1 for none (open-ended item) or a tie at the top, which names no
    single answer."""
    if logprobs is None or len(logprobs) == 0:
        return -1
    lp = np.asarray(logprobs, dtype=float)
    if not np.isfinite(lp).any():
        return -1
    best = np.nanmax(np.where(np.isfinite(lp), lp, -np.inf))
    top = np.flatnonzero(lp == best)
    return int(top[0]) if len(top) == 1 else -1


# ---- statistics ---------------------------------------------------------------------------------------------


def bootstrap_ci(
    values: Sequence[float] | np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean, seeded and vectorised.

    For 0/1 data the resampled sum is exactly Binomial(n, p̂), so one binomial draw per replicate replaces an
    n-wide resample; other data are resampled in chunks that bound memory.
    """
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    if np.isin(x, (0.0, 1.0)).all():
        means = rng.binomial(n, x.mean(), size=n_boot) / n
    else:
        chunk = max(1, 4_000_000 // n)
        means = np.concatenate(
            [x[rng.integers(0, n, size=(min(chunk, n_boot - s), n))].mean(axis=1) for s in range(0, n_boot, chunk)]
        )
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def accuracy(
    correct: Sequence[bool] | pd.Series | np.ndarray, *, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0
) -> dict[str, float]:
    """Accuracy with its (1 - alpha) interval: Wilson for 0/1 outcomes (a percentile bootstrap collapses to zero width
    at 0 or 1), the seeded bootstrap for fractional scores."""
    x = np.asarray(correct, dtype=float)
    if len(x) and np.isin(x, (0.0, 1.0)).all():
        lo, hi = wilson_interval(int(x.sum()), len(x), alpha)
    else:
        lo, hi = bootstrap_ci(x, n_boot=n_boot, alpha=alpha, seed=seed)
    return {"n": int(len(x)), "accuracy": float(x.mean()) if len(x) else float("nan"), "ci_low": lo, "ci_high": hi}


def _fitzpatrick_label(value: Any) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "unknown"
    return "unknown" if np.isnan(v) else f"type_{int(v)}"


def grouped_accuracy(scored: pd.DataFrame, by: str, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Accuracy (with CI) and mean credit per value of `by` (source_dataset, taxonomy_depth, taxonomy_node,
    fitzpatrick, suite, ...); missing Fitzpatrick types form their own "unknown" group."""
    keys = scored[by].map(_fitzpatrick_label) if by == "fitzpatrick" else scored[by].fillna("unknown")
    rows = []
    for key, group in scored.groupby(keys, sort=True):
        acc = accuracy(group["correct"], n_boot=n_boot, seed=seed)
        rows.append({by: key, **acc, "mean_credit": float(group["credit"].mean())})
    return pd.DataFrame(rows, columns=[by, "n", "accuracy", "ci_low", "ci_high", "mean_credit"])


def malignancy_metrics(scored: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Malignant-miss rate (1 - sensitivity on malignant + precancerous), specificity on benign, 3-way agreement.

    Uses `predicted_bucket`: the bucket of the chosen option's node, else the stated status.
    """
    known = scored[scored["bucket"].isin(STATUSES)]
    pos = known[known["bucket"].isin(POSITIVE_BUCKETS)]
    neg = known[known["bucket"] == "benign"]
    hit = pos["predicted_bucket"].isin(POSITIVE_BUCKETS).to_numpy(dtype=float)
    true_neg = (neg["predicted_bucket"] == "benign").to_numpy(dtype=float)
    sens = float(hit.mean()) if len(hit) else float("nan")
    lo, hi = bootstrap_ci(1 - hit, n_boot=n_boot, seed=seed)
    return {
        "n_positive": int(len(pos)),
        "n_benign": int(len(neg)),
        "sensitivity": sens,
        "malignant_miss_rate": 1 - sens,
        "miss_rate_ci_low": lo,
        "miss_rate_ci_high": hi,
        "specificity": float(true_neg.mean()) if len(true_neg) else float("nan"),
        "bucket_accuracy": float((known["predicted_bucket"] == known["bucket"]).mean()) if len(known) else float("nan"),
    }


def format_compliance(scored: pd.DataFrame) -> dict[str, Any]:
    """Share of completions in the required format, share that also chose a readable answer, and error counts."""
    errors = scored["error"].dropna()
    return {
        "n": int(len(scored)),
        "format_ok_rate": float(scored["format_ok"].mean()) if len(scored) else float("nan"),
        "parsed_rate": float(scored["parsed"].mean()) if len(scored) else float("nan"),
        "errors": {str(k): int(v) for k, v in errors.value_counts().sort_index().items()},
    }


def confusion_matrix(scored: pd.DataFrame) -> pd.DataFrame:
    """Counts of true node (rows) against predicted node (columns); unreadable answers in column NO_ANSWER."""
    predicted = scored["chosen_node"].fillna(NO_ANSWER).rename("predicted")
    return pd.crosstab(scored["taxonomy_node"].fillna("unknown").rename("true"), predicted)


def expected_calibration_error(frame: pd.DataFrame, *, n_bins: int = 10) -> dict[str, Any]:
    """ECE of the option distribution given by `option_logprobs` (softmax over the offered options).

    Confidence = the top option's probability, correct = top option is gold; bins are (k/n_bins, (k+1)/n_bins].
    """
    if "option_logprobs" not in frame:
        raise ValueError("expected_calibration_error needs an option_logprobs column (one log-probability per option)")
    conf, hit = [], []
    for logprobs, gold in zip(frame["option_logprobs"], frame["answer_index"]):
        lp = np.asarray(logprobs, dtype=float)
        p = np.exp(lp - lp.max())
        p /= p.sum()
        conf.append(p.max())
        hit.append(float(int(p.argmax()) == int(gold)))
    conf_a, hit_a = np.asarray(conf), np.asarray(hit)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.digitize(conf_a, edges[1:-1], right=True), 0, n_bins - 1)
    rows, ece = [], 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            gap = abs(hit_a[mask].mean() - conf_a[mask].mean())
            ece += mask.mean() * gap
            rows.append(
                {
                    "bin": b,
                    "low": edges[b],
                    "high": edges[b + 1],
                    "n": int(mask.sum()),
                    "accuracy": float(hit_a[mask].mean()),
                    "confidence": float(conf_a[mask].mean()),
                }
            )
    return {"ece": float(ece), "n": int(len(conf_a)), "bins": pd.DataFrame(rows)}


def summarize(scored: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """One row per suite: accuracy with CI, mean credit, format compliance, malignant-miss rate, specificity."""
    rows = []
    for suite, group in scored.groupby("suite", sort=True):
        mal = malignancy_metrics(group, n_boot=n_boot, seed=seed)
        rows.append(
            {
                "suite": suite,
                **accuracy(group["correct"], n_boot=n_boot, seed=seed),
                "mean_credit": float(group["credit"].mean()),
                "format_ok_rate": float(group["format_ok"].mean()),
                "malignant_miss_rate": mal["malignant_miss_rate"],
                "specificity": mal["specificity"],
            }
        )
    return pd.DataFrame(rows)
