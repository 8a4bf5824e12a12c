"""RL multiple-choice items (paper §5.1): score rule, distractor rules, drops, determinism, reward compatibility."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.modeling.prompt_format import format_completion, format_mcq_answer, prompt_options
from skinr1_pipeline.tasks.mcq import (
    ITEM_COLUMNS,
    TOP_SCORE,
    build_mcq_items,
    dataset_pools,
    hierarchical_scores,
    option_path,
)
from skinr1_pipeline.training.rewards import (
    ACCURACY_REWARD,
    FORMAT_REWARD,
    MALIGNANCY_REWARD,
    accuracy_reward,
    format_reward,
    granularity_reward,
    malignancy_reward,
)
from skinr1_pipeline.training.rl_data import train_subsets

TAX = Taxonomy.load()
DDX = DDxGraph.load(TAX)
LABELS = {
    "ham10000": [
        "melanoma",
        "melanocytic_nevus",
        "benign_keratosis_like",
        "basal_cell_carcinoma",
        "ak_or_scc_in_situ",
        "dermatofibroma",
        "benign_vascular",
    ],
    "pad_ufes_20": [
        "actinic_keratosis",
        "basal_cell_carcinoma",
        "melanoma",
        "melanocytic_nevus",
        "squamous_cell_carcinoma",
        "seborrheic_keratosis",
    ],
    "derm7pt": ["melanoma", "dysplastic_nevus", "seborrheic_keratosis", "melanoma_in_situ", "dermatofibroma"],
}


def make_samples(per_source: int = 30, labels: dict[str, list[str]] = LABELS) -> pd.DataFrame:
    """Unified-sample rows over real taxonomy nodes: splits cycle train/valid/test, Derm7pt alternates modality."""
    rows = []
    for source, nodes in labels.items():
        for i in range(per_source):
            node = nodes[i % len(nodes)]
            clinical = source == "pad_ufes_20" or (source == "derm7pt" and i % 2 == 1)
            rows.append(
                {
                    "sample_id": f"{source}/{i}",
                    "source_dataset": source,
                    "image_path": f"/img/{source}_{i}.jpg",
                    "raw_label": node,
                    "modality": "clinical" if clinical else "dermoscopic",
                    "taxonomy_node": node,
                    "taxonomy_path": TAX.path(node),
                    "taxonomy_depth": TAX.depth(node),
                    "bucket": TAX[node].bucket or "none",
                    "split": ("train", "valid", "test")[i % 3],
                    "image_sha256": f"sha-{source}-{i}",
                    "fitzpatrick": float(i % 6 + 1) if i % 5 else np.nan,
                    "age": 50.0,
                    "sex": "female",
                    "site": "back",
                }
            )
    return pd.DataFrame(rows)


SAMPLES = make_samples()


def one_sample(node: str, source: str = "ham10000", sample_id: str = "x/1") -> pd.DataFrame:
    row = make_samples(1, {source: [node]}).iloc[[0]].copy()
    row["sample_id"] = sample_id
    return row


def test_score_rule_is_relative_to_deepest_option_shown():
    assert hierarchical_scores([1, 3]) == pytest.approx([0.25, 0.75])
    assert hierarchical_scores([1]) == pytest.approx([0.75])
    assert hierarchical_scores([2, 4]) == pytest.approx([0.375, 0.75])
    assert hierarchical_scores([1, 2, 3]) == pytest.approx([0.25, 0.5, 0.75])


def test_paper_example_l3_s13_on_a_real_item():
    """L = 3 (neoplastic > benign_neoplasm > benign_keratosis_like); find the seed drawing S = {1, 3}."""
    assert option_path(TAX, "benign_keratosis_like") == ["neoplastic", "benign_neoplasm", "benign_keratosis_like"]
    frame = pd.concat([one_sample("benign_keratosis_like"), SAMPLES[SAMPLES.source_dataset == "ham10000"]])
    for seed in range(200):
        item = build_mcq_items(frame, TAX, seed=seed).items.set_index("sample_id").loc["x/1"]
        shown = {n: s for n, s in zip(item.option_nodes, item.option_scores) if s > 0}
        if set(shown) == {"neoplastic", "benign_keratosis_like"}:
            assert shown == {"neoplastic": pytest.approx(0.25), "benign_keratosis_like": pytest.approx(0.75)}
            assert item.option_nodes[item.answer_index] == "benign_keratosis_like"
            return
    pytest.fail("no seed in 0..199 drew S = {1, 3}")


def test_items_follow_the_construction_rules():
    build = build_mcq_items(SAMPLES, TAX)
    items = build.items
    assert list(items.columns) == list(ITEM_COLUMNS)
    pools = dataset_pools(SAMPLES, TAX)
    for item in items.itertuples():
        path = option_path(TAX, item.taxonomy_node)
        assert len(item.options) == 4 and len(set(item.options)) == 4
        assert TAX.root not in item.option_nodes
        assert item.options == [TAX[n].name for n in item.option_nodes]
        correct = [(n, s) for n, s in zip(item.option_nodes, item.option_scores) if n in path]
        assert 1 <= len(correct) == item.n_correct <= min(3, len(path))
        deepest = max(TAX.depth(n) for n, _ in correct)
        for node, score in correct:
            assert score == pytest.approx(TOP_SCORE * TAX.depth(node) / deepest)
        for node, score in zip(item.option_nodes, item.option_scores):
            if node not in path:
                assert score == 0.0
                assert node in pools[item.source_dataset]  # same-dataset rule
                assert node not in TAX.descendants(item.taxonomy_node)
        assert item.option_scores[item.answer_index] == TOP_SCORE
        assert sorted(item.option_scores).count(TOP_SCORE) == 1
        assert prompt_options(item.prompt) == item.options
    assert items["n_correct"].nunique() == 3  # k takes every value 1..3 over enough samples


def test_hard_negatives_come_from_the_ddx_graph():
    plain = build_mcq_items(SAMPLES, TAX, ddx=DDX, hard_negative_fraction=0.0)
    assert plain.items.equals(build_mcq_items(SAMPLES, TAX).items)  # fraction 0 draws nothing extra
    hard = build_mcq_items(SAMPLES, TAX, ddx=DDX, hard_negative_fraction=1.0).items
    assert hard["n_hard_negatives"].sum() > 0
    for item in hard.itertuples():
        look_alikes = set(DDX.neighbours_with_expansion(item.taxonomy_node, TAX))
        wrong = [n for n, s in zip(item.option_nodes, item.option_scores) if s == 0]
        assert sum(n in look_alikes for n in wrong) >= item.n_hard_negatives
        assert not set(wrong) & set(TAX.path(item.taxonomy_node))
    with pytest.raises(ValueError, match="DDx"):
        build_mcq_items(SAMPLES, TAX, hard_negative_fraction=0.5)


def test_deterministic_and_order_independent():
    a = build_mcq_items(SAMPLES, TAX, seed=7).items
    b = build_mcq_items(SAMPLES.sample(frac=1.0, random_state=3), TAX, seed=7).items
    pd.testing.assert_frame_equal(a.set_index("item_id").sort_index(), b.set_index("item_id").sort_index())
    c = build_mcq_items(SAMPLES, TAX, seed=8).items
    assert not a["option_nodes"].equals(c["option_nodes"])


def test_drops_are_counted_with_reasons():
    extra = pd.concat(
        [
            one_sample("psoriasis", sample_id="x/no-bucket"),  # inflammatory: no malignancy bucket
            one_sample("melanoma", sample_id="x/unknown").assign(taxonomy_node="not_a_node"),
            one_sample("melanoma", source="lonely", sample_id="lonely/1"),  # one-class dataset: no distractors
        ]
    )
    build = build_mcq_items(pd.concat([SAMPLES, extra]), TAX)
    reasons = build.dropped.set_index("sample_id")["reason"].to_dict()
    assert reasons == {"x/no-bucket": "no_bucket", "x/unknown": "unknown_node", "lonely/1": "insufficient_distractors"}
    assert build.drop_counts == {"insufficient_distractors": 1, "no_bucket": 1, "unknown_node": 1}
    assert "needed" in build.dropped.set_index("sample_id").loc["lonely/1", "detail"]
    assert len(build.items) == len(SAMPLES)
    assert build.summary()["dropped"] == 3


def test_rewards_give_full_credit_to_gold_completions():
    items = build_mcq_items(SAMPLES, TAX, ddx=DDX, hard_negative_fraction=0.3).items
    thinking = "Features reviewed per option."  # enough word characters for the format reward's minimum
    completions = [
        format_completion(thinking, format_mcq_answer(r.options, r.answer_index, r.bucket)) for r in items.itertuples()
    ]
    cols = {c: items[c].tolist() for c in ("options", "option_scores", "bucket", "sample_id")}
    cols["prompts"] = items["prompt"].tolist()
    assert format_reward(completions, **cols) == [FORMAT_REWARD] * len(items)
    assert granularity_reward(completions, **cols) == [TOP_SCORE] * len(items)
    assert malignancy_reward(completions, **cols) == [MALIGNANCY_REWARD] * len(items)
    assert accuracy_reward(completions, **cols) == [ACCURACY_REWARD] * len(items)


def test_splits_restrict_items_but_not_the_pool():
    test_only = build_mcq_items(SAMPLES, TAX, splits=["test"]).items
    assert set(test_only["split"]) == {"test"}
    full = build_mcq_items(SAMPLES, TAX).items.set_index("sample_id")
    for item in test_only.itertuples():
        assert item.option_nodes == full.loc[item.sample_id, "option_nodes"]


def test_train_subsets_are_nested_per_source():
    items = build_mcq_items(make_samples(300), TAX).items
    subsets = train_subsets(items, (0.01, 0.05, 0.1, 0.2), seed=1)
    train = items[items.split == "train"]
    previous: set[str] = set()
    for fraction, subset in subsets.items():
        assert set(subset["split"]) == {"train"}
        for source, group in train.groupby("source_dataset"):
            expected = max(1, round(fraction * len(group)))
            assert (subset["source_dataset"] == source).sum() == expected
        ids = set(subset["item_id"])
        assert previous <= ids
        previous = ids
    again = train_subsets(items, (0.01, 0.05, 0.1, 0.2), seed=1)
    assert all(again[f].equals(subsets[f]) for f in subsets)
    with pytest.raises(ValueError):
        train_subsets(items, (0.0,))
