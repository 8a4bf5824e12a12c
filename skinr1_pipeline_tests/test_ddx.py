"""DDx graph: the packaged groups, edge merging, the parent/child expansion and validation messages."""

from __future__ import annotations

import copy

import pytest
import yaml

from skinr1_pipeline.knowledge.ddx import DDxError, DDxGraph
from skinr1_pipeline.knowledge.taxonomy import Taxonomy


def small_tax() -> Taxonomy:
    return Taxonomy.from_dict(
        {
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
                                "id": "mal",
                                "kind": "group",
                                "behaviour": "malignant",
                                "children": [
                                    {
                                        "id": "bcc",
                                        "lineage": "keratinocytic",
                                        "children": [{"id": "nodular_bcc"}, {"id": "superficial_bcc"}],
                                    },
                                    {"id": "scc", "lineage": "keratinocytic"},
                                ],
                            },
                            {
                                "id": "ben",
                                "kind": "group",
                                "behaviour": "benign",
                                "children": [
                                    {"id": "nevus", "lineage": "melanocytic"},
                                    {"id": "sebaceous_hyperplasia", "lineage": "adnexal"},
                                ],
                            },
                        ],
                    },
                    {
                        "id": "infl",
                        "kind": "category",
                        "behaviour": "non_neoplastic",
                        "lineage": "inflammatory",
                        "children": [
                            {"id": "eczema"},
                            {"id": "psoriasis"},
                        ],
                    },
                ],
            }
        }
    )


def n(node: str, shared: str = "Both are pink papules.", distinguish: str = "One is pearly.") -> dict:
    return {"node": node, "shared": shared, "distinguish": distinguish}


def small_doc() -> dict:
    return {
        "version": 1,
        "groups": [
            {
                "id": "g_bcc",
                "title": "BCC look-alikes",
                "index": "bcc",
                "do_not_miss": ["bcc"],
                "neighbours": [n("scc"), n("nevus"), n("sebaceous_hyperplasia")],
            },
            {
                "id": "g_sbcc",
                "title": "Red patch",
                "index": "superficial_bcc",
                "do_not_miss": [],
                "neighbours": [n("eczema"), n("psoriasis")],
            },
            {
                "id": "g_scc",
                "title": "SCC look-alikes",
                "index": "scc",
                "neighbours": [n("bcc", "Both are keratinocyte cancers.", "SCC is scaly.")],
            },
        ],
    }


# ---- packaged graph ------------------------------------------------------------------------------------
def test_packaged_graph_has_enough_groups(ddx: DDxGraph) -> None:
    summary = ddx.summary()
    assert summary["groups"] >= 40
    assert summary["edges"] >= 150
    assert summary["nodes"] == ddx.graph.number_of_nodes()
    assert {"degree_min", "degree_max", "degree_mean", "degree_median"} <= set(summary)


def test_every_packaged_node_is_a_taxonomy_node(ddx: DDxGraph, tax: Taxonomy) -> None:
    assert all(node in tax for node in ddx.graph.nodes)


def test_every_edge_says_why(ddx: DDxGraph) -> None:
    for a, b, data in ddx.graph.edges(data=True):
        assert a != b
        assert data["groups"] and data["shared"] and data["distinguish"], (a, b)
        assert all(s.strip() for s in data["shared"] + data["distinguish"])


def test_standard_differentials_present(ddx: DDxGraph) -> None:
    assert "dysplastic_nevus" in ddx.neighbours("melanoma")
    assert "seborrheic_keratosis" in ddx.neighbours("melanoma")
    assert "scc_in_situ" in ddx.neighbours("superficial_bcc")
    assert "secondary_syphilis" in ddx.neighbours("pityriasis_rosea")
    assert ddx.is_do_not_miss("melanoma")
    assert not ddx.is_do_not_miss("melanocytic_nevus")


def test_edges_from_several_groups_are_merged(ddx: DDxGraph) -> None:
    edge = ddx.edge("mycosis_fungoides", "psoriasis")
    assert len(edge["groups"]) == 2
    assert len(edge["shared"]) == 2 and len(edge["distinguish"]) == 2
    assert ddx.edge("psoriasis", "mycosis_fungoides")["groups"] == edge["groups"]  # undirected


def test_records_one_row_per_edge(ddx: DDxGraph) -> None:
    rows = ddx.to_records()
    assert len(rows) == ddx.graph.number_of_edges()
    assert {"a", "b", "groups", "shared", "distinguish"} <= set(rows[0])
    assert all(r["a"] < r["b"] for r in rows)


# ---- small graph ---------------------------------------------------------------------------------------
def test_small_graph_neighbours_and_merge() -> None:
    g = DDxGraph.from_dict(small_doc(), small_tax())
    assert g.neighbours("bcc") == ["nevus", "scc", "sebaceous_hyperplasia"]
    assert g.neighbours("scc") == ["bcc"]
    assert g.neighbours("unlisted") == []
    edge = g.edge("bcc", "scc")
    assert edge["groups"] == ["g_bcc", "g_scc"]
    assert edge["shared"] == ["Both are pink papules.", "Both are keratinocyte cancers."]
    assert g.graph.nodes["bcc"]["do_not_miss"] is True
    assert g.graph.nodes["scc"]["do_not_miss"] is False
    with pytest.raises(KeyError):
        g.edge("nevus", "eczema")


def test_expansion_over_parents_and_children() -> None:
    tax = small_tax()
    g = DDxGraph.from_dict(small_doc(), tax)
    # a child inherits its parent's look-alikes (and its own); the family itself is excluded
    assert g.neighbours_with_expansion("nodular_bcc", tax) == ["nevus", "scc", "sebaceous_hyperplasia"]
    assert g.neighbours_with_expansion("superficial_bcc", tax) == [
        "eczema",
        "nevus",
        "psoriasis",
        "scc",
        "sebaceous_hyperplasia",
    ]
    # a parent inherits its children's look-alikes
    assert g.neighbours_with_expansion("bcc", tax) == ["eczema", "nevus", "psoriasis", "scc", "sebaceous_hyperplasia"]
    # category-level ancestors are not expanded: 'mal' is a group, 'neo' and 'root' are categories
    assert g.neighbours_with_expansion("eczema", tax) == ["superficial_bcc"]


def test_expansion_on_packaged_graph(ddx: DDxGraph, tax: Taxonomy) -> None:
    expanded = ddx.neighbours_with_expansion("nodular_bcc", tax)
    assert set(ddx.neighbours("basal_cell_carcinoma")) <= set(expanded)
    assert "basal_cell_carcinoma" not in expanded and "nodular_bcc" not in expanded


# ---- validation ----------------------------------------------------------------------------------------
def test_all_problems_listed_with_group_and_field() -> None:
    doc = copy.deepcopy(small_doc())
    doc["groups"][0]["neighbours"].append(n("no_such_node"))
    doc["groups"][0]["neighbours"].append(n("bcc"))  # self-loop
    doc["groups"][1]["neighbours"][0]["shared"] = "   "
    doc["groups"][1]["colour"] = "red"
    doc["groups"][2]["neighbours"] = []
    doc["groups"].append({"id": "g_bcc", "title": "dup", "index": "bcc", "neighbours": [n("scc")]})
    with pytest.raises(DDxError) as info:
        DDxGraph.from_dict(doc, small_tax(), source="ddx-fixture.yaml")
    message = str(info.value)
    assert "ddx-fixture.yaml" in message
    assert "group g_bcc: neighbours[3].node: 'no_such_node' is not a taxonomy node id" in message
    assert "group g_bcc: neighbours[4].node: 'bcc' is the group's own index (self-loop)" in message
    assert "group g_sbcc: neighbours[0].shared: must be a non-empty sentence" in message
    assert "group g_sbcc: unknown keys ['colour']" in message
    assert "group g_scc: 'neighbours' needs at least one neighbour" in message
    assert "group g_bcc: duplicate group id" in message


def test_bad_index_and_do_not_miss() -> None:
    doc = copy.deepcopy(small_doc())
    doc["groups"][0]["index"] = "nope"
    doc["groups"][1]["do_not_miss"] = ["nevus"]
    with pytest.raises(DDxError) as info:
        DDxGraph.from_dict(doc, small_tax())
    assert "group g_bcc: index 'nope' is not a taxonomy node id" in str(info.value)
    assert "group g_sbcc: do_not_miss 'nevus' is neither the index nor a neighbour" in str(info.value)


def test_missing_distinguish_and_unknown_neighbour_key() -> None:
    doc = copy.deepcopy(small_doc())
    del doc["groups"][0]["neighbours"][0]["distinguish"]
    doc["groups"][0]["neighbours"][1]["why"] = "x"
    with pytest.raises(DDxError) as info:
        DDxGraph.from_dict(doc, small_tax())
    assert "neighbours[0].distinguish" in str(info.value)
    assert "neighbours[1]: unknown keys ['why']" in str(info.value)


def test_top_level_shape() -> None:
    with pytest.raises(DDxError, match="'groups' list"):
        DDxGraph.from_dict({"edges": []}, small_tax())


def test_load_from_path(tmp_path) -> None:
    path = tmp_path / "ddx.yaml"
    path.write_text(yaml.safe_dump(small_doc()), "utf-8")
    g = DDxGraph.load(small_tax(), path)
    assert g.summary()["groups"] == 3 and g.source == str(path)


def test_expansion_stops_below_category_nodes() -> None:
    tax = small_tax()
    doc = small_doc()
    doc["groups"].append({"id": "g_group", "title": "behaviour group", "index": "mal", "neighbours": [n("eczema")]})
    doc["groups"].append({"id": "g_category", "title": "category", "index": "neo", "neighbours": [n("psoriasis")]})
    g = DDxGraph.from_dict(doc, tax)
    expanded = g.neighbours_with_expansion("nodular_bcc", tax)
    assert "eczema" in expanded  # via the group-level ancestor 'mal'
    assert "psoriasis" not in expanded  # 'neo' is a category: not expanded
