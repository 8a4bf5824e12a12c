"""Classifier pre-training of the demo model's vision tower.

Why: a real Qwen2.5-VL arrives with a vision tower that already tells lesions apart; the demo's starts from random
weights. Trained only through the captioning loss of the warm-up, its image tokens told the diagnoses apart so little
that SFT's impressions were as accurate with another item's image as with the right one (the README, "How the demo
model is prepared"). Trained first as a plain classifier (the mean of the merged image tokens, one linear layer, cross
entropy over the train labels, dihedral views), the same tower separates the demo's diagnoses on the *valid* split
within a few hundred steps, in seconds; the warm-up then only has to teach the language model the names of what the
frozen tower already sees. The linear head is thrown away: nothing but the tower's weights reaches the model.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from skinr1_pipeline.data.image_open import model_image
from skinr1_pipeline.training.demo_pretraining import VIEWS, check_steps, save_in_place


def _pooled_features(model, processor, images: Sequence[Any]) -> torch.Tensor:
    """One vector per image: the mean of its merged vision tokens (what the language model receives)."""
    enc = processor.image_processor(images=list(images), return_tensors="pt")
    visual = model.model.visual
    tokens = visual(enc["pixel_values"].to(visual.dtype), grid_thw=enc["image_grid_thw"]).pooler_output
    counts = (enc["image_grid_thw"].prod(-1) // visual.spatial_merge_size**2).tolist()
    return torch.stack([chunk.mean(0) for chunk in torch.split(tokens, counts)])


def _accuracy(model, processor, head: torch.nn.Linear, images: Sequence[Any], targets: torch.Tensor) -> float:
    if not len(images):
        return float("nan")
    with torch.no_grad():
        predicted = torch.cat(
            [head(_pooled_features(model, processor, images[i : i + 64])).argmax(-1) for i in range(0, len(images), 64)]
        )
    return (predicted == targets).float().mean().item()


def train_vision_classifier(
    model_dir: str | Path,
    train: tuple[Sequence[str], Sequence[str]],
    valid: tuple[Sequence[str], Sequence[str]] = ((), ()),
    *,
    steps: int,
    seed: int = 0,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    max_pixels: int = 112 * 112,
) -> dict[str, Any]:
    """Train the vision tower and merger of the model in `model_dir` to classify `train` = (image paths, labels)
    through a linear head on the pooled image tokens, each step on `batch_size` random dihedral views; then overwrite
    the weights in `model_dir` (the head is dropped). `valid` (paths, labels) is only measured, never trained on:
    its accuracy, beside the majority-label rate, says how much the tower sees. Labels of `valid` unseen in `train`
    count as misses."""
    from skinr1_pipeline.modeling.model_factory import load_model, load_processor

    paths, labels = list(train[0]), list(train[1])
    check_steps(steps, batch_size)
    if not paths or len(paths) != len(labels):
        raise ValueError(
            f"the vision classifier needs train images with one label each; got {len(paths)} image(s)"
            f" and {len(labels)} label(s)"
        )
    classes = sorted(set(labels))
    if len(classes) < 2:
        raise ValueError(f"the vision classifier needs at least 2 train labels, got {classes}")
    index = {c: i for i, c in enumerate(classes)}
    torch.manual_seed(seed)
    rng = random.Random(seed)
    model_dir = Path(model_dir)
    processor = load_processor(model_dir, max_pixels=max_pixels)
    model = load_model(model_dir, dtype=torch.float32, device="cpu").train()
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("model.visual."))
    head = torch.nn.Linear(model.config.text_config.hidden_size, len(classes))
    params = [*model.model.visual.parameters(), *head.parameters()]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.01)
    images = [model_image(p, max_pixels=max_pixels) for p in paths]
    targets = torch.tensor([index[x] for x in labels])
    start, losses = time.perf_counter(), []
    for _ in range(steps):
        batch = [rng.randrange(len(images)) for _ in range(batch_size)]
        views = [VIEWS[rng.randrange(len(VIEWS))] for _ in batch]
        shown = [images[i] if v is None else images[i].transpose(v) for i, v in zip(batch, views)]
        loss = torch.nn.functional.cross_entropy(head(_pooled_features(model, processor, shown)), targets[batch])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"vision classifier loss is {loss.item()} at step {len(losses) + 1}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    valid_paths, valid_labels = list(valid[0]), list(valid[1])
    valid_targets = torch.tensor([index.get(x, -1) for x in valid_labels], dtype=torch.long)
    valid_images = [model_image(p, max_pixels=max_pixels) for p in valid_paths]
    majority = max((valid_labels.count(c) for c in classes), default=0) / len(valid_labels) if valid_labels else None
    result = {
        "steps": steps,
        "classes": len(classes),
        "images": len(images),
        "seconds": round(seconds, 1),
        "train_loss": [{"step": s + 1, "loss": losses[s]} for s in range(0, steps, max(1, steps // 10))],
        "train_accuracy": _accuracy(model, processor, head, images, targets),
        "valid_images": len(valid_images),
        "valid_accuracy": _accuracy(model, processor, head, valid_images, valid_targets),
        "valid_majority_rate": majority,
    }
    save_in_place(model, model_dir)
    return result
