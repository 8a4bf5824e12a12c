"""GRPO rewards: exact values on hand-built batches, TRL call shapes, batch alignment, and hacking attempts."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skinr1_pipeline.modeling.prompt_format import (
    SYSTEM_PROMPT,
    build_mcq_prompt,
    build_open_prompt,
    completion_text,
    format_completion,
    format_mcq_answer,
)
from skinr1_pipeline.training.rewards import (
    ACCURACY_REWARD,
    FORMAT_REWARD,
    MALIGNANCY_REWARD,
    MIN_THINKING_WORD_CHARS,
    NO_GRANULARITY_REWARD_WEIGHTS,
    PAPER_REWARD_WEIGHTS,
    REWARD_FUNCTIONS,
    RewardAlignmentError,
    RewardInputError,
    accuracy_reward,
    format_reward,
    granularity_reward,
    make_reward_functions,
    malignancy_reward,
)

ALL = [format_reward, granularity_reward, malignancy_reward, accuracy_reward]
THINK = "Stuck-on appearance, milia-like cysts and comedo-like openings."
# A path root -> leaf shown as options: melanocytic (depth 1) ... ; scores as the RL data builder writes them.
OPTS = ["melanocytic lesion", "seborrheic keratosis", "melanoma", "melanoma in situ"]
SCORES = [0.25, 0.0, 0.5, 0.75]


def answer(index, status=None, options=OPTS):
    return format_completion(THINK, format_mcq_answer(options, index, status))


def row_kwargs(n, options=OPTS, scores=SCORES, bucket="malignant", prefix="s", prompts=True):
    kw = {
        "options": [list(options)] * n,
        "option_scores": [list(scores)] * n,
        "bucket": [bucket] * n,
        "sample_id": [f"{prefix}{i}" for i in range(n)],
    }
    if prompts:
        kw["prompts"] = [conversational_prompt(options)] * n
    return kw


def conversational_prompt(options):
    text = (
        build_mcq_prompt("What type of abnormality is present in this image?", options)
        if options
        else build_open_prompt()
    )
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
    ]


def run_all(completions, **kw):
    return {f.__name__: f(completions, **kw) for f in ALL}


# --- exact values ---------------------------------------------------------------------------------------------


def test_hand_built_batch_exact_values():
    completions = [
        answer(3, "malignant"),  # deepest correct option + right status
        answer(2, "malignant"),  # correct ancestor
        answer(0, "benign"),  # root, wrong status
        answer(1, "malignant"),  # distractor, right status
        answer(3),  # no status
        format_completion(THINK, "A. melanocytic lesion D. melanoma in situ; status: malignant"),  # two options
        format_completion(THINK, "F; status: malignant"),  # not offered
        "D. melanoma in situ; status: malignant",  # no tags
        format_completion(THINK, "D; status: malignant") + "<diagnosis>A</diagnosis>",  # second block
        "",
    ]
    got = run_all(completions, **row_kwargs(len(completions)))
    assert got["format_reward"] == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert got["granularity_reward"] == [0.75, 0.5, 0.25, 0.0, 0.75, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert got["malignancy_reward"] == [0.25, 0.25, 0.0, 0.25, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    assert got["accuracy_reward"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]


def test_reward_constants():
    assert (FORMAT_REWARD, MALIGNANCY_REWARD, ACCURACY_REWARD) == (1.0, 0.25, 1.0)


@pytest.mark.parametrize(
    ("bucket", "status", "expected"),
    [
        ("benign", "benign", 0.25),
        ("precancerous_in_situ", "precancerous_in_situ", 0.25),
        ("malignant", "benign", 0.0),
        ("precancerous_in_situ", "malignant", 0.0),
        ("benign", None, 0.0),
    ],
)
def test_malignancy_reward_values(bucket, status, expected):
    kw = row_kwargs(1, bucket=bucket)
    assert malignancy_reward([answer(1, status)], **kw) == [expected]


def test_two_statuses_earn_no_malignancy_reward():
    text = format_completion(THINK, "D. melanoma in situ; status: malignant; status: benign")
    assert malignancy_reward([text], **row_kwargs(1)) == [0.0]
    assert format_reward([text], **row_kwargs(1)) == [1.0]


@pytest.mark.parametrize(
    "diagnosis",
    [
        "D. melanoma in situ; possibly benign; status: malignant",  # a hedge before the clause
        "D. melanoma in situ; status: malignant\nif regressing then benign",  # a hedge after it, on the next line
        "D. melanoma in situ, not malignant; status: malignant",  # the clause's own status negated elsewhere
    ],
)
def test_status_word_contradicting_the_clause_earns_no_malignancy_reward(diagnosis):
    text = format_completion(THINK, diagnosis)
    assert malignancy_reward([text], **row_kwargs(1)) == [0.0]
    assert format_reward([text], **row_kwargs(1)) == [1.0]


def test_hedged_status_earns_nothing_for_either_bucket():
    opts, scores = ["benign melanocytic lesion", "melanoma"], [0.25, 0.75]
    for diagnosis in (
        "B. melanoma; possibly malignant; status: benign",
        "B. melanoma; status: benign\nif atypical then malignant",
    ):
        text = format_completion(THINK, diagnosis)
        for bucket in ("benign", "malignant"):
            assert malignancy_reward([text], **row_kwargs(1, opts, scores, bucket)) == [0.0]


def test_option_text_is_never_read_as_a_status():
    opts, scores = ["benign melanocytic lesion", "melanoma"], [0.25, 0.75]
    text = format_completion(THINK, "A. benign melanocytic lesion")
    assert malignancy_reward([text], **row_kwargs(1, opts, scores, "benign")) == [0.0]
    assert format_reward([text], **row_kwargs(1, opts, scores, "benign")) == [1.0]
    # With an explicit clause the option's own status-like words neither pay nor void it.
    stated = format_completion(THINK, "A. benign melanocytic lesion; status: benign")
    assert malignancy_reward([stated], **row_kwargs(1, opts, scores, "benign")) == [0.25]
    chosen_text = format_completion(THINK, "B. malignant; status: malignant")
    assert malignancy_reward([chosen_text], **row_kwargs(1, ["benign", "malignant"], [0.0, 0.75])) == [0.25]


@pytest.mark.parametrize("thinking", [".", "\u200b", "... !!! ???", "_" * 40, "ok \u200b\u200b ok."])
def test_contentless_thinking_earns_nothing(thinking):
    text = format_completion(thinking, format_mcq_answer(OPTS, 3, "malignant"))
    assert run_all([text], **row_kwargs(1)) == {f.__name__: [0.0] for f in ALL}
    extras = {}
    format_reward([text], log_extra=extras.__setitem__, **row_kwargs(1))
    assert extras == {"parse_error": ["thin_thinking"]}


def test_thinking_threshold_is_configurable_and_counts_only_letters_and_digits():
    text = format_completion("a.b.c", format_mcq_answer(OPTS, 3, "malignant"))
    assert format_reward([text], min_thinking_word_chars=3, **row_kwargs(1)) == [1.0]
    assert format_reward([text], min_thinking_word_chars=4, **row_kwargs(1)) == [0.0]
    assert granularity_reward([text], min_thinking_word_chars=3, **row_kwargs(1)) == [0.75]
    assert 10 <= MIN_THINKING_WORD_CHARS <= 40


def test_legitimate_completion_still_earns_full_credit():
    text = format_completion(
        "Irregular pigment network with regression; melanoma in situ is the deepest fit.",
        "D. melanoma in situ; status: malignant",
    )
    got = run_all([text], **row_kwargs(1))
    assert got == {
        "format_reward": [1.0],
        "granularity_reward": [0.75],
        "malignancy_reward": [0.25],
        "accuracy_reward": [1.0],
    }
    open_text = format_completion(THINK, "basal cell carcinoma; status: malignant")
    assert malignancy_reward([open_text], bucket=["malignant"]) == [0.25]


def test_correct_status_cannot_pay_for_an_ambiguous_option():
    text = format_completion(THINK, "C or D; status: malignant")
    assert run_all([text], **row_kwargs(1)) == {f.__name__: [0.0] for f in ALL}


def test_open_ended_rows_are_not_applicable_to_option_rewards():
    completions = [format_completion(THINK, "melanoma in situ; status: malignant"), answer(3, "malignant")]
    kw = {
        "options": [None, OPTS],
        "option_scores": [None, SCORES],
        "bucket": ["malignant", None],
        "sample_id": ["open", "mcq"],
        "prompts": [conversational_prompt(None), conversational_prompt(OPTS)],
    }
    got = run_all(completions, **kw)
    assert got["format_reward"] == [1.0, 1.0]
    assert got["granularity_reward"] == [None, 0.75]
    assert got["accuracy_reward"] == [None, 1.0]
    assert got["malignancy_reward"] == [0.25, None]


def test_accuracy_needs_a_positive_maximum():
    kw = row_kwargs(1, scores=[0.0, 0.0, 0.0, 0.0])
    assert accuracy_reward([answer(0)], **kw) == [0.0]


# --- TRL call shapes ------------------------------------------------------------------------------------------


def test_conversational_and_string_completions_give_identical_rewards():
    texts = [answer(i, s) for i in range(4) for s in ("benign", "malignant", None)] + ["junk", ""]
    chat = [[{"role": "assistant", "content": t}] for t in texts]
    parts = [
        [{"role": "assistant", "content": [{"type": "text", "text": t[:7]}, {"type": "text", "text": t[7:]}]}]
        for t in texts
    ]
    kw = row_kwargs(len(texts))
    for f in ALL:
        assert f(texts, **kw) == f(chat, **kw) == f(parts, **kw)


@pytest.mark.parametrize(
    "completion",
    [
        None,
        42,
        [],
        [{"role": "user", "content": "x"}],
        [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
        [{"role": "assistant", "content": [{"type": "image"}]}],
        [{"role": "assistant", "content": None}],
    ],
)
def test_unexpected_completion_shapes_score_zero(completion):
    assert completion_text(completion) is None
    got = run_all([completion], **row_kwargs(1))
    assert got == {f.__name__: [0.0] for f in ALL}


def test_trl_extra_kwargs_are_accepted_and_logging_hooks_called():
    metrics, extras = {}, {}
    completions = [answer(3, "malignant"), "junk"]
    kw = row_kwargs(2) | {
        "completion_ids": [[1, 2], [3]],
        "trainer_state": object(),
        "image": [None, None],
        "log_metric": metrics.__setitem__,
        "log_extra": extras.__setitem__,
    }
    for f in ALL:
        f(completions, **kw)
    assert metrics == {"format/parse_failure_rate": 0.5}
    assert extras == {"parse_error": ["", "no_thinking"]}


def test_reward_names_for_trl_logging():
    # TRL 1.16 names a plain-function reward by its __name__ (trainer/utils.py get_callable_name) and logs
    # rewards/<name>/mean; module-level functions also stay picklable for its async / multi-process paths.
    assert [f.__name__ for f in ALL] == ["format_reward", "granularity_reward", "malignancy_reward", "accuracy_reward"]
    assert all(f.__qualname__ == f.__name__ and f.__module__ == "skinr1_pipeline.training.rewards" for f in ALL)


# --- alignment guard ------------------------------------------------------------------------------------------


def test_shuffled_kwargs_column_raises_alignment_error_naming_the_row():
    options = [OPTS, ["nevus", "melanoma", "dermatofibroma", "angioma"], ["basal cell carcinoma", "nevus"]]
    scores = [SCORES, [0.0, 0.75, 0.0, 0.0], [0.75, 0.0]]
    kw = {
        "prompts": [conversational_prompt(o) for o in options],
        "options": options,
        "option_scores": scores,
        "bucket": ["malignant", "malignant", "malignant"],
        "sample_id": ["isic_1", "ham_2", "pad_3"],
    }
    completions = [answer(3), answer(1, options=options[1]), answer(0, options=options[2])]
    for f in ALL:
        assert len(f(completions, **kw)) == 3
    bad = kw | {"options": [options[1], options[0], options[2]], "option_scores": [scores[1], scores[0], scores[2]]}
    for f in ALL:
        with pytest.raises(RewardAlignmentError) as err:
            f(completions, **bad)
        assert err.value.row == 0 and err.value.sample_id == "isic_1"
        assert "row 0" in str(err.value) and "isic_1" in str(err.value)


@pytest.mark.parametrize("column", ["options", "option_scores", "bucket", "sample_id", "prompts"])
def test_column_length_mismatch_raises(column):
    kw = row_kwargs(3)
    kw[column] = kw[column][:2]
    for f in ALL:
        with pytest.raises(RewardAlignmentError, match=column):
            f([answer(0)] * 3, **kw)


def test_scores_not_matching_options_raise():
    kw = row_kwargs(2)
    kw["option_scores"] = [SCORES, SCORES[:3]]
    with pytest.raises(RewardAlignmentError, match="s1"):
        granularity_reward([answer(0)] * 2, **kw)


def test_prompt_with_options_but_no_options_column_raises():
    kw = {"prompts": [conversational_prompt(OPTS)], "sample_id": ["x"]}
    with pytest.raises(RewardAlignmentError):
        format_reward([answer(0)], **kw)


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"bucket": ["cancer"]}, RewardInputError),
        ({"option_scores": [[0.0, math.nan, 0.5, 0.75]]}, RewardInputError),
        ({"options": ["melanoma"]}, RewardInputError),
    ],
)
def test_invalid_row_values_raise(change, error):
    kw = row_kwargs(1, prompts=False) | change
    with pytest.raises(error):
        for f in ALL:
            f([answer(0)], **kw)


@pytest.mark.parametrize(
    ("func", "missing"),
    [(granularity_reward, "option_scores"), (accuracy_reward, "options"), (malignancy_reward, "bucket")],
)
def test_missing_required_column_is_named(func, missing):
    kw = row_kwargs(1, prompts=False)
    del kw[missing]
    with pytest.raises(RewardInputError, match=missing):
        func([answer(0)], **kw)


def test_format_reward_needs_no_columns():
    assert format_reward([format_completion(THINK, "basal cell carcinoma")]) == [1.0]
    assert format_reward([]) == []


# --- make_reward_functions ------------------------------------------------------------------------------------


def test_make_reward_functions():
    funcs, weights = make_reward_functions(PAPER_REWARD_WEIGHTS)
    assert funcs == [format_reward, granularity_reward, malignancy_reward] and weights == [1.0, 1.0, 1.0]
    funcs, weights = make_reward_functions(NO_GRANULARITY_REWARD_WEIGHTS)
    assert funcs == [format_reward, accuracy_reward, malignancy_reward] and weights == [1.0, 0.75, 1.0]
    assert set(REWARD_FUNCTIONS) == {"format", "granularity", "malignancy", "accuracy"}


def test_make_reward_functions_rejects_unknown_names_clearly():
    with pytest.raises(ValueError) as err:
        make_reward_functions({"format": 1.0, "lenght": 0.5})
    message = str(err.value)
    assert "'lenght'" in message and all(n in message for n in REWARD_FUNCTIONS)


@pytest.mark.parametrize("weights", [{}, None, {"format": math.inf}, {"format": "1"}, {"format": True}])
def test_make_reward_functions_rejects_bad_weights(weights):
    with pytest.raises(ValueError):
        make_reward_functions(weights)


def test_paper_total_reward_range():
    funcs, weights = make_reward_functions(PAPER_REWARD_WEIGHTS)
    kw = row_kwargs(2)
    best = [answer(3, "malignant"), "junk"]
    totals = [sum(w * f(best, **kw)[i] for f, w in zip(funcs, weights)) for i in range(2)]
    assert totals == [2.0, 0.0]


# --- properties -----------------------------------------------------------------------------------------------

POOL_OPTIONS = [
    (["melanocytic lesion", "seborrheic keratosis", "melanoma", "melanoma in situ"], [0.25, 0.0, 0.5, 0.75]),
    (["nevus", "basal cell carcinoma", "dermatofibroma", "keratinocytic tumour"], [0.0, 0.75, 0.0, 0.375]),
    (["benign", "malignant", "precancerous in situ"], [0.75, 0.0, 0.0]),
]


@st.composite
def batches(draw):
    n = draw(st.integers(1, 12))
    rows = []
    for i in range(n):
        options, scores = draw(st.sampled_from(POOL_OPTIONS))
        bucket = draw(st.sampled_from(["benign", "precancerous_in_situ", "malignant", None]))
        kind = draw(st.integers(0, 3))
        if kind == 0:
            completion = answer(
                draw(st.integers(0, len(options) - 1)),
                draw(st.sampled_from(["benign", "precancerous_in_situ", "malignant", None])),
                options,
            )
        elif kind == 1:
            completion = draw(st.text(max_size=80))
        elif kind == 2:
            completion = format_completion(
                THINK,
                draw(
                    st.sampled_from(
                        ["A or B", "A. x; status: benign", "C", "Z", "b", "nevus; status: malignant", "A, B, C, D"]
                    )
                ),
            )
        else:
            completion = [{"role": "assistant", "content": answer(0, "benign", options)}]
        rows.append((completion, options, scores, bucket, f"id{i}"))
    return rows


def _kwargs(rows):
    return {
        "options": [r[1] for r in rows],
        "option_scores": [r[2] for r in rows],
        "bucket": [r[3] for r in rows],
        "sample_id": [r[4] for r in rows],
        "prompts": [conversational_prompt(r[1]) for r in rows],
    }


@settings(max_examples=150, deadline=None)
@given(batches(), st.randoms(use_true_random=False))
def test_property_rewards_are_invariant_to_batch_order(rows, rnd):
    before = run_all([r[0] for r in rows], **_kwargs(rows))
    order = list(range(len(rows)))
    rnd.shuffle(order)
    shuffled = [rows[i] for i in order]
    after = run_all([r[0] for r in shuffled], **_kwargs(shuffled))
    for name in before:
        assert after[name] == [before[name][i] for i in order]


@settings(max_examples=150, deadline=None)
@given(batches())
def test_property_reward_values_stay_in_their_sets(rows):
    got = run_all([r[0] for r in rows], **_kwargs(rows))
    for i, (_, _options, scores, bucket, _) in enumerate(rows):
        assert got["format_reward"][i] in (0.0, 1.0)
        assert got["granularity_reward"][i] in {0.0, *scores}
        assert got["accuracy_reward"][i] in (0.0, 1.0)
        assert got["malignancy_reward"][i] == (None if bucket is None else got["malignancy_reward"][i])
        assert bucket is None or got["malignancy_reward"][i] in (0.0, 0.25)
        if got["format_reward"][i] == 0.0:  # unparseable or ambiguous: no credit anywhere
            assert got["granularity_reward"][i] == 0.0 and got["accuracy_reward"][i] == 0.0
            assert got["malignancy_reward"][i] in (0.0, None)


@settings(max_examples=100, deadline=None)
@given(batches(), st.data())
def test_property_any_shuffled_options_column_is_caught(rows, data):
    distinct = {tuple(r[1]) for r in rows}
    if len(distinct) < 2:
        return
    kw = _kwargs(rows)
    perm = data.draw(st.permutations(range(len(rows))))
    shuffled = [kw["options"][i] for i in perm]
    moved = [i for i in range(len(rows)) if shuffled[i] != kw["options"][i]]
    kw["options"] = shuffled
    kw["option_scores"] = [rows[i][2] for i in perm]
    if not moved:
        return
    with pytest.raises(RewardAlignmentError) as err:
        granularity_reward([r[0] for r in rows], **kw)
    assert err.value.row == moved[0] and err.value.sample_id == f"id{moved[0]}"


def test_random_large_batch_scores_every_row():
    rnd = random.Random(0)
    completions = [answer(rnd.randrange(4), rnd.choice(["benign", "malignant", None])) for _ in range(256)]
    kw = row_kwargs(256)
    for f in ALL:
        scores = f(completions, **kw)
        assert len(scores) == 256 and all(s is None or 0.0 <= s <= 1.0 for s in scores)
