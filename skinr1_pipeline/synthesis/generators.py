"""The generator interface of rationale synthesis, and the model-free template generator.

Why one interface: the paper's teacher is an OpenAI model; we will add vLLM and OpenAI-compatible generators later.
All of them take the same batch of `GenerationRequest`s (chat messages + sampling params) and return one text per
request, so the pipeline, verifier and outputs never change with the backend. The template generator reads the
structured context attached to each request instead of the messages, which makes it deterministic, offline and fast
(a smoke-test teacher and a floor to compare LLM teachers against).
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from skinr1_pipeline.synthesis.trajectories import STYLES, TYPES, GenerationRequest


@runtime_checkable
class Generator(Protocol):
    """Backend contract: one completion text per request, same order. A failed request returns ""; a generator
    that knows why exposes `failed_requests` (see `pipeline.synthesize`), so transport failures are counted apart
    from verifier rejections."""

    name: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]: ...


def request_seed(request: GenerationRequest, base_seed: int = 0) -> int:
    """Stable per-request seed: independent of batch composition and order, so outputs are reproducible."""
    seed = request.sampling.seed if request.sampling.seed is not None else base_seed
    return zlib.crc32(f"{seed}:{request.request_id}".encode()) & 0xFFFFFFFF


class TemplateGenerator:
    """Writes each trajectory from `request.context` with the type's template; no model, no network."""

    name = "template"

    def __init__(self, seed: int = 0, style: str | None = None) -> None:
        """`style` ("full" | "compact") overrides the style each request's context carries; None uses the context's."""
        if style is not None and style not in STYLES:
            raise ValueError(f"style must be one of {STYLES} or None, got {style!r}")
        self.seed, self.style = seed, style

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        out = []
        for req in requests:
            rng = random.Random(request_seed(req, self.seed))
            style = self.style or req.context.style
            out.append(TYPES[req.trajectory_type].renderer(style)(req.context, rng))
        return out


class CallableGenerator:
    """Wraps a function `texts = fn(requests)`: test doubles and quick adapters to other backends."""

    def __init__(self, fn, name: str = "callable") -> None:
        self.fn, self.name = fn, name

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        texts = list(self.fn(list(requests)))
        if len(texts) != len(requests):
            raise ValueError(f"generator {self.name!r} returned {len(texts)} texts for {len(requests)} requests")
        return [t if isinstance(t, str) else "" for t in texts]
