"""Offline batched trajectory generation with vLLM: a local teacher model as a `Generator` backend.

Why vLLM here: a teacher writes tens of thousands of trajectories; continuous batching and paged KV cache make that
several times faster than HF `generate` on the same model. Each request keeps its own sampling params and a stable
per-request seed (`generators.request_seed`), so outputs do not depend on batch composition. A request that vLLM
rejects (prompt longer than the context, unreadable image) becomes "" and is counted, per the Generator contract, so
one bad item never sinks a batch of thousands.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from skinr1_pipeline.data.image_open import open_rgb
from skinr1_pipeline.modeling.vllm_engine import EngineOptions, VllmEngine
from skinr1_pipeline.synthesis.generators import request_seed
from skinr1_pipeline.synthesis.trajectories import GenerationRequest


def _image_part(part: Any) -> bool:
    return isinstance(part, dict) and (
        part.get("type") in ("image", "image_url") or "image" in part or "image_url" in part
    )


def _open_image(value: Any) -> Image.Image:
    """A PIL image as given, or a path opened within the data layer's limits (`open_rgb`): an image over them fails
    its request only (counted as prepare:ImageLimitError), before any decode."""
    if isinstance(value, Image.Image):
        return value
    return open_rgb(Path(str(value)))


def split_images(request: GenerationRequest, *, use_images: bool = True) -> tuple[list[dict[str, Any]], list[Any]]:
    """Messages with image parts reduced to placeholders, and the images they stand for (paths or PIL), in order.

    An image part without a source takes `request.image_path`; `use_images=False` drops image parts (text-only
    teacher).
    """
    messages, images = [], []
    for message in request.messages:
        content = message.get("content")
        if not isinstance(content, list):
            messages.append(dict(message))
            continue
        parts = []
        for part in content:
            if not _image_part(part):
                parts.append(part)
                continue
            if not use_images:
                continue
            source = (
                part.get("image") if isinstance(part.get("image"), (str, Path, Image.Image)) else request.image_path
            )
            if source is None:
                raise ValueError(
                    f"request {request.request_id}: an image part has no image and the request has no image_path"
                )
            images.append(source)
            parts.append({"type": "image"})
        messages.append({**message, "content": parts})
    return messages, images


def _rejections() -> tuple[type[Exception], ...]:
    """Errors vLLM raises for an invalid *request* (prompt too long, bad multimodal input) before running it.

    Anything else (an engine crash) propagates: turning it into "" would silently empty a whole synthesis run.
    """
    from vllm.exceptions import VLLMClientError

    return (ValueError, VLLMClientError)


class VllmGenerator:
    """`Generator` over a local model directory (optionally + LoRA adapter), text-only or vision-language."""

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        batch_size: int = 256,
        adapter_dir: str | Path | None = None,
        lora_mode: str = "auto",
        options: EngineOptions = EngineOptions(),
        max_tokens: int | None = None,
        use_images: bool = True,
        engine: VllmEngine | None = None,
        name: str = "vllm",
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        if engine is None and model_dir is None:
            raise ValueError("give model_dir (to build an engine) or an existing engine")
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model_dir, self.adapter_dir, self.lora_mode, self.options = model_dir, adapter_dir, lora_mode, options
        self.batch_size, self.max_tokens, self.use_images = batch_size, max_tokens, use_images
        self.name, self.progress = name, progress
        self._engine, self._owns_engine = engine, engine is None
        self.failures: Counter[str] = Counter()

    @property
    def engine(self) -> VllmEngine:
        """Built on first use, so a generator can be configured (e.g. in a Dagster resource) before it is run."""
        if self._engine is None:
            self._engine = VllmEngine.load(
                self.model_dir, adapter_dir=self.adapter_dir, lora_mode=self.lora_mode, options=self.options
            )
        return self._engine

    def _params(self, request: GenerationRequest):
        s = request.sampling
        max_tokens = min(s.max_tokens, self.max_tokens) if self.max_tokens else s.max_tokens
        return self.engine.sampling(
            max_tokens=max_tokens, temperature=s.temperature, top_p=s.top_p, seed=request_seed(request)
        )

    def _prompt(self, request: GenerationRequest) -> dict[str, Any]:
        messages, sources = split_images(request, use_images=self.use_images)
        return self.engine.prompt(messages, [_open_image(s) for s in sources])

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """One text per request, in order; "" for any request that could not be prepared or generated."""
        texts: list[str] = []
        for start in range(0, len(requests), self.batch_size):
            texts += self._batch(list(requests[start : start + self.batch_size]))
            if self.progress is not None:
                self.progress(len(texts), len(requests))
        return texts

    def _batch(self, batch: list[GenerationRequest]) -> list[str]:
        out = [""] * len(batch)
        ready: list[tuple[int, dict[str, Any], Any]] = []
        for i, req in enumerate(batch):
            try:
                ready.append((i, self._prompt(req), self._params(req)))
            except Exception as exc:  # noqa: BLE001 - a bad image/message fails this request only
                self.failures[f"prepare:{type(exc).__name__}"] += 1
        try:
            results = self.engine.generate([p for _, p, _ in ready], [s for _, _, s in ready])
        except _rejections():  # one rejected prompt fails the whole call (vLLM aborts it cleanly); go one by one
            results = [self._one(p, s) for _, p, s in ready]
        for (i, _, _), result in zip(ready, results):
            if result is not None and result.outputs:
                out[i] = result.outputs[0].text
        return out

    def _one(self, prompt: dict[str, Any], params: Any):
        try:
            return self.engine.generate([prompt], [params])[0]
        except _rejections() as exc:
            self.failures[f"rejected:{type(exc).__name__}"] += 1
            return None

    def close(self) -> None:
        """Shut down an engine this generator built; an engine passed in belongs to the caller."""
        if self._engine is not None and self._owns_engine:
            self._engine.close()
            self._engine = None
