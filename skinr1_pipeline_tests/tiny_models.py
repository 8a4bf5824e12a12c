"""A tiny random Qwen2.5-VL with a LoRA adapter, for tests that need a real model and adapter on disk."""

from __future__ import annotations

from pathlib import Path

TINY = dict(vocab_size=512, text_hidden=64, text_layers=1, vision_depth=1, vision_hidden=32, max_pixels=56 * 56 * 4)


def tiny_base_and_adapter(base_dir: Path, adapter_dir: Path) -> tuple[Path, Path]:
    """Build the base model at `base_dir` and save an untrained LoRA (q_proj/v_proj) to `adapter_dir`."""
    from peft import LoraConfig, get_peft_model

    from skinr1_pipeline.modeling.model_factory import load_model
    from skinr1_pipeline.modeling.tiny_model import build_tiny_model, default_corpus

    base = build_tiny_model(base_dir, default_corpus(), seed=0, **TINY)
    model = get_peft_model(load_model(base, device="cpu"),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    model.save_pretrained(adapter_dir)
    return base, adapter_dir
