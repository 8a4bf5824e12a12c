"""Knowledge coverage: every class a supported loader can produce reaches a knowledge-base entry.

A label whose whole taxonomy path has no entry is skipped by rationale synthesis (`no_knowledge`) and silently
missing from SFT, so these tests pin coverage of the real label maps and check `knowledge_coverage` on a tiny tree.
"""

from __future__ import annotations

import pandas as pd
import pytest

from skinr1_pipeline.data.loaders import SUPPORTED_DATASETS
from skinr1_pipeline.knowledge.coverage import (
    COVERAGE_COLUMNS,
    SUMMARY_COLUMNS,
    coverage_summary,
    knowledge_coverage,
    nearest_entry,
    producible_classes,
    uncovered_classes,
)
from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.knowledge_base import knowledge_base_from_dict
from skinr1_pipeline.knowledge.label_maps import LabelMap, load_label_maps
from skinr1_pipeline.knowledge.taxonomy import Taxonomy

#: Classes of the packaged label maps that are knowingly reasoned from an ancestor's entry (subtypes whose parent
#: describes them). Any other class must have an entry of its own, so deleting an entry for a dataset class fails
#: here even when an ancestor entry would still catch it.
ANCESTOR_COVERED = {
    "acral_nodular_melanoma": "nodular_melanoma",
    "actinic_cheilitis": "actinic_keratosis",
    "combined_nevus": "melanocytic_nevus",
    "comedonal_acne": "acne_vulgaris",
    "compound_nevus": "melanocytic_nevus",
    "genital_herpes": "herpes_simplex",
    "herpes_labialis": "herpes_simplex",
    "infantile_hemangioma": "hemangioma",
    "junctional_nevus": "melanocytic_nevus",
    "lentigo_maligna_melanoma": "melanoma",
    "melanoma_in_situ": "melanoma",
    "miescher_nevus": "melanocytic_nevus",
    "morpheaform_bcc": "basal_cell_carcinoma",
    "palmoplantar_psoriasis": "psoriasis",
    "recurrent_nevus": "melanocytic_nevus",
    "superficial_spreading_melanoma": "melanoma",
}


# ---------------------------------------------------------------------------------------------- packaged knowledge
@pytest.fixture(scope="module")
def maps(tax):
    return load_label_maps(tax)


@pytest.fixture(scope="module")
def coverage(tax, kb, maps) -> pd.DataFrame:
    return knowledge_coverage(tax, kb, maps, datasets=SUPPORTED_DATASETS)


def test_every_supported_dataset_has_a_label_map(maps):
    assert set(SUPPORTED_DATASETS) <= set(maps)


def test_every_class_a_loader_can_produce_has_an_entry(coverage):
    assert set(coverage["dataset"]) == set(SUPPORTED_DATASETS)
    assert uncovered_classes(coverage) == {}
    summary = coverage_summary(coverage)
    assert (summary["coverage"] == 1.0).all(), summary.drop(columns="uncovered_nodes").to_string()


def test_classes_reasoned_from_an_ancestor_are_the_known_subtypes(coverage):
    inherited = coverage[coverage["covered_by"] == "ancestor"]
    assert dict(zip(inherited["node"], inherited["entry"])) == ANCESTOR_COVERED
    own = coverage[coverage["covered_by"] == "self"]
    assert (own["entry"] == own["node"]).all()


def test_removing_an_entry_shows_up_as_a_gap(tax, kb, maps):
    without = set(kb.entries) - {"eczema", "hair_disorders"}
    gaps = uncovered_classes(knowledge_coverage(tax, without, maps, datasets=SUPPORTED_DATASETS))
    assert gaps == {"dermnet": ["eczema", "hair_disorders"], "fitzpatrick17k": ["eczema"], "omnimedvqa": ["eczema"]}
    # an own entry that an ancestor would still catch is reported as ancestor coverage, not silently accepted
    moved = knowledge_coverage(tax, set(kb.entries) - {"scabies"}, maps, datasets=["fitzpatrick17k"])
    row = moved.set_index("node").loc["scabies"]
    assert (row["covered_by"], row["entry"]) == ("ancestor", "parasitic_arthropod")


def test_every_diagnosis_a_refining_map_can_reach_has_an_entry(tax, kb, maps):
    """DermNet refines folders by file-stem names; any diagnosis it can land on must still reach an entry."""
    refined = knowledge_coverage(tax, kb, maps, datasets=SUPPORTED_DATASETS, include_refinement=True)
    extra = refined[refined["source"] == "refinement"]
    assert set(extra["dataset"]) == {d for d in SUPPORTED_DATASETS if maps[d].refine}
    missing = extra[extra["covered_by"].isna() & (extra["kind"] == "diagnosis")]
    assert missing.empty, sorted(missing["node"])


def test_producible_classes_match_what_the_maps_resolve(tax, maps):
    for dataset in SUPPORTED_DATASETS:
        lmap = maps[dataset]
        rows = producible_classes(maps, tax, datasets=[dataset], include_refinement=True)
        reachable = set(rows["node"])
        for raw in lmap.labels:
            node, _ = lmap.resolve(f"{raw}|" if lmap.refine else raw, tax)
            assert node in reachable, (dataset, raw, node)
        if lmap.refine:
            for folder in lmap.labels:
                for fine in lmap.fine_labels:
                    node, _ = lmap.resolve(f"{folder}|{fine}", tax)
                    assert node in reachable, (dataset, folder, fine, node)


def test_nearest_entry_agrees_with_the_knowledge_base(tax, kb):
    for node in tax:
        entry = kb.entry_for(node.id)
        assert nearest_entry(tax, kb.entries, node.id) == (entry.node if entry else None), node.id
    assert nearest_entry(tax, kb.entries, "not_a_node") is None


# ---------------------------------------------------------------------------------------------- tiny hand-built world
def _entry(**over) -> dict:
    base = {
        "source": "test chapter",
        "morphology": "A test lesion.",
        "dermoscopy": "Test pattern.",
        "sites": ["arm"],
        "demographics": "Adults.",
        "behaviour": "Benign.",
        "features": {
            "colours": ["pink"],
            "elevation": ["raised"],
            "vessels": ["none"],
            "scale": ["none"],
            "surface": ["smooth"],
            "structures": [],
        },
        "absent": {},
        "ddx": {},
    }
    return {**base, **over}


@pytest.fixture(scope="module")
def tiny():
    """root > rash (group, entry) > {itchy_rash (no entry), dry_rash (own entry)}; root > bump (no entry, no kids)."""
    tax = Taxonomy.from_dict(
        {
            "root": {
                "id": "root",
                "kind": "category",
                "behaviour": "non_neoplastic",
                "lineage": "any",
                "children": [
                    {"id": "rash", "kind": "group", "children": [{"id": "itchy_rash"}, {"id": "dry_rash"}]},
                    {"id": "bump"},
                ],
            }
        }
    )
    ddx = DDxGraph.from_dict({"groups": []}, tax)
    kb = knowledge_base_from_dict(
        {
            "entries": {"rash": _entry(), "dry_rash": _entry()},
            "levels": {"root": {"rationale": "It is a skin condition.", "cues": []}},
        },
        tax,
        ddx,
        profiles={},
    )
    maps = {
        "alpha": LabelMap("alpha", "label", {"itchy": "itchy_rash", "dry": "dry_rash", "lump": "bump"}),
        "beta": LabelMap("beta", "folder | stem", {"rashes": "rash"}, refine=True, fine_labels={"eczema": "dry_rash"}),
    }
    return tax, kb, maps


def test_tiny_coverage_self_ancestor_and_missing(tiny):
    tax, kb, maps = tiny
    cov = knowledge_coverage(tax, kb, maps)
    assert list(cov.columns) == COVERAGE_COLUMNS
    rows = {(r.dataset, r.node): r for r in cov.itertuples(index=False)}
    assert set(rows) == {
        ("alpha", "bump"),
        ("alpha", "dry_rash"),
        ("alpha", "itchy_rash"),
        ("beta", "rash"),
        ("beta", "dry_rash"),
    }
    assert (rows["alpha", "dry_rash"].entry, rows["alpha", "dry_rash"].covered_by) == ("dry_rash", "self")
    assert (rows["alpha", "itchy_rash"].entry, rows["alpha", "itchy_rash"].covered_by) == ("rash", "ancestor")
    assert rows["alpha", "bump"].entry is None and rows["alpha", "bump"].covered_by is None
    assert rows["alpha", "itchy_rash"].raw_labels == ("itchy",)
    assert (rows["beta", "rash"].source, rows["beta", "dry_rash"].source) == ("label", "fine_label")
    assert rows["beta", "dry_rash"].raw_labels == ("eczema",)
    assert rows["alpha", "itchy_rash"].kind == "diagnosis" and rows["beta", "rash"].kind == "group"
    for r in cov.itertuples(index=False):  # same answer as the knowledge base synthesis uses
        entry = kb.entry_for(r.node)
        assert r.entry == (entry.node if entry else None)


def test_tiny_summary_and_gaps(tiny):
    tax, kb, maps = tiny
    cov = knowledge_coverage(tax, kb, maps)
    summary = coverage_summary(cov).set_index("dataset")
    assert list(coverage_summary(cov).columns) == SUMMARY_COLUMNS
    alpha = summary.loc["alpha"]
    assert (alpha["classes"], alpha["covered"], alpha["own_entry"], alpha["ancestor_entry"], alpha["uncovered"]) == (
        3,
        2,
        1,
        1,
        1,
    )
    assert alpha["coverage"] == pytest.approx(2 / 3) and alpha["uncovered_nodes"] == ["bump"]
    assert summary.loc["beta", "coverage"] == 1.0
    assert uncovered_classes(cov) == {"alpha": ["bump"]}
    # a bare collection of node ids works the same as the knowledge base
    assert knowledge_coverage(tax, {"rash", "dry_rash"}, maps).equals(cov)
    assert uncovered_classes(knowledge_coverage(tax, set(), maps)) == {
        "alpha": ["bump", "dry_rash", "itchy_rash"],
        "beta": ["dry_rash", "rash"],
    }


def test_tiny_refinement_rows_and_errors(tiny):
    tax, kb, maps = tiny
    cov = knowledge_coverage(tax, kb, maps, datasets=["beta"], include_refinement=True)
    assert dict(zip(cov["node"], cov["source"])) == {
        "rash": "label",
        "dry_rash": "fine_label",
        "itchy_rash": "refinement",
    }
    assert cov.set_index("node").loc["itchy_rash", "raw_labels"] == ()
    assert knowledge_coverage(tax, kb, maps, datasets=["alpha"], include_refinement=True)["source"].eq("label").all()
    with pytest.raises(KeyError, match="no label map"):
        knowledge_coverage(tax, kb, maps, datasets=["gamma"])
    with pytest.raises(TypeError):
        knowledge_coverage(tax, "rash", maps)
