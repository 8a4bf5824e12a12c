"""Vision-language warm-up for the tiny demo model.

Why: a real Qwen2.5-VL arrives pretrained to look at images; the demo model starts from random weights, and SFT on
reasoning text alone teaches it the answer format but not to use the image tokens. A short captioning stage
(image -> diagnosis name, no system prompt) on in-distribution *train* images, merged into the base weights, gives
the demo base model what pretraining gives the real one, without touching any held-out image.

Each train image is shown in several flipped/rotated views (`views`, default 4): a few hundred train images are few
for a vision tower trained from scratch (the README, "How the demo model is prepared", has the measurement). When the
tower was first trained as a classifier (`training.vision_classifier`), the warm-up leaves it frozen and only teaches
the language model the names of what it sees.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from PIL import Image

from skinr1_pipeline.data.image_open import model_image
from skinr1_pipeline.knowledge.taxonomy import Taxonomy

CAPTION_PROMPT = "Name the diagnosis."
#: Label-preserving views of a skin image (a lesion has no canonical orientation): identity first.
VIEWS = (
    None,
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
    Image.Transpose.TRANSVERSE,
)


def caption_frame(samples: pd.DataFrame, taxonomy: Taxonomy) -> pd.DataFrame:
    """One (image, fixed prompt, diagnosis name) row per train sample; other splits are never used."""
    train = samples[samples["split"] == "train"]
    if train.empty:
        raise ValueError("vision-language warm-up needs train samples; none were given")
    return pd.DataFrame(
        {
            "sample_id": train["sample_id"].to_numpy(),
            "image_path": train["image_path"].to_numpy(),
            "prompt": CAPTION_PROMPT,
            "completion": [taxonomy[n].name for n in train["taxonomy_node"]],
        }
    )


def augmented(captions: pd.DataFrame, out_dir: Path, views: int, max_pixels: int) -> pd.DataFrame:
    """`views` flipped/rotated copies (identity included) of every caption image, written as PNG under `out_dir`.

    Why: ~200 train images are few for a vision tower trained from scratch; the dihedral views multiply them at no
    labelling cost and keep the warm-up from memorising each image.
    """
    if not 1 <= views <= len(VIEWS):
        raise ValueError(f"views must be in 1..{len(VIEWS)}, got {views}")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, row in enumerate(captions.itertuples(index=False)):
        image = model_image(row.image_path, max_pixels=max_pixels)
        for v, view in enumerate(VIEWS[:views]):
            path = out_dir / f"{i}_{v}.png"
            (image.transpose(view) if view is not None else image).save(path)
            rows.append({**row._asdict(), "image_path": str(path)})
    return pd.DataFrame(rows, columns=captions.columns)


def warm_up(
    model_dir: str | Path,
    samples: pd.DataFrame,
    taxonomy: Taxonomy,
    *,
    steps: int,
    seed: int = 0,
    max_pixels: int = 112 * 112,
    views: int = 4,
    train_vision: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Caption-train the embeddings and head (LoRA on the LM), and the whole vision tower unless `train_vision` is
    False (a tower pre-trained as a classifier, `training.vision_classifier`, stays as it is), on `views` dihedral views
    of each train image, merge, and overwrite the weights in `model_dir`. Returns the training losses and how many
    images (before augmentation) it saw."""
    from skinr1_pipeline.modeling.model_factory import load_adapter_model
    from skinr1_pipeline.training.sft import demo_sft_config, run_sft

    model_dir = Path(model_dir)
    captions = caption_frame(samples, taxonomy)
    with tempfile.TemporaryDirectory(prefix="skinr1-warmup-") as tmp:
        data = Path(tmp) / "captions.parquet"
        augmented(captions, Path(tmp) / "views", views, max_pixels).to_parquet(data, index=False)
        cfg = demo_sft_config(
            model_dir,
            data,
            Path(tmp) / "run",
            max_steps=steps,
            seed=seed,
            system_prompt=None,
            freeze_vision=True,
            modules_to_save=["embed_tokens", "lm_head", *(["visual"] if train_vision else [])],
            max_pixels=max_pixels,
            save_steps=max(steps, 1),
            logging_steps=max(1, steps // 10),
            **overrides,
        )
        result = run_sft(cfg)
        merged = load_adapter_model(model_dir, result.adapter_dir, trainable=False, device="cpu").merge_and_unload()
        staged = Path(tmp) / "merged"
        merged.save_pretrained(staged, safe_serialization=True)
        replace_weights(model_dir, staged)
    return {
        "images": len(captions),
        "views": views,
        "vision_trained": train_vision,
        "steps": result.steps,
        "train_loss": result.train_loss,
        "seconds": result.seconds,
    }


def check_steps(steps: int, batch_size: int) -> None:
    """The check every demo pre-training loop (drill, format warm-up, vision classifier) runs before loading a model."""
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")


def save_in_place(model, model_dir: str | Path) -> None:
    """Save `model`'s weights over those in `model_dir`, through a staging folder (`replace_weights`)."""
    with tempfile.TemporaryDirectory(prefix="skinr1-weights-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        replace_weights(Path(model_dir), Path(tmp))


def replace_weights(model_dir: Path, staged: Path) -> None:
    """Swap the safetensors (and configs) in `model_dir` for those saved in `staged`; tokenizer files stay."""
    for weights in model_dir.glob("*.safetensors"):
        weights.unlink()
    for item in staged.iterdir():
        shutil.copy2(item, model_dir / item.name)
