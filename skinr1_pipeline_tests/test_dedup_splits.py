"""Cross-dataset dedup and leakage-safe splits on small hand-built sample tables."""

from __future__ import annotations

import pandas as pd
import pytest

from skinr1_pipeline.data.dedup import deduplicate
from skinr1_pipeline.data.schema import SAMPLE_COLUMNS
from skinr1_pipeline.data.splits import SplitPolicy, assign_splits, group_ids, leakage_report
from skinr1_pipeline.knowledge.taxonomy import Taxonomy

TREE = {
    "version": 1,
    "root": {
        "id": "skin_condition", "kind": "category", "behaviour": "mixed", "lineage": "all",
        "children": [
            {"id": "neoplastic", "kind": "category", "children": [
                {"id": "melanoma", "behaviour": "malignant", "lineage": "melanocytic", "children": [
                    {"id": "nodular_melanoma"},
                ]},
                {"id": "melanocytic_nevus", "behaviour": "benign", "lineage": "melanocytic"},
            ]},
        ],
    },
}


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return Taxonomy.from_dict(TREE)


def make_samples(rows: list[dict]) -> pd.DataFrame:
    defaults = {c: None for c in SAMPLE_COLUMNS}
    out = []
    for i, row in enumerate(rows):
        record = {**defaults, "sample_id": f"s{i:03d}", "source_dataset": "ham10000", "taxonomy_node": "melanoma",
                  "taxonomy_depth": 2, "image_sha256": f"h{i:03d}", **row}
        out.append(record)
    return pd.DataFrame(out)


def test_dedup_keeps_most_specific_label_and_reports_every_drop(taxonomy):
    samples = make_samples([
        {"sample_id": "isic2019/a", "source_dataset": "isic2019", "image_sha256": "same", "taxonomy_node": "melanoma", "taxonomy_depth": 2},
        {"sample_id": "ham10000/a", "source_dataset": "ham10000", "image_sha256": "same", "taxonomy_node": "nodular_melanoma", "taxonomy_depth": 3},
        {"sample_id": "ham10000/b", "image_sha256": "other"},
    ])
    result = deduplicate(samples, taxonomy)
    assert sorted(result.samples["sample_id"]) == ["ham10000/a", "ham10000/b"]
    assert result.duplicates.to_dict("records") == [{
        "image_sha256": "same", "kept_sample_id": "ham10000/a", "dropped_sample_id": "isic2019/a",
        "kept_node": "nodular_melanoma", "dropped_node": "melanoma", "reason": "exact_duplicate",
    }]


def test_dedup_flags_conflicting_labels_instead_of_merging_silently(taxonomy):
    samples = make_samples([
        {"sample_id": "a/1", "source_dataset": "bcn20000", "image_sha256": "x", "taxonomy_node": "melanoma", "taxonomy_depth": 2},
        {"sample_id": "b/1", "source_dataset": "isic2019", "image_sha256": "x", "taxonomy_node": "melanocytic_nevus", "taxonomy_depth": 2},
    ])
    result = deduplicate(samples, taxonomy, dataset_priority=["isic2019", "bcn20000"])
    assert result.samples["sample_id"].tolist() == ["b/1"]  # priority breaks the depth tie
    assert result.counts() == {"label_conflict": 1}


def test_lesions_and_patients_never_straddle_splits():
    rows = []
    for lesion in range(40):
        for image in range(3):
            rows.append({"lesion_id": f"L{lesion}", "patient_id": f"P{lesion // 2}",
                         "taxonomy_node": "melanoma" if lesion % 2 else "melanocytic_nevus"})
    samples = make_samples(rows)
    split = assign_splits(samples, SplitPolicy(seed=1))
    assert leakage_report(split) == {"image_sha256": [], "lesion_id": [], "patient_id": []}
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    # Stratified: both classes reach every split.
    assert (split.groupby(["taxonomy_node", "split"]).size().unstack().fillna(0) > 0).all().all()
    assert set(split["split_rule"]) == {"seeded"}


def test_split_is_deterministic_and_seed_dependent():
    samples = make_samples([{"lesion_id": f"L{i}"} for i in range(60)])
    a = assign_splits(samples, SplitPolicy(seed=7))["split"].tolist()
    b = assign_splits(samples.sample(frac=1, random_state=3).sort_values("sample_id"), SplitPolicy(seed=7))["split"].tolist()
    c = assign_splits(samples, SplitPolicy(seed=8))["split"].tolist()
    assert a == b
    assert a != c
    counts = pd.Series(a).value_counts()
    assert counts["train"] == 36 and counts["valid"] == 12 and counts["test"] == 12


def test_official_splits_are_kept_and_valid_is_carved_from_train_only():
    rows = [{"lesion_id": f"L{i}", "official_split": "train"} for i in range(40)]
    rows += [{"lesion_id": f"T{i}", "official_split": "test"} for i in range(10)]
    split = assign_splits(make_samples(rows), SplitPolicy(valid_from_train=0.25))
    test_rows = split[split["lesion_id"].str.startswith("T")]
    assert set(test_rows["split"]) == {"test"} and set(test_rows["split_rule"]) == {"official"}
    train_rows = split[split["lesion_id"].str.startswith("L")]
    assert train_rows["split"].value_counts().to_dict() == {"train": 30, "valid": 10}
    assert set(train_rows["split_rule"]) == {"carved_valid"}


def test_official_split_conflict_inside_a_lesion_goes_to_the_held_out_side():
    samples = make_samples([
        {"lesion_id": "L1", "official_split": "train"},
        {"lesion_id": "L1", "official_split": "test"},
    ])
    split = assign_splits(samples)
    assert split["split"].tolist() == ["test", "test"]
    assert set(split["split_rule"]) == {"official_conflict"}


def test_isic_family_shares_lesion_ids_but_other_datasets_do_not():
    samples = make_samples([
        {"source_dataset": "ham10000", "lesion_id": "HAM_1"},
        {"source_dataset": "isic2019", "lesion_id": "HAM_1"},
        {"source_dataset": "pad_ufes_20", "lesion_id": "HAM_1"},
    ])
    groups = group_ids(samples).tolist()
    assert groups[0] == groups[1] != groups[2]


def test_leakage_report_finds_planted_leaks():
    samples = make_samples([
        {"lesion_id": "L1", "split": "train"},
        {"lesion_id": "L1", "split": "test"},
        {"image_sha256": "dup", "split": "train"},
        {"image_sha256": "dup", "split": "valid"},
    ])
    report = leakage_report(samples)
    assert report["lesion_id"] == ["isic:L1"]  # HAM lesion ids live in the shared ISIC namespace
    assert report["image_sha256"] == ["dup"]


@pytest.mark.parametrize("ratios", [(0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (0.5, 0.5)])
def test_bad_ratios_are_rejected_with_the_values(ratios):
    with pytest.raises(ValueError, match="ratios"):
        SplitPolicy(ratios=ratios)
