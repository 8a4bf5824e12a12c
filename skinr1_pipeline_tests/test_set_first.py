"""Set-first items: options fixed before the gold, so image-blind guessers score 1/n; image controls; RL items."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skinr1_pipeline.evaluation.baselines import above_chance, best_blind_policy_reward, blind_hits
from skinr1_pipeline.evaluation.suites import (
    SuiteConfig,
    build_suites,
    ddx_suite,
    hierarchical_suite,
    image_controls,
    in_domain_suite,
    write_blank_image,
)
from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.tasks.mcq import TOP_SCORE, build_mcq_items
from skinr1_pipeline.tasks.set_first import SetFirstConfig, build_set_first_items
from skinr1_pipeline.training.rl_data import build_rl_items

TAX = Taxonomy.load()
DDX = DDxGraph.load(TAX)
#: Labels at several depths, including a node and its own descendant (nevus / blue nevus) to test the antichain.
LABELS = [
    "melanoma",
    "melanocytic_nevus",
    "benign_keratosis_like",
    "basal_cell_carcinoma",
    "dermatofibroma",
    "seborrheic_keratosis",
    "squamous_cell_carcinoma",
    "actinic_keratosis",
    "benign_vascular",
    "blue_nevus",
    "lentigo_simplex",
]


def make_samples(per_label: int = 6, source: str = "ham10000", split: str = "test") -> pd.DataFrame:
    rows = []
    for label in LABELS:
        for i in range(per_label):
            rows.append(
                {
                    "sample_id": f"{source}/{label}/{i}",
                    "source_dataset": source,
                    "modality": "dermoscopic",
                    "image_path": f"/img/{label}_{i}.jpg",
                    "taxonomy_node": label,
                    "bucket": TAX[label].bucket,
                    "split": split,
                    "image_sha256": f"sha-{label}-{i}",
                    "fitzpatrick": np.nan,
                }
            )
    return pd.DataFrame(rows)


SAMPLES = make_samples()


def test_labels_exist_in_the_taxonomy():
    assert all(label in TAX and TAX[label].bucket for label in LABELS)
    assert TAX.is_ancestor("melanocytic_nevus", "blue_nevus", strict=True)


def test_label_items_are_antichains_with_exactly_one_true_option_and_lca_credit():
    build = build_set_first_items(SAMPLES, TAX, pool="label", config=SetFirstConfig(seed=3))
    items = build.items
    assert len(items) == len(SAMPLES) and build.dropped.empty
    assert items["item_id"].is_unique and set(items["construction"]) == {"set_first"}
    for item in items.itertuples():
        nodes = list(item.option_nodes)
        assert len(set(nodes)) == 4
        # No option is an ancestor of another, so exactly one is true of the image.
        assert not any(a != b and TAX.is_ancestor(a, b) for a in nodes for b in nodes)
        true = [n for n in nodes if TAX.is_ancestor(n, item.taxonomy_node)]
        assert true == [item.gold_class] == [nodes[item.answer_index]]
        assert item.option_scores[item.answer_index] == 1.0
        for node, score in zip(nodes, item.option_scores):
            lca = TAX.lowest_common_ancestor([node, item.gold_class])
            assert score == pytest.approx(
                1.0 if node == item.gold_class else TAX.depth(lca) / TAX.depth(item.gold_class)
            )


def test_a_class_is_served_by_images_labelled_below_it():
    items = build_set_first_items(SAMPLES, TAX, pool="label", config=SetFirstConfig(seed=5)).items
    nevus = items[items["gold_class"] == "melanocytic_nevus"]
    assert len(nevus) and set(nevus["taxonomy_node"]) <= {"melanocytic_nevus", "blue_nevus"}
    # ... and never when blue nevus is offered beside it (that would make two options true).
    assert not any("blue_nevus" in nodes for nodes in nevus["option_nodes"])


def test_gold_position_and_class_are_uniform_given_the_option_set():
    items = build_set_first_items(make_samples(per_label=40), TAX, pool="label", config=SetFirstConfig(seed=1)).items
    counts = np.bincount(items["answer_index"], minlength=4)
    expected = len(items) / 4
    assert ((counts - expected) ** 2 / expected).sum() < 16.27  # chi-square, 3 df, p = 0.001
    # For every offered class: how often it is the gold when offered is 1/4 (the set carries no information).
    offered = items.explode("option_nodes")
    rate = (offered["option_nodes"] == offered["gold_class"]).groupby(offered["option_nodes"]).mean()
    assert rate.between(0.25 - 0.12, 0.25 + 0.12).all(), rate


@pytest.mark.slow  # every blind guesser over ~1,000 items
def test_every_blind_guesser_scores_chance_on_set_first_items():
    """The property the construction exists for: over many items every image-blind guesser (structure, text,
    DDx centrality, cross-fitted prior and learned model) is within sampling error of 1/n."""
    many = pd.concat([make_samples(per_label=60, source=s) for s in ("ham10000", "derm7pt")], ignore_index=True)
    items = pd.concat(
        [
            in_domain_suite(many, TAX, SuiteConfig())[0],
            hierarchical_suite(many, TAX, SuiteConfig())[0],
            ddx_suite(many, TAX, DDX, SuiteConfig())[0],
        ],
        ignore_index=True,
    )
    hits = blind_hits(items, TAX, DDX)
    guessers = [c for c in hits.columns if c not in ("item_id", "suite", "sample_id")]
    assert {"most_ancestors", "deepest", "longest_text", "ddx_centrality", "answer_prior", "learned"} <= set(guessers)
    for suite, group in hits.groupby("suite"):
        chance = 0.25
        margin = 3.3 * np.sqrt(chance * (1 - chance) / len(group))  # ~0.001 two-sided per guesser
        for g in guessers:
            assert abs(group[g].mean() - chance) < margin, (suite, g, group[g].mean(), len(group))
    # The paper's construction on the same images is not safe: most-ancestors beats chance by far.
    paper = build_mcq_items(many, TAX, splits=["test"]).items
    paper.insert(0, "suite", "in_domain_paper")
    paper_hits = blind_hits(paper, TAX, DDX)
    assert paper_hits["most_ancestors"].mean() > 0.35
    # The blocking check on eval_suites: nothing above chance on set-first suites, the leak caught on the paper's.
    assert not above_chance(hits)["above_chance"].any()
    flagged = above_chance(paper_hits)
    assert set(flagged.loc[flagged["above_chance"], "guesser"]) >= {"most_ancestors", "learned"}


def test_level_items_ask_one_level_and_skip_levels_with_too_few_classes():
    build = build_set_first_items(SAMPLES, TAX, pool="level", config=SetFirstConfig(seed=2))
    items = build.items
    assert set(items["level"]) and items["level"].notna().all()
    for item in items.itertuples():
        assert {TAX.depth(n) for n in item.option_nodes} == {item.level}
        assert TAX.path(item.taxonomy_node)[item.level] == item.gold_class
    per_level = {lv: {TAX.path(n)[lv] for n in LABELS if TAX.depth(n) >= lv} for lv in range(1, TAX.max_depth + 1)}
    skipped = {lv for lv, nodes in per_level.items() if 0 < len(nodes) < 4}
    assert skipped and not skipped & set(items["level"])
    assert set(build.dropped["reason"]) == {"too_few_classes"}
    assert all(f"level{lv}" in " ".join(build.dropped["detail"]) for lv in skipped)


def test_ddx_items_are_look_alike_clusters():
    items = build_set_first_items(SAMPLES, TAX, pool="ddx", ddx=DDX, config=SetFirstConfig(seed=4)).items
    assert len(items)
    for item in items.itertuples():
        nodes = list(item.option_nodes)
        anchor_links = [sum(DDX.graph.has_edge(a, b) for b in nodes if b != a) for a in nodes]
        assert max(anchor_links) == 3  # every other option is a look-alike of the anchor
        assert not any(a != b and TAX.is_ancestor(a, b) for a in nodes for b in nodes)
    with pytest.raises(ValueError, match="DDx graph"):
        build_set_first_items(SAMPLES, TAX, pool="ddx")


def test_items_do_not_depend_on_row_order_and_bad_settings_fail():
    shuffled = SAMPLES.sample(frac=1.0, random_state=0)
    a = build_set_first_items(SAMPLES, TAX, pool="label").items
    b = build_set_first_items(shuffled, TAX, pool="label").items
    pd.testing.assert_frame_equal(a, b)
    with pytest.raises(ValueError, match="n_options"):
        SetFirstConfig(n_options=1)
    with pytest.raises(ValueError, match="closeness"):
        SetFirstConfig(closeness=0.5)
    with pytest.raises(ValueError, match="unknown option pool"):
        build_set_first_items(SAMPLES, TAX, pool="nearby")


def test_image_controls_pair_each_item_with_a_shuffled_and_a_blank_image(tmp_path):
    items = build_suites(SAMPLES, TAX, DDX, SuiteConfig(paper_suites=False)).items
    blank = write_blank_image(tmp_path / "blank.png")
    controls = image_controls(items, suites=["in_domain"], blank_image=str(blank), seed=0)
    real = items[items["suite"] == "in_domain"].set_index("item_id")
    assert len(controls) == 2 * len(real)
    assert set(controls["condition"]) == {"shuffled", "blank"}
    assert set(controls["base_item_id"]) == set(real.index) and controls["item_id"].is_unique
    shuffled = controls[controls["condition"] == "shuffled"].set_index("base_item_id")
    # Same question and gold, another item's image: a permutation of the suite's images with no item kept in place.
    assert sorted(shuffled["image_path"]) == sorted(real["image_path"])
    assert (shuffled["prompt"] == real.loc[shuffled.index, "prompt"]).all()
    moved = shuffled["image_path"] != real.loc[shuffled.index, "image_path"]
    assert moved.mean() > 0.9  # a repeated image may land on an item that shows it too
    assert set(controls.loc[controls["condition"] == "blank", "image_path"]) == {str(blank)}
    assert controls["image_sha256"].isna().all()
    again = image_controls(items, suites=["in_domain"], blank_image=str(blank), seed=0)
    pd.testing.assert_frame_equal(controls, again)


def test_rl_items_default_to_set_first_and_blind_policies_earn_no_more_than_uniform():
    samples = pd.concat([make_samples(per_label=8, split=s) for s in ("train", "valid")], ignore_index=True)
    samples["sample_id"] = samples["sample_id"] + "/" + samples["split"]
    build = build_rl_items(samples, TAX)
    items = build.items
    assert set(items["construction"]) == {"set_first"} and set(items["split"]) == {"train", "valid"}
    assert max(max(s) for s in items["option_scores"]) == TOP_SCORE
    train = items[items["split"] == "train"]
    reward = best_blind_policy_reward(train, TAX, DDX)
    paper = build_rl_items(samples, TAX, construction="paper").items
    paper_reward = best_blind_policy_reward(paper[paper["split"] == "train"], TAX, DDX)
    # Under the paper's items a blind policy is paid well above uniform; set-first removes most of that margin
    # (LCA partial credit can still favour an option with many offered siblings, which the logged number shows).
    assert paper_reward["best_margin"] > 0.05
    assert reward["best_margin"] < paper_reward["best_margin"] / 2
    with pytest.raises(ValueError, match="construction"):
        build_rl_items(samples, TAX, construction="gold_first")
    with pytest.raises(ValueError, match="hard_negative_fraction"):
        build_rl_items(samples, TAX, hard_negative_fraction=0.2)
