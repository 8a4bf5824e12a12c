"""Image-blind baselines on hand-computed items, the verdict against them, and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skinr1_pipeline.evaluation.baselines import (
    BASELINE_COLUMNS,
    GUESSERS,
    best_blind_policy_reward,
    blind_baselines,
    blind_hits,
    ddx_degrees,
    fold_ids,
    lexical_scores,
    offered_ancestors,
    offered_descendants,
    open_baselines,
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
from skinr1_pipeline.evaluation.suites import SUITES
from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.taxonomy import Taxonomy

TAX = Taxonomy.load()


def _look_alike(node: str) -> dict:
    return {"node": node, "shared": "Both are pink papules.", "distinguish": "One is pearly."}


# Tiny DDx graph on the real taxonomy: BCC looks like SCC, a nevus and a seborrheic keratosis; SCC like an AK.
DDX = DDxGraph.from_dict(
    {
        "version": 1,
        "groups": [
            {
                "id": "g_bcc",
                "title": "BCC",
                "index": "basal_cell_carcinoma",
                "neighbours": [
                    _look_alike("squamous_cell_carcinoma"),
                    _look_alike("melanocytic_nevus"),
                    _look_alike("seborrheic_keratosis"),
                ],
            },
            {
                "id": "g_scc",
                "title": "SCC",
                "index": "squamous_cell_carcinoma",
                "neighbours": [_look_alike("actinic_keratosis")],
            },
        ],
    },
    TAX,
)


def mcq(item_id: str, nodes: list, answer: int, suite: str = "in_domain", **extra) -> dict:
    options = [TAX[n].name if n in TAX else n for n in nodes]
    return {
        "suite": suite,
        "item_id": item_id,
        "options": options,
        "option_nodes": nodes,
        "answer_index": answer,
        "taxonomy_node": nodes[answer],
        **extra,
    }


def open_item(item_id: str, label: str, **extra) -> dict:
    return {
        "suite": "open_ended",
        "item_id": item_id,
        "options": [],
        "option_nodes": [],
        "answer_index": -1,
        "taxonomy_node": label,
        **extra,
    }


def hits(*items: dict, ddx: DDxGraph | None = DDX) -> pd.DataFrame:
    return blind_hits(pd.DataFrame(list(items)), TAX, ddx).set_index("item_id")


# melanocytic nevus (4) | malignant neoplasm (2) | melanoma (4) | neoplasm of the skin (1, "neoplastic"): a chain of
# three path nodes gives melanoma away to the ancestor count; depth ties it with the nevus.
CHAIN = mcq("chain", ["melanocytic_nevus", "malignant_neoplasm", "melanoma", "neoplastic"], 2)
LONE = mcq("lone", ["dermatofibroma", "melanoma", "basal_cell_carcinoma", "seborrheic_keratosis"], 1)
# nodular basal cell carcinoma (5) contains the text of basal cell carcinoma (4), its ancestor.
BCC = mcq("bcc", ["nodular_bcc", "basal_cell_carcinoma", "squamous_cell_carcinoma", "seborrheic_keratosis"], 0)
# DDx-style: nodular BCC inherits BCC's look-alikes (the expansion), which are the three other options.
LOOK = mcq(
    "look", ["nodular_bcc", "squamous_cell_carcinoma", "melanocytic_nevus", "seborrheic_keratosis"], 0, suite="ddx"
)
THREE = mcq("three", ["benign", "malignant", "precancerous_in_situ"], 0, suite="malignancy")


def test_option_scores_by_hand() -> None:
    assert offered_ancestors(CHAIN["option_nodes"], TAX) == [1, 1, 2, 0]
    assert offered_descendants(CHAIN["option_nodes"], TAX) == [0, 1, 0, 3]
    assert offered_ancestors(LONE["option_nodes"], TAX) == [0, 0, 0, 0]
    assert offered_ancestors(["benign", "melanoma", "melanoma", None], TAX) == [0, 0, 0, 0]  # non-nodes, itself
    # contains "basal cell carcinoma" (1) + two other "... carcinoma" heads (2); keratosis shares no head.
    assert lexical_scores(BCC["options"]) == [3, 2, 2, 0]
    assert lexical_scores(CHAIN["options"]) == [0, 0, 0, 0]
    assert lexical_scores(["Nevus", "nevus", "blue nevus"]) == [2, 2, 4]  # case-insensitive; equal texts only share
    assert ddx_degrees(LOOK["option_nodes"], TAX, DDX) == [3, 0, 0, 0]
    # malignant neoplasm's family includes BCC, whose look-alike the nevus is; melanoma is in no group.
    assert ddx_degrees(CHAIN["option_nodes"], TAX, DDX) == [0, 1, 0, 0]
    assert ddx_degrees(
        ["basal_cell_carcinoma", "squamous_cell_carcinoma", "actinic_keratosis", "melanoma"], TAX, DDX
    ) == [1, 2, 1, 0]


def test_rule_guessers_by_hand_with_ties() -> None:
    h = hits(CHAIN, LONE, BCC, {**CHAIN, "item_id": "chain_1", "answer_index": 1})
    rules = ["most_ancestors", "deepest", "longest_text", "lexical", "ddx_centrality"]
    assert h.loc["chain", rules].tolist() == [1.0, 0.5, 0.0, 0.25, 0.0]  # longest: "neoplasm of the skin"
    assert h.loc["chain_1", rules].tolist() == [0.0, 0.0, 0.0, 0.25, 1.0]
    # LONE: all depth 4, no chain, no shared head; "seborrheic keratosis" is longest; BCC has 2 look-alikes offered.
    assert h.loc["lone", rules].tolist() == [0.25, 0.25, 0.0, 0.25, 0.0]
    # BCC and nodular BCC (which inherits them) both have SCC and the keratosis as offered look-alikes: a tie.
    assert h.loc["bcc", rules].tolist() == [1.0, 1.0, 1.0, 1.0, 0.5]
    assert (h["uniform"] == 0.25).all()
    lexical_tie = mcq("kk", ["actinic_keratosis", "seborrheic_keratosis", "melanoma", "dermatofibroma"], 0)
    assert hits(lexical_tie).loc["kk", "lexical"] == 0.5


def test_ddx_centrality_uses_the_expansion_and_needs_a_graph() -> None:
    assert hits(LOOK).loc["look", "ddx_centrality"] == 1.0
    assert np.isnan(hits(LOOK, ddx=None).loc["look", "ddx_centrality"])
    table = blind_baselines(pd.DataFrame([LOOK]), TAX)
    assert np.isnan(table.loc[0, "ddx_centrality"])


def test_answer_prior_is_cross_fitted_by_cluster() -> None:
    a, b = fold_ids(pd.DataFrame({"item_id": ["x", "y"], "cluster": ["a", "b"]}))
    assert a != b  # the two clusters fall in different folds; items of one cluster share a fold
    third = mcq("third", ["melanoma", "dermatofibroma", "basal_cell_carcinoma", "benign_vascular"], 1)
    items = [{**LONE, "cluster": "a"}, {**CHAIN, "cluster": "a"}, {**third, "cluster": "b"}]
    h = hits(*items)
    # Cluster a sees only b's gold (dermatofibroma): LONE picks it (wrong), CHAIN offers no gold-elsewhere node (tie);
    # third sees melanoma twice and picks it (wrong). An in-sample prior would pick melanoma / melanoma / ... = 2/3.
    assert h["answer_prior"].tolist() == [0.0, 0.25, 0.0]


def test_answer_prior_never_reads_the_items_own_gold() -> None:
    nodes = sorted(n.id for n in TAX.diagnosis_nodes())[:80]
    items = pd.DataFrame([mcq(f"u{i}", nodes[4 * i : 4 * i + 4], i % 4) for i in range(20)])
    # Every gold node (and every option) occurs in one item only: no other fold has seen it, so every option ties.
    in_sample = [1.0 for _ in range(20)]  # the old prior: gold once, the distractors never
    row = blind_baselines(items, TAX).iloc[0]
    assert row["answer_prior"] == row["uniform"] == 0.25 and np.mean(in_sample) == 1.0


def _deepest_gold_items(n: int, rng: np.random.Generator) -> pd.DataFrame:
    ids = sorted(node.id for node in TAX if node.level >= 1)
    rows = []
    while len(rows) < n:
        nodes = list(rng.choice(ids, size=4, replace=False))
        depths = [TAX.depth(x) for x in nodes]
        if depths.count(max(depths)) == 1:
            rows.append(mcq(f"d{len(rows)}", nodes, int(np.argmax(depths))))
    return pd.DataFrame(rows)


def test_learned_guesser_learns_a_leak_cross_fitted() -> None:
    items = _deepest_gold_items(300, np.random.default_rng(0))
    h = blind_hits(items, TAX, DDX)
    assert h["deepest"].mean() == 1.0
    assert h["learned"].mean() >= 0.97


def test_learned_guesser_is_at_chance_without_a_leak() -> None:
    rng = np.random.default_rng(1)
    nodes = ["melanoma", "melanocytic_nevus", "basal_cell_carcinoma", "seborrheic_keratosis"]
    items = pd.DataFrame([mcq(f"r{i}", list(rng.permutation(nodes)), int(rng.integers(4))) for i in range(400)])
    h = blind_hits(items, TAX, DDX)
    se = np.sqrt(0.25 * 0.75 / len(items))
    assert abs(h["learned"].mean() - 0.25) < 3.5 * se
    assert abs(h["answer_prior"].mean() - 0.25) < 3.5 * se


def test_blind_baselines_table_by_hand() -> None:
    items = pd.DataFrame([CHAIN, LONE, BCC, THREE, {**THREE, "item_id": "three_b", "answer_index": 1}, LOOK])
    table = blind_baselines(items, TAX, DDX)
    assert list(table.columns) == list(BASELINE_COLUMNS) and set(GUESSERS) < set(table.columns)
    assert table["suite"].tolist() == [s for s in SUITES if s in {"in_domain", "malignancy", "ddx"}]
    row = table.set_index("suite").loc["in_domain"]
    assert row["n"] == 3 and row["uniform"] == pytest.approx(0.25) and row["chance"] == pytest.approx(0.25)
    assert row["most_ancestors"] == pytest.approx((1 + 0.25 + 1) / 3)
    assert row["deepest"] == pytest.approx((0.5 + 0.25 + 1) / 3)
    assert row["best"] == max(row[g] for g in GUESSERS if not np.isnan(row[g]))
    assert row["best_margin"] == pytest.approx(row["best"] - 0.25)
    assert row["best_ci_low"] < row["best"] < row["best_ci_high"] <= 1.0
    mal = table.set_index("suite").loc["malignancy"]
    # Bucket options are no taxonomy nodes and have no look-alikes: the rules tie all three options.
    assert mal["uniform"] == pytest.approx(1 / 3) and mal["most_ancestors"] == pytest.approx(1 / 3)
    assert mal["ddx_centrality"] == pytest.approx(1 / 3)
    ddx = table.set_index("suite").loc["ddx"]
    assert ddx["ddx_centrality"] == 1.0 and ddx["best"] == 1.0 and ddx["best_ci_high"] == 1.0
    assert ddx["best_ci_low"] == pytest.approx(0.2065, abs=1e-3)  # Wilson at 1/1


def test_blind_hits_per_item() -> None:
    h = blind_hits(pd.DataFrame([THREE, CHAIN, open_item("o", "melanoma")]), TAX)
    assert h.columns.tolist() == ["item_id", "suite", *GUESSERS]
    assert h["item_id"].tolist() == ["chain", "three", "o"]  # suites in SUITES order, then input order
    assert h.loc[2, "uniform"] == 1.0 and h.loc[2, list(GUESSERS[2:])].isna().all()


def test_open_ended_baselines_are_cross_fitted() -> None:
    bv = "benign_vascular"
    items = pd.DataFrame(
        [
            open_item("o1", "melanoma", cluster="a"),
            open_item("o2", bv, cluster="b"),
            open_item("o3", bv, cluster="b"),
            open_item("o4", bv, cluster="b"),
            open_item("o5", "melanoma", cluster="b"),
        ]
    )
    out = open_baselines(items, TAX)
    # Cluster a learns benign vascular from b (wrong for o1); b learns melanoma from a (right for o5 only).
    # In-sample, benign vascular would be right 3 of 5 times.
    assert out["answer_prior"] == pytest.approx(1 / 5)
    assert out["prior_answer"] in TAX.descendants(bv) | {bv}
    assert out["uniform"] == pytest.approx(0.5)  # each item: right for one of the two classes
    row = blind_baselines(items, TAX).iloc[0]
    assert np.isnan(row["most_ancestors"]) and row["best_guesser"] == "uniform" and row["chance"] == 0.5


def test_best_blind_policy_reward_by_hand() -> None:
    item = {**CHAIN, "option_scores": [0.0, 0.5, 1.0, 0.25]}
    out = best_blind_policy_reward(pd.DataFrame([item]), TAX)
    assert out["uniform"] == pytest.approx(1.75 / 4) and out["oracle"] == 1.0
    assert out["most_ancestors"] == 1.0 and out["deepest"] == 0.5 and out["longest_text"] == 0.25
    assert out["lexical"] == pytest.approx(1.75 / 4) and "ddx_centrality" not in out and "learned" not in out
    assert out["best"] == "most_ancestors" and out["best_reward"] == 1.0 and out["n"] == 1
    assert out["best_margin"] == pytest.approx(1 - 1.75 / 4)
    with_graph = best_blind_policy_reward(pd.DataFrame([item]), TAX, DDX)
    assert with_graph["ddx_centrality"] == 0.5  # malignant neoplasm is the one option with an offered look-alike
    with pytest.raises(ValueError, match="item chain: 2 option_scores for 4 options"):
        best_blind_policy_reward(pd.DataFrame([{**item, "option_scores": [0.0, 1.0]}]), TAX)
    with pytest.raises(ValueError, match=r"missing \['option_scores'\]"):
        best_blind_policy_reward(pd.DataFrame([CHAIN]), TAX)


def test_bad_items_are_named() -> None:
    with pytest.raises(ValueError, match=r"missing \['option_nodes'\]"):
        blind_baselines(pd.DataFrame([CHAIN]).drop(columns="option_nodes"), TAX)
    with pytest.raises(ValueError, match="item chain: answer_index 7 is not an offered option"):
        blind_baselines(pd.DataFrame([{**CHAIN, "answer_index": 7}]), TAX)
    with pytest.raises(ValueError, match="item chain: answer_index -1 is not an offered option"):
        blind_hits(pd.DataFrame([{**CHAIN, "answer_index": -1}]), TAX)
    with pytest.raises(ValueError, match="item chain: 3 option_nodes for 4 options"):
        blind_baselines(pd.DataFrame([{**CHAIN, "option_nodes": CHAIN["option_nodes"][:3]}]), TAX)
    with pytest.raises(ValueError, match="mixes open-ended and multiple-choice"):
        blind_baselines(pd.DataFrame([CHAIN, {**open_item("o", "melanoma"), "suite": "in_domain"}]), TAX)
    with pytest.raises(ValueError, match=r"not a taxonomy node: \['no_such_node'\]"):
        blind_baselines(pd.DataFrame([open_item("o", "no_such_node")]), TAX)


def summary(acc: float, lo: float, hi: float, likelihood: tuple[float, float, float] | None = None) -> dict:
    out = {
        "n": 96,
        "accuracy": acc,
        "ci_low": lo,
        "ci_high": hi,
        "mean_credit": acc,
        "format_ok_rate": 1.0,
        "parsed_rate": 1.0,
        "format_errors": {},
        "excluded": 0,
    }
    if likelihood:
        out["likelihood"] = dict(zip(("accuracy", "ci_low", "ci_high"), likelihood))
    return out


_NAN = float("nan")
BARS = pd.DataFrame(
    [
        {
            "suite": "in_domain",
            "n": 96,
            "uniform": 0.25,
            "answer_prior": 0.3,
            "most_ancestors": 0.43,
            "deepest": 0.4,
            "longest_text": 0.2,
            "lexical": 0.3,
            "ddx_centrality": _NAN,
            "learned": 0.41,
            "best": 0.43,
            "best_guesser": "most_ancestors",
            "chance": 0.25,
            "best_margin": 0.18,
            "best_ci_low": 0.33,
            "best_ci_high": 0.53,
        },
        {
            "suite": "open_ended",
            "n": 96,
            "uniform": 0.1,
            "answer_prior": 0.16,
            "most_ancestors": _NAN,
            "deepest": _NAN,
            "longest_text": _NAN,
            "lexical": _NAN,
            "ddx_centrality": _NAN,
            "learned": _NAN,
            "best": 0.16,
            "best_guesser": "answer_prior",
            "chance": 0.1,
            "best_margin": 0.06,
            "best_ci_low": 0.1,
            "best_ci_high": 0.25,
        },
    ],
    columns=list(BASELINE_COLUMNS),
)
SUMMARIES = {
    "sft": {
        "in_domain": summary(0.20, 0.11, 0.28, likelihood=(0.49, 0.39, 0.59)),
        "open_ended": summary(0.36, 0.27, 0.46),
    },
    "base": {
        "in_domain": summary(0.60, 0.50, 0.70, likelihood=(0.22, 0.14, 0.30)),
        "open_ended": summary(float("nan"), float("nan"), float("nan")),
    },
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
    md = write_report(
        tmp_path / "with", table=table, summaries=SUMMARIES, scored={}, baselines=BARS, generated_at="t"
    ).markdown.read_text()
    section = md[md.index("## Against image-blind guessing") : md.index("## Does the paper")]
    assert "| suite | n | uniform | answer prior | most ancestors | deepest |" in section
    assert (
        "| in_domain | 96 | 0.25 | 0.30 | 0.43 | 0.40 | 0.20 | 0.30 | n/a | 0.41 | 0.43 | most_ancestors |" in section
    )
    assert f"| sft | {BELOW_GUESSING} | {ABOVE_GUESSING} |" in section
    assert f"| sft | {WITHIN_CI} |" in section  # answer likelihood: open-ended has none, so only in_domain
    without = write_report(
        tmp_path / "without", table=table, summaries=SUMMARIES, scored={}, generated_at="t"
    ).markdown.read_text()
    assert "No image-blind baselines were supplied" in without
