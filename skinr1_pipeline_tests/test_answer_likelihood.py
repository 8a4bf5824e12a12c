"""Answer-likelihood accuracy: which offered answer the model finds most probable after its own reasoning."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from skinr1_pipeline.evaluation.comparison import likelihood_table, variant_summary
from skinr1_pipeline.evaluation.metrics import likeliest, score_predictions
from skinr1_pipeline.evaluation.runners import (
    HFRunner,
    OptionScores,
    VllmRunner,
    answer_continuations,
    continuation_lengths,
)


class _WordTokenizer:
    """Splits on spaces; "ab" glued to a following "c" becomes one token "abc", like a BPE merge at the boundary."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
        words = text.replace("abc", "ABC").split(" ")
        return {"input_ids": [hash(w) % 10_000 for w in words]}


def test_continuation_lengths_count_tokens_after_the_common_prefix():
    tok = _WordTokenizer()
    assert continuation_lengths(tok, "x y", [" z w"]) == [2]
    # The prefix's last token "ab" merges with the continuation: the merged token is scored too.
    assert continuation_lengths(tok, "x ab", ["c d"]) == [2]
    assert continuation_lengths(tok, "x y", [""]) == [1]  # never zero tokens
    assert continuation_lengths(tok, "x y", [" z w", "c d", " q"]) == [2, 2, 1]  # "yc" differs from "y"


def test_answer_continuations_are_the_sft_answer_form_without_status():
    assert answer_continuations(["melanoma", "benign neoplasm"]) == ["A. melanoma", "B. benign neoplasm"]
    assert answer_continuations(["melanoma", "benign neoplasm"], "text") == ["melanoma", "benign neoplasm"]


def test_a_text_form_model_is_scored_on_its_whole_answers():
    """Options of a text-form model can share their first token ("benign ..."), so the first token cannot stand
    for the option: both scores are the whole answer's log-prob; the letter form keeps the letter token."""
    tokens = [[[-0.5, -1.0], [-0.5, -3.0]], []]
    letter, text = OptionScores.from_tokens(tokens), OptionScores.from_tokens(tokens, "text")
    assert letter.letters == [[-0.5, -0.5], []] and letter.answers == [[-1.5, -3.5], []]
    assert text.letters == text.answers == [[-1.5, -3.5], []]
    for runner in (HFRunner, VllmRunner):  # refused before any model or engine is loaded
        with pytest.raises(ValueError, match="answer_form must be one of"):
            runner("no/such/model", answer_form="number")


def test_likeliest_names_one_answer_or_none():
    assert likeliest([-3.0, -1.0, -2.0]) == 1
    assert likeliest([-1.0, -1.0, -5.0]) == -1  # a tie at the top names no single answer
    assert likeliest([]) == -1 and likeliest(None) == -1
    assert likeliest([-math.inf, -math.inf]) == -1
    assert likeliest([-math.inf, -4.0, float("nan")]) == 1


def _items() -> pd.DataFrame:
    mcq = {
        "suite": "in_domain",
        "options": ["melanoma", "nevus", "dermatofibroma", "benign neoplasm"],
        "option_nodes": ["melanoma", "nevus", "dermatofibroma", "benign_neoplasm"],
        "option_scores": [0.0, 0.75, 0.0, 0.375],
        "answer_index": 1,
    }
    rows = [{"item_id": f"in_domain/{i}", **mcq} for i in range(4)]
    rows.append(
        {
            "item_id": "open/0",
            "suite": "open_ended",
            "options": [],
            "option_nodes": [],
            "option_scores": [],
            "answer_index": -1,
        }
    )
    return pd.DataFrame(rows)


def test_likely_correct_is_scored_beside_the_generated_answer():
    items = _items().assign(
        answer_logprobs=[
            [-9.0, -1.0, -5.0, -6.0],
            [-1.0, -2.0, -3.0, -4.0],
            [-2.0, -2.0, -7.0, -8.0],
            [-1.0, -0.5, -3.0, -4.0],
            [],
        ]
    )
    wrong_letter = "<thinking>x</thinking>\n<diagnosis>A. melanoma</diagnosis>"
    completions = [wrong_letter, wrong_letter, "unreadable", "<thinking>x</thinking>\n<diagnosis>B. nevus</diagnosis>"]
    scored = score_predictions(items.head(4), completions)
    assert scored["likely_index"].tolist() == [1, 0, -1, 1]
    assert scored["likely_correct"].tolist() == [True, False, False, True]
    assert scored["correct"].tolist() == [False, False, False, True]  # the generated answer is scored as before


def test_summary_and_table_report_likelihood_only_where_scored(tax):
    items = _items()
    lp = [[-9.0, -1.0, -5.0, -6.0]] * 3 + [[-1.0, -2.0, -3.0, -4.0], []]
    scored = score_predictions(items.assign(answer_logprobs=lp), [""] * 5, taxonomy=tax)
    by_suite = {s: f.reset_index(drop=True) for s, f in scored.groupby("suite")}
    summary = variant_summary(by_suite, n_boot=200)
    assert summary["in_domain"]["likelihood"]["accuracy"] == 0.75
    assert summary["in_domain"]["accuracy"] == 0.0
    assert "likelihood" not in summary["open_ended"]
    plain = variant_summary({"in_domain": score_predictions(items.head(4), [""] * 4)}, n_boot=200)
    assert "likelihood" not in plain["in_domain"]  # a runner that did not score answers adds nothing
    table = likelihood_table({"sft": summary, "base": plain})
    assert list(table.index) == ["base", "sft"] and list(table.columns) == ["in_domain"]
    assert table.at["sft", "in_domain"].startswith("0.75 [") and table.at["base", "in_domain"] == "n/a"
    assert likelihood_table({"base": plain}).empty


def test_numpy_arrays_from_parquet_are_accepted(tmp_path):
    items = (
        _items()
        .head(2)
        .assign(answer_logprobs=[np.array([-3.0, -1.0, -4.0, -5.0]), np.array([-3.0, -4.0, -1.0, -5.0])])
    )
    path = tmp_path / "items.parquet"
    items.to_parquet(path)
    scored = score_predictions(pd.read_parquet(path), ["", ""])
    assert scored["likely_correct"].tolist() == [True, False]
