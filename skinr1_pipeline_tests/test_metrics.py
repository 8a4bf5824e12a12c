"""Scoring and metrics on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skinr1_pipeline.evaluation.metrics import (
    NO_ANSWER,
    AnswerMapper,
    accuracy,
    bootstrap_ci,
    confusion_matrix,
    expected_calibration_error,
    format_compliance,
    grouped_accuracy,
    malignancy_metrics,
    score_predictions,
    summarize,
)
from skinr1_pipeline.modeling.prompt_format import build_mcq_prompt, build_open_prompt, format_completion

OPTIONS = ["neoplasm of the skin", "melanoma", "melanocytic nevus", "malignant neoplasm"]
NODES = ["neoplastic", "melanoma", "melanocytic_nevus", "malignant_neoplasm"]


def mcq_item(item_id: str, **over) -> dict:
    base = {
        "item_id": item_id,
        "suite": "in_domain",
        "sample_id": item_id,
        "source_dataset": "ham10000",
        "modality": "dermoscopic",
        "taxonomy_node": "melanoma",
        "taxonomy_depth": 4,
        "fitzpatrick": np.nan,
        "bucket": "malignant",
        "prompt": build_mcq_prompt("Q?", OPTIONS),
        "options": OPTIONS,
        "option_nodes": NODES,
        "option_scores": [0.25, 0.75, 0.0, 0.5],
        "option_buckets": [None, "malignant", "benign", "malignant"],
        "answer_index": 1,
    }
    return {**base, **over}


def done(diagnosis: str) -> str:
    return format_completion("Irregular network and blue-white veil.", diagnosis)


def test_mcq_scoring_cases():
    items = pd.DataFrame([mcq_item(f"i{k}") for k in range(6)])
    completions = [
        done("B. melanoma; status: malignant"),  # gold
        done("D. malignant neoplasm; status: malignant"),  # ancestor: wrong, partial credit 0.5 / 0.75
        done("C. melanocytic nevus; status: benign"),  # distractor
        done("A or B; status: malignant"),  # hedged
        "<diagnosis>B</diagnosis>",  # no thinking block
        [{"role": "assistant", "content": done("melanoma")}],  # option text only, chat-shaped
    ]
    s = score_predictions(items, completions)
    assert s["correct"].tolist() == [True, False, False, False, False, True]
    assert s["credit"].tolist() == pytest.approx([1.0, 2 / 3, 0.0, 0.0, 0.0, 1.0])
    assert s["format_ok"].tolist() == [True, True, True, True, False, True]
    assert s["parsed"].tolist() == [True, True, True, False, False, True]
    assert s["chosen_index"].tolist() == [1, 3, 2, -1, -1, 1]
    assert s["chosen_node"].tolist()[:3] == ["melanoma", "malignant_neoplasm", "melanocytic_nevus"]
    assert s["error"].tolist()[3:5] == ["ambiguous_option", "no_thinking"]
    assert s["predicted_status"].tolist()[:3] == ["malignant", "malignant", "benign"]
    assert s["predicted_bucket"].tolist() == ["malignant", "malignant", "benign", None, None, "malignant"]
    by_id = score_predictions(items, {"i0": completions[0]})  # mapping; missing ones score as unanswered
    assert by_id["correct"].tolist() == [True] + [False] * 5
    with pytest.raises(ValueError):
        score_predictions(items, completions[:2])


def test_open_ended_scoring_by_lca_depth(tax):
    items = pd.DataFrame(
        [
            {
                **mcq_item(f"o{k}"),
                "suite": "open_ended",
                "prompt": build_open_prompt(),
                "options": [],
                "option_nodes": [],
                "option_scores": [],
                "option_buckets": [],
                "answer_index": -1,
            }
            for k in range(6)
        ]
    )
    completions = [
        done(d)
        for d in (
            "Melanoma; status: malignant",  # exact
            "melanoma in situ",  # below the label: correct
            "malignant neoplasm",  # ancestor at depth 2 of 4
            "melanocytic naevus; status: benign",  # synonym; LCA = neoplastic (depth 1)
            "melanoma or melanocytic nevus",  # hedged between two nodes
            "a strange spot",  # unmapped
        )
    ]
    s = score_predictions(items, completions, taxonomy=tax)
    assert s["chosen_node"].tolist() == [
        "melanoma",
        "melanoma_in_situ",
        "malignant_neoplasm",
        "melanocytic_nevus",
        None,
        None,
    ]
    assert s["correct"].tolist() == [True, True, False, False, False, False]
    assert s["credit"].tolist() == pytest.approx([1.0, 1.0, 0.5, 0.25, 0.0, 0.0])
    assert s["predicted_bucket"].tolist()[:4] == ["malignant", "malignant", "malignant", "benign"]
    assert s["format_ok"].all()
    with pytest.raises(ValueError, match="taxonomy"):
        score_predictions(items, completions)


def test_answer_mapper_prefers_the_longest_name(tax):
    mapper = AnswerMapper(tax)
    assert mapper("This is a melanoma in situ.") == "melanoma_in_situ"
    assert mapper("Basal-cell carcinoma") == "basal_cell_carcinoma"
    assert mapper("") is None


def test_accuracy_and_bootstrap_ci():
    result = accuracy([1, 1, 0, 1])
    assert result["accuracy"] == 0.75 and result["n"] == 4
    assert result["ci_low"] <= 0.75 <= result["ci_high"]
    rng = np.random.default_rng(0)
    small = accuracy(rng.random(40) < 0.6, seed=1)
    large = accuracy(rng.random(4000) < 0.6, seed=1)
    assert small["ci_low"] <= small["accuracy"] <= small["ci_high"]
    assert large["ci_low"] <= large["accuracy"] <= large["ci_high"]
    assert (large["ci_high"] - large["ci_low"]) < (small["ci_high"] - small["ci_low"]) / 5
    assert accuracy([1, 0, 1], seed=3) == accuracy([1, 0, 1], seed=3)
    # Wilson, not a percentile bootstrap: 3/3 correct still leaves room below 1 (the bootstrap said [1, 1]).
    perfect = accuracy([1, 1, 1])
    assert perfect["ci_high"] == pytest.approx(1.0) and perfect["ci_low"] == pytest.approx(0.43850, abs=1e-4)
    credit = rng.random(500)
    lo, hi = bootstrap_ci(credit, seed=2)
    assert lo < credit.mean() < hi and hi - lo < 0.1
    assert np.isnan(accuracy([])["accuracy"])


def test_grouped_accuracy_per_fitzpatrick_and_dataset():
    scored = pd.DataFrame(
        {
            "correct": [True, False, True, True, False],
            "credit": [1, 0, 1, 1, 0.5],
            "fitzpatrick": [1.0, 1.0, 5.0, np.nan, np.nan],
            "source_dataset": ["a", "a", "b", "b", "b"],
        }
    )
    fitz = grouped_accuracy(scored, "fitzpatrick").set_index("fitzpatrick")
    assert fitz["n"].to_dict() == {"type_1": 2, "type_5": 1, "unknown": 2}
    assert fitz["accuracy"].to_dict() == {"type_1": 0.5, "type_5": 1.0, "unknown": 0.5}
    assert fitz.loc["unknown", "mean_credit"] == 0.75
    per_ds = grouped_accuracy(scored, "source_dataset").set_index("source_dataset")
    assert per_ds["accuracy"].to_dict() == pytest.approx({"a": 0.5, "b": 2 / 3})


def test_malignant_miss_rate_and_specificity():
    scored = pd.DataFrame(
        {
            "bucket": [
                "malignant",
                "malignant",
                "precancerous_in_situ",
                "malignant",
                "benign",
                "benign",
                "benign",
                None,
            ],
            "predicted_bucket": ["malignant", "benign", "malignant", None, "benign", "malignant", None, "benign"],
        }
    )
    m = malignancy_metrics(scored)
    assert m["n_positive"] == 4 and m["n_benign"] == 3
    assert m["sensitivity"] == 0.5  # precancerous called malignant still counts as caught; no answer is a miss
    assert m["malignant_miss_rate"] == 0.5
    assert m["specificity"] == pytest.approx(1 / 3)
    assert m["bucket_accuracy"] == pytest.approx(2 / 7)
    assert m["miss_rate_ci_low"] <= 0.5 <= m["miss_rate_ci_high"]


def test_ece_hand_example():
    frame = pd.DataFrame(
        {"option_logprobs": [np.log([0.8, 0.2]), np.log([0.6, 0.4]), [0.0, 0.0, 0.0, 0.0]], "answer_index": [0, 1, 2]}
    )
    # 0.8 confident & right (gap 0.2); 0.6 confident & wrong (gap 0.6); uniform 0.25 picks A, wrong (gap 0.25).
    result = expected_calibration_error(frame)
    assert result["ece"] == pytest.approx((0.2 + 0.6 + 0.25) / 3)
    assert result["bins"]["n"].sum() == 3
    perfect = pd.DataFrame({"option_logprobs": [[0.0, -50.0]] * 4, "answer_index": [0] * 4})
    assert expected_calibration_error(perfect)["ece"] == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError):
        expected_calibration_error(pd.DataFrame({"answer_index": [0]}))


def test_confusion_matrix_and_format_compliance():
    scored = pd.DataFrame(
        {
            "taxonomy_node": ["melanoma", "melanoma", "melanocytic_nevus", "melanocytic_nevus"],
            "chosen_node": ["melanoma", "melanocytic_nevus", "melanocytic_nevus", None],
            "format_ok": [True, True, True, False],
            "parsed": [True, True, True, False],
            "error": [None, None, None, "no_thinking"],
        }
    )
    cm = confusion_matrix(scored)
    assert cm.loc["melanoma", "melanoma"] == 1 and cm.loc["melanoma", "melanocytic_nevus"] == 1
    assert cm.loc["melanocytic_nevus", NO_ANSWER] == 1 and cm.to_numpy().sum() == 4
    fc = format_compliance(scored)
    assert fc["format_ok_rate"] == 0.75 and fc["errors"] == {"no_thinking": 1}


def test_summarize_per_suite():
    items = pd.DataFrame(
        [mcq_item("a"), mcq_item("b", suite="ddx", bucket="benign", answer_index=2, option_scores=[0.0, 0.0, 1.0, 0.0])]
    )
    s = score_predictions(items, [done("B. melanoma; status: malignant"), done("B. melanoma; status: malignant")])
    table = summarize(s).set_index("suite")
    assert table.loc["in_domain", "accuracy"] == 1.0 and table.loc["ddx", "accuracy"] == 0.0
    assert table.loc["ddx", "specificity"] == 0.0 and table.loc["in_domain", "malignant_miss_rate"] == 0.0
