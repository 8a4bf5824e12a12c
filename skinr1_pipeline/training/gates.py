"""Held-out checks a training stage must pass before the next one runs: does the model still answer in the
format, and how often is it right? Plain Python, so Dagster checks and standalone scripts share it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pandas as pd


def heldout_mcq_scores(model_dir: str | Path, adapter_dir: str | Path | None, items: pd.DataFrame, *,
                       limit: int = 64, max_new_tokens: int = 768, max_pixels: int | None = None,
                       batch_size: int = 8, seed: int = 0,
                       progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Greedy answers on the first `limit` items (a stable slice, so stages compare on the same questions)."""
    from skinr1_pipeline.evaluation.metrics import score_predictions
    from skinr1_pipeline.evaluation.runners import HFRunner
    from skinr1_pipeline.modeling.generation import generate
    from skinr1_pipeline.modeling.model_factory import load_adapter_model, load_model, load_processor
    from skinr1_pipeline.training.sft import load_image

    chosen = items.sort_values("item_id").head(limit).reset_index(drop=True)
    if chosen.empty:
        raise ValueError("no held-out items to score")
    processor = load_processor(model_dir, max_pixels=max_pixels)
    model = (load_adapter_model(model_dir, adapter_dir, trainable=False) if adapter_dir
             else load_model(model_dir))
    images = [load_image(Path(p), max_pixels) for p in chosen["image_path"]]
    completions = generate(model, processor, images, list(chosen["prompt"]), max_new_tokens=max_new_tokens,
                           batch_size=batch_size, seed=seed, progress=progress)
    # Which offered answer the model finds likeliest after its own reasoning: tells "does not know" apart from
    # "knows but does not write it" when accuracy is low (evaluation.runners explains the quantity).
    likelihood = HFRunner(model=model, processor=processor).option_scores(chosen, completions).answers
    scored = score_predictions(chosen.assign(answer_logprobs=likelihood), completions)
    return {
        "n": len(scored),
        "parse_rate": float(scored["format_ok"].mean()),
        "accuracy": float(scored["correct"].mean()),
        "answer_likelihood_accuracy": float(scored["likely_correct"].mean()),
        "credit": float(scored["credit"].mean()),
        "examples": [{"item_id": i, "completion": c[:2000]} for i, c in zip(chosen["item_id"][:5], completions[:5])],
    }
