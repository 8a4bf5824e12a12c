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
from skinr1_pipeline.evaluation.paired_tests import compare_paired, holm_adjust, paired_bootstrap
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
CREDIT_SUITES = ("in_domain", "hierarchical", "ddx", "ood", "open_ended", "in_domain_paper", "hierarchical_paper")
MALIGNANCY_SUITE = "malignancy"
#: The paper's ordering claims, as (better, worse): SFT+RL > SFT > base, RL-only < SFT+RL.
PAPER_CLAIMS = (("sft_grpo", "sft"), ("sft", "base"), ("sft_grpo", "rl_only"))
HOLDS, FAILS, WITHIN_CI, NOT_EVALUATED = "holds", "does not hold", "within CI", "not evaluated"
NOT_SIGNIFICANT = "not significant"


def _nan() -> float:
    return float("nan")


def suite_summary(scored: pd.DataFrame, suite: str, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Accuracy with its 95% bootstrap CI, mean credit, format compliance (+ malignancy safety for that suite)."""
    excluded = int(scored.attrs.get("excluded", 0))
    if len(scored) == 0:
        out: dict[str, Any] = {
            "suite": suite,
            "n": 0,
            "accuracy": _nan(),
            "ci_low": _nan(),
            "ci_high": _nan(),
            "mean_credit": _nan(),
            "format_ok_rate": _nan(),
            "parsed_rate": _nan(),
            "format_errors": {},
            "excluded": excluded,
        }
    else:
        acc = accuracy(scored["correct"], n_boot=n_boot, seed=seed)
        fmt = format_compliance(scored)
        out = {
            "suite": suite,
            **acc,
            "mean_credit": float(scored["credit"].mean()),
            "format_ok_rate": fmt["format_ok_rate"],
            "parsed_rate": fmt["parsed_rate"],
            "format_errors": fmt["errors"],
            "excluded": excluded,
        }
        if "likely_correct" in scored and scored["answer_logprobs"].map(_scored).all():
            out["likelihood"] = accuracy(scored["likely_correct"], n_boot=n_boot, seed=seed)
    if suite == MALIGNANCY_SUITE:
        out["malignancy"] = (
            malignancy_metrics(scored, n_boot=n_boot, seed=seed)
            if len(scored)
            else {
                "n_positive": 0,
                "n_benign": 0,
                "sensitivity": _nan(),
                "malignant_miss_rate": _nan(),
                "miss_rate_ci_low": _nan(),
                "miss_rate_ci_high": _nan(),
                "specificity": _nan(),
                "bucket_accuracy": _nan(),
            }
        )
    return out


def _scored(logprobs: Any) -> bool:
    return logprobs is not None and len(logprobs) > 0


def variant_summary(
    scored_by_suite: Mapping[str, pd.DataFrame], *, n_boot: int = 2000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """suite -> `suite_summary` for one variant; plain numbers and strings so it can go to `mlflow.log_dict`."""
    return {
        suite: suite_summary(frame, suite, n_boot=n_boot, seed=seed)
        for suite, frame in _ordered(scored_by_suite).items()
    }


def _ordered(by_suite: Mapping[str, Any]) -> dict[str, Any]:
    known = [s for s in SUITES if s in by_suite]
    return {s: by_suite[s] for s in known + sorted(set(by_suite) - set(known))}


def format_accuracy(acc: float, lo: float, hi: float) -> str:
    """ "0.62 [0.55, 0.69]"; "n/a" when nothing was evaluated."""
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
            row.update(
                {
                    f"{suite}_acc": acc,
                    f"{suite}_ci_low": lo,
                    f"{suite}_ci_high": hi,
                    f"{suite}_n": s.get("n", 0),
                    f"{suite}_format_ok": s.get("format_ok_rate", _nan()),
                }
            )
            if suite in CREDIT_SUITES:
                row[f"{suite}_credit"] = s.get("mean_credit", _nan())
            if suite == MALIGNANCY_SUITE:
                mal = s.get("malignancy", {})
                row.update(
                    {
                        "malignant_miss_rate": mal.get("malignant_miss_rate", _nan()),
                        "malignant_miss_ci_low": mal.get("miss_rate_ci_low", _nan()),
                        "malignant_miss_ci_high": mal.get("miss_rate_ci_high", _nan()),
                        "specificity": mal.get("specificity", _nan()),
                    }
                )
        rows.append(row)
    table = pd.DataFrame(rows).set_index("variant") if rows else pd.DataFrame(index=pd.Index([], name="variant"))
    table.attrs["suites"] = suites
    return table


def likelihood_table(summaries: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> pd.DataFrame:
    """Rows = variants, columns = the suites that have answer log-probs: answer-likelihood accuracy with its 95% CI
    ("0.49 [0.39, 0.59]"), next to which the ablation table's generated-answer accuracy reads."""
    suites = [
        s
        for s in _ordered({s: None for summary in summaries.values() for s in summary})
        if any("likelihood" in summaries[v].get(s, {}) for v in summaries)
    ]
    rows = []
    for variant in variant_order(list(summaries)):
        row: dict[str, Any] = {"variant": variant}
        for suite in suites:
            lik = summaries[variant].get(suite, {}).get("likelihood", {})
            row[suite] = format_accuracy(
                lik.get("accuracy", _nan()), lik.get("ci_low", _nan()), lik.get("ci_high", _nan())
            )
        rows.append(row)
    return pd.DataFrame(rows, columns=["variant", *suites]).set_index("variant")


ABOVE_GUESSING, BELOW_GUESSING = "above guessing", "below guessing"


def _interval(summary: Mapping[str, Any]) -> tuple[float, float, float] | None:
    acc = summary.get("accuracy", _nan())
    return None if acc is None or math.isnan(acc) else (acc, summary["ci_low"], summary["ci_high"])


def versus_guessing(
    summaries: Mapping[str, Mapping[str, Mapping[str, Any]]], baselines: pd.DataFrame, *, likelihood: bool = False
) -> pd.DataFrame:
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


# ---- paired evidence: image use, variant claims, blind guessers -------------------------------------------------

USES_IMAGE, NO_EVIDENCE = "uses the image", "no evidence it uses the image"
SIGNIFICANT_AT = 0.05


def _real(scored: pd.DataFrame) -> pd.DataFrame:
    return scored[scored["condition"] == "real"] if "condition" in scored else scored


def image_use(scored: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> list[dict[str, Any]]:
    """Per suite with image controls: accuracy with the real, a shuffled and a blank image, and the paired
    real-minus-control differences (McNemar p, clustered bootstrap interval). A variant "uses the image" on a
    suite when real minus shuffled is positive with its whole 95% interval."""
    if "condition" not in scored:
        return []
    real = scored[scored["condition"] == "real"].set_index("base_item_id")
    rows = []
    for suite, controls in scored[scored["condition"] != "real"].groupby("suite", sort=True):
        mine = real[real["suite"] == suite]
        row: dict[str, Any] = {"suite": suite, "n": len(mine), "real": float(mine["correct"].mean())}
        for condition in ("shuffled", "blank"):
            other = controls[controls["condition"] == condition].set_index("base_item_id")
            common = mine.index.intersection(other.index)
            result = compare_paired(
                mine.loc[common, "correct"].astype(float).to_numpy(),
                other.loc[common, "correct"].astype(float).to_numpy(),
                clusters=mine.loc[common, "sample_id"].tolist(),
                n_boot=n_boot,
                seed=seed,
            )
            row.update(
                {
                    condition: result["b_accuracy"],
                    f"real_minus_{condition}": result["difference"],
                    f"{condition}_ci_low": result["ci_low"],
                    f"{condition}_ci_high": result["ci_high"],
                    f"{condition}_mcnemar_p": result["mcnemar_p"],
                    f"{condition}_n": result["n"],
                }
            )
        low = row.get("shuffled_ci_low", _nan())
        row["verdict"] = USES_IMAGE if low == low and low > 0 else NO_EVIDENCE
        rows.append(row)
    return rows


def paired_claims(
    scored_by_variant: Mapping[str, pd.DataFrame],
    *,
    suites: Sequence[str] | None = None,
    claims: Sequence[tuple[str, str]] = PAPER_CLAIMS,
    n_boot: int = 2000,
    seed: int = 0,
) -> pd.DataFrame:
    """Each claim "better > worse" on each suite, tested on the items both variants answered (real images only):
    exact McNemar, a bootstrap interval of the difference resampling images, and Holm-adjusted McNemar p across
    every claim tested. A claim holds when the difference is positive and its adjusted p < 0.05."""
    reals = {v: _real(f).set_index("item_id") for v, f in scored_by_variant.items()}
    names = suites or [s for s in SUITES if any(s in set(f["suite"]) for f in reals.values())]
    rows = []
    for suite in names:
        for better, worse in claims:
            row: dict[str, Any] = {"claim": f"{better} > {worse}", "suite": suite, "better": better, "worse": worse}
            if better not in reals or worse not in reals:
                missing = [v for v in (better, worse) if v not in reals]
                rows.append({**row, "verdict": NOT_EVALUATED, "detail": f"no answers for {', '.join(missing)}"})
                continue
            a, b = (reals[v][reals[v]["suite"] == suite] for v in (better, worse))
            common = a.index.intersection(b.index)
            if len(common) == 0:
                rows.append({**row, "verdict": NOT_EVALUATED, "detail": "no item answered by both"})
                continue
            result = compare_paired(
                a.loc[common, "correct"].astype(float).to_numpy(),
                b.loc[common, "correct"].astype(float).to_numpy(),
                clusters=a.loc[common, "sample_id"].tolist(),
                n_boot=n_boot,
                seed=seed,
            )
            rows.append(
                {
                    **row,
                    **result,
                    "detail": f"{better} {result['a_accuracy']:.2f} vs {worse} "
                    f"{result['b_accuracy']:.2f} on {result['n']} paired items",
                }
            )
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=["claim", "suite", "better", "worse", "verdict", "detail"])
    tested = frame["mcnemar_p"].notna() if "mcnemar_p" in frame else pd.Series(False, index=frame.index)
    frame["holm_p"] = _nan()
    if tested.any():
        frame.loc[tested, "holm_p"] = holm_adjust(frame.loc[tested, "mcnemar_p"].tolist())
    for i in frame.index[tested]:
        diff, p = frame.at[i, "difference"], frame.at[i, "holm_p"]
        frame.at[i, "verdict"] = (HOLDS if diff > 0 else FAILS) if p < SIGNIFICANT_AT else NOT_SIGNIFICANT
    return frame


def versus_blind(
    scored_by_variant: Mapping[str, pd.DataFrame], hits: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0
) -> pd.DataFrame:
    """Each variant against each suite's best image-blind guesser, paired on the same items.

    `hits` is `baselines.blind_hits`: per item each guesser's expected hit. The best guesser is the one with the
    highest mean on the suite; the difference (variant minus guesser) gets a bootstrap interval resampling images.
    "above guessing" needs the whole interval above 0, "below guessing" the whole interval below.
    """
    guessers = [c for c in hits.columns if c not in ("item_id", "suite", "sample_id")]
    by_item = hits.set_index("item_id")
    rows = []
    for variant in variant_order(list(scored_by_variant)):
        real = _real(scored_by_variant[variant])
        for suite, frame in real.groupby("suite", sort=True):
            mine = frame.set_index("item_id")
            common = mine.index.intersection(by_item.index)
            row: dict[str, Any] = {"variant": variant, "suite": suite, "n": len(common)}
            means = {g: float(by_item.loc[common, g].mean()) for g in guessers if by_item.loc[common, g].notna().all()}
            if not len(common) or not means:
                rows.append({**row, "verdict": NOT_EVALUATED})
                continue
            best = max(means, key=means.get)
            result = paired_bootstrap(
                mine.loc[common, "correct"].astype(float).to_numpy(),
                by_item.loc[common, best].to_numpy(dtype=float),
                clusters=mine.loc[common, "sample_id"].tolist(),
                n_boot=n_boot,
                seed=seed,
            )
            verdict = ABOVE_GUESSING if result["ci_low"] > 0 else BELOW_GUESSING if result["ci_high"] < 0 else WITHIN_CI
            rows.append(
                {
                    **row,
                    "accuracy": float(mine.loc[common, "correct"].mean()),
                    "best_guesser": best,
                    "best_blind": means[best],
                    "difference": result["difference"],
                    "ci_low": result["ci_low"],
                    "ci_high": result["ci_high"],
                    "p_value": result["p_value"],
                    "verdict": verdict,
                }
            )
    return pd.DataFrame(rows)


def _overall(verdicts: Sequence[str]) -> str:
    if not verdicts or NOT_EVALUATED in verdicts:
        return NOT_EVALUATED
    if FAILS in verdicts:
        return FAILS
    return HOLDS if all(v == HOLDS for v in verdicts) else NOT_SIGNIFICANT


def paper_shape(claims: pd.DataFrame, *, primary: str = "in_domain") -> dict[str, Any]:
    """The paper's ablation direction (SFT+RL > SFT > base; RL-only < SFT+RL) per suite, from `paired_claims`.

    Per suite "holds" when every claim holds, "does not hold" when one is significant the wrong way, "not
    significant" when the paired tests cannot tell, "not evaluated" when a variant is missing.
    """
    per_suite = {}
    for suite, group in claims.groupby("suite", sort=False):
        records = group.drop(columns="suite").to_dict("records")
        per_suite[suite] = {"verdict": _overall([c["verdict"] for c in records]), "claims": records}
    return {
        "primary_suite": primary,
        "verdict": per_suite.get(primary, {}).get("verdict", NOT_EVALUATED),
        "suites": per_suite,
        "rule": "a > b holds when a is right on more of the paired items and the exact McNemar test, "
        "Holm-adjusted over every claim, gives p < 0.05",
    }


def promotion_evidence(blind: pd.DataFrame, uses_image: pd.DataFrame, *, variant: str, suite: str) -> dict[str, bool]:
    """What a promotion gate must see before a model can become champion: above the best image-blind guesser and
    above its own shuffled-image control on `suite`, each by its whole 95% interval (missing evidence is False)."""

    def verdict(frame: pd.DataFrame, wanted: str) -> bool:
        if frame.empty or not {"variant", "suite", "verdict"} <= set(frame.columns):
            return False
        rows = frame[(frame["variant"] == variant) & (frame["suite"] == suite)]
        return bool(len(rows)) and bool((rows["verdict"] == wanted).all())

    return {
        "beats_blind_guessers": verdict(blind, ABOVE_GUESSING),
        "beats_shuffled_image": verdict(uses_image, USES_IMAGE),
    }
