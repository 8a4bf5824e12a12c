"""Batched HF `generate` for image + prompt pairs (evaluation, base-vs-SFT checks, CPU GRPO sanity checks).

Why left padding: decoder-only generation appends after the last position, so every prompt in a batch must end at
the same column. Greedy by default so evaluation numbers are reproducible.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from PIL import Image

from skinr1_pipeline.modeling.chat import build_messages, render_prompt
from skinr1_pipeline.modeling.prompt_format import SYSTEM_PROMPT


def _eos_ids(model, processor) -> list[int]:
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, processor.tokenizer.convert_tokens_to_ids("<|im_end|>"), processor.tokenizer.eos_token_id):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)
    return ids


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


@torch.inference_mode()
def generate(
    model,
    processor,
    images: Sequence[Image.Image | None],
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 8,
    seed: int = 0,
    system: str | None = SYSTEM_PROMPT,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """One decoded completion (special tokens stripped) per (image, prompt); `images[i]` may be None (text only).

    `progress(done, total)` is called after each batch.
    """
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images for {len(prompts)} prompts")
    if batch_size < 1 or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be >= 1")
    tokenizer = processor.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = _model_device(model)
    was_training = model.training
    model.eval()
    gen_kwargs = dict(
        max_new_tokens=max_new_tokens, do_sample=do_sample, pad_token_id=pad_id, eos_token_id=_eos_ids(model, processor)
    )
    if do_sample:
        gen_kwargs.update(temperature=temperature, top_p=top_p)
    else:  # silence "temperature is ignored" warnings from a sampling generation_config
        gen_kwargs.update(temperature=None, top_p=None, top_k=None)
    # A private RNG stream: sampling is reproducible per `seed` and the caller's global RNG state is left alone.
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        try:
            outputs = _generate_batches(
                model, processor, images, prompts, batch_size, system, gen_kwargs, device, progress
            )
        finally:
            if was_training:
                model.train()
    return outputs


def _generate_batches(model, processor, images, prompts, batch_size, system, gen_kwargs, device, progress) -> list[str]:
    tokenizer = processor.tokenizer
    outputs: list[str] = []
    for start in range(0, len(prompts), batch_size):
        batch_images = list(images[start : start + batch_size])
        texts = [
            render_prompt(processor, build_messages(p, system=system, with_image=img is not None))
            for p, img in zip(prompts[start : start + batch_size], batch_images)
        ]
        present = [img.convert("RGB") for img in batch_images if img is not None]
        inputs = processor(text=texts, images=present or None, padding=True, padding_side="left", return_tensors="pt")
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
        out = model.generate(**inputs, **gen_kwargs)
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        outputs += tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        if progress is not None:
            progress(len(outputs), len(prompts))
    return outputs
