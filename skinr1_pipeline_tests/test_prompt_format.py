"""The output contract: prompts, targets and the strict parser, attacked the way a policy under RL would."""

from __future__ import annotations

import re
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skinr1_pipeline.modeling.prompt_format import (
    DIAG_CLOSE,
    DIAG_OPEN,
    ERROR_CODES,
    MAX_COMPLETION_CHARS,
    STATUSES,
    SYSTEM_PROMPT,
    SYSTEM_PROMPTS,
    THINK_CLOSE,
    THINK_OPEN,
    ParsedCompletion,
    build_mcq_prompt,
    build_open_prompt,
    contains_tag,
    format_completion,
    format_mcq_answer,
    format_open_answer,
    letters,
    normalize_status,
    parse_completion,
    prompt_options,
    system_prompt_text,
)

OPTS = ["melanoma", "melanoma in situ", "seborrheic keratosis", "melanocytic nevus"]
THINK = "Irregular pigment network with blue-white veil; asymmetric in two axes."


def wrap(diagnosis: str, thinking: str = THINK) -> str:
    return f"<thinking>{thinking}</thinking>\n<diagnosis>{diagnosis}</diagnosis>"


def parse_diag(diagnosis: str, options=OPTS) -> ParsedCompletion:
    return parse_completion(wrap(diagnosis), options)


# --- round trips ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("index", range(len(OPTS)))
@pytest.mark.parametrize("status", [*STATUSES, None])
def test_formatted_mcq_answer_round_trips(index, status):
    text = format_completion(THINK, format_mcq_answer(OPTS, index, status))
    parsed = parse_completion(text, OPTS)
    assert parsed == ParsedCompletion(True, None, THINK, parsed.diagnosis, index, status)
    assert parsed.option_letter == "ABCD"[index]


def test_exact_output_format():
    text = format_completion(THINK, format_mcq_answer(OPTS, 2, "benign"))
    assert text == f"<thinking>\n{THINK}\n</thinking>\n<diagnosis>C. seborrheic keratosis; status: benign</diagnosis>"
    assert format_mcq_answer(OPTS, 1, "precancerous_in_situ") == "B. melanoma in situ; status: precancerous"


@pytest.mark.parametrize("index", range(len(OPTS)))
def test_a_text_form_answer_names_the_option_without_its_letter_and_parses_to_it(index):
    answer = format_mcq_answer(OPTS, index, "benign", form="text")
    assert answer == f"{OPTS[index]}; status: benign"
    parsed = parse_completion(format_completion(THINK, answer), OPTS)
    assert parsed.ok and parsed.option_index == index and parsed.status == "benign"
    with pytest.raises(ValueError, match="form must be one of"):
        format_mcq_answer(OPTS, index, form="number")


def test_open_ended_answer():
    parsed = parse_completion(format_completion(THINK, format_open_answer("basal cell carcinoma", "malignant")))
    assert parsed.ok and parsed.option_index is None and parsed.status == "malignant"
    assert parsed.diagnosis == "basal cell carcinoma; status: malignant"
    assert parse_completion(wrap("basal cell carcinoma"), []).ok  # empty options = open-ended


def test_twenty_six_options():
    opts = [
        f"condition {w}"
        for w in "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi "
        "omicron pi rho sigma tau upsilon phi chi psi omega one two".split()
    ]
    assert len(opts) == 26
    parsed = parse_diag("Z. condition two; status: benign", opts)
    assert parsed.ok and parsed.option_index == 25
    assert parse_diag("Z", opts[:25]).error == "option_not_offered"


# --- structure ----------------------------------------------------------------------------------------------------

STRUCTURE_CASES = [
    ("", "empty"),
    ("  \n\t ", "empty"),
    ("A. melanoma", "no_thinking"),
    ("<thinking>x</thinking>", "no_diagnosis"),
    ("<diagnosis>A</diagnosis>", "no_thinking"),
    ("<thinking>x</thinking><diagnosis>A</diagnosis><diagnosis>B</diagnosis>", "multiple_diagnosis"),
    ("<thinking>x</thinking><thinking>y</thinking><diagnosis>A</diagnosis>", "multiple_thinking"),
    ("<thinking>x<diagnosis>B</diagnosis></thinking><diagnosis>A</diagnosis>", "tags_inside_thinking"),
    ("<thinking>x <thinking> y</thinking><diagnosis>A</diagnosis>", "tags_inside_thinking"),
    ("<diagnosis><thinking>x</thinking>A</diagnosis>", "nested_tags"),
    ("<diagnosis>A</diagnosis><thinking>x</thinking>", "wrong_order"),
    ("<thinking>x<diagnosis>A</diagnosis>", "unbalanced_tags"),
    ("<thinking>x</thinking><diagnosis>A", "unbalanced_tags"),
    ("</thinking>x<thinking><diagnosis>A</diagnosis>", "unbalanced_tags"),
    ("Sure! <thinking>x</thinking><diagnosis>A</diagnosis>", "text_outside_tags"),
    ("<thinking>x</thinking> so <diagnosis>A</diagnosis>", "text_outside_tags"),
    ("<thinking>x</thinking><diagnosis>A</diagnosis> B", "text_outside_tags"),
    ("<thinking>x</thinking><diagnosis>A</diagnosis>\u200b", "text_outside_tags"),
    ("<thinking> \n </thinking><diagnosis>A</diagnosis>", "empty_thinking"),
    ("<thinking>x</thinking><diagnosis>  </diagnosis>", "empty_diagnosis"),
    ("<Thinking>x</Thinking><diagnosis>A</diagnosis>", "malformed_tag"),
    ("<thinking>x< diagnosis >B</thinking><diagnosis>A</diagnosis>", "malformed_tag"),
    ("<thinking>x</thinking><diagnosis>A</Diagnosis> B</diagnosis>", "malformed_tag"),
    ("<thinking>x</thinking><diagnosis>A< /diagnosis ></diagnosis>", "malformed_tag"),
    ("<thinking>x</thinking><diagnosis>A<diagnosis/></diagnosis>", "malformed_tag"),
    ("<think>x</think><diagnosis>A</diagnosis>", "foreign_tag"),
    ("<thinking>x</thinking><final diagnosis>A</final diagnosis>", "foreign_tag"),
    ("<thinking>x</thinking><diagnosis><answer>A</answer></diagnosis>", "foreign_tag"),
]


@pytest.mark.parametrize(("text", "error"), STRUCTURE_CASES)
def test_structure_errors(text, error):
    parsed = parse_completion(text, OPTS)
    assert (parsed.ok, parsed.error, parsed.option_index) == (False, error, None)


CONFUSABLE_TAGS = [
    "\uff1cthinking\uff1e",  # fullwidth < >
    "<thinking\uff1e",
    "<\u0442hinking>",  # Cyrillic te
    "<di\u0430gnosis>",  # Cyrillic a
    "</diagn\u043esis>",  # Cyrillic o
    "<think\u200bing>",  # zero-width space
    "<\u2215thinking>",  # division slash
    "\u2039diagnosis\u203a",  # single guillemets
    "<\U0001d42dhinking>",  # mathematical bold t
    "\u3008diagnosis\u3009",
]


@pytest.mark.parametrize("tag", CONFUSABLE_TAGS)
@pytest.mark.parametrize("where", ["thinking", "diagnosis", "replace"])
def test_confusable_tags_are_rejected_not_accepted(tag, where):
    if where == "thinking":
        text = wrap("A. melanoma", thinking=f"look {tag} here")
    elif where == "diagnosis":
        text = wrap(f"A. melanoma {tag}")
    else:  # the look-alike stands in for a real tag
        real = "<thinking>" if "hinking" in tag else "<diagnosis>" if "/" not in tag else "</diagnosis>"
        text = wrap("A. melanoma").replace(real, tag, 1)
    parsed = parse_completion(text, OPTS)
    assert not parsed.ok
    assert parsed.error in {"confusable_tag", "no_thinking", "no_diagnosis", "unbalanced_tags", "text_outside_tags"}
    if where != "replace":
        assert parsed.error == "confusable_tag"


TAG_VARIANTS = [
    "<thinking>",
    "</thinking>",
    "<diagnosis>",
    "</diagnosis>",
    "< diagnosis >",
    "</Diagnosis>",
    "<DIAGNOSIS>",
    "<\tthinking\n>",
    "</ thinking>",
    "<final_diagnosis>",
    "<think>",
    "</answer>",
]


@pytest.mark.parametrize("tag", TAG_VARIANTS)
def test_no_tag_of_any_spelling_inside_either_block(tag):
    assert not parse_completion(wrap("A. melanoma", thinking=f"first {tag} then"), OPTS).ok
    assert not parse_completion(wrap(f"A. melanoma {tag}"), OPTS).ok


@pytest.mark.parametrize("value", [None, 0, 1.5, b"<thinking>x</thinking><diagnosis>A</diagnosis>", ["x"], {"a": 1}])
def test_non_strings_are_malformed_not_errors(value):
    assert parse_completion(value, OPTS) == ParsedCompletion(False, "not_a_string")


@pytest.mark.parametrize(
    "text",
    [
        "\ud800",
        "\x00" * 50,
        wrap("A\udfff"),
        wrap("\u0130 \u01c5"),
        "<" * 5000,
        "</" * 3000 + ">",
        wrap("A", thinking="\u0338" * 500),
    ],
)
def test_odd_strings_never_raise(text):
    parsed = parse_completion(text, OPTS)
    assert parsed.error is None or parsed.error in ERROR_CODES


def test_whitespace_around_blocks_is_allowed():
    text = "\n  <thinking>\n x \n</thinking>\n\n<diagnosis>\n A. melanoma \n</diagnosis>\n"
    parsed = parse_completion(text, OPTS)
    assert parsed.ok and parsed.thinking == "x" and parsed.option_index == 0


# --- length cap and speed -------------------------------------------------------------------------------------

HUGE = {
    "plain": "x" * 100_000,
    "tags": "<thinking>" * 10_000,
    "valid_then_padding": wrap("A. melanoma") + " " * 100_000,
    "unicode": "\uff1cthinking\uff1e" * 10_000,
    "spaces_in_tag": "<" + " " * 100_000 + "thinking>",
}


@pytest.mark.timeout(10)  # a guard against catastrophic regex backtracking, not a speed measurement
@pytest.mark.parametrize("name", HUGE)
def test_100k_inputs_are_rejected(name):
    assert parse_completion(HUGE[name], OPTS).error == "too_long"


NEAR_CAP = {
    "whitespace_after_bracket": "<" + " " * (MAX_COMPLETION_CHARS - 20) + "x",
    "many_tag_variants": ("< thinking >" * 2000)[:MAX_COMPLETION_CHARS],
    "fullwidth_tags": ("\uff1cthinking\uff1e" * 2000)[:MAX_COMPLETION_CHARS],
    "non_ascii_thinking": wrap("A. melanoma", thinking="\u0436" * (MAX_COMPLETION_CHARS - 60)),
    "option_mentions": wrap("melanoma in situ " * 1100),
    "letters": wrap("A " * 9_900),
    "negations": wrap("B " + "not " * 4_900),
}


@pytest.mark.timeout(10)  # catastrophic backtracking would hang here; linear parsing takes milliseconds
@pytest.mark.parametrize("name", NEAR_CAP)
def test_adversarial_inputs_just_under_the_cap_terminate(name):
    text = NEAR_CAP[name]
    assert len(text) <= MAX_COMPLETION_CHARS
    assert parse_completion(text, OPTS).error != "too_long"


def test_cap_is_configurable():
    text = wrap("A. melanoma")
    assert parse_completion(text, OPTS, max_chars=len(text)).ok
    assert parse_completion(text, OPTS, max_chars=len(text) - 1).error == "too_long"


# --- option choice --------------------------------------------------------------------------------------------

CHOICE_CASES = [
    ("C", 2),
    ("C.", 2),
    ("(C)", 2),
    ("C) seborrheic keratosis", 2),
    ("Option C", 2),
    ("answer: C", 2),
    ("C - seborrheic keratosis", 2),
    ("seborrheic keratosis", 2),  # text alone names the option
    ("Seborrheic-Keratosis", 2),
    ("a seborrheic keratosis", 2),  # the article "a" is not option A
    ("A melanocytic nevus, benign", 3),  # nor is the capitalised article
    ("it is a benign lesion, most likely a melanocytic nevus", 3),
    ("b. melanoma", 0),  # lower-case "b" is not a letter: the text decides
    ("melanoma in situ", 1),  # containment: only the longer option is named
    ("B. melanoma in situ", 1),
    ("I think C. seborrheic keratosis", 2),
    ("\uff23\uff0e seborrheic keratosis", 2),  # fullwidth C. (NFKC)
]


@pytest.mark.parametrize(("diagnosis", "index"), CHOICE_CASES)
def test_option_choice(diagnosis, index):
    parsed = parse_diag(diagnosis)
    assert (parsed.ok, parsed.error, parsed.option_index) == (True, None, index)


REJECT_CASES = [
    ("E. basal cell carcinoma", "option_not_offered"),
    ("Z", "option_not_offered"),
    ("A. melanoma B. melanoma in situ C. seborrheic keratosis D. melanocytic nevus", "ambiguous_option"),
    ("melanoma in situ, seborrheic keratosis, melanocytic nevus", "ambiguous_option"),
    ("A or B", "ambiguous_option"),
    ("A and C", "ambiguous_option"),
    ("A/B", "ambiguous_option"),
    ("C, D", "ambiguous_option"),
    ("B. seborrheic keratosis", "ambiguous_option"),  # letter and text disagree
    ("A. melanoma in situ", "ambiguous_option"),  # "melanoma in situ" is option B, not A
    ("melanoma in situ, or maybe melanoma", "ambiguous_option"),
    ("A. melanoma (or E)", "ambiguous_option"),
    ("basal cell carcinoma", "no_option"),
    ("a", "no_option"),
    ("\u0421. basal cell carcinoma", "no_option"),  # Cyrillic Es is not the letter C
    ("status: malignant", "no_option"),
    ("B. melanoma in situ; status: malignant (C)", "ambiguous_option"),  # a status clause cannot hide a 2nd answer
    ("B; status: seborrheic keratosis", "ambiguous_option"),
]


@pytest.mark.parametrize(("diagnosis", "error"), REJECT_CASES)
def test_option_rejections(diagnosis, error):
    parsed = parse_diag(diagnosis)
    assert (parsed.ok, parsed.error, parsed.option_index) == (False, error, None)


def test_options_are_validated():
    with pytest.raises(ValueError):
        parse_completion(wrap("A"), "melanoma")
    with pytest.raises(ValueError):
        parse_completion(wrap("A"), [f"o{i}" for i in range(27)])
    with pytest.raises(ValueError):
        parse_completion(wrap("A"), ["melanoma", 3])


# --- status ---------------------------------------------------------------------------------------------------

STATUS_CASES = [
    ("C. seborrheic keratosis; status: benign", "benign"),
    ("C. seborrheic keratosis; Status = Benign", "benign"),
    ("B. melanoma in situ; status: precancerous in situ", "precancerous_in_situ"),
    ("B. melanoma in situ; status: pre-cancerous", "precancerous_in_situ"),
    ("B. melanoma in situ; status: precancerous_in_situ", "precancerous_in_situ"),
    ("A. melanoma, malignant", "malignant"),
    ("C. seborrheic keratosis", None),
    ("C. seborrheic keratosis; status: benign; status: malignant", None),  # two statuses: never credit
    ("C. seborrheic keratosis; status: benign or malignant", None),
    ("C. seborrheic keratosis, benign but possibly malignant", None),
    ("C. seborrheic keratosis; status: non-malignant", None),
    ("C. seborrheic keratosis; status: not malignant", None),
    ("C. seborrheic keratosis; status: unknown", None),
]


@pytest.mark.parametrize(("diagnosis", "status"), STATUS_CASES)
def test_status(diagnosis, status):
    parsed = parse_diag(diagnosis)
    assert parsed.ok and parsed.status == status


def test_status_label_wins_over_status_words_in_option_text():
    opts = ["malignant melanoma", "benign keratosis", "dermatofibroma"]
    assert parse_diag("A. malignant melanoma; status: malignant", opts).status == "malignant"
    assert parse_diag("A. malignant melanoma; status: benign", opts).status == "benign"
    assert parse_diag("A. malignant melanoma", opts).status == "malignant"
    assert parse_diag("B. benign keratosis", opts).status == "benign"
    parsed = parse_diag("status: benign; B. benign keratosis", opts)
    assert parsed.ok and parsed.option_index == 1 and parsed.status == "benign"


def test_malignancy_suite_options():
    opts = ["benign", "malignant", "precancerous in situ"]
    parsed = parse_diag("C. precancerous in situ", opts)
    assert parsed.ok and parsed.option_index == 2 and parsed.status == "precancerous_in_situ"
    assert parse_diag("A. benign", opts).status == "benign"
    assert parse_diag("A. malignant", opts).error == "ambiguous_option"


def test_normalize_status():
    assert normalize_status("Precancerous in situ") == "precancerous_in_situ"
    assert normalize_status("benign") == "benign"
    assert normalize_status("benign, malignant") is None
    assert normalize_status(None) is None


def test_statuses_match_the_taxonomy_buckets():
    from skinr1_pipeline.knowledge.taxonomy import BUCKETS

    assert tuple(STATUSES) == tuple(BUCKETS)


# --- prompts and targets --------------------------------------------------------------------------------------


def test_letters():
    assert letters(0) == []
    assert letters(4) == ["A", "B", "C", "D"]
    assert letters(26)[-1] == "Z"
    for bad in (-1, 27, 2.0, True, "3"):
        with pytest.raises(ValueError):
            letters(bad)


def test_mcq_prompt_lists_options_one_per_line():
    prompt = build_mcq_prompt("What type of abnormality is present in this image?", OPTS)
    lines = prompt.splitlines()
    assert lines[0] == "What type of abnormality is present in this image?"
    assert lines[2:6] == ["A. melanoma", "B. melanoma in situ", "C. seborrheic keratosis", "D. melanocytic nevus"]
    assert "most specific" in prompt and "status" in prompt and THINK_OPEN in prompt and DIAG_OPEN in prompt
    assert "status" not in build_mcq_prompt("Q?", OPTS, ask_status=False)
    assert prompt_options(prompt) == OPTS


def test_open_prompt():
    prompt = build_open_prompt()
    assert prompt_options(prompt) is None
    assert THINK_OPEN in prompt and DIAG_CLOSE in prompt and "status" in prompt
    assert "status" not in build_open_prompt("Name it.", ask_status=False)


@pytest.mark.parametrize(
    "options",
    [
        [],
        [f"o{i}" for i in range(27)],
        ["a", "A"],
        ["x\ny", "z"],
        ["", "b"],
        ["melanoma", None],
        "melanoma",
        ["<diagnosis>", "b"],
    ],
)
def test_mcq_prompt_rejects_bad_options(options):
    with pytest.raises(ValueError):
        build_mcq_prompt("Q?", options)


def test_prompt_options_reads_conversational_prompts():
    text = build_mcq_prompt("Q?", OPTS)
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]},
    ]
    assert prompt_options(messages) == OPTS
    assert prompt_options([{"role": "user", "content": text}]) == OPTS
    assert prompt_options(None) is None


@pytest.mark.parametrize("name", sorted(SYSTEM_PROMPTS))
def test_every_system_prompt_states_the_format_and_lists_no_options(name: str):
    text = system_prompt_text(name)
    assert THINK_OPEN in text and THINK_CLOSE in text
    assert DIAG_OPEN in text and DIAG_CLOSE in text
    assert all(s in text for s in ("benign", "precancerous", "malignant"))
    assert prompt_options(text) is None
    assert len(text) < 1200


def test_an_unknown_system_prompt_name_is_refused_naming_the_choices():
    assert system_prompt_text("full") == SYSTEM_PROMPT
    with pytest.raises(ValueError, match=r"system_prompt must be one of \('full', 'compact'\), got 'terse'"):
        system_prompt_text("terse")


@pytest.mark.parametrize(
    ("thinking", "diagnosis"),
    [
        ("", "A"),
        ("x", " "),
        ("a <thinking> b", "A"),
        ("x", "A </diagnosis>"),
        ("x", "A \uff1cdiagnosis\uff1e"),
        (None, "A"),
        ("x" * MAX_COMPLETION_CHARS, "A"),
    ],
)
def test_format_completion_refuses_what_the_parser_would_reject(thinking, diagnosis):
    with pytest.raises(ValueError):
        format_completion(thinking, diagnosis)


def test_contains_tag():
    assert contains_tag("see </Diagnosis>") and contains_tag("\uff1cthinking\uff1e")
    assert not contains_tag("a < b > c, diagnosis thinking")


# --- properties -----------------------------------------------------------------------------------------------

FRAGMENTS = [
    "<thinking>",
    "</thinking>",
    "<diagnosis>",
    "</diagnosis>",
    "< diagnosis >",
    "</Thinking>",
    "<think>",
    "\uff1cthinking\uff1e",
    "<di\u0430gnosis>",
    "A",
    "B.",
    "(C)",
    "D",
    "E.",
    "Z",
    "a",
    "b",
    " or ",
    ", ",
    " ",
    "\n",
    "melanoma",
    "melanoma in situ",
    "seborrheic keratosis",
    "melanocytic nevus",
    "status:",
    " benign",
    " malignant",
    " precancerous in situ",
    " not",
    "; ",
    "\u200b",
    "\uff23.",
    "x",
    "Option ",
    "The lesion",
]


def _assert_invariants(text, parsed, options):
    assert isinstance(parsed, ParsedCompletion)
    assert parsed.ok == (parsed.error is None)
    if parsed.error is not None:
        assert parsed.error in ERROR_CODES
        assert parsed.option_index is None
    assert parsed.status in (*STATUSES, None)
    if parsed.ok:
        assert isinstance(text, str) and len(text) <= MAX_COMPLETION_CHARS
        for tag in (THINK_OPEN, THINK_CLOSE, DIAG_OPEN, DIAG_CLOSE):
            assert text.count(tag) == 1
        assert text.index(THINK_CLOSE) < text.index(DIAG_OPEN)
        assert parsed.thinking and parsed.diagnosis
        assert not contains_tag(parsed.thinking) and not contains_tag(parsed.diagnosis)
        if options:
            assert parsed.option_index is not None and 0 <= parsed.option_index < len(options)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=400))
def test_property_random_text_never_raises(text):
    for options in (None, OPTS):
        _assert_invariants(text, parse_completion(text, options), options)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=25))
def test_property_recombined_fragments_never_raise(fragments):
    text = "".join(fragments)
    for options in (None, OPTS):
        _assert_invariants(text, parse_completion(text, options), options)


def _phrase(phrase: str) -> str:
    return r"(?<![^\W_])" + re.escape(phrase) + r"(?![^\W_])"


def _names(text: str, phrase: str) -> bool:
    return re.search(_phrase(phrase), text, re.IGNORECASE) is not None


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=12))
def test_property_no_credit_unless_exactly_one_offered_option_is_named(fragments):
    """Soundness of every accepted MCQ answer, checked against a naive reading of its diagnosis."""
    parsed = parse_completion(wrap("".join(fragments)), OPTS)
    if not parsed.ok:
        return
    diagnosis = unicodedata.normalize("NFKC", parsed.diagnosis)
    chosen, letter = parsed.option_index, "ABCD"[parsed.option_index]
    assert _names(diagnosis, OPTS[chosen]) or re.search(rf"(?<![^\W_]){letter}(?![^\W_])", diagnosis)
    rest = re.sub(_phrase(OPTS[chosen]), " ", diagnosis, flags=re.IGNORECASE)
    assert not any(_names(rest, opt) for i, opt in enumerate(OPTS) if i != chosen)
    for opt in OPTS:
        rest = re.sub(_phrase(opt), " ", rest, flags=re.IGNORECASE)
    other_letters = set(re.findall(r"(?<![^\W_])[A-Z](?![^\W_])", rest)) - {letter, "A"}
    assert not other_letters


def _render(index, style):
    letter, text = "ABCD"[index], OPTS[index]
    return [f"{letter}.", f"({letter})", f"{letter}. {text}", text, f"Option {letter}", text.upper()][style]


@settings(max_examples=300, deadline=None)
@given(
    st.permutations(range(4)),
    st.integers(0, 5),
    st.integers(0, 5),
    st.sampled_from([" or ", ", ", "; ", " / ", " and ", " then "]),
    st.sampled_from([*STATUSES, None]),
)
def test_property_naming_two_options_is_never_credited(order, style_a, style_b, sep, status):
    first, second = order[0], order[1]
    diagnosis = _render(first, style_a) + sep + _render(second, style_b)
    if status:
        diagnosis += f"; status: {status}"
    parsed = parse_diag(diagnosis)
    assert not parsed.ok
    assert parsed.error == "ambiguous_option"


@settings(max_examples=200, deadline=None)
@given(
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=200),
    st.integers(0, 3),
    st.sampled_from([*STATUSES, None]),
)
def test_property_round_trip_with_arbitrary_thinking(thinking, index, status):
    try:
        text = format_completion(thinking, format_mcq_answer(OPTS, index, status))
    except ValueError:
        assert not thinking.strip() or contains_tag(thinking)
        return
    parsed = parse_completion(text, OPTS)
    assert parsed.ok and parsed.option_index == index and parsed.status == status


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 3), st.sampled_from(TAG_VARIANTS + CONFUSABLE_TAGS), st.integers(0, 10_000))
def test_property_any_tag_inserted_anywhere_breaks_the_parse(index, tag, position):
    text = format_completion(THINK, format_mcq_answer(OPTS, index, "benign"))
    cut = position % (len(text) + 1)
    assert not parse_completion(text[:cut] + tag + text[cut:], OPTS).ok
