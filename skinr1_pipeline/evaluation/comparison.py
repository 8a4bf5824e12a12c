"""Variant comparison: per-suite summaries, the paper's ablation table, and whether our numbers have its shape.

Why a separate module: the ablation (base / SFT only / RL only / SFT+GRPO, paper §10) is the claim a reader checks
first, and it must be computed the same way for every variant, from the scored frames `metrics.score_predictions`
returns. The paper reports no ablation numbers, only a direction (SFT+RL > SFT > base, RL-only clearly worse), so
`paper_shape` tests that direction on our numbers and says when the confidence intervals cannot tell.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from skinr1_pipeline.evaluation.metrics import accuracy, format_compliance, malignancy_metrics
from skinr1_pipeline.evaluation.suites import SUITES

#: Row order of the ablation table (paper §10); variants outside it follow in the order given.
VARIANT_ORDER = ("base", "sft", "rl_only", "sft_grpo")
VARIANT_LABELS = {
    "base": "base model, no adapter",
    "sft": "LoRA SFT on reasoning trajectories",
    "rl_only": "GRPO from a fresh LoRA (no SFT)",
    "sft_grpo": "SFT, then GRPO on the same adapter (Skin-R1)",
}
#: Suites whose partial credit differs from accuracy (hierarchical option scores, taxonomy LCA depth).
CREDIT_SUITES = ("in_domain", "hierarchical", "open_ended")
MALIGNANCY_SUITE = "malignancy"
#: The paper's ordering claims, as (better, worse): SFT+RL > SFT > base, RL-only < SFT+RL.
PAPER_CLAIMS = (("sft_grpo", "sft"), ("sft", "base"), ("sft_grpo", "rl_only"))
HOLDS, FAILS, WITHIN_CI, NOT_EVALUATED = "holds", "does not hold", "within CI", "not evaluated"


def _nan() -> float:
    return float("nan")


def suite_summary(scored: pd.DataFrame, suite: str, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Accuracy with its 95% bootstrap CI, mean credit, format compliance (+ malignancy safety for that suite)."""
    excluded = int(scored.attrs.get("excluded", 0))
    if len(scored) == 0:
        out: dict[str, Any] = {"suite": suite, "n": 0, "accuracy": _nan(), "ci_low": _nan(), "ci_high": _nan(),
                               "mean_credit": _nan(), "format_ok_rate": _nan(), "parsed_rate": _nan(),
                               "format_errors": {}, "excluded": excluded}
    else:
        acc = accuracy(scored["correct"], n_boot=n_boot, seed=seed)
        fmt = format_compliance(scored)
        out = {"suite": suite, **acc, "mean_credit": float(scored["credit"].mean()),
               "format_ok_rate": fmt["format_ok_rate"], "parsed_rate": fmt["parsed_rate"],
               "format_errors": fmt["errors"], "excluded": excluded}
        if "likely_correct" in scored and scored["answer_logprobs"].map(_scored).all():
            out["likelihood"] = accuracy(scored["likely_correct"], n_boot=n_boot, seed=seed)
    if suite == MALIGNANCY_SUITE:
        out["malignancy"] = malignancy_metrics(scored, n_boot=n_boot, seed=seed) if len(scored) else {
            "n_positive": 0, "n_benign": 0, "sensitivity": _nan(), "malignant_miss_rate": _nan(),
            "miss_rate_ci_low": _nan(), "miss_rate_ci_high": _nan(), "specificity": _nan(),
            "bucket_accuracy": _nan()}
    return out


def _scored(logprobs: Any) -> bool:
    return logprobs is not None and len(logprobs) > 0


def variant_summary(scored_by_suite: Mapping[str, pd.DataFrame], *, n_boot: int = 2000,
                    seed: int = 0) -> dict[str, dict[str, Any]]:
    """suite -> `suite_summary` for one variant; plain numbers and strings so it can go to `mlflow.log_dict`."""
    return {suite: suite_summary(frame, suite, n_boot=n_boot, seed=seed)
            for suite, frame in _ordered(scored_by_suite).items()}


def _ordered(by_suite: Mapping[str, Any]) -> dict[str, Any]:
    known = [s for s in SUITES if s in by_suite]
    return {s: by_suite[s] for s in known + sorted(set(by_suite) - set(known))}


def format_accuracy(acc: float, lo: float, hi: float) -> str:
    """"0.62 [0.55, 0.69]"; "n/a" when nothing was evaluated."""
    if acc is None or (isinstance(acc, float) and math.isnan(acc)):
        return "n/a"
    return f"{acc:.2f} [{lo:.2f}, {hi:.2f}]"


def variant_order(variants: Sequence[str]) -> list[str]:
    return [v for v in VARIANT_ORDER if v in variants] + [v for v in variants if v not in VARIANT_ORDER]


def ablation_table(summaries: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """Rows = variants (base, sft, rl_only, sft_grpo, then others); per suite a display column "<suite>"
    ("0.62 [0.55, 0.69]") and numeric `<suite>_acc/_ci_low/_ci_high/_n` (+ `_credit`, malignancy miss rate)."""
    suites = list(_ordered({s: None for summary in summaries.values() for s in summary}))
    rows = []
    for variant in variant_order(list(summaries)):
        row: dict[str, Any] = {"variant": variant}
        for suite in suites:
            s = summaries[variant].get(suite, {})
            acc, lo, hi = s.get("accuracy", _nan()), s.get("ci_low", _nan()), s.get("ci_high", _nan())
            row[suite] = format_accuracy(acc, lo, hi)
            row.update({f"{suite}_acc": acc, f"{suite}_ci_low": lo, f"{suite}_ci_high": hi,
                        f"{suite}_n": s.get("n", 0), f"{suite}_format_ok": s.get("format_ok_rate", _nan())})
            if suite in CREDIT_SUITES:
                row[f"{suite}_credit"] = s.get("mean_credit", _nan())
            if suite == MALIGNANCY_SUITE:
                mal = s.get("malignancy", {})
                row.update({"malignant_miss_rate": mal.get("malignant_miss_rate", _nan()),
                            "malignant_miss_ci_low": mal.get("miss_rate_ci_low", _nan()),
                            "malignant_miss_ci_high": mal.get("miss_rate_ci_high", _nan()),
                            "specificity": mal.get("specificity", _nan())})
        rows.append(row)
    table = pd.DataFrame(rows).set_index("variant") if rows else pd.DataFrame(index=pd.Index([], name="variant"))
    table.attrs["suites"] = suites
    return table


def likelihood_table(summaries: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """Rows = variants, columns = the suites that have answer log-probs: answer-likelihood accuracy with its 95% CI
    ("0.49 [0.39, 0.59]"), next to which the ablation table's generated-answer accuracy reads."""
    suites = [s for s in _ordered({s: None for summary in summaries.values() for s in summary})
              if any("likelihood" in summaries[v].get(s, {}) for v in summaries)]
    rows = []
    for variant in variant_order(list(summaries)):
        row: dict[str, Any] = {"variant": variant}
        for suite in suites:
            lik = summaries[variant].get(suite, {}).get("likelihood", {})
            row[suite] = format_accuracy(lik.get("accuracy", _nan()), lik.get("ci_low", _nan()),
                                         lik.get("ci_high", _nan()))
        rows.append(row)
    return pd.DataFrame(rows, columns=["variant", *suites]).set_index("variant")


ABOVE_GUESSING, BELOW_GUESSING = "above guessing", "below guessing"


def _interval(summary: Mapping[str, Any]) -> tuple[float, float, float] | None:
    acc = summary.get("accuracy", _nan())
    return None if acc is None or math.isnan(acc) else (acc, summary["ci_low"], summary["ci_high"])


def versus_guessing(summaries: Mapping[str, Mapping[str, Mapping[str, Any]]], baselines: pd.DataFrame, *,
                    likelihood: bool = False) -> pd.DataFrame:
    """Rows = variants, columns = suites: is the accuracy above the best image-blind guess (`baselines.best`)?

    "above guessing" when the 95% interval lies above that bar, "below guessing" when it lies below, else "within
    CI"; "not evaluated" where either is missing. The bar is an expected accuracy (a fixed number), so only the
    variant's interval is compared. `likelihood=True` judges the answer-likelihood accuracy instead.
    """
    bars = {s: float(b) for s, b in zip(baselines["suite"], baselines["best"])} if len(baselines) else {}
    suites = [s for s in _ordered({s: None for summary in summaries.values() for s in summary}) if s in bars]
    rows = []
    for variant in variant_order(list(summaries)):
        row: dict[str, Any] = {"variant": variant}
        for suite in suites:
            summary = summaries[variant].get(suite, {})
            value, bar = _interval(summary.get("likelihood", {}) if likelihood else summary), bars[suite]
            if value is None or math.isnan(bar):
                row[suite] = NOT_EVALUATED
            else:
                row[suite] = ABOVE_GUESSING if value[1] > bar else BELOW_GUESSING if value[2] < bar else WITHIN_CI
        rows.append(row)
    return pd.DataFrame(rows, columns=["variant", *suites]).set_index("variant")


def table_suites(table: pd.DataFrame) -> list[str]:
    """Suites of an ablation table (from attrs, else every column with a matching `_acc` column)."""
    return list(table.attrs.get("suites") or [c for c in table.columns if f"{c}_acc" in table.columns])


def _value(table: pd.DataFrame, variant: str, suite: str) -> tuple[float, float, float] | None:
    if variant not in table.index or f"{suite}_acc" not in table.columns:
        return None
    acc, lo, hi = (float(table.at[variant, f"{suite}_{k}"]) for k in ("acc", "ci_low", "ci_high"))
    return None if math.isnan(acc) else (acc, lo, hi)


def compare(table: pd.DataFrame, better: str, worse: str, suite: str) -> dict[str, Any]:
    """Is `better` > `worse` on `suite`? "within CI" when the two 95% intervals overlap (a conservative call)."""
    a, b = _value(table, better, suite), _value(table, worse, suite)
    claim = {"claim": f"{better} > {worse}", "suite": suite, "better": better, "worse": worse}
    if a is None or b is None:
        missing = [v for v, x in ((better, a), (worse, b)) if x is None]
        return {**claim, "verdict": NOT_EVALUATED, "detail": f"no accuracy for {', '.join(missing)}"}
    overlap = a[1] <= b[2] and b[1] <= a[2]
    verdict = WITHIN_CI if overlap else (HOLDS if a[0] > b[0] else FAILS)
    return {**claim, "verdict": verdict, "better_accuracy": a[0], "better_ci": [a[1], a[2]],
            "worse_accuracy": b[0], "worse_ci": [b[1], b[2]], "difference": a[0] - b[0],
            "detail": f"{better} {format_accuracy(*a)} vs {worse} {format_accuracy(*b)}"}


def _overall(verdicts: Sequence[str]) -> str:
    if not verdicts or NOT_EVALUATED in verdicts:
        return NOT_EVALUATED
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else WITHIN_CI


def paper_shape(table: pd.DataFrame, *, primary: str = "in_domain",
                suites: Sequence[str] | None = None) -> dict[str, Any]:
    """Check the paper's ablation direction (SFT+RL > SFT > base; RL-only < SFT+RL) on every suite.

    Per claim: "holds" (intervals apart, right direction), "does not hold" (apart, wrong direction), "within CI"
    (intervals overlap: our data cannot tell) or "not evaluated" (a variant is missing). Overlapping percentile
    intervals are not a significance test; they only keep us from claiming a shape the sample size cannot show.
    """
    per_suite = {}
    for suite in suites or table_suites(table):
        claims = [compare(table, better, worse, suite) for better, worse in PAPER_CLAIMS]
        per_suite[suite] = {"verdict": _overall([c["verdict"] for c in claims]), "claims": claims}
    primary_verdict = per_suite.get(primary, {}).get("verdict", NOT_EVALUATED)
    return {"primary_suite": primary, "verdict": primary_verdict, "suites": per_suite,
            "rule": "claim a > b holds when a's and b's 95% bootstrap intervals do not overlap and a > b"}
