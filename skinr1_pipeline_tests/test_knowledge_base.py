"""Knowledge base: coverage, vocabulary, DDx discriminators, and clear errors for bad entries."""

from __future__ import annotations

import copy

import pytest
import yaml

from skinr1_pipeline.knowledge.knowledge_base import (
    DEFAULT_PATH,
    VOCABULARY,
    KnowledgeBaseError,
    fast_normalize,
    find_feature_mentions,
    knowledge_base_from_dict,
    mention_finder,
)
from skinr1_pipeline.knowledge.label_maps import load_label_maps
from skinr1_pipeline.knowledge.lesion_features import DEMO_DIAGNOSES, load_lesion_features


@pytest.fixture(scope="module")
def parsed_file() -> dict:
    return yaml.safe_load(DEFAULT_PATH.read_text())


@pytest.fixture()
def raw(parsed_file) -> dict:
    """A fresh copy of the packaged file for each test to break (parsed once: the YAML takes ~0.4 s to parse)."""
    return copy.deepcopy(parsed_file)


def _error(raw, tax, ddx) -> str:
    with pytest.raises(KnowledgeBaseError) as exc:
        knowledge_base_from_dict(raw, tax, ddx, profiles=load_lesion_features())
    return str(exc.value)


def test_coverage(kb, tax):
    assert len(kb) >= 60
    assert set(DEMO_DIAGNOSES) <= set(kb.entries)
    assert all(node in tax for node in kb.entries)
    # A category gets an entry only because some dataset labels samples with the category itself ("unknown",
    # DermNet's mixed tumour folders); otherwise rules belong to diagnoses and groups.
    targets = {n for m in load_label_maps(tax).values() for n in (*m.labels.values(), *m.fine_labels.values())}
    categories = {node for node in kb.entries if tax[node].kind == "category"}
    assert categories <= targets, sorted(categories - targets)


def test_every_ddx_neighbour_has_a_discriminator(kb, ddx):
    for node, entry in kb.entries.items():
        assert set(entry.ddx) == set(ddx.neighbours(node))
        for other in ddx.neighbours(node):
            assert kb.discriminator(node, other), (node, other)


def test_demo_entries_use_demo_vocabulary_and_match_profiles(kb):
    profiles = load_lesion_features()
    for dx in DEMO_DIAGNOSES:
        entry = kb.entries[dx]
        for kind, values in entry.features.items():
            assert set(values) <= set(VOCABULARY[kind])
        assert set(profiles[dx].colours) <= set(entry.features["colours"])
        drawn = {s for s, _ in profiles[dx].structures}
        assert drawn <= set(entry.features["structures"])
        assert not {("structures", s) for s in drawn} & entry.absent_set
    # own sentences for demo neighbours name vocabulary features the images can show
    assert find_feature_mentions(fast_normalize(kb.discriminator("melanoma", "seborrheic_keratosis")))


def test_subtypes_inherit_the_nearest_entry(kb):
    assert kb.entry_for("superficial_spreading_melanoma").node == "melanoma"
    assert kb.entry_for("melanoma").node == "melanoma"
    assert kb.entry_for("alopecia_areata").node == "hair_disorders"  # group entry of DermNet's hair folder
    assert kb.entry_for("inflammatory") is None  # categories stay bare unless a dataset labels with them
    assert kb.entry_for("not_a_node") is None
    assert kb.citation("melanoma").startswith("kb:melanoma (Textbook chapter")


def test_discriminator_prefers_own_sentence_then_edge(kb, ddx):
    own = kb.entries["melanoma"].ddx["seborrheic_keratosis"]
    assert kb.discriminator("melanoma", "seborrheic_keratosis") == own
    assert kb.entries["blue_nevus"].ddx["melanoma"] is None  # `edge`
    assert kb.discriminator("blue_nevus", "melanoma") == ddx.edge("blue_nevus", "melanoma")["distinguish"][0]
    assert kb.shared("melanoma", "seborrheic_keratosis")


def test_rule_texts_name_no_other_diagnosis(kb, tax):
    """Templates embed morphology sentences; naming a third diagnosis there would break DDx verification."""
    finder = mention_finder(tax)
    for entry in kb.entries.values():
        norm = fast_normalize(entry.morphology)
        for _, a, b in find_feature_mentions(norm):
            norm = norm[:a] + "#" * (b - a) + norm[b:]
        related = set(tax.path(entry.node)) | tax.descendants(entry.node)
        named = {m for m in finder.find(norm) if tax[m].kind == "diagnosis"}  # groups read as descriptions
        assert named <= related, entry.node


def test_unknown_node(raw, tax, ddx):
    raw["entries"]["not_a_disease"] = copy.deepcopy(raw["entries"]["lipoma"])
    msg = _error(raw, tax, ddx)
    assert "entry 'not_a_disease', field '<id>': expected a taxonomy node id" in msg


def test_missing_field(raw, tax, ddx):
    del raw["entries"]["lipoma"]["dermoscopy"]
    assert "entry 'lipoma', field 'dermoscopy': expected this key to be present" in _error(raw, tax, ddx)


def test_ddx_neighbour_not_in_graph(raw, tax, ddx):
    raw["entries"]["lipoma"]["ddx"]["melanoma"] = "Melanoma is pigmented."
    msg = _error(raw, tax, ddx)
    assert "entry 'lipoma', field 'ddx.melanoma': expected a DDx neighbour of 'lipoma'" in msg


def test_ddx_neighbour_missing(raw, tax, ddx):
    del raw["entries"]["melanoma"]["ddx"]["blue_nevus"]
    msg = _error(raw, tax, ddx)
    assert "entry 'melanoma', field 'ddx': expected a discriminating feature for every DDx neighbour" in msg
    assert "blue_nevus" in msg


def test_wrong_types_and_vocabulary(raw, tax, ddx):
    raw["entries"]["lipoma"]["sites"] = "trunk"
    raw["entries"]["lipoma"]["features"]["structures"] = ["sparkles"]
    raw["entries"]["cherry_angioma"]["absent"]["vessels"] = ["none"]
    raw["entries"]["keloid"]["morphology"] = 42
    msg = _error(raw, tax, ddx)
    assert "entry 'lipoma', field 'sites': expected a non-empty list of strings" in msg
    assert "entry 'lipoma', field 'features.structures': expected a list of distinct values" in msg
    assert "entry 'cherry_angioma', field 'absent.vessels'" in msg
    assert "entry 'keloid', field 'morphology': expected a non-empty string, got 42" in msg


def test_absent_must_not_contradict_demo_images(raw, tax, ddx):
    raw["entries"]["seborrheic_keratosis"]["absent"]["structures"].append("milia_like_cysts")
    msg = _error(raw, tax, ddx)
    assert "entry 'seborrheic_keratosis', field 'absent'" in msg


def test_absent_feature_overlap_and_level_rules(raw, tax, ddx):
    raw["entries"]["lipoma"]["absent"]["scale"] = ["none"]
    raw["levels"]["neoplastic"]["rationale"] = "A lesion with a blue-white veil is a growth."
    del raw["levels"]["benign_melanocytic"]
    msg = _error(raw, tax, ddx)
    assert "level 'neoplastic', field 'rationale': expected no lesion-feature words" in msg
    assert "entry 'solar_lentigo', field 'levels': expected a level note for its ancestor 'benign_melanocytic'" in msg


def test_feature_mentions_longest_form_wins():
    found = [f for f, _, _ in find_feature_mentions(fast_normalize("A blue-white veil, red lacunae and lacunae."))]
    assert found == [("structures", "blue_white_veil"), ("structures", "red_lacunae"), ("vessels", "lacunae")]
