"""Fixtures shared by the whole test suite.

The packaged knowledge (taxonomy, DDx graph, knowledge base) is read-only once loaded, so it is loaded once per
session and shared: `tax`, `ddx` and `kb` one by one, or `knowledge` for all three together. Tests that need a
different taxonomy (a toy tree, a broken file) build their own with `Taxonomy.from_dict` / `Taxonomy.load(path)`.

The knowledge modules are imported inside the fixtures, not here, so collecting a test file that needs none of
them does not import them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import pytest

if TYPE_CHECKING:
    from skinr1_pipeline.knowledge.ddx import DDxGraph
    from skinr1_pipeline.knowledge.knowledge_base import KnowledgeBase
    from skinr1_pipeline.knowledge.taxonomy import Taxonomy


class Knowledge(NamedTuple):
    """The packaged taxonomy, DDx graph and knowledge base; unpacks as `tax, ddx, kb = knowledge`."""

    tax: Taxonomy
    ddx: DDxGraph
    kb: KnowledgeBase


@pytest.fixture(scope="session")
def tax() -> Taxonomy:
    """The packaged taxonomy (`Taxonomy.load()`)."""
    from skinr1_pipeline.knowledge.taxonomy import Taxonomy

    return Taxonomy.load()


@pytest.fixture(scope="session")
def ddx(tax: Taxonomy) -> DDxGraph:
    """The packaged DDx graph over the packaged taxonomy (`DDxGraph.load(tax)`)."""
    from skinr1_pipeline.knowledge.ddx import DDxGraph

    return DDxGraph.load(tax)


@pytest.fixture(scope="session")
def kb(tax: Taxonomy, ddx: DDxGraph) -> KnowledgeBase:
    """The packaged knowledge base (`load_knowledge_base(tax, ddx)`)."""
    from skinr1_pipeline.knowledge.knowledge_base import load_knowledge_base

    return load_knowledge_base(tax, ddx)


@pytest.fixture(scope="session")
def knowledge(tax: Taxonomy, ddx: DDxGraph, kb: KnowledgeBase) -> Knowledge:
    """`tax`, `ddx` and `kb` together, for tests and helpers that pass all three around."""
    return Knowledge(tax, ddx, kb)
