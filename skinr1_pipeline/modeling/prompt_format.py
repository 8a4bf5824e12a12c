"""The single output contract of the model: prompts, the completion format and its strict parser.

SFT targets, GRPO rewards, evaluation and the CLI all import this module, so the format can drift in one place only.
The authors' code taught `<diagnosis>` in SFT but rewarded `<final diagnosis>` in RL, and read "the first letter" of
the answer (so the "a" of an ordinary word counted as option A). We keep one tag pair in every stage and parse
strictly, because under RL every leniency of the parser is a reward the policy can learn to collect without
answering: several answer blocks, every option named at once, a tag look-alike that a looser parser downstream
would honour. Anything the parser cannot read unambiguously earns nothing.

Completion format (whitespace allowed only around the blocks)::

    <thinking>...reasoning...</thinking>
    <diagnosis>B. seborrheic keratosis; status: benign</diagnosis>

Multiple-choice answers: one offered option letter (optionally followed by that option's text) and optionally
`status: benign | precancerous | malignant` ("precancerous in situ" also reads as precancerous). Open-ended answers:
a free-text diagnosis name, optionally with the same status clause.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from itertools import accumulate
from typing import Any

THINK_OPEN, THINK_CLOSE = "<thinking>", "</thinking>"
DIAG_OPEN, DIAG_CLOSE = "<diagnosis>", "</diagnosis>"

#: Malignancy buckets, spelled as the taxonomy spells them (`knowledge.taxonomy.BUCKETS`).
STATUSES = ("benign", "precancerous_in_situ", "malignant")
#: How each bucket is written in a completion.
STATUS_WORDS = {"benign": "benign", "precancerous_in_situ": "precancerous", "malignant": "malignant"}

#: Checked before anything else, so a runaway generation costs O(n) once and never reaches a regex.
MAX_COMPLETION_CHARS = 20_000
MAX_OPTIONS = 26

#: Every reason code `parse_completion` can return, for dashboards and tests.
ERROR_CODES = (
    "not_a_string",  # input is not a str
    "too_long",  # longer than max_chars
    "empty",  # nothing but whitespace
    "confusable_tag",  # a format tag spelled with look-alike characters (fullwidth <, Cyrillic a, zero-width ...)
    "malformed_tag",  # a case / spacing variant of a format tag (</Diagnosis>, < thinking >)
    "foreign_tag",  # another format's tag (<think>, <answer>, <final diagnosis>)
    "no_thinking",
    "no_diagnosis",
    "tags_inside_thinking",  # a format tag between <thinking> and </thinking>
    "multiple_thinking",
    "multiple_diagnosis",
    "nested_tags",  # blocks interleave or the thinking block sits inside the diagnosis block
    "wrong_order",  # diagnosis block before thinking block
    "unbalanced_tags",  # an opening tag without its closing tag, or the reverse
    "text_outside_tags",
    "empty_thinking",
    "empty_diagnosis",
    "no_option",  # MCQ: neither an option letter nor an option text
    "option_not_offered",  # MCQ: a letter beyond the offered ones
    "ambiguous_option",  # MCQ: two letters, two option texts, or a letter and a text that disagree
)

# --- tag detection -------------------------------------------------------------------------------------------

_CANONICAL = {
    THINK_OPEN: ("thinking", False),
    THINK_CLOSE: ("thinking", True),
    DIAG_OPEN: ("diagnosis", False),
    DIAG_CLOSE: ("diagnosis", True),
}

# Best-effort table of characters that render like the ASCII ones a tag is made of and that NFKC leaves alone.
# It only decides how a *rejection* is labelled or whether a look-alike inside a block is caught: the parser honours
# nothing but the exact ASCII tags, so an unlisted look-alike can never be accepted as a tag.
_CONFUSABLE_PAIRS = (
    "аa еe оo рp сc хx уy іi јj ѕs һh кk ԁd ɡg ӏl ոn ѵv ԝw ԛq тt пn ıi ȷj ɩi ɑa ɪi ʜh ɴn ɢg ᴀa ᴅd ᴋk ᴏo ᴛt ꜱs "
    "АA ВB ЕE КK МM НH ОO РP СC ТT ХX ІI ЈJ ЅS "
    "αa οo ιi κk νv τt ρp ΑA ΒB ΕE ΖZ ΗH ΙI ΚK ΜM ΝN ΟO ΡP ΤT ΥY ΧX "
    "‹< ›> 〈< 〉> ⟨< ⟩> ˂< ˃> ᐸ< ᐳ> ❮< ❯> ≺< ≻> ∕/ ⁄/ ⧸/ ╱/ ⟋/"
)
_CONFUSABLES = {pair[0]: pair[1] for pair in _CONFUSABLE_PAIRS.split()}
_DROPPED_CATEGORIES = {"Mn", "Me", "Cf"}  # combining marks and invisible format characters (ZWSP, ZWJ, BOM ...)

# Possessive quantifiers keep this linear on adversarial runs of whitespace.
_TAG_RE = re.compile(r"<\s*+(/?)\s*+(thinking|think|diagnosis|final[\s_-]*+diagnosis|answer)\s*+/?\s*+>")


@lru_cache(maxsize=65536)
def _skeleton_char(ch: str) -> str:
    out = []
    for c in unicodedata.normalize("NFKC", ch):
        if unicodedata.category(c) in _DROPPED_CATEGORIES:
            continue
        out.append(_CONFUSABLES.get(c, c))
    return "".join(out).lower()


@dataclass(frozen=True, slots=True)
class _Tag:
    name: str  # thinking | diagnosis | foreign
    closing: bool
    start: int  # span in the original text
    end: int
    canonical: bool
    ascii: bool


def _find_tags(text: str) -> list[_Tag]:
    """All tag-like tokens, found on a confusable-folded skeleton but reported with spans in `text`.

    Why a skeleton: a fullwidth or Cyrillic `<thinking>` inside a block is invisible to an ASCII regex but looks like
    a tag to a human or to a looser parser later on; finding it lets us reject it instead of passing it through.
    """
    if text.isascii():
        skeleton, starts = text.lower(), None
    else:
        parts = [_skeleton_char(c) for c in text]
        skeleton = "".join(parts)
        starts = list(accumulate(map(len, parts), initial=0))
    tags = []
    for m in _TAG_RE.finditer(skeleton):
        if starts is None:
            start, end = m.start(), m.end()
        else:
            start = bisect_right(starts, m.start()) - 1
            end = bisect_right(starts, m.end() - 1)
        raw = text[start:end]
        canon = _CANONICAL.get(raw)
        name = m.group(2)
        name = name if name in ("thinking", "diagnosis") else "foreign"
        tags.append(_Tag(name, bool(m.group(1)), start, end, canon is not None, raw.isascii()))
    return tags


def contains_tag(text: str) -> bool:
    """True when `text` holds anything that looks like a format tag (any case, spacing or look-alike spelling)."""
    return bool(_find_tags(text))


# --- parsed result -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ParsedCompletion:
    """Outcome of `parse_completion`. Consumers must check `ok`: fields may be filled on a failed parse for logging."""

    ok: bool
    error: str | None = None
    thinking: str | None = None
    diagnosis: str | None = None
    option_index: int | None = None
    status: str | None = None

    @property
    def option_letter(self) -> str | None:
        return None if self.option_index is None else chr(ord("A") + self.option_index)


def _fail(
    error: str, thinking: str | None = None, diagnosis: str | None = None, status: str | None = None
) -> ParsedCompletion:
    return ParsedCompletion(False, error, thinking, diagnosis, None, status)


_TO, _TC, _DO, _DC = ("thinking", False), ("thinking", True), ("diagnosis", False), ("diagnosis", True)


def _structure_error(tags: list[_Tag]) -> str | None:
    """Reason code when the canonical tags are not exactly <thinking></thinking><diagnosis></diagnosis>."""
    seq = [(t.name, t.closing) for t in tags]
    if seq == [_TO, _TC, _DO, _DC]:
        return None
    count = {k: seq.count(k) for k in (_TO, _TC, _DO, _DC)}
    if not count[_TO] and not count[_TC]:
        return "no_thinking"
    if not count[_DO] and not count[_DC]:
        return "no_diagnosis"
    if seq[0] == _TO and _TC in seq and seq.index(_TC) > 1:
        return "tags_inside_thinking"
    if count[_TO] > 1 or count[_TC] > 1:
        return "multiple_thinking"
    if count[_DO] > 1 or count[_DC] > 1:
        return "multiple_diagnosis"
    if any(v != 1 for v in count.values()):
        return "unbalanced_tags"
    t0, t1, d0, d1 = (seq.index(k) for k in (_TO, _TC, _DO, _DC))
    if t0 > t1 or d0 > d1:
        return "unbalanced_tags"
    if d1 < t0:
        return "wrong_order"
    return "nested_tags"


# --- status ----------------------------------------------------------------------------------------------------

_LETTERLESS_BEFORE = r"(?<![^\W\d_])"  # not preceded by a letter
_LETTERLESS_AFTER = r"(?![^\W\d_])"
_STATUS_WORD_RE = re.compile(
    _LETTERLESS_BEFORE + r"(non[\s-]?|not\s++)?"
    r"(benign|malignant|pre[\s-]?cancerous(?:[\s_-]++in[\s_-]++situ)?|pre[\s-]?malignant)" + _LETTERLESS_AFTER,
    re.IGNORECASE,
)
# A status clause ("status: benign") runs from the label to the next ';' or line break.
_STATUS_LABEL_RE = re.compile(r"(?<![^\W_])status\s*+[:=\-\u2013\u2014]", re.IGNORECASE)
_STATUS_CLAUSE_RE = re.compile(_STATUS_LABEL_RE.pattern + r"[^;\n]*", re.IGNORECASE)


def without_status_clause(text: str) -> str:
    """`text` before its first status label ("melanoma; status: malignant" -> "melanoma; "): the part that names the
    diagnosis, for readers that map a free-text answer to a taxonomy node."""
    found = _STATUS_LABEL_RE.search(text)
    return text[: found.start()] if found else text


def _status_bucket(word: str) -> str:
    """The status a word matched by `_STATUS_WORD_RE` (group 2) names; every pre-cancerous spelling is one bucket."""
    word = word.lower()
    return word if word in ("benign", "malignant") else "precancerous_in_situ"


def _status_in(text: str) -> tuple[bool, str | None]:
    """(found any status word, the single distinct status or None). A negated word makes the answer unreadable."""
    found = set()
    for m in _STATUS_WORD_RE.finditer(text):
        if m.group(1):
            return True, None
        found.add(_status_bucket(m.group(2)))
    if not found:
        return False, None
    return True, (found.pop() if len(found) == 1 else None)


def normalize_status(text: Any) -> str | None:
    """Bucket named by `text` ("Precancerous in situ" -> precancerous_in_situ), or None when not exactly one."""
    if not isinstance(text, str):
        return None
    return _status_in(unicodedata.normalize("NFKC", text))[1]


# --- options ---------------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")


@lru_cache(maxsize=4096)
def _option_matchers(options: tuple[str, ...]) -> tuple[tuple[re.Pattern[str] | None, str], ...]:
    """Per option: a pattern that finds its text with any case / punctuation / spacing between words, and a key."""
    out = []
    for opt in options:
        words = _WORD_RE.findall(unicodedata.normalize("NFKC", opt))
        if not words:
            out.append((None, ""))
            continue
        body = r"[\W_]+".join(r"['\u2019]?".join(map(re.escape, re.split(r"['\u2019]", w))) for w in words)
        pattern = re.compile(r"(?<![^\W_])" + body + r"(?![^\W_])", re.IGNORECASE)
        key = " ".join(re.sub(r"['\u2019]", "", w).casefold() for w in words)
        out.append((pattern, key))
    return tuple(out)


# A letter is any upper-case letter standing alone ("B", "B.", "(B)", "option B", "A or B"), never one glued to a
# word ("T-cell", "Paget's") and never a lower-case one, so the "a" of "a nevus" is not option A. An "A" or "I" that
# opens a sentence and is followed by an ordinary lower-case word is the article or the pronoun ("A melanocytic
# nevus", "I think"), not a letter; anywhere else ("Option A then B", "A or B") it is a letter, so hedging between
# options names two of them and earns nothing.
_LETTER_RE = re.compile(r"(?<![^\W_])(?<![^\W_]-)([A-Z])(?![^\W_]|['\u2019-][^\W_])")
_WORD_AFTER_RE = re.compile(r"\s++(?!(?:or|and|nor|vs|versus)(?![^\W_]))[a-z]")
_SENTENCE_START_RE = re.compile(r"(?:^|[.!?;\n])\s*+$")


def _letters_named(masked: str, original: str) -> set[str]:
    """Letters standing alone in `masked` (option texts blanked out); the article test reads `original`."""
    found = set()
    for m in _LETTER_RE.finditer(masked):
        letter = m.group(1)
        if (
            letter in "AI"
            and _WORD_AFTER_RE.match(original, m.end())
            and _SENTENCE_START_RE.search(original[max(0, m.start() - 64) : m.start()])
        ):
            continue
        found.add(letter)
    return found


def _validate_options(options: Any) -> tuple[str, ...] | None:
    if options is None:
        return None
    if isinstance(options, str) or not isinstance(options, Sequence):
        raise ValueError(f"options must be a list of strings, got {type(options).__name__}")
    if len(options) > MAX_OPTIONS:
        raise ValueError(f"at most {MAX_OPTIONS} options are supported, got {len(options)}")
    if not all(isinstance(o, str) for o in options):
        raise ValueError("every option must be a string")
    return tuple(options) or None


def _choose_option(part: str, options: tuple[str, ...]) -> tuple[str | None, int | None, list[tuple[int, int]]]:
    """(error, option index, spans of option texts in `part`) for the answer part of a diagnosis."""
    matchers = _option_matchers(options)
    spans: dict[tuple[int, int], set[int]] = {}
    for i, (pattern, _key) in enumerate(matchers):
        if pattern is not None:
            for m in pattern.finditer(part):
                spans.setdefault((m.start(), m.end()), set()).add(i)
    # Containment: in "melanoma in situ" the shorter option "melanoma" is not named, only the longer one.
    named: set[int] = set()
    max_end = -1
    for start, end in sorted(spans, key=lambda s: (s[0], -s[1])):
        if end > max_end:
            named |= spans[(start, end)]
            max_end = end
    masked = list(part)
    for start, end in spans:
        masked[start:end] = " " * (end - start)
    chosen_letters = _letters_named("".join(masked), part)
    keys = {matchers[i][1] for i in named}
    span_list = list(spans)
    if not chosen_letters and not named:
        return "no_option", None, span_list
    if len(chosen_letters) > 1 or len(keys) > 1:
        return "ambiguous_option", None, span_list
    if chosen_letters:
        index = ord(chosen_letters.pop()) - ord("A")
        if index >= len(options):
            return "option_not_offered", None, span_list
        if keys and matchers[index][1] not in keys:
            return "ambiguous_option", None, span_list
        return None, index, span_list
    if len(named) > 1:  # two offered options with the same text
        return "ambiguous_option", None, span_list
    return None, named.pop(), span_list


def _without_status_words(diagnosis: str) -> str:
    """`diagnosis` with each status label and the status words of its clause blanked (same length).

    Only those words go: anything else written in a status clause ("status: benign (B)") still counts as naming an
    option, so the clause cannot hide a second answer.
    """
    chars = list(diagnosis)
    for clause in _STATUS_CLAUSE_RE.finditer(diagnosis):
        spans = [_STATUS_LABEL_RE.match(diagnosis, clause.start()).span()]
        spans += [m.span() for m in _STATUS_WORD_RE.finditer(diagnosis, clause.start(), clause.end())]
        for start, end in spans:
            chars[start:end] = " " * (end - start)
    return "".join(chars)


def _read_status(diagnosis: str, answer_part: str, option_spans: list[tuple[int, int]]) -> str | None:
    clauses = [m.group(0) for m in _STATUS_CLAUSE_RE.finditer(diagnosis)]
    if clauses:
        return _status_in(" ; ".join(clauses))[1]
    masked = list(answer_part)
    for start, end in option_spans:
        masked[start:end] = " " * (end - start)
    found, status = _status_in("".join(masked))
    return status if found else _status_in(answer_part)[1]


# --- the parser ------------------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str | None:
    """Text of a completion given as a string or as TRL's conversational `[{"role": "assistant", "content": ...}]`.

    Content may be a string or a list of `{"type": "text", "text": ...}` parts. Anything else (several messages,
    non-text parts) returns None, which the parser rejects: an unexpected shape must not be scored as an answer.
    """
    if isinstance(completion, str):
        return completion
    if not isinstance(completion, (list, tuple)) or len(completion) != 1 or not isinstance(completion[0], dict):
        return None
    message = completion[0]
    if message.get("role", "assistant") != "assistant":
        return None
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)) and content:
        if all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in content):
            return "".join(p["text"] for p in content)
    return None


def parse_completion(
    text: Any, options: Sequence[str] | None = None, *, max_chars: int = MAX_COMPLETION_CHARS
) -> ParsedCompletion:
    """Strictly parse one completion; never raises on the completion (bad `options` are a caller bug: ValueError).

    Exactly one thinking block, then exactly one diagnosis block, only whitespace outside them, no tag of any
    spelling inside them. With `options`, the diagnosis must pick exactly one offered option (see module docstring).
    """
    if not isinstance(text, str):
        return _fail("not_a_string")
    if len(text) > max_chars:
        return _fail("too_long")
    opts = _validate_options(options)
    if not text.strip():
        return _fail("empty")
    tags = _find_tags(text)
    for tag in tags:
        if not tag.canonical:
            if not tag.ascii:
                return _fail("confusable_tag")
            return _fail("foreign_tag" if tag.name == "foreign" else "malformed_tag")
    error = _structure_error(tags)
    if error:
        return _fail(error)
    t_open, t_close, d_open, d_close = tags
    if text[: t_open.start].strip() or text[t_close.end : d_open.start].strip() or text[d_close.end :].strip():
        return _fail("text_outside_tags")
    thinking = text[t_open.end : t_close.start].strip()
    diagnosis = text[d_open.end : d_close.start].strip()
    if not thinking:
        return _fail("empty_thinking", diagnosis=diagnosis or None)
    if not diagnosis:
        return _fail("empty_diagnosis", thinking=thinking)

    norm = unicodedata.normalize("NFKC", diagnosis)
    answer_part = _without_status_words(norm)
    error, index, spans = (None, None, []) if opts is None else _choose_option(answer_part, opts)
    status = _read_status(norm, answer_part, spans)
    if error:
        return _fail(error, thinking, diagnosis, status)
    return ParsedCompletion(True, None, thinking, diagnosis, index, status)


# --- prompts and targets ---------------------------------------------------------------------------------------

SYSTEM_PROMPT = (
    "You are a careful dermatology assistant. Examine the skin image and reply in exactly this format, with nothing "
    "before, between or after the two blocks:\n"
    "<thinking>your reasoning: the visible lesion features and how they support or rule out each candidate"
    "</thinking>\n"
    "<diagnosis>your final answer</diagnosis>\n"
    "Write each block once and never write these tags anywhere else. For a multiple-choice question the final answer "
    "is the letter of one offered option, its text and the lesion status, for example "
    "<diagnosis>B. seborrheic keratosis; status: benign</diagnosis>. For an open question it is the most specific "
    "diagnosis name and the status, for example <diagnosis>basal cell carcinoma; status: malignant</diagnosis>. "
    "The status is one of: benign, precancerous, malignant."
)

# The demo recipe's system prompt: the same contract in a fifth of the tokens. Why: the tiny demo model reads the
# system prompt on every training step and every scored option, where it was over half of each sequence (226 of ~400
# tokens); SFT steps took half the time without it. It names no letter, so it fits both answer forms.
COMPACT_SYSTEM_PROMPT = (
    "Examine the skin image. Reply <thinking>your reasoning</thinking> then <diagnosis>the offered option or the "
    "diagnosis name; status: benign, precancerous or malignant</diagnosis>, nothing else."
)
SYSTEM_PROMPTS = {"full": SYSTEM_PROMPT, "compact": COMPACT_SYSTEM_PROMPT}  # a recipe's `system_prompt` choice


def system_prompt_text(name: str) -> str:
    """The system prompt a recipe names (`SYSTEM_PROMPTS`); the ValueError every taker of the name raises."""
    if name not in SYSTEM_PROMPTS:
        raise ValueError(f"system_prompt must be one of {tuple(SYSTEM_PROMPTS)}, got {name!r}")
    return SYSTEM_PROMPTS[name]


DEFAULT_MCQ_QUESTION = "What type of abnormality is present in this image?"
DEFAULT_OPEN_QUESTION = "What is the most specific diagnosis for the skin lesion in this image?"
_STATUS_CHOICES = "benign, precancerous or malignant"


def letters(n: int) -> list[str]:
    """The first `n` option letters (A, B, ...); at most 26."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_OPTIONS:
        raise ValueError(f"n must be an int in 0..{MAX_OPTIONS}, got {n!r}")
    return [chr(ord("A") + i) for i in range(n)]


def _check_options_for_prompt(options: Sequence[str]) -> list[str]:
    if isinstance(options, str) or not isinstance(options, Sequence) or not 1 <= len(options) <= MAX_OPTIONS:
        raise ValueError(f"options must be a list of 1..{MAX_OPTIONS} strings")
    cleaned, keys = [], set()
    for opt in options:
        if not isinstance(opt, str) or not opt.strip():
            raise ValueError(f"every option must be a non-empty string, got {opt!r}")
        if "\n" in opt or "\r" in opt:
            raise ValueError(f"an option must fit on one line: {opt!r}")
        if contains_tag(opt):
            raise ValueError(f"an option must not contain a format tag: {opt!r}")
        key = _option_matchers((opt,))[0][1]
        if key in keys:
            raise ValueError(f"duplicate option text: {opt!r}")
        keys.add(key)
        cleaned.append(opt.strip())
    return cleaned


def build_mcq_prompt(question: str, options: list[str], ask_status: bool = True) -> str:
    """User-turn text of a multiple-choice item: question, lettered options one per line, answer instructions.

    Options sit on their own `X. text` lines so `prompt_options` can read them back for the reward alignment guard.
    """
    if not isinstance(question, str):
        raise ValueError("question must be a string")
    cleaned = _check_options_for_prompt(options)
    lines = [question.strip() or DEFAULT_MCQ_QUESTION, "Options:"]
    lines += [f"{letter}. {opt}" for letter, opt in zip(letters(len(cleaned)), cleaned)]
    instruction = (
        "Choose the single best option; if several options are correct, choose the most specific (fine-grained) one."
    )
    answer = "LETTER. option text"
    if ask_status:
        instruction += f" Also give the lesion status: {_STATUS_CHOICES}."
        answer += "; status: STATUS"
    lines.append(instruction)
    lines.append(f"Reply as <thinking>...</thinking><diagnosis>{answer}</diagnosis>")
    return "\n".join(lines)


def build_open_prompt(question: str = DEFAULT_OPEN_QUESTION, ask_status: bool = True) -> str:
    """User-turn text of an open-ended item (free-text diagnosis name)."""
    if not isinstance(question, str):
        raise ValueError("question must be a string")
    lines = [question.strip() or DEFAULT_OPEN_QUESTION]
    answer = "diagnosis name"
    instruction = "Name the single most specific diagnosis."
    if ask_status:
        instruction += f" Also give the lesion status: {_STATUS_CHOICES}."
        answer += "; status: STATUS"
    lines.append(instruction)
    lines.append(f"Reply as <thinking>...</thinking><diagnosis>{answer}</diagnosis>")
    return "\n".join(lines)


#: How a taught multiple-choice answer names its option: `letter` "B. seborrheic keratosis" (the paper's), or `text`
#: "seborrheic keratosis" (the option's text alone, which the parser accepts as well; see `format_mcq_answer`).
ANSWER_FORMS = ("letter", "text")


def checked_answer_form(form: str) -> str:
    """`form` if it is one of `ANSWER_FORMS`; the ValueError every taker of an answer form raises otherwise."""
    if form not in ANSWER_FORMS:
        raise ValueError(f"answer_form must be one of {ANSWER_FORMS}, got {form!r}")
    return form


def format_mcq_answer(options: Sequence[str], index: int, status: str | None = None, *, form: str = "letter") -> str:
    """Diagnosis-block text for option `index`, e.g. "B. seborrheic keratosis; status: benign", or with `form="text"`
    "seborrheic keratosis; status: benign".

    Why a text form: finding the letter of a name in the option list is a lookup a language model trained from
    random weights for minutes fails at (the demo's 2-layer model marked the offered option only 19% of the time when
    its impression was offered word for word); writing an offered name is copying, which it does learn.
    """
    checked_answer_form(form)
    cleaned = _check_options_for_prompt(options)
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(cleaned):
        raise ValueError(f"index must be in 0..{len(cleaned) - 1}, got {index!r}")
    named = cleaned[index] if form == "text" else f"{letters(len(cleaned))[index]}. {cleaned[index]}"
    return _with_status(named, status)


def format_open_answer(name: str, status: str | None = None) -> str:
    """Diagnosis-block text for an open-ended item, e.g. "basal cell carcinoma; status: malignant"."""
    if not isinstance(name, str) or not name.strip() or contains_tag(name):
        raise ValueError(f"name must be a non-empty string without format tags, got {name!r}")
    return _with_status(name.strip(), status)


def _with_status(answer: str, status: str | None) -> str:
    if status is None:
        return answer
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES} or None, got {status!r}")
    return f"{answer}; status: {STATUS_WORDS[status]}"


def format_completion(thinking: str, diagnosis: str) -> str:
    """Assemble an SFT target; raises ValueError for anything `parse_completion` would not accept structurally."""
    for label, value in (("thinking", thinking), ("diagnosis", diagnosis)):
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{label} must be a non-empty string")
        if contains_tag(value):
            raise ValueError(f"{label} must not contain a format tag")
    text = f"{THINK_OPEN}\n{thinking.strip()}\n{THINK_CLOSE}\n{DIAG_OPEN}{diagnosis.strip()}{DIAG_CLOSE}"
    if len(text) > MAX_COMPLETION_CHARS:
        raise ValueError(f"completion longer than {MAX_COMPLETION_CHARS} characters")
    return text


# --- reading prompts back --------------------------------------------------------------------------------------

_OPTION_LINE_RE = re.compile(r"([A-Z])\. (.*\S)\s*")


def prompt_text(prompt: Any) -> str | None:
    """Plain text of a prompt given as a string or as chat messages (string or typed-part contents)."""
    if isinstance(prompt, str):
        return prompt
    if not isinstance(prompt, (list, tuple)):
        return None
    texts = []
    for message in prompt:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, (list, tuple)):
            texts += [
                p["text"]
                for p in content
                if isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
            ]
    return "\n".join(texts)


def prompt_options(prompt: Any) -> list[str] | None:
    """Options listed in a prompt built by `build_mcq_prompt`: the last run of lines "A. ...", "B. ...", ...

    Returns None when the prompt lists no options (open-ended items).
    """
    text = prompt_text(prompt)
    if text is None:
        return None
    last, run = None, None
    for line in text.splitlines():
        m = _OPTION_LINE_RE.fullmatch(line)
        if m and m.group(1) == "A":
            if run:
                last = run
            run = [m.group(2)]
        elif m and run is not None and ord(m.group(1)) - ord("A") == len(run):
            run.append(m.group(2))
        elif run is not None:
            last, run = run, None
    if run:
        last = run
    return last


def explicit_status(diagnosis: str | None, options: Sequence[str] | None = None) -> str | None:
    """The status stated by the diagnosis's explicit "status:" clause(s), or None when it cannot be trusted.

    Why stricter than `parse_completion`'s `status` (which evaluation reads): under RL (`training.rewards`) every
    fallback is a hedge the policy can learn. So an option text is never read as a status, no clause means no
    status, clauses must agree, and a status word anywhere else in the diagnosis (outside the chosen option's text)
    that contradicts the clause voids it: "possibly malignant; status: benign", "status: benign\nif atypical then
    malignant".
    """
    if not diagnosis:
        return None
    norm = unicodedata.normalize("NFKC", diagnosis)
    clauses = list(_STATUS_CLAUSE_RE.finditer(norm))
    if not clauses:
        return None
    statuses = set()
    for clause in clauses:
        label_end = _STATUS_LABEL_RE.match(norm, clause.start()).end()
        found, status = _status_in(norm[label_end : clause.end()])
        if not found or status is None:
            return None
        statuses.add(status)
    if len(statuses) != 1:
        return None
    status = statuses.pop()
    rest = list(norm)
    for clause in clauses:
        rest[clause.start() : clause.end()] = " " * (clause.end() - clause.start())
    if options:  # the option's own text ("benign keratosis") is not a status statement
        _error, _index, spans = _choose_option(_without_status_words(norm), tuple(options))
        for start, end in spans:
            rest[start:end] = " " * (end - start)
    for m in _STATUS_WORD_RE.finditer("".join(rest)):
        if (_status_bucket(m.group(2)) != status) != bool(m.group(1)):  # another status, or this one negated
            return None
    return status
