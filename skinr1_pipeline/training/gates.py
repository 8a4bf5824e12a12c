"""Held-out checks a training stage must pass before the next one runs: does the model still answer in the
format, and how often is it right? Plain Python, so Dagster checks and standalone scripts share it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from skinr1_pipeline.modeling.prompt_format import SYSTEM_PROMPT


def heldout_mcq_scores(
    model_dir: str | Path,
    adapter_dir: str | Path | None,
    items: pd.DataFrame,
    *,
    limit: int = 64,
    max_new_tokens: int = 768,
    max_pixels: int | None = None,
    batch_size: int = 8,
    seed: int = 0,
    answer_form: str = "letter",
    system: str | None = SYSTEM_PROMPT,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """Greedy answers on the first `limit` items (a stable slice, so stages compare on the same questions), produced
    and scored exactly as the evaluation does (`evaluation.runners.answer_items`, `score_predictions`)."""
    from skinr1_pipeline.evaluation.metrics import score_predictions
    from skinr1_pipeline.evaluation.runners import HFRunner, answer_items

    chosen = items.sort_values("item_id").head(limit).reset_index(drop=True)
    if chosen.empty:
        raise ValueError("no held-out items to score")
    runner = HFRunner(
        model_dir,
        adapter_dir=adapter_dir,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        max_pixels=max_pixels,
        seed=seed,
        system=system,
        answer_form=answer_form,
    )
    # Which offered answer the model finds likeliest after its own reasoning: tells "does not know" apart from
    # "knows but does not write it" when accuracy is low (evaluation.runners explains the quantity).
    answered = answer_items(runner, chosen, calibration=False, answer_likelihood=True, progress=progress).answers
    completions = list(answered["completion"])
    scored = score_predictions(answered, completions)
    return {
        "n": len(scored),
        "parse_rate": float(scored["format_ok"].mean()),
        "accuracy": float(scored["correct"].mean()),
        "answer_likelihood_accuracy": float(scored["likely_correct"].mean()),
        "credit": float(scored["credit"].mean()),
        "examples": [{"item_id": i, "completion": c[:2000]} for i, c in zip(chosen["item_id"][:5], completions[:5])],
    }
