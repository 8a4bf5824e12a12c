"""Domain knowledge the pipeline is grounded in: the disease taxonomy, the DDx graph and per-dataset label maps.

Everything here is plain data + networkx/pandas (no orchestration imports), so loaders, reward code and tests
can use it directly.
"""

from skinr1_pipeline.knowledge.coverage import coverage_summary, knowledge_coverage, uncovered_classes
from skinr1_pipeline.knowledge.ddx import DDxError, DDxGraph, DDxGroup
from skinr1_pipeline.knowledge.label_maps import LabelMap, LabelMapError, UnmappedLabelsError, load_label_maps
from skinr1_pipeline.knowledge.taxonomy import (
    BEHAVIOURS,
    BUCKETS,
    NODE_KINDS,
    Taxonomy,
    TaxonomyError,
    TaxonomyNode,
    bucket_for,
    normalize_label,
)

__all__ = [
    "BEHAVIOURS",
    "BUCKETS",
    "NODE_KINDS",
    "DDxError",
    "DDxGraph",
    "DDxGroup",
    "LabelMap",
    "LabelMapError",
    "Taxonomy",
    "TaxonomyError",
    "TaxonomyNode",
    "UnmappedLabelsError",
    "bucket_for",
    "coverage_summary",
    "knowledge_coverage",
    "load_label_maps",
    "normalize_label",
    "uncovered_classes",
]
