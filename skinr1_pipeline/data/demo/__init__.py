"""Embedded demo data: procedurally rendered dermatology-like images in the real on-disk formats of HAM10000
(+ ISIC 2018 Task 3 test), PAD-UFES-20 and Derm7pt, so the whole pipeline runs without downloading anything.

Entry points: `generate_demo_data` (write the three dataset folders and a manifest) and `render_lesion` (one
image plus the features actually drawn, for rationale grounding).
"""

from skinr1_pipeline.data.demo.generate import BrokenFile, DemoManifest, generate_demo_data
from skinr1_pipeline.data.demo.render import DOMAINS, LesionSpec, draw_lesion, render_lesion, sample_lesion

__all__ = [
    "DOMAINS",
    "BrokenFile",
    "DemoManifest",
    "LesionSpec",
    "draw_lesion",
    "generate_demo_data",
    "render_lesion",
    "sample_lesion",
]
