"""Variant comparison, the ablation table, the paper-shape check and the written report (figures, MLflow curves)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinr1_pipeline.evaluation.comparison import (
    FAILS,
    HOLDS,
    NOT_EVALUATED,
    NOT_SIGNIFICANT,
    ablation_table,
    format_accuracy,
    image_use,
    paired_claims,
    paper_shape,
    promotion_evidence,
    variant_summary,
    versus_blind,
)
from skinr1_pipeline.evaluation.contamination import ContaminationReport
from skinr1_pipeline.evaluation.metrics import score_predictions
from skinr1_pipeline.evaluation.report import Curves, read_curves, write_report
from skinr1_pipeline.modeling.prompt_format import build_mcq_prompt, format_completion

NODES = ["melanoma", "melanocytic_nevus", "basal_cell_carcinoma", "seborrheic_keratosis"]
BUCKETS = {
    "melanoma": "malignant",
    "melanocytic_nevus": "benign",
    "basal_cell_carcinoma": "malignant",
    "seborrheic_keratosis": "benign",
}


def scored_frame(suite: str, n: int, accuracy: float, *, seed: int = 0, unreadable: int = 0) -> pd.DataFrame:
    """A scored frame as `score_predictions` returns it, with round(n * accuracy) correct answers."""
    rng = np.random.default_rng(seed)
    n_correct = round(n * accuracy)
    rows = []
    for i in range(n):
        true = NODES[i % len(NODES)]
        correct = i < n_correct
        unread = i >= n - unreadable
        wrong = NODES[(NODES.index(true) + 1) % len(NODES)]
        chosen = true if correct else (None if unread else wrong)
        rows.append(
            {
                "item_id": f"{suite}/{i}",
                "suite": suite,
                "sample_id": f"s{i}",
                "source_dataset": "ham10000",
                "modality": "dermoscopic",
                "taxonomy_node": true,
                "taxonomy_depth": 2 + i % 3,
                "fitzpatrick": np.nan,
                "bucket": BUCKETS[true],
                "answer_index": 0,
                "parsed": chosen is not None,
                "format_ok": chosen is not None,
                "error": None if chosen is not None else "no_diagnosis",
                "chosen_index": 0 if correct else 1,
                "chosen_node": chosen,
                "correct": correct,
                "credit": 1.0 if correct else float(rng.choice([0.0, 0.5])),
                "predicted_status": None,
                "predicted_bucket": BUCKETS[chosen] if chosen else None,
            }
        )
    frame = pd.DataFrame(rows)
    frame.attrs["excluded"] = 2
    return frame


def variant_frames(acc: dict[str, float], n: int = 200) -> dict[str, pd.DataFrame]:
    return {suite: scored_frame(suite, n, a, seed=k) for k, (suite, a) in enumerate(acc.items())}


@pytest.fixture(scope="module")
def summaries() -> dict[str, dict]:
    shapes = {"base": 0.2, "sft": 0.5, "rl_only": 0.3, "sft_grpo": 0.8}
    return {
        v: variant_summary(
            variant_frames({"in_domain": a, "malignancy": a, "hierarchical": a, "ood": a - 0.1}), n_boot=500
        )
        for v, a in shapes.items()
    }


def test_variant_summary_reports_accuracy_ci_format_and_malignancy() -> None:
    frames = {
        "malignancy": scored_frame("malignancy", 40, 0.5, unreadable=4),
        "hierarchical": scored_frame("hierarchical", 40, 0.25),
    }
    summary = variant_summary(frames, n_boot=500)
    assert list(summary) == ["hierarchical", "malignancy"]  # suite order (headline first), not dict order
    mal = summary["malignancy"]
    assert mal["n"] == 40 and mal["accuracy"] == pytest.approx(0.5)
    assert mal["ci_low"] < 0.5 < mal["ci_high"]
    assert mal["format_ok_rate"] == pytest.approx(36 / 40) and mal["format_errors"] == {"no_diagnosis": 4}
    assert mal["excluded"] == 2
    # correct = first 20 (10 malignant + 10 benign); the 4 unreadable ones are all wrong answers
    assert mal["malignancy"]["n_positive"] == 20 and 0 <= mal["malignancy"]["malignant_miss_rate"] <= 1
    assert "malignancy" not in summary["hierarchical"]
    assert summary["hierarchical"]["mean_credit"] >= summary["hierarchical"]["accuracy"]
    empty = variant_summary({"ddx": pd.DataFrame()})["ddx"]
    assert empty["n"] == 0 and math.isnan(empty["accuracy"])


def test_variant_summary_on_real_scoring() -> None:
    options = ["melanoma", "melanocytic nevus", "dermatofibroma", "actinic keratosis"]
    items = pd.DataFrame(
        [
            {
                "item_id": f"in_domain/{i}",
                "suite": "in_domain",
                "sample_id": str(i),
                "prompt": build_mcq_prompt("Q?", options),
                "options": options,
                "option_nodes": ["melanoma", "melanocytic_nevus", "dermatofibroma", "actinic_keratosis"],
                "option_scores": [1.0, 0.0, 0.0, 0.0],
                "option_buckets": ["malignant", "benign", "benign", "precancerous_in_situ"],
                "answer_index": 0,
                "bucket": "malignant",
                "taxonomy_node": "melanoma",
                "taxonomy_depth": 3,
                "source_dataset": "ham10000",
                "modality": "dermoscopic",
                "fitzpatrick": np.nan,
            }
            for i in range(4)
        ]
    )
    completions = [
        format_completion("veil", "A. melanoma"),
        format_completion("dots", "B"),
        "garbage",
        format_completion("veil", "A"),
    ]
    summary = variant_summary({"in_domain": score_predictions(items, completions)}, n_boot=200)["in_domain"]
    assert summary["n"] == 4 and summary["accuracy"] == pytest.approx(0.5)
    assert summary["format_ok_rate"] == pytest.approx(0.75)


def test_ablation_table_rows_columns_and_strings(summaries: dict) -> None:
    shuffled = {v: summaries[v] for v in ("sft_grpo", "base", "rl_only", "sft")}
    table = ablation_table(shuffled)
    assert list(table.index) == ["base", "sft", "rl_only", "sft_grpo"]
    assert table.attrs["suites"] == ["in_domain", "hierarchical", "ood", "malignancy"]
    assert re.fullmatch(r"0\.50 \[0\.\d\d, 0\.\d\d\]", table.at["sft", "in_domain"])
    assert table.at["sft", "in_domain_acc"] == pytest.approx(0.5) and table.at["sft", "in_domain_n"] == 200
    assert table.at["base", "in_domain_ci_low"] < 0.2 < table.at["base", "in_domain_ci_high"]
    assert "hierarchical_credit" in table.columns and "malignancy_credit" not in table.columns
    assert 0 <= table.at["sft_grpo", "malignant_miss_rate"] <= 1 and "specificity" in table.columns
    assert format_accuracy(float("nan"), 0, 0) == "n/a"


def scored_variants(acc: dict[str, float], n: int = 200, suite: str = "in_domain") -> dict[str, pd.DataFrame]:
    """Per variant, the same items with the first round(n * acc) answered right (so every disagreement favours the
    more accurate variant)."""
    return {v: scored_frame(suite, n, a) for v, a in acc.items()}


def test_paper_shape_from_paired_claims_holds_fails_and_is_not_significant() -> None:
    scored = scored_variants({"base": 0.2, "sft": 0.5, "rl_only": 0.3, "sft_grpo": 0.8})
    claims = paired_claims(scored, n_boot=300)
    shape = paper_shape(claims)
    assert shape["primary_suite"] == "in_domain" and shape["verdict"] == HOLDS
    by_claim = {c["claim"]: c for c in shape["suites"]["in_domain"]["claims"]}
    assert set(by_claim) == {"sft_grpo > sft", "sft > base", "sft_grpo > rl_only"}
    sft = by_claim["sft > base"]
    assert sft["a_accuracy"] == pytest.approx(0.5) and sft["b_accuracy"] == pytest.approx(0.2)
    assert (sft["a_only"], sft["b_only"]) == (60, 0) and sft["mcnemar_p"] < 1e-15
    assert by_claim["sft_grpo > sft"]["difference"] == pytest.approx(0.3)
    # Holm multiplies the smallest of three p-values by 3.
    assert min(claims["holm_p"]) == pytest.approx(3 * min(claims["mcnemar_p"]))

    reversed_ = {**scored, "sft_grpo": scored["base"], "base": scored["sft_grpo"]}
    shape = paper_shape(paired_claims(reversed_, n_boot=300))
    assert shape["verdict"] == FAILS
    verdicts = {c["claim"]: c["verdict"] for c in shape["suites"]["in_domain"]["claims"]}
    assert verdicts["sft > base"] == FAILS and verdicts["sft_grpo > sft"] == FAILS

    # 50/96 vs 38/96 with 16 vs 4 discordant: intervals overlap, yet the paired test says p = 0.012.
    a = scored_frame("in_domain", 96, 50 / 96)
    b = a.copy()
    b["correct"] = [(i < 34) or (38 <= i < 50 and False) or (50 <= i < 54) for i in range(96)]
    pair = paired_claims({"sft": a, "base": b}, claims=[("sft", "base")], n_boot=300).iloc[0]
    assert (pair["a_only"], pair["b_only"]) == (16, 4) and pair["mcnemar_p"] == pytest.approx(0.01182, abs=1e-4)

    tiny = scored_variants({"base": 0.4, "sft": 0.5, "rl_only": 0.5, "sft_grpo": 0.6}, n=10)
    assert paper_shape(paired_claims(tiny, n_boot=300))["verdict"] == NOT_SIGNIFICANT

    partial = paper_shape(paired_claims({v: scored[v] for v in ("base", "sft")}, n_boot=300))
    assert partial["verdict"] == NOT_EVALUATED
    assert {c["claim"]: c["verdict"] for c in partial["suites"]["in_domain"]["claims"]}["sft > base"] == HOLDS


def with_controls(real: pd.DataFrame, shuffled_accuracy: float) -> pd.DataFrame:
    """`real` plus shuffled and blank copies answered right on the first round(n * shuffled_accuracy) items."""
    real = real.assign(condition="real", base_item_id=real["item_id"])
    copies = []
    for condition in ("shuffled", "blank"):
        c = real.copy()
        c["condition"], c["item_id"] = condition, c["item_id"] + "#" + condition
        c["correct"] = np.arange(len(c)) < round(len(c) * shuffled_accuracy)
        copies.append(c)
    return pd.concat([real, *copies], ignore_index=True)


def test_image_use_pairs_real_with_shuffled_and_blank_images() -> None:
    reads = image_use(with_controls(scored_frame("in_domain", 120, 0.6), 0.25), n_boot=300)
    (row,) = reads
    assert row["suite"] == "in_domain" and row["n"] == 120
    assert row["real"] == pytest.approx(0.6) and row["shuffled"] == pytest.approx(0.25)
    assert row["real_minus_shuffled"] == pytest.approx(0.35) and row["shuffled_ci_low"] > 0.2
    assert row["verdict"] == "uses the image"
    blind = image_use(with_controls(scored_frame("in_domain", 120, 0.3), 0.3), n_boot=300)
    assert blind[0]["real_minus_shuffled"] == 0 and blind[0]["verdict"] == "no evidence it uses the image"
    assert image_use(scored_frame("in_domain", 10, 0.5)) == []  # no controls were answered


def test_versus_blind_and_promotion_evidence() -> None:
    scored = scored_variants({"sft": 0.6, "base": 0.25}, n=120)
    hits = pd.DataFrame(
        {"item_id": scored["sft"]["item_id"], "suite": "in_domain", "uniform": 0.25, "most_ancestors": 0.3}
    )
    table = versus_blind(scored, hits, n_boot=300).set_index("variant")
    assert table.at["sft", "best_guesser"] == "most_ancestors" and table.at["sft", "best_blind"] == pytest.approx(0.3)
    assert table.at["sft", "verdict"] == "above guessing" and table.at["base", "verdict"] == "within CI"
    uses = pd.DataFrame(
        [
            {"variant": "sft", "suite": "in_domain", "verdict": "uses the image"},
            {"variant": "base", "suite": "in_domain", "verdict": "no evidence it uses the image"},
        ]
    )
    assert promotion_evidence(table.reset_index(), uses, variant="sft", suite="in_domain") == {
        "beats_blind_guessers": True,
        "beats_shuffled_image": True,
    }
    assert promotion_evidence(table.reset_index(), uses, variant="base", suite="in_domain") == {
        "beats_blind_guessers": False,
        "beats_shuffled_image": False,
    }
    assert promotion_evidence(pd.DataFrame(), pd.DataFrame(), variant="sft", suite="in_domain") == {
        "beats_blind_guessers": False,
        "beats_shuffled_image": False,
    }


@pytest.fixture(scope="module")
def mlflow_runs(tmp_path_factory) -> tuple[str, dict[str, str]]:
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("report-test", artifact_location=(root / "artifacts").as_uri())
    grpo = client.create_run(exp, run_name="grpo").info.run_id
    for step in range(5):
        client.log_metric(grpo, "loss", 1.0 / (step + 1), step=step)
        client.log_metric(grpo, "rewards/accuracy_reward/mean", 0.1 * step, step=step)
        client.log_metric(grpo, "reward", 0.2 * step, step=step)
    sft = client.create_run(exp, run_name="sft").info.run_id
    for step in range(3):
        client.log_metric(sft, "train_loss", 2.0 - step, step=step)
    return uri, {"sft": sft, "grpo": grpo, "ghost": "0" * 32}


@pytest.mark.slow  # real MLflow runs
def test_read_curves_from_real_runs(mlflow_runs) -> None:
    uri, runs = mlflow_runs
    curves = read_curves(uri, runs)
    assert set(curves.series) == {"sft", "grpo"}
    assert set(curves.series["grpo"]) == {"loss", "reward", "rewards/accuracy_reward/mean"}
    assert curves.series["grpo"]["loss"]["step"].tolist() == [0, 1, 2, 3, 4]
    assert curves.series["grpo"]["loss"]["value"].iloc[-1] == pytest.approx(0.2)
    assert curves.series["sft"]["train_loss"]["value"].tolist() == [2.0, 1.0, 0.0]
    assert any(m.startswith("sft: no reward metric") for m in curves.missing)
    assert any(m.startswith("ghost: run") for m in curves.missing)


def _write(out: Path, summaries: dict, curves: Curves | None) -> object:
    table = ablation_table(summaries)
    scored = {v: variant_frames({"in_domain": 0.5, "malignancy": 0.5}, n=40) for v in summaries}
    flags = pd.DataFrame(
        {
            "item_id": ["in_domain/x"],
            "suite": ["in_domain"],
            "sample_id": ["x"],
            "image_sha256": [None],
            "by_hash": [False],
            "by_sample_id": [True],
            "contaminated": [True],
        }
    )
    summary = pd.DataFrame(
        [
            {
                "suite": "in_domain",
                "n_items": 202,
                "contaminated": 2,
                "by_hash": 1,
                "by_sample_id": 1,
                "by_near_duplicate": 0,
                "fraction": 2 / 202,
            }
        ]
    )
    answers = scored_variants({"base": 0.2, "sft": 0.5, "rl_only": 0.3, "sft_grpo": 0.8})
    uses = pd.DataFrame(
        [{"variant": v, **u} for v, f in answers.items() for u in image_use(with_controls(f, 0.25), n_boot=200)]
    )
    hits = pd.DataFrame({"item_id": answers["sft"]["item_id"], "suite": "in_domain", "uniform": 0.25})
    return write_report(
        out,
        table=table,
        summaries=summaries,
        scored=scored,
        curves=curves,
        contamination=ContaminationReport(flags, summary),
        title="Demo <evaluation>",
        claims=paired_claims(answers, n_boot=200),
        image_use=uses,
        versus_blind=versus_blind(answers, hits, n_boot=200),
        caveats=["Tiny random demo model: the numbers say nothing about Skin-R1."],
        generated_at="2025-01-01 00:00 UTC",
    )


@pytest.mark.slow  # real MLflow runs, figures
def test_write_report_files_html_self_contained_and_deterministic(tmp_path: Path, summaries: dict, mlflow_runs) -> None:
    uri, runs = mlflow_runs
    curves = read_curves(uri, runs)
    files = _write(tmp_path / "a", summaries, curves)
    assert files.markdown.is_file() and files.html.is_file()
    assert set(files.figures) == {
        "suite_accuracy",
        "depth_accuracy",
        "training_curves",
        *(f"confusion_{v}" for v in ("base", "sft", "rl_only", "sft_grpo")),
    }
    for path in files.figures.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page = files.html.read_text()
    assert page.count("data:image/png;base64,") == len(files.figures)
    assert not re.search(r"""(src|href)=["'](?!data:)""", page)  # nothing to fetch: no files, no network
    assert "<title>Demo &lt;evaluation&gt;</title>" in page and "<code>&lt;thinking&gt;</code>" in page
    md = files.markdown.read_text()
    assert md.startswith("# Demo \\<evaluation>\n")
    for text in (
        "## What was evaluated",
        "## Ablation table",
        "## Malignancy safety",
        "## Out-of-distribution",
        "## Contamination",
        "## Caveats",
        "Tiny random demo model",
        "sft: no reward metric",
        "## Does each variant read the image?",
        "| sft_grpo | in_domain | 200 | 0.80 | 0.25 |",
        "| sft | in_domain | 200 | 0.50 | uniform | 0.25 | +0.250 [",
        "McNemar p 1.7e-18",
        "above guessing",
        "0.50 [",
        "holds",
        "![Accuracy per suite and variant.](figures/suite_accuracy.png)",
    ):
        assert text in md, text
    assert "| in_domain | 202 | 2 | 1 | 1 | 0 | 0.01 |" in md

    again = _write(tmp_path / "b", summaries, curves)
    assert again.html.read_bytes() == files.html.read_bytes()
    assert again.markdown.read_bytes() == files.markdown.read_bytes()


def test_write_report_without_curves_or_contamination(tmp_path: Path, summaries: dict) -> None:
    table = ablation_table({"sft": summaries["sft"]})
    files = write_report(
        tmp_path,
        table=table,
        summaries={"sft": summaries["sft"]},
        scored={},
        curves=None,
        contamination=None,
        title="t",
    )
    md = files.markdown.read_text()
    assert "no MLflow runs were given" in md and "overlap between training and evaluation data is unknown" in md
    assert "Generated " in md and set(files.figures) == {"suite_accuracy"}
