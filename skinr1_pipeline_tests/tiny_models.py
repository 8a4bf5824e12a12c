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
    model = get_peft_model(
        load_model(base, device="cpu"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    model.save_pretrained(adapter_dir)
    return base, adapter_dir


#: (options, option scores, bucket) cycled through by `write_mcq_items`: gold at depth 2 of 3, at depth 1, nested.
OPTION_SETS = [
    (
        ["melanoma", "melanocytic nevus", "seborrheic keratosis", "basal cell carcinoma"],
        [0.75, 0.0, 0.0, 0.0],
        "malignant",
    ),
    (
        ["dermatofibroma", "benign keratosis", "actinic keratosis", "melanocytic lesion"],
        [0.0, 0.0, 0.75, 0.0],
        "precancerous_in_situ",
    ),
    (
        ["vascular lesion", "melanocytic lesion", "melanocytic nevus", "squamous cell carcinoma"],
        [0.0, 0.375, 0.75, 0.0],
        "benign",
    ),
]


def write_mcq_items(folder: Path, n: int = 6) -> Path:
    """`n` train items (rl_data's columns, random images of different sizes) plus one valid item, as Parquet."""
    import numpy as np
    import pandas as pd
    from PIL import Image

    from skinr1_pipeline.modeling import prompt_format as pf

    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        options, scores, bucket = OPTION_SETS[i % len(OPTION_SETS)]
        image = folder / "images" / f"img{i}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, size=(60 + 8 * i, 80, 3), dtype=np.uint8)).save(image)
        rows.append(
            {
                "item_id": f"item-{i}",
                "sample_id": f"sample-{i}",
                "image_path": str(image),
                "split": "train",
                "prompt": pf.build_mcq_prompt(pf.DEFAULT_MCQ_QUESTION, options),
                "options": options,
                "option_scores": scores,
                "answer_index": int(np.argmax(scores)),
                "bucket": bucket,
            }
        )
    rows.append({**rows[0], "item_id": "item-valid", "sample_id": "sample-valid", "split": "valid"})
    path = folder / "items.parquet"
    pd.DataFrame(rows).to_parquet(path)
    return path


def tiny_text_model(out_dir: Path) -> Path:
    """A tiny Qwen2 causal LM with tied input/output embeddings and the demo tokenizer (a text-only model vLLM and
    TRL both load): the tied head is the case a weight sync can miss."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from skinr1_pipeline.modeling.tiny_model import build_processor, default_corpus

    tokenizer = build_processor(default_corpus(), vocab_size=512, max_pixels=56 * 56 * 4).tokenizer
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
