"""The training gate scores held-out items exactly as the evaluation does: same answering loop, same images, same
scoring, so a gate figure and an evaluation figure on the same items are the same number."""

from __future__ import annotations

import pandas as pd
import pytest

from skinr1_pipeline.evaluation.cli import AnswerConfig, answer
from skinr1_pipeline.evaluation.metrics import score_predictions
from skinr1_pipeline.training.gates import heldout_mcq_scores
from skinr1_pipeline_tests.tiny_models import tiny_base_and_adapter, write_mcq_items


@pytest.fixture(scope="module")
def model_and_items(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    base, adapter = tiny_base_and_adapter(root / "base", root / "adapter")
    return root, base, adapter, write_mcq_items(root, n=6)


def test_the_gate_equals_the_evaluation_on_the_same_items(model_and_items) -> None:
    root, base, adapter, items_path = model_and_items
    items = pd.read_parquet(items_path)
    gate = heldout_mcq_scores(base, adapter, items, limit=4, max_new_tokens=12, max_pixels=112 * 112, batch_size=2)

    chosen = items.sort_values("item_id").head(4).reset_index(drop=True)
    chosen.to_parquet(root / "chosen.parquet")
    answer(
        AnswerConfig(
            items_path=str(root / "chosen.parquet"),
            model_dir=str(base),
            adapter_dir=str(adapter),
            output_path=str(root / "answers.parquet"),
            runner="hf",
            max_new_tokens=12,
            batch_size=2,
            max_pixels=112 * 112,
            calibration=False,
        )
    )
    answers = pd.read_parquet(root / "answers.parquet")
    scored = score_predictions(answers, list(answers["completion"]))

    assert gate["n"] == 4
    assert [e["completion"] for e in gate["examples"]] == list(answers["completion"])
    assert gate["parse_rate"] == pytest.approx(scored["format_ok"].mean())
    assert gate["accuracy"] == pytest.approx(scored["correct"].mean())
    assert gate["answer_likelihood_accuracy"] == pytest.approx(scored["likely_correct"].mean())


def test_the_gate_refuses_an_empty_slice(model_and_items) -> None:
    _, base, adapter, items_path = model_and_items
    with pytest.raises(ValueError, match="no held-out items"):
        heldout_mcq_scores(base, adapter, pd.read_parquet(items_path).head(0))
