"""Image-blind baselines on hand-computed items, the verdict against them, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinr1_pipeline.evaluation.baselines import (
    blind_baselines,
    offered_ancestors,
    open_baselines,
    structure_hits,
)
from skinr1_pipeline.evaluation.comparison import (
    ABOVE_GUESSING,
    BELOW_GUESSING,
    NOT_EVALUATED,
    WITHIN_CI,
    ablation_table,
    versus_guessing,
)
from skinr1_pipeline.evaluation.report import write_report
from skinr1_pipeline.knowledge.taxonomy import Taxonomy

TAX = Taxonomy.load()


def mcq(item_id: str, nodes: list[str], answer: int, suite: str = "in_domain") -> dict:
    return {"suite": suite, "item_id": item_id, "options": [TAX[n].name if n in TAX else n for n in nodes],
            "option_nodes": nodes, "answer_index": answer, "taxonomy_node": nodes[answer]}


def open_item(item_id: str, label: str) -> dict:
    return {"suite": "open_ended", "item_id": item_id, "options": [], "option_nodes": [], "answer_index": -1,
            "taxonomy_node": label}


# A chain of three path nodes (neoplastic > malignant_neoplasm > melanoma) gives the gold answer away; one path node
# among unrelated distractors gives nothing away.
CHAIN = mcq("chain", ["melanocytic_nevus", "malignant_neoplasm", "melanoma", "neoplastic"], 2)
LONE = mcq("lone", ["dermatofibroma", "melanoma", "basal_cell_carcinoma", "seborrheic_keratosis"], 1)
THREE = mcq("three", ["benign", "malignant", "precancerous_in_situ"], 0, suite="malignancy")


def test_offered_ancestors_count_strict_ancestors_among_the_options() -> None:
    assert offered_ancestors(CHAIN["option_nodes"], TAX) == [1, 1, 2, 0]
    assert offered_ancestors(LONE["option_nodes"], TAX) == [0, 0, 0, 0]
    assert offered_ancestors(["benign", "melanoma", "melanoma"], TAX) == [0, 0, 0]  # not a node; itself is no ancestor


def test_structure_guess_finds_a_chain_and_splits_ties() -> None:
    hits = structure_hits(pd.DataFrame([CHAIN, LONE, {**CHAIN, "answer_index": 1}]), TAX)
    assert hits.tolist() == [1.0, 0.25, 0.0]


def test_blind_baselines_per_suite_by_hand() -> None:
    # in_domain: gold nodes melanoma (chain), melanoma (lone), dermatofibroma (third item, its only path node).
    third = mcq("third", ["melanoma", "dermatofibroma", "basal_cell_carcinoma", "benign_vascular"], 1)
    items = pd.DataFrame([CHAIN, LONE, third, THREE, {**THREE, "item_id": "three_b", "answer_index": 1}])
    table = blind_baselines(items, TAX).set_index("suite")
    row = table.loc["in_domain"]
    assert row["n"] == 3 and row["uniform"] == pytest.approx(0.25)
    # The prior picks melanoma (gold twice) whenever offered: right on chain and lone, wrong on third.
    assert row["answer_prior"] == pytest.approx(2 / 3)
    assert row["taxonomy_structure"] == pytest.approx((1 + 0.25 + 0.25) / 3)
    assert row["best"] == pytest.approx(2 / 3) and row["best_guesser"] == "answer_prior"
    mal = table.loc["malignancy"]
    # Bucket options are no taxonomy nodes: structure ties all three; the prior ties benign and malignant (once each).
    assert mal["uniform"] == pytest.approx(1 / 3) and mal["taxonomy_structure"] == pytest.approx(1 / 3)
    assert mal["answer_prior"] == pytest.approx(0.5)


def test_open_ended_baselines_credit_answers_at_or_below_the_label() -> None:
    items = pd.DataFrame([open_item("o1", "benign_vascular"), open_item("o2", "benign_vascular"),
                          open_item("o3", "melanoma")])
    out = open_baselines(items, TAX)
    # Naming benign_vascular or any of its subtypes is right for two of three items; uniform over the two classes.
    assert out["answer_prior"] == pytest.approx(2 / 3)
    assert out["prior_answer"] in TAX.descendants("benign_vascular") | {"benign_vascular"}
    assert out["uniform"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    row = blind_baselines(items, TAX).iloc[0]
    assert np.isnan(row["taxonomy_structure"]) and row["best_guesser"] == "answer_prior"


def test_bad_items_are_named() -> None:
    with pytest.raises(ValueError, match=r"missing \['option_nodes'\]"):
        blind_baselines(pd.DataFrame([CHAIN]).drop(columns="option_nodes"), TAX)
    with pytest.raises(ValueError, match="item chain: answer_index 7 is not an offered option"):
        blind_baselines(pd.DataFrame([{**CHAIN, "answer_index": 7}]), TAX)
    with pytest.raises(ValueError, match="item chain: 3 option_nodes for 4 options"):
        blind_baselines(pd.DataFrame([{**CHAIN, "option_nodes": CHAIN["option_nodes"][:3]}]), TAX)
    with pytest.raises(ValueError, match="mixes open-ended and multiple-choice"):
        blind_baselines(pd.DataFrame([CHAIN, {**open_item("o", "melanoma"), "suite": "in_domain"}]), TAX)
    with pytest.raises(ValueError, match=r"not a taxonomy node: \['no_such_node'\]"):
        blind_baselines(pd.DataFrame([open_item("o", "no_such_node")]), TAX)


def summary(acc: float, lo: float, hi: float, likelihood: tuple[float, float, float] | None = None) -> dict:
    out = {"n": 96, "accuracy": acc, "ci_low": lo, "ci_high": hi, "mean_credit": acc, "format_ok_rate": 1.0,
           "parsed_rate": 1.0, "format_errors": {}, "excluded": 0}
    if likelihood:
        out["likelihood"] = dict(zip(("accuracy", "ci_low", "ci_high"), likelihood))
    return out


BARS = pd.DataFrame([{"suite": "in_domain", "n": 96, "uniform": 0.25, "answer_prior": 0.3, "taxonomy_structure": 0.43,
                      "best": 0.43, "best_guesser": "taxonomy_structure"},
                     {"suite": "open_ended", "n": 96, "uniform": 0.1, "answer_prior": 0.16,
                      "taxonomy_structure": float("nan"), "best": 0.16, "best_guesser": "answer_prior"}])
SUMMARIES = {
    "sft": {"in_domain": summary(0.20, 0.11, 0.28, likelihood=(0.49, 0.39, 0.59)),
            "open_ended": summary(0.36, 0.27, 0.46)},
    "base": {"in_domain": summary(0.60, 0.50, 0.70, likelihood=(0.22, 0.14, 0.30)),
             "open_ended": summary(float("nan"), float("nan"), float("nan"))},
}


def test_versus_guessing_reads_each_interval_against_the_best_guess() -> None:
    verdicts = versus_guessing(SUMMARIES, BARS)
    assert list(verdicts.index) == ["base", "sft"]
    assert verdicts.loc["sft"].tolist() == [BELOW_GUESSING, ABOVE_GUESSING]
    assert verdicts.loc["base"].tolist() == [ABOVE_GUESSING, NOT_EVALUATED]
    likely = versus_guessing(SUMMARIES, BARS, likelihood=True)
    assert likely.loc["sft"].tolist() == [WITHIN_CI, NOT_EVALUATED]
    assert likely.loc["base"].tolist() == [BELOW_GUESSING, NOT_EVALUATED]
    assert versus_guessing(SUMMARIES, BARS.iloc[:0]).columns.tolist() == []


def test_report_shows_the_baselines_and_the_verdicts(tmp_path: Path) -> None:
    table = ablation_table(SUMMARIES)
    md = write_report(tmp_path / "with", table=table, summaries=SUMMARIES, scored={}, baselines=BARS,
                      generated_at="t").markdown.read_text()
    section = md[md.index("## Against image-blind guessing"):md.index("## Does the paper")]
    assert "| in_domain | 96 | 0.25 | 0.30 | 0.43 | 0.43 | taxonomy_structure |" in section
    assert f"| sft | {BELOW_GUESSING} | {ABOVE_GUESSING} |" in section
    assert f"| sft | {WITHIN_CI} |" in section  # answer likelihood: open-ended has none, so only in_domain
    without = write_report(tmp_path / "without", table=table, summaries=SUMMARIES, scored={},
                           generated_at="t").markdown.read_text()
    assert "No image-blind baselines were supplied" in without
