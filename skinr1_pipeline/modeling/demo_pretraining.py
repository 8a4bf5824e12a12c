"""Vision-language warm-up for the tiny demo model.

Why: a real Qwen2.5-VL arrives pretrained to look at images; the demo model starts from random weights, and SFT on
reasoning text alone teaches it the answer format but not to use the image tokens. A short captioning stage
(image -> diagnosis name, no system prompt) on in-distribution *train* images, merged into the base weights, gives
the demo base model what pretraining gives the real one, without touching any held-out image.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from skinr1_pipeline.knowledge.taxonomy import Taxonomy

CAPTION_PROMPT = "Name the diagnosis."


def caption_frame(samples: pd.DataFrame, taxonomy: Taxonomy) -> pd.DataFrame:
    """One (image, fixed prompt, diagnosis name) row per train sample; other splits are never used."""
    train = samples[samples["split"] == "train"]
    if train.empty:
        raise ValueError("vision-language warm-up needs train samples; none were given")
    return pd.DataFrame({
        "sample_id": train["sample_id"].to_numpy(), "image_path": train["image_path"].to_numpy(),
        "prompt": CAPTION_PROMPT, "completion": [taxonomy[n].name for n in train["taxonomy_node"]],
    })


def warm_up(model_dir: str | Path, samples: pd.DataFrame, taxonomy: Taxonomy, *, steps: int, seed: int = 0,
            max_pixels: int = 112 * 112, **overrides: Any) -> dict[str, Any]:
    """Caption-train the whole vision tower, embeddings and head (LoRA on the LM), merge, and overwrite the
    weights in `model_dir`. Returns the training losses and how many images it saw."""
    from skinr1_pipeline.modeling.model_factory import load_adapter_model
    from skinr1_pipeline.training.sft import demo_sft_config, run_sft

    model_dir = Path(model_dir)
    captions = caption_frame(samples, taxonomy)
    with tempfile.TemporaryDirectory(prefix="skinr1-warmup-") as tmp:
        data = Path(tmp) / "captions.parquet"
        captions.to_parquet(data, index=False)
        cfg = demo_sft_config(model_dir, data, Path(tmp) / "run", max_steps=steps, seed=seed, system_prompt=None,
                              freeze_vision=True, modules_to_save=["embed_tokens", "lm_head", "visual"],
                              max_pixels=max_pixels, save_steps=max(steps, 1), logging_steps=max(1, steps // 10),
                              **overrides)
        result = run_sft(cfg)
        merged = load_adapter_model(model_dir, result.adapter_dir, trainable=False, device="cpu").merge_and_unload()
        staged = Path(tmp) / "merged"
        merged.save_pretrained(staged, safe_serialization=True)
        for weights in model_dir.glob("*.safetensors"):
            weights.unlink()
        for item in staged.iterdir():
            shutil.copy2(item, model_dir / item.name)
    return {"images": len(captions), "steps": result.steps, "train_loss": result.train_loss,
            "seconds": result.seconds}
