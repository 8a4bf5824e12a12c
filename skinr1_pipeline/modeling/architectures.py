"""Qwen2.5-VL-7B-shaped models with random weights, and their model FLOPs, for speed and memory measurements.

Why: throughput, peak memory and MFU depend on the architecture, not on the weight values, and the real
Qwen2.5-VL-7B-Instruct cannot be downloaded here. The directory `build_random_model` writes holds the demo tokenizer
and processor (the chat template and special tokens the pipeline relies on) and a config with the 7B's shapes, so
`training.sft` and `training.grpo` load and train it unchanged. Shapes are those of the published 7B config:
8.29 billion parameters with the 152,064-row vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from skinr1_pipeline.modeling.tiny_model import MANIFEST_NAME, SPECIAL_TOKENS, build_processor, default_corpus
from skinr1_pipeline.storage.atomic import write_json

QWEN2_5_VL_7B_TEXT: dict[str, Any] = dict(
    vocab_size=152064,
    hidden_size=3584,
    intermediate_size=18944,
    num_hidden_layers=28,
    num_attention_heads=28,
    num_key_value_heads=4,
    max_position_embeddings=128000,
    max_window_layers=28,
    rms_norm_eps=1e-6,
    hidden_act="silu",
    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
)
QWEN2_5_VL_7B_VISION: dict[str, Any] = dict(
    depth=32,
    hidden_size=1280,
    intermediate_size=3420,
    num_heads=16,
    out_hidden_size=3584,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    hidden_act="silu",
)
ARCHITECTURES = ("qwen2.5-vl-7b",)


def qwen2_5_vl_7b_config(tokenizer):
    """The 7B config around `tokenizer`'s special-token ids (the vocabulary stays 152,064 rows: the unused rows cost
    the same embedding memory and LM-head compute as in the real model)."""
    from transformers import Qwen2_5_VLConfig

    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    if len(tokenizer) > QWEN2_5_VL_7B_TEXT["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than the 7B vocabulary")
    text = dict(
        QWEN2_5_VL_7B_TEXT,
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(QWEN2_5_VL_7B_VISION),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


@dataclass(frozen=True)
class ModelFlops:
    """Matmul FLOPs of one forward pass, per text token and per image patch (2 x multiply-accumulates).

    `text_per_token` covers every linear layer of the language model and the LM head (the embedding lookup is no
    matmul); `attention_per_token_per_position` is the score and value product, to be multiplied by the number of
    earlier positions each token attends to (causal). `vision_per_patch` covers the vision tower and merger.
    """

    text_per_token: float
    attention_per_token_per_position: float
    vision_per_patch: float

    def forward(self, tokens: float, attended_positions: float = 0.0, patches: float = 0.0) -> float:
        return (
            tokens * self.text_per_token
            + attended_positions * self.attention_per_token_per_position
            + patches * self.vision_per_patch
        )


def _linear_params(module: torch.nn.Module) -> int:
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear))


def model_flops(model: torch.nn.Module) -> ModelFlops:
    """FLOPs of a Qwen2.5-VL model's forward pass, read off its linear layers (LoRA layers counted too)."""
    inner = getattr(model, "get_base_model", lambda: model)()
    config = inner.config
    visual = inner.model.visual
    text_linear = _linear_params(inner) - _linear_params(visual)
    text = config.text_config
    heads, head_dim = text.num_attention_heads, text.hidden_size // text.num_attention_heads
    merge = config.vision_config.spatial_merge_size**2
    return ModelFlops(
        text_per_token=2.0 * text_linear,
        attention_per_token_per_position=2.0 * 2 * text.num_hidden_layers * heads * head_dim,
        vision_per_patch=2.0 * (_linear_params(visual) - _linear_params(visual.merger))
        + 2.0 * _linear_params(visual.merger) / merge,
    )


def build_random_model(
    out_dir: str | Path,
    corpus: Iterable[str] = (),
    *,
    architecture: str = "qwen2.5-vl-7b",
    dtype: torch.dtype = torch.bfloat16,
    device: str | None = None,
    seed: int = 0,
    vocab_size: int = 2048,
    max_pixels: int = 448 * 448,
) -> Path:
    """Write a random-weight model of `architecture` (safetensors, `dtype`) with the demo processor to `out_dir`.

    The weights are initialised on `device` (default: CUDA when visible), which takes seconds on a GPU instead of
    minutes on CPU cores.
    """
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {list(ARCHITECTURES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = [t for t in corpus if isinstance(t, str) and t.strip()] + default_corpus()
    processor = build_processor(texts, vocab_size=vocab_size, max_pixels=max_pixels)
    config = qwen2_5_vl_7b_config(processor.tokenizer)
    config.dtype = dtype
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    previous = torch.get_default_dtype()
    torch.manual_seed(seed)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = Qwen2_5_VLForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[config.text_config.eos_token_id, config.text_config.bos_token_id],
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    manifest = {
        "kind": "random_weights",
        "architecture": architecture,
        "dtype": str(dtype).removeprefix("torch."),
        "parameters": sum(p.numel() for p in model.parameters()),
        "seed": seed,
        "why": "speed and memory measurements: the shapes of the real model, random weights",
    }
    write_json(out / MANIFEST_NAME, manifest, sort_keys=True)
    return out
