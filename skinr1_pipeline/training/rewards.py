"""GRPO reward functions with TRL's signature, `fn(completions, **kwargs) -> list[float | None]`.

Skin-R1's composite reward is format + granularity (the chosen option's hierarchical score, 0..0.75) + malignancy
(0.25 when the stated status matches the label's bucket); `accuracy_reward` is the flat alternative for the
no-granularity ablation. All rewards read completions through the one strict parser in `modeling.prompt_format`,
so a completion the evaluation would not accept earns nothing here either.

Why every call re-checks its batch: TRL hands dataset columns (`options`, `option_scores`, `bucket`, `sample_id`)
to reward functions as lists aligned with `completions` by position only. A dropped, repeated or reordered row
would silently pay one sample's completion with another sample's scores; a crash naming the row is far cheaper than
a policy trained on wrong rewards. So each reward checks column lengths and, when `prompts` are given, that the
options written in each prompt are that row's `options`.
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from skinr1_pipeline.modeling.prompt_format import (
    STATUSES,
    ParsedCompletion,
    completion_text,
    explicit_status,
    parse_completion,
    prompt_options,
)

FORMAT_REWARD = 1.0
MALIGNANCY_REWARD = 0.25
ACCURACY_REWARD = 1.0
#: Fewest letters/digits a thinking block needs to count as reasoning. Why: a "." or a lone zero-width space parses,
#: and would otherwise collect the full format reward without any reasoning. Far below any real rationale (the
#: demo's compact template rationales have hundreds).
MIN_THINKING_WORD_CHARS = 20
_WORD_CHAR_RE = re.compile(r"[^\W_]")  # letters and digits; punctuation, "_" and invisible characters do not count

_ROW_COLUMNS = ("options", "option_scores", "bucket", "sample_id")

RewardFn = Callable[..., list]


class RewardInputError(ValueError):
    """A reward call received data it cannot score honestly; names the row and sample when known."""

    def __init__(self, message: str, *, row: int | None = None, sample_id: Any = None, column: str | None = None):
        where = "" if row is None else f"row {row} (sample_id={sample_id!r}): "
        super().__init__(where + message)
        self.row, self.sample_id, self.column = row, sample_id, column


class RewardAlignmentError(RewardInputError):
    """Dataset columns do not line up with the completions (lengths differ, or a prompt shows other options)."""


def _columns(completions: Any, kwargs: dict[str, Any], required: tuple[str, ...]) -> dict[str, list]:
    """Validated per-row columns; raises RewardAlignmentError on any misalignment."""
    if isinstance(completions, str) or not isinstance(completions, Sequence):
        raise RewardInputError(f"completions must be a list, got {type(completions).__name__}")
    n = len(completions)
    for name in required:
        if kwargs.get(name) is None:
            raise RewardInputError(f"this reward needs the dataset column {name!r}", column=name)
    cols: dict[str, list] = {}
    for name in (*_ROW_COLUMNS, "prompts"):
        value = kwargs.get(name)
        if value is None:
            continue
        if isinstance(value, str) or not isinstance(value, Sequence) or len(value) != n:
            size = len(value) if isinstance(value, Sequence) else type(value).__name__
            raise RewardAlignmentError(f"column {name!r} has {size} rows but there are {n} completions", column=name)
        cols[name] = list(value)
    ids = cols.get("sample_id", [None] * n)
    options = cols.get("options", [None] * n)
    for i in range(n):
        opts = options[i]
        if opts is not None and (isinstance(opts, str) or not isinstance(opts, Sequence)):
            raise RewardInputError("options must be a list of strings", row=i, sample_id=ids[i], column="options")
        if "option_scores" in cols:
            scores = cols["option_scores"][i]
            if opts is not None and (not isinstance(scores, Sequence) or len(scores) != len(opts)):
                raise RewardAlignmentError(
                    f"{len(opts)} options but option_scores={scores!r}", row=i, sample_id=ids[i], column="option_scores"
                )
            if opts is not None and not all(_is_finite(s) for s in scores):
                raise RewardInputError(
                    f"option_scores must be finite numbers: {scores!r}", row=i, sample_id=ids[i], column="option_scores"
                )
        if "bucket" in cols and cols["bucket"][i] is not None and cols["bucket"][i] not in STATUSES:
            raise RewardInputError(
                f"bucket {cols['bucket'][i]!r} is not one of {STATUSES}", row=i, sample_id=ids[i], column="bucket"
            )
        if "prompts" in cols:
            expected = [o.strip() for o in opts] if opts else None
            shown = prompt_options(cols["prompts"][i])
            if shown != expected:
                raise RewardAlignmentError(
                    f"the prompt lists options {shown!r} but the options column holds {expected!r}",
                    row=i,
                    sample_id=ids[i],
                    column="options",
                )
    return cols


def _is_finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def thinking_word_chars(thinking: str | None) -> int:
    """Letters and digits in a thinking block (NFKC-normalized), the measure `MIN_THINKING_WORD_CHARS` applies to."""
    return len(_WORD_CHAR_RE.findall(unicodedata.normalize("NFKC", thinking or "")))


def _parse_all(
    completions: Sequence[Any], cols: dict[str, list], min_thinking_word_chars: int = MIN_THINKING_WORD_CHARS
) -> list[ParsedCompletion]:
    """Parse every row; a parse whose thinking is too thin becomes a failure ("thin_thinking") for every reward."""
    options = cols.get("options", [None] * len(completions))
    out = []
    for c, opts in zip(completions, options):
        p = parse_completion(completion_text(c), opts or None)
        if p.ok and thinking_word_chars(p.thinking) < min_thinking_word_chars:
            p = dataclasses.replace(p, ok=False, error="thin_thinking", option_index=None)
        out.append(p)
    return out


def format_reward(
    completions: Sequence[Any], *, min_thinking_word_chars: int = MIN_THINKING_WORD_CHARS, **kwargs: Any
) -> list[float]:
    """FORMAT_REWARD when the completion parses (for MCQ rows: names exactly one offered option) and its thinking
    has at least `min_thinking_word_chars` letters/digits, else 0 (the other rewards apply the same gate).

    When TRL passes `log_metric` / `log_extra`, also logs the parse-failure rate and each row's error code, so
    reward hacking and format collapse show up in the run's metrics rather than only in the reward mean.
    """
    cols = _columns(completions, kwargs, ())
    parsed = _parse_all(completions, cols, min_thinking_word_chars)
    if callable(kwargs.get("log_metric")) and parsed:
        kwargs["log_metric"]("format/parse_failure_rate", sum(not p.ok for p in parsed) / len(parsed))
    if callable(kwargs.get("log_extra")):
        kwargs["log_extra"]("parse_error", [p.error or "" for p in parsed])
    return [FORMAT_REWARD if p.ok else 0.0 for p in parsed]


def granularity_reward(
    completions: Sequence[Any], *, min_thinking_word_chars: int = MIN_THINKING_WORD_CHARS, **kwargs: Any
) -> list[float | None]:
    """The chosen option's hierarchical score from `option_scores`; 0 when unparseable or ambiguous.

    None (TRL: "does not apply") for rows without options, i.e. open-ended items.
    """
    cols = _columns(completions, kwargs, ("options", "option_scores"))
    parsed = _parse_all(completions, cols, min_thinking_word_chars)
    out: list[float | None] = []
    for p, opts, scores in zip(parsed, cols["options"], cols["option_scores"]):
        if not opts:
            out.append(None)
        else:
            out.append(float(scores[p.option_index]) if p.ok else 0.0)
    return out


def accuracy_reward(
    completions: Sequence[Any], *, min_thinking_word_chars: int = MIN_THINKING_WORD_CHARS, **kwargs: Any
) -> list[float | None]:
    """ACCURACY_REWARD when the chosen option carries the row's maximal (positive) score: flat, no hierarchy.

    This is the authors' `--native_reward` ablation (credit only for the deepest correct option shown).
    """
    cols = _columns(completions, kwargs, ("options", "option_scores"))
    parsed = _parse_all(completions, cols, min_thinking_word_chars)
    out: list[float | None] = []
    for p, opts, scores in zip(parsed, cols["options"], cols["option_scores"]):
        if not opts:
            out.append(None)
            continue
        best = max(scores)
        hit = p.ok and best > 0 and scores[p.option_index] == best
        out.append(ACCURACY_REWARD if hit else 0.0)
    return out


def malignancy_reward(
    completions: Sequence[Any], *, min_thinking_word_chars: int = MIN_THINKING_WORD_CHARS, **kwargs: Any
) -> list[float | None]:
    """MALIGNANCY_REWARD when the parse succeeds and `explicit_status` equals the row's `bucket`, else 0.

    An answer that fails to parse earns nothing here either, so a correct status cannot pay for an ambiguous
    option; nor does an option text, a missing status clause or a hedged one. None for rows whose bucket is unknown.
    """
    cols = _columns(completions, kwargs, ("bucket",))
    parsed = _parse_all(completions, cols, min_thinking_word_chars)
    out: list[float | None] = []
    options = cols.get("options", [None] * len(parsed))
    for p, bucket, opts in zip(parsed, cols["bucket"], options):
        if bucket is None:
            out.append(None)
        else:
            out.append(MALIGNANCY_REWARD if p.ok and explicit_status(p.diagnosis, opts) == bucket else 0.0)
    return out


REWARD_FUNCTIONS: dict[str, RewardFn] = {
    "format": format_reward,
    "granularity": granularity_reward,
    "malignancy": malignancy_reward,
    "accuracy": accuracy_reward,
}

#: The authors' composite (all weights 1): total in 0..2.0.
PAPER_REWARD_WEIGHTS = {"format": 1.0, "granularity": 1.0, "malignancy": 1.0}
#: No-granularity ablation: the flat accuracy reward scaled to the authors' 0.75 ceiling.
NO_GRANULARITY_REWARD_WEIGHTS = {"format": 1.0, "accuracy": 0.75, "malignancy": 1.0}


def make_reward_functions(weights: Mapping[str, float]) -> tuple[list[RewardFn], list[float]]:
    """(reward_funcs, reward_weights) for `GRPOTrainer(reward_funcs=...)` and `GRPOConfig(reward_weights=...)`."""
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(
            "weights must be a non-empty mapping of reward name -> weight; allowed names: "
            + ", ".join(sorted(REWARD_FUNCTIONS))
        )
    funcs, values = [], []
    for name, weight in weights.items():
        if name not in REWARD_FUNCTIONS:
            raise ValueError(f"unknown reward {name!r}; allowed names: {', '.join(sorted(REWARD_FUNCTIONS))}")
        if not _is_finite(weight):
            raise ValueError(f"weight of reward {name!r} must be a finite number, got {weight!r}")
        funcs.append(REWARD_FUNCTIONS[name])
        values.append(float(weight))
    return funcs, values
