"""Corrections to TRL 1.16's vLLM rollouts that every backend needs (GPU and CPU alike): without them the engine
samples from a different context, weights or precision than the trainer scores.

1. One image placeholder per image (colocate). TRL sends the engine the prompt ids its processor has already
   expanded (16 `<|image_pad|>` for a 112x112 image) together with the image, and vLLM 0.31 expands the first pad
   again and keeps the other 15 as text: the rollout is sampled after a 314-token prompt while the trainer scores
   it after its own 299 tokens (TRL issue 6294, fix pending in PR 6718). Measured on the tiny VL model at lr 0: a
   sampled-token log-prob gap of mean 0.032, max 0.117 before; 2e-7, 1e-6 with this and item 2. Runs of image
   tokens are collapsed to one before the engine sees them, and the engine's own expansion must give back exactly
   the trainer's ids, else the run stops naming both counts (it catches any pixel-limit disagreement).
2. The trainer's dtype and pixel limits. TRL builds `LLM()` with neither: "auto" downcasts a float32 checkpoint to
   bfloat16 (the whole text-model gap, 8e-4 mean), and the engine reads the pixel limits saved with the base model,
   not the run's `max_pixels` (a 7B's saved processor keeps Qwen's default, up to 12.8 Mpx).
3. Only the policy's weights. With beta > 0 TRL adds a frozen "ref" copy of a continued adapter; when that adapter
   trains whole modules (`modules_to_save`, e.g. the demo's embeddings and LM head), TRL's weight stream still
   carries the "ref" copies (`embed_tokens.modules_to_save.ref.weight`) and vLLM stops the run at the first sync.
   Those leftovers are dropped: the engine holds base + the trained adapter, never the reference.
4. No stale vision features. vLLM reuses encoder outputs across requests when an image comes back (the next
   epoch); after a weight change they are stale (the paper trains the vision merger), and after a full reload
   (`vllm_cpu_sync`) the runner's cache is gone while the scheduler still counts on it ("Encoder cache miss"). The
   encoder cache is reset after each colocated sync, as vLLM's `reset_encoder_cache` documents for weight updates.

Server mode (`trl vllm-serve`) is left as TRL ships it: items 1, 2 and 4 live in the other process there.
Install after `vllm_cpu_sync.install()` (item 4 wraps whichever sync is in place).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

_PATCHED_FLAG = "_skinr1_trl_vllm_fixes"
REFERENCE_COPY = ".modules_to_save."
_engine_options: dict[str, Any] = {}


class RolloutPromptMismatch(RuntimeError):
    """vLLM expanded an image prompt differently from the trainer's processor."""


def collapse_image_runs(ids: Iterable[int], image_token_id: int) -> list[int]:
    """Token ids with every run of `image_token_id` reduced to one token (vLLM expands each to the image's size)."""
    out: list[int] = []
    for token in ids:
        if not (token == image_token_id and out and out[-1] == image_token_id):
            out.append(token)
    return out


def policy_weights(named: Iterator[tuple[str, Any]]) -> Iterator[tuple[str, Any]]:
    """The (name, tensor) pairs of TRL's stream minus leftover per-adapter copies of fully trained modules."""
    for name, tensor in named:
        if REFERENCE_COPY not in name:
            yield name, tensor


def engine_options(*, dtype: str, min_pixels: int | None, max_pixels: int | None) -> dict[str, Any]:
    """The `LLM()` keywords TRL omits: the trainer's dtype name ("float32", "bfloat16", ...) and pixel limits."""
    options: dict[str, Any] = {"dtype": dtype}
    limits = {k: int(v) for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    if limits:
        options["mm_processor_kwargs"] = limits
    return options


def install(*, dtype: str, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Patch TRL's `VLLMGeneration` (and the `LLM` it builds) with all four corrections; later calls only update
    the engine options (each training process runs one configuration)."""
    from trl.generation import vllm_generation

    _engine_options.clear()
    _engine_options.update(engine_options(dtype=dtype, min_pixels=min_pixels, max_pixels=max_pixels))
    cls = vllm_generation.VLLMGeneration
    if getattr(cls.generate, _PATCHED_FLAG, False):
        return
    build_llm, generate, iter_params, sync = vllm_generation.LLM, cls.generate, cls._iter_named_params, cls.sync_weights

    def llm_with_trainer_options(*args, **kwargs):
        return build_llm(*args, **{**kwargs, **_engine_options})

    def generate_from_trainer_prompts(self, prompts, images, *args, **kwargs):
        if self.mode != "colocate" or images is None:
            return generate(self, prompts, images, *args, **kwargs)
        image_token = self.processing_class.image_token_id
        out = generate(self, [collapse_image_runs(p, image_token) for p in prompts], images, *args, **kwargs)
        for ours, engines in zip(prompts, out[0]):
            if list(ours) != list(engines):
                raise RolloutPromptMismatch(
                    f"vLLM expanded an image prompt to {len(engines)} tokens ({list(engines).count(image_token)} "
                    f"image tokens) but the trainer scores {len(ours)} ({list(ours).count(image_token)}): the "
                    "engine's image pixel limits differ from the trainer's processor"
                )
        return out

    def _iter_named_params(self):
        # A generator over TRL's own: PEFT merges the adapter while it is consumed and unmerges at its end.
        yield from policy_weights(iter_params(self))

    def sync_weights(self) -> None:
        sync(self)
        if self.mode == "colocate":
            self.llm.llm_engine.reset_encoder_cache()

    for fn, original in (
        (generate_from_trainer_prompts, generate),
        (_iter_named_params, iter_params),
        (sync_weights, sync),
    ):
        setattr(fn, _PATCHED_FLAG, True)
        fn.__doc__ = original.__doc__
    vllm_generation.LLM = llm_with_trainer_options
    cls.generate, cls._iter_named_params, cls.sync_weights = (
        generate_from_trainer_prompts,
        _iter_named_params,
        sync_weights,
    )
