"""Taxonomy: the packaged tree's shape and conventions, and that every broken invariant is reported clearly."""

from __future__ import annotations

import copy

import pytest

from skinr1_pipeline.knowledge.taxonomy import Taxonomy, TaxonomyError, bucket_for, normalize_label


def tiny() -> dict:
    """A small valid tree; tests copy it and break one thing."""
    return {
        "version": 1,
        "root": {
            "id": "root",
            "kind": "category",
            "behaviour": "mixed",
            "lineage": "any",
            "children": [
                {
                    "id": "neo",
                    "kind": "category",
                    "behaviour": "mixed",
                    "lineage": "neoplastic",
                    "children": [
                        {
                            "id": "benign",
                            "kind": "group",
                            "behaviour": "benign",
                            "children": [
                                {"id": "nevus", "lineage": "melanocytic", "synonyms": ["naevus"], "icd10": ["D22"]},
                            ],
                        },
                        {
                            "id": "malignant",
                            "kind": "group",
                            "behaviour": "malignant",
                            "children": [
                                {
                                    "id": "melanoma",
                                    "lineage": "melanocytic",
                                    "children": [{"id": "mis", "name": "melanoma in situ", "behaviour": "in_situ"}],
                                }
                            ],
                        },
                    ],
                },
                {"id": "rash", "kind": "category", "behaviour": "non_neoplastic", "lineage": "inflammatory"},
            ],
        },
    }


def broken(path: list, **changes) -> dict:
    data = copy.deepcopy(tiny())
    node = data["root"]
    for step in path:
        node = node["children"][step]
    node.update(changes)
    return data


# ---- packaged tree -------------------------------------------------------------------------------------
def test_packaged_taxonomy_loads_with_enough_diagnoses(tax: Taxonomy) -> None:
    summary = tax.summary()
    assert summary["diagnosis_nodes"] >= 150
    assert summary["nodes"] == summary["edges"] + 1  # a tree
    assert tax.root == "skin_condition"


def test_level_one_categories(tax: Taxonomy) -> None:
    level1 = {n.id for n in tax if n.level == 1}
    assert level1 == {
        "neoplastic",
        "inflammatory",
        "infectious",
        "pigmentary",
        "hair_and_nail",
        "physical_environmental",
        "metabolic_deposition",
        "genodermatoses",
        "other_indeterminate",
    }
    assert all(tax[n].kind == "category" for n in level1)


def test_neoplastic_levels_are_behaviour_then_lineage(tax: Taxonomy) -> None:
    behaviour_level = set(tax["neoplastic"].children)
    assert behaviour_level == {
        "benign_neoplasm",
        "premalignant_in_situ",
        "indeterminate_neoplasm",
        "malignant_neoplasm",
    }
    assert tax.path("nodular_bcc") == [
        "skin_condition",
        "neoplastic",
        "malignant_neoplasm",
        "keratinocyte_carcinoma",
        "basal_cell_carcinoma",
        "nodular_bcc",
    ]
    assert tax["dermatofibroma"].lineage == "fibrohistiocytic"  # inherited from its family node


def test_every_category_is_populated(tax: Taxonomy) -> None:
    for category in tax[tax.root].children:
        diagnoses = [d for d in tax.descendants(category) if tax[d].kind == "diagnosis"]
        assert diagnoses, category


@pytest.mark.parametrize(
    ("node", "bucket"),
    [
        ("melanoma_in_situ", "malignant"),  # Skin-R1 convention: melanoma in situ sits under melanoma
        ("lentigo_maligna", "malignant"),
        ("scc_in_situ", "precancerous_in_situ"),  # Bowen disease
        ("actinic_keratosis", "precancerous_in_situ"),
        ("ak_or_scc_in_situ", "precancerous_in_situ"),  # mixed group, derived from its children
        ("premalignant_in_situ", "precancerous_in_situ"),
        ("keratoacanthoma", "malignant"),
        ("benign_keratosis_like", "benign"),
        ("solar_lentigo", "benign"),
        ("neoplastic", None),
        ("psoriasis", None),
        ("other_indeterminate", None),
        ("atypical_melanocytic_proliferation", None),
    ],
)
def test_bucket_derivation(tax: Taxonomy, node: str, bucket: str | None) -> None:
    assert tax[node].bucket == bucket


def test_placement_conventions(tax: Taxonomy) -> None:
    assert tax.is_ancestor("lentigo", "solar_lentigo", strict=True)
    assert not tax.is_ancestor("melanocytic_nevus", "solar_lentigo")
    assert tax.is_ancestor("squamous_cell_carcinoma", "keratoacanthoma", strict=True)
    assert tax.is_ancestor("benign_neoplasm", "benign_keratosis_like", strict=True)
    assert set(tax["ak_or_scc_in_situ"].children) >= {"actinic_keratosis", "scc_in_situ"}
    assert tax["melanoma_in_situ"].behaviour == "in_situ" and tax["melanoma_in_situ"].lineage == "melanocytic"
    assert tax["ak_or_scc_in_situ"].behaviour == "mixed"


@pytest.mark.parametrize(
    ("text", "node"),
    [
        ("Bowen's disease", "scc_in_situ"),
        ("SCC in situ", "scc_in_situ"),
        ("naevus", "melanocytic_nevus"),
        ("AK", "actinic_keratosis"),
        ("Seborrhoeic_Keratosis", "seborrheic_keratosis"),
        ("malignant-melanoma", "melanoma"),
        ("café-au-lait macule", "cafe_au_lait_macule"),
        ("monkeypox", "mpox"),
        ("basal_cell_carcinoma", "basal_cell_carcinoma"),  # ids resolve too
    ],
)
def test_resolve_synonyms(tax: Taxonomy, text: str, node: str) -> None:
    assert tax.resolve(text) == node


def test_icd_codes_present_where_confident(tax: Taxonomy) -> None:
    assert "L57.0" in tax["actinic_keratosis"].icd10
    assert "C43" in tax["melanoma"].icd10


def test_normalize_label() -> None:
    assert normalize_label("  Bowen’s_Disease ") == "bowens disease"
    assert normalize_label("Sézary-Syndrome") == "sezary syndrome"
    assert normalize_label("melanoma (in situ)") == "melanoma in situ"


def test_bucket_for() -> None:
    assert bucket_for("in_situ", "melanocytic") == "malignant"
    assert bucket_for("in_situ", "keratinocytic") == "precancerous_in_situ"
    assert bucket_for("premalignant", "keratinocytic") == "precancerous_in_situ"
    assert bucket_for("non_neoplastic", "inflammatory") is None
    assert bucket_for("indeterminate", "melanocytic") is None


# ---- invariants on small trees -------------------------------------------------------------------------
def test_tiny_tree_is_valid() -> None:
    t = Taxonomy.from_dict(tiny())
    assert t["mis"].bucket == "malignant"
    assert t["neo"].bucket is None
    assert t.resolve("Naevus") == "nevus"


def expect_error(data: dict, *fragments: str) -> str:
    with pytest.raises(TaxonomyError) as info:
        Taxonomy.from_dict(data, source="fixture.yaml")
    message = str(info.value)
    assert "fixture.yaml" in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_duplicate_id() -> None:
    data = tiny()
    data["root"]["children"][1]["id"] = "nevus"
    expect_error(data, "duplicate id 'nevus'")


def test_duplicate_synonym_across_nodes() -> None:
    expect_error(broken([1], synonyms=["Naevus"]), "'naevus' of rash", "already names nevus")


def test_bad_icd_code() -> None:
    expect_error(broken([0, 0, 0], icd10=["D22", "d22.x", "L57-0"]), "'d22.x'", "'L57-0'", "ICD-10")


def test_inconsistent_bucket() -> None:
    data = broken([0, 0, 0], children=[{"id": "bad_child", "behaviour": "malignant"}])
    expect_error(data, "bad_child has bucket 'malignant' under benign")


def test_unknown_key() -> None:
    expect_error(broken([0, 0, 0], colour="brown"), "unknown keys ['colour']")


def test_bad_behaviour() -> None:
    expect_error(broken([0, 0, 0], behaviour="harmless"), "behaviour 'harmless'")


def test_bad_kind_and_bad_id() -> None:
    data = broken([0, 0, 0], kind="leaf")
    data["root"]["children"][1]["id"] = "Rash-Node"
    expect_error(data, "kind 'leaf'", "snake_case")


def test_id_reading_as_another_nodes_name() -> None:
    expect_error(broken([1], synonyms=["melanoma"]), "melanoma")


def test_every_problem_is_listed_at_once() -> None:
    data = broken([0, 0, 0], behaviour="harmless", colour="x")
    message = expect_error(data, "behaviour 'harmless'", "unknown keys")
    assert "2 problem(s)" in message


def test_not_a_mapping() -> None:
    with pytest.raises(TaxonomyError, match="'root'"):
        Taxonomy.from_dict({"version": 1})


def test_load_from_path(tmp_path) -> None:
    import yaml

    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump(tiny()), "utf-8")
    assert Taxonomy.load(path).source == str(path)
    path.write_text("root: [unclosed", "utf-8")
    with pytest.raises(TaxonomyError, match="not valid YAML"):
        Taxonomy.load(path)
