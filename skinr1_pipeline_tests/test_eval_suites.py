"""Evaluation suites (paper §7) built from small unified-sample frames, OmniMedVQA items, and contamination."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from skinr1_pipeline.data.loaders.omnimedvqa import load_questions
from skinr1_pipeline.evaluation.contamination import check_contamination
from skinr1_pipeline.evaluation.metrics import score_predictions
from skinr1_pipeline.evaluation.suites import (
    HEADLINE_SUITES,
    PAPER_SUITES,
    SUITE_COLUMNS,
    SuiteConfig,
    build_suites,
    malignancy_suite,
    omnimedvqa_suite,
    ood_mask,
    ood_suite,
    open_ended_suite,
    paper_ddx_suite,
    paper_hierarchical_suite,
    paper_in_domain_suite,
    paper_ood_suite,
)
from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.modeling.prompt_format import format_completion, format_mcq_answer, prompt_options
from skinr1_pipeline.tasks.mcq import MALIGNANCY_OPTIONS, build_mcq_items, option_path

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
        "lentigo_simplex",
    ],
    "pad_ufes_20": [
        "actinic_keratosis",
        "basal_cell_carcinoma",
        "melanoma",
        "melanocytic_nevus",
        "squamous_cell_carcinoma",
        "seborrheic_keratosis",
        "psoriasis",
    ],
}


def make_samples(per_source: int = 24) -> pd.DataFrame:
    """HAM10000-like dermoscopic and PAD-UFES-like clinical rows; splits cycle train/valid/test."""
    rows = []
    for source, nodes in LABELS.items():
        for i in range(per_source):
            node = nodes[i % len(nodes)]
            rows.append(
                {
                    "sample_id": f"{source}/{i}",
                    "source_dataset": source,
                    "image_path": f"/img/{source}_{i}.jpg",
                    "raw_label": node,
                    "modality": "clinical" if source == "pad_ufes_20" else "dermoscopic",
                    "taxonomy_node": node,
                    "taxonomy_path": TAX.path(node),
                    "taxonomy_depth": TAX.depth(node),
                    "bucket": TAX[node].bucket or "none",
                    "split": ("train", "valid", "test")[i % 3],
                    "image_sha256": f"sha-{source}-{i}",
                    "fitzpatrick": float(i % 6 + 1) if i % 4 else np.nan,
                    "age": 40.0,
                    "sex": "male",
                    "site": "arm",
                }
            )
    return pd.DataFrame(rows)


SAMPLES = make_samples()
CONFIG = SuiteConfig()
TEST = SAMPLES[SAMPLES.split == "test"]
IN_TEST = TEST[TEST.modality == "dermoscopic"]


def gold(items: pd.DataFrame) -> list[str]:
    return [format_completion("Reviewed.", format_mcq_answer(r.options, r.answer_index)) for r in items.itertuples()]


def test_ood_holdout_is_configurable():
    assert set(SAMPLES[ood_mask(SAMPLES, CONFIG)]["modality"]) == {"clinical"}
    by_source = SuiteConfig(holdout_sources=("ham10000",), holdout_modalities=())
    assert set(SAMPLES[ood_mask(SAMPLES, by_source)]["source_dataset"]) == {"ham10000"}
    items, _ = ood_suite(SAMPLES, TAX, by_source)
    assert set(items["source_dataset"]) == {"ham10000"}


def test_paper_in_domain_and_ood_are_rl_style_items_on_disjoint_test_samples():
    ind, ind_drop = paper_in_domain_suite(SAMPLES, TAX, CONFIG)
    ood, ood_drop = paper_ood_suite(SAMPLES, TAX, CONFIG)
    assert list(ind.columns) == list(SUITE_COLUMNS)
    assert set(ind["modality"]) == {"dermoscopic"} and set(ood["modality"]) == {"clinical"}
    assert set(ind["split"]) == set(ood["split"]) == {"test"}
    assert set(ind["sample_id"]) == set(IN_TEST["sample_id"])
    assert set(ood_drop["reason"]) == {"no_bucket"}  # psoriasis rows
    assert ind_drop.empty
    rl = build_mcq_items(SAMPLES[SAMPLES.modality == "dermoscopic"], TAX, splits=["test"]).items.set_index("sample_id")
    for item in ind.itertuples():
        assert item.option_nodes == rl.loc[item.sample_id, "option_nodes"]
        assert item.option_scores[item.answer_index] == max(item.option_scores) == 0.75
        assert item.suite == "in_domain_paper" and item.item_id == f"in_domain_paper/{item.sample_id}"
        assert item.construction == "paper" and item.condition == "real" and item.base_item_id == item.item_id


def test_malignancy_suite_gold_is_the_bucket():
    items, dropped = malignancy_suite(SAMPLES, TAX, CONFIG)
    assert len(items) == len(IN_TEST) and dropped.empty
    for item in items.itertuples():
        assert item.options == [t for t, _ in MALIGNANCY_OPTIONS]
        assert item.option_nodes[item.answer_index] == item.bucket
        assert "status" not in item.prompt.split("Reply as")[1]
    scored = score_predictions(items, gold(items))
    assert scored["correct"].all() and (scored["predicted_bucket"] == scored["bucket"]).all()


def test_paper_hierarchical_suite_shows_the_whole_path_and_credits_by_depth():
    items, _ = paper_hierarchical_suite(SAMPLES, TAX, CONFIG)
    assert len(items) == len(IN_TEST)
    for item in items.itertuples():
        path = option_path(TAX, item.taxonomy_node)
        assert len(item.options) == len(path) + 1
        by_node = dict(zip(item.option_nodes, item.option_scores))
        for depth, node in enumerate(path, start=1):
            assert by_node[node] == pytest.approx(depth / len(path))
        (distractor,) = set(item.option_nodes) - set(path)
        assert by_node[distractor] == 0.0 and TAX.depth(distractor) == len(path)
        assert distractor not in TAX.descendants(item.taxonomy_node)
        assert item.option_nodes[item.answer_index] == item.taxonomy_node
    ancestor = [
        format_completion("r", format_mcq_answer(r.options, r.option_nodes.index(option_path(TAX, r.taxonomy_node)[0])))
        for r in items.itertuples()
    ]
    scored = score_predictions(items, ancestor)
    assert not scored["correct"].any()
    expected = [1 / TAX.depth(n) for n in items["taxonomy_node"]]
    assert scored["credit"].tolist() == pytest.approx(expected)


def test_paper_ddx_suite_uses_only_look_alikes_and_counts_skips():
    items, dropped = paper_ddx_suite(SAMPLES, TAX, DDX, CONFIG)
    for item in items.itertuples():
        look_alikes = set(DDX.neighbours_with_expansion(item.taxonomy_node, TAX))
        assert item.option_nodes[item.answer_index] == item.taxonomy_node
        assert set(item.option_nodes) - {item.taxonomy_node} <= look_alikes
        assert len(item.options) == 4
    # lentigo_simplex has fewer than 3 look-alikes: skipped and counted, never padded.
    skipped = set(dropped.loc[dropped.reason == "too_few_ddx_neighbours", "sample_id"])
    assert skipped == set(IN_TEST.loc[IN_TEST.taxonomy_node == "lentigo_simplex", "sample_id"]) != set()
    assert len(items) + len(dropped) == len(IN_TEST)
    everything, _ = paper_ddx_suite(SAMPLES, TAX, DDX, SuiteConfig(ddx_options=None))
    melanoma = everything[everything.taxonomy_node == "melanoma"].iloc[0]
    assert len(melanoma.options) == min(26, 1 + len(set(DDX.neighbours_with_expansion("melanoma", TAX))))


def test_open_ended_items_have_no_options():
    items, _ = open_ended_suite(SAMPLES, TAX, CONFIG)
    assert len(items) == len(IN_TEST)
    assert all(len(o) == 0 for o in items["options"]) and set(items["answer_index"]) == {-1}
    assert prompt_options(items["prompt"].iloc[0]) is None


def test_build_suites_is_complete_and_deterministic():
    build = build_suites(SAMPLES, TAX, DDX, CONFIG)
    again = build_suites(SAMPLES, TAX, DDX, CONFIG)
    pd.testing.assert_frame_equal(build.items, again.items)
    assert set(build.items["suite"]) == {*HEADLINE_SUITES, *PAPER_SUITES, "malignancy", "open_ended"}
    assert build.items["item_id"].is_unique and list(build.items.columns)[: len(SUITE_COLUMNS)] == list(SUITE_COLUMNS)
    summary = build.summary()
    assert summary["dropped"]["ood/no_bucket"] == (TEST.taxonomy_node == "psoriasis").sum()
    assert summary["dropped"]["ood_paper/no_bucket"] == (TEST.taxonomy_node == "psoriasis").sum()
    without = build_suites(SAMPLES, TAX, DDX, SuiteConfig(paper_suites=False))
    assert set(without.items["suite"]) == {*HEADLINE_SUITES, "malignancy", "open_ended"}
    mcq = build.items[build.items.suite != "open_ended"]
    assert score_predictions(mcq, gold(mcq))["correct"].all()


def _write_omnimedvqa(root, items):
    folder = root / "OmniMedVQA" / "QA_information" / "Open-access"
    folder.mkdir(parents=True)
    (folder / "ISIC2018.json").write_text(json.dumps(items))
    images = root / "OmniMedVQA" / "Images" / "ISIC2018"
    images.mkdir(parents=True)
    for it in items:
        (root / "OmniMedVQA" / it["image_path"]).write_bytes(b"x")


def test_omnimedvqa_questions_become_suite_items(tmp_path):
    def q(i, a, b, c, d, answer):
        return {
            "question_id": f"isic_{i}",
            "question_type": "Disease Diagnosis",
            "dataset": "ISIC2018",
            "question": "What is the diagnosis?",
            "image_path": f"Images/ISIC2018/{i}.jpg",
            "option_A": a,
            "option_B": b,
            "option_C": c,
            "option_D": d,
            "gt_answer": answer,
        }

    _write_omnimedvqa(
        tmp_path,
        [
            q(1, "Melanoma", "Melanocytic nevi", "Basal cell carcinoma", "Dermatofibroma", "Melanocytic nevi"),
            q(
                2, "Melanoma", "Melanoma ", "Vascular lesions", "Dermatofibroma", "Vascular lesions"
            ),  # duplicate options
            q(3, "Actinic keratoses", "Melanoma", "Something unmapped", "Dermatofibroma", "Actinic keratoses"),
        ],
    )
    questions = load_questions(tmp_path)
    records = pd.DataFrame({"sample_id": questions["sample_id"], "image_sha256": ["h1", "h2", "h3"]})
    items, dropped = omnimedvqa_suite(questions, TAX, records=records)
    assert list(dropped["reason"]) == ["bad_options"]
    first = items.set_index("sample_id").loc["omnimedvqa/isic_1"]
    assert first.answer_index == 1 and first.taxonomy_node == "melanocytic_nevus" and first.bucket == "benign"
    assert first.option_nodes == ["melanoma", "melanocytic_nevus", "basal_cell_carcinoma", "dermatofibroma"]
    assert first.image_sha256 == "h1" and first.source_dataset == "omnimedvqa/isic2018"
    third = items.set_index("sample_id").loc["omnimedvqa/isic_3"]
    assert third.option_nodes[2] is None and third.bucket == "precancerous_in_situ"
    assert score_predictions(items, gold(items))["correct"].all()
    both = build_suites(SAMPLES, TAX, DDX, CONFIG, omnimedvqa=questions, omnimedvqa_records=records)
    assert (both.items["suite"] == "ood_omnimedvqa").sum() == 2


def test_contamination_is_detected_per_suite_and_excluded():
    build = build_suites(SAMPLES, TAX, DDX, CONFIG)
    train = SAMPLES[SAMPLES.split == "train"].copy()
    leaked_hash = IN_TEST.iloc[0]  # same image bytes under another id
    leaked_id = IN_TEST.iloc[1]  # same id, re-encoded
    train = pd.concat(
        [
            train,
            pd.DataFrame(
                [
                    {"sample_id": "copy/1", "image_sha256": leaked_hash.image_sha256},
                    {"sample_id": leaked_id.sample_id, "image_sha256": "other-bytes"},
                ]
            ),
        ],
        ignore_index=True,
    )
    report = check_contamination(build.items, [train, pd.DataFrame({"sample_id": ["unrelated"]})])
    summary = report.summary.set_index("suite")
    # The paper suites show each test image once; set-first suites may show an image in several items or none.
    assert summary.loc["in_domain_paper", "contaminated"] == 2
    assert summary.loc["in_domain_paper", "by_hash"] == 1 and summary.loc["in_domain_paper", "by_sample_id"] == 1
    assert summary.loc["ood", "contaminated"] == summary.loc["ood_paper", "contaminated"] == 0
    assert summary.loc["in_domain_paper", "fraction"] == pytest.approx(2 / summary.loc["in_domain_paper", "n_items"])
    flagged = set(report.flags.loc[report.flags.contaminated, "sample_id"])
    assert flagged == {leaked_hash.sample_id, leaked_id.sample_id}
    clean = report.clean(build.items)
    assert not clean["sample_id"].isin(flagged).any()
    assert len(clean) == len(build.items) - len(report.contaminated_ids)
    mcq = build.items[build.items.suite != "open_ended"]
    scored = score_predictions(mcq, gold(mcq), exclude=report.contaminated_ids)
    assert scored.attrs["excluded"] == len(report.contaminated_ids & set(mcq["item_id"]))
    assert not scored["sample_id"].isin(flagged).any()
