"""The training gate scores held-out items exactly as the evaluation does: same answering loop, same images, same
scoring, so a gate figure and an evaluation figure on the same items are the same number."""

from __future__ import annotations

import pandas as pd
import pytest

from skinr1_pipeline.evaluation.cli import AnswerConfig, answer
from skinr1_pipeline.evaluation.metrics import score_predictions
from skinr1_pipeline.evaluation.runners import HFRunner, answer_items
from skinr1_pipeline.training.cli import GateConfig, run_gate
from skinr1_pipeline.training.gates import heldout_mcq_scores
from skinr1_pipeline_tests.tiny_models import tiny_base_and_adapter, write_mcq_items


@pytest.fixture(scope="module")
def model_and_items(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    base, adapter = tiny_base_and_adapter(root / "base", root / "adapter")
    return root, base, adapter, write_mcq_items(root, n=6)


@pytest.mark.parametrize("system_prompt", ["full", "compact"])
def test_the_gate_equals_the_evaluation_on_the_same_items(model_and_items, system_prompt: str) -> None:
    root, base, adapter, items_path = model_and_items
    items = pd.read_parquet(items_path)
    gate = run_gate(
        GateConfig(
            items_path=str(items_path),
            model_dir=str(base),
            split="train",
            limit=4,
            max_new_tokens=12,
            max_pixels=112 * 112,
            system_prompt=system_prompt,
        ),
        str(adapter),
        log=lambda _: None,
    )

    chosen = items[items["split"] == "train"].sort_values("item_id").head(4).reset_index(drop=True)
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
            system_prompt=system_prompt,
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


def test_an_unknown_system_prompt_is_refused_before_any_model_loads(tmp_path) -> None:
    for build in (
        lambda: GateConfig(items_path="i.parquet", model_dir=str(tmp_path / "none"), system_prompt="terse"),
        lambda: AnswerConfig(
            items_path="i.parquet", model_dir=str(tmp_path / "none"), output_path="a.parquet", system_prompt="terse"
        ),
    ):
        with pytest.raises(ValueError, match="system_prompt must be one of"):
            build()


def test_only_real_image_rows_have_their_options_scored(model_and_items) -> None:
    """The image-control rows are read through their generated answers alone; scoring their options was a quarter
    of the demo's scoring time. The real rows score exactly as they would alone."""
    _, base, adapter, items_path = model_and_items
    items = pd.read_parquet(items_path).head(4).reset_index(drop=True)
    runner = HFRunner(base, adapter_dir=adapter, max_new_tokens=8, batch_size=2, max_pixels=112 * 112)
    mixed = items.assign(condition=["real", "shuffled", "real", "blank"], item_id=[f"i{k}" for k in range(4)])
    answered = answer_items(runner, mixed).answers
    alone = answer_items(runner, mixed.iloc[[0, 2]]).answers
    assert [len(x) for x in answered["answer_logprobs"]] == [len(items["options"][0]), 0, len(items["options"][2]), 0]
    assert list(answered["option_logprobs"].iloc[[1, 3]]) == [[], []]
    for got, want in zip(answered["answer_logprobs"].iloc[[0, 2]], alone["answer_logprobs"]):
        assert got == pytest.approx(want, abs=1e-5)
