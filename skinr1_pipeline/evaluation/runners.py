"""Model runners for evaluation: one interface, `run(items) -> completions`, over HF `generate` or vLLM.

Why two backends behind one interface: HF `generate` is the reference (it is what SFT/GRPO train and sanity-check
with), vLLM is what makes evaluating thousands of images affordable. Both render the same prompts
(`chat.build_messages` + the processor's chat template, same system prompt, image first), decode greedily with a fixed
seed and stop at the same end-of-turn ids, so a metric difference between them is a backend difference, not a
prompt difference.

Option scores are read after the fact, cheaply: the model's own completion up to its `<diagnosis>` tag (appended
after the reasoning when the completion lacks one) is extended by each option's answer as SFT teaches it to be
written ("B. benign neoplasm", or "benign neoplasm" for a model taught the `text` answer form), and the log-probs of
those answer tokens are read - one short prefill per option, no sampling. One pass gives two scores per option:
  * `option_logprobs`: the first answer token, the one that carries the letter (for ECE,
    `metrics.expected_calibration_error`); in the `text` form, where options can share a first token ("benign ..."),
    the whole answer's log-prob instead;
  * `answer_logprobs`: the whole answer, summed. Its argmax is the answer-likelihood accuracy: which offered answer
    the model finds most probable after its own reasoning. Why report it next to the generated answer: a model can
    know the answer yet fail to pick its letter from the list (the CPU demo's 2-layer model does exactly this); the
    two numbers tell those failures apart.
The answer's tokens are those after the longest common prefix of the tokenized prefix and prefix + answer, so a BPE
merge across the boundary is scored, not skipped. Both runners compute exactly these quantities, so their values
agree up to float error.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from PIL import Image

from skinr1_pipeline.data.image_open import model_image
from skinr1_pipeline.modeling.chat import build_messages, render_prompt
from skinr1_pipeline.modeling.model_factory import pixel_limits
from skinr1_pipeline.modeling.prompt_format import DIAG_OPEN, SYSTEM_PROMPT, checked_answer_form, format_mcq_answer
from skinr1_pipeline.modeling.vllm_engine import EngineOptions, VllmEngine

Progress = Callable[[int, int], None]


class Runner(Protocol):
    name: str

    def run(self, items: pd.DataFrame, progress: Progress | None = None) -> list[str]: ...

    def option_scores(self, items: pd.DataFrame, completions: Sequence[str]) -> OptionScores: ...


def _has_image(path: Any) -> bool:
    return isinstance(path, (str, Path)) and bool(str(path))


def load_image(path: Any, pixels: tuple[int, int | None]) -> Image.Image | None:
    """The item's image as the model's processor will see it (`model_image` at the processor's (min, max) pixel
    bounds, `pixel_limits`), or None for a text-only item (missing/NaN path). Over the data layer's byte or pixel
    limit it raises `ImageLimitError` naming the file, before decoding."""
    if not _has_image(path):
        return None
    min_pixels, max_pixels = pixels
    return model_image(Path(str(path)), max_pixels=max_pixels, min_pixels=min_pixels)


def answer_prefix(completion: str) -> str:
    """The completion up to and including `<diagnosis>`, or the completion + a newline + the tag when it has none."""
    i = completion.find(DIAG_OPEN)
    if i >= 0:
        return completion[: i + len(DIAG_OPEN)]
    return completion.rstrip() + "\n" + DIAG_OPEN


def _options(row: Any) -> list[str]:
    opts = row.options if isinstance(row.options, (list, tuple)) else list(row.options)
    return [str(o) for o in opts]


def answer_continuations(options: Sequence[str], form: str = "letter") -> list[str]:
    """Each option's answer as SFT writes it in the answer `form` ("B. benign neoplasm" or "benign neoplasm"), without
    the status clause."""
    return [format_mcq_answer(list(options), i, form=form) for i in range(len(options))]


@dataclasses.dataclass(frozen=True)
class OptionScores:
    """Per item, per option: log-prob of the first answer token (the letter) and of the whole answer ([] if open)."""

    letters: list[list[float]]
    answers: list[list[float]]

    @classmethod
    def from_tokens(cls, per_item: list[list[list[float]]], form: str = "letter") -> OptionScores:
        answers = [[math.fsum(t) if t else -math.inf for t in item] for item in per_item]
        if form == "text":  # no letter token: the whole answer is the option's score
            return cls([list(item) for item in answers], answers)
        return cls([[t[0] if t else -math.inf for t in item] for item in per_item], answers)


def continuation_lengths(tokenizer: Any, prefix: str, continuations: Sequence[str]) -> list[int]:
    """Per continuation, the tokens of `prefix + continuation` after their longest common prefix with `prefix`
    (>= 1); the prefix, the long part, is tokenized once."""
    a = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    out = []
    for continuation in continuations:
        b = tokenizer(prefix + continuation, add_special_tokens=False)["input_ids"]
        common = 0
        for x, y in zip(a, b):
            if x != y:
                break
            common += 1
        out.append(max(1, len(b) - common))
    return out


@dataclasses.dataclass(frozen=True)
class Answers:
    """`answers`: the items with each `completion` and, on request, the per-option letter (`option_logprobs`) and
    whole-answer (`answer_logprobs`) log-probs; the seconds spent generating and scoring options."""

    answers: pd.DataFrame
    generation_seconds: float
    scoring_seconds: float


def answer_items(
    runner: Runner,
    items: pd.DataFrame,
    *,
    calibration: bool = True,
    answer_likelihood: bool = True,
    progress: Progress | None = None,
) -> Answers:
    """Every item answered by `runner`: what evaluation scores, and what a training gate scores too (one loop, so
    the gate and the evaluation cannot drift apart)."""
    started = time.perf_counter()
    out = items.assign(completion=runner.run(items, progress=progress))
    generated = time.perf_counter()
    if calibration or answer_likelihood:
        # Image-control rows (another item's image, a blank one) are read only through their generated answers
        # (`comparison`'s image-use table), so their options are not scored ([] as for an open question): on the demo
        # they were a quarter of the scoring time.
        scored = [str(c) == "real" for c in items["condition"]] if "condition" in items else [True] * len(items)
        chosen = [i for i, keep in enumerate(scored) if keep]
        scores = runner.option_scores(items.iloc[chosen], [out["completion"].iloc[i] for i in chosen])
        letters, answers = iter(scores.letters), iter(scores.answers)
        if calibration:
            out = out.assign(option_logprobs=[next(letters) if keep else [] for keep in scored])
        if answer_likelihood:
            out = out.assign(answer_logprobs=[next(answers) if keep else [] for keep in scored])
    return Answers(out, generated - started, time.perf_counter() - generated)


class HFRunner:
    """Greedy HF `generate` over suite items (the reference backend)."""

    name = "hf"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        adapter_dir: str | Path | None = None,
        max_new_tokens: int = 512,
        batch_size: int = 8,
        seed: int = 0,
        system: str | None = SYSTEM_PROMPT,
        max_pixels: int | None = None,
        device: str | None = None,
        dtype: str = "auto",
        model: Any = None,
        processor: Any = None,
        answer_form: str = "letter",
    ) -> None:
        from skinr1_pipeline.modeling.model_factory import load_adapter_model, load_model, load_processor

        self.answer_form = checked_answer_form(answer_form)  # before any model is loaded
        if model is None or processor is None:
            if model_dir is None:
                raise ValueError("give model_dir, or both model and processor")
            processor = load_processor(model_dir, max_pixels=max_pixels)
            model = (
                load_adapter_model(model_dir, adapter_dir, trainable=False, dtype=dtype, device=device)
                if adapter_dir
                else load_model(model_dir, dtype=dtype, device=device)
            )
        self.model, self.processor = model, processor
        self.pixels = pixel_limits(processor)
        self.max_new_tokens, self.batch_size, self.seed, self.system = max_new_tokens, batch_size, seed, system

    def run(self, items: pd.DataFrame, progress: Progress | None = None) -> list[str]:
        from skinr1_pipeline.modeling.generation import generate

        images = [load_image(p, self.pixels) for p in items["image_path"]]
        return generate(
            self.model,
            self.processor,
            images,
            list(items["prompt"]),
            max_new_tokens=self.max_new_tokens,
            do_sample=False,
            batch_size=self.batch_size,
            seed=self.seed,
            system=self.system,
            progress=progress,
        )

    def option_scores(self, items: pd.DataFrame, completions: Sequence[str]) -> OptionScores:
        """Letter and whole-answer log-probs of every option after the completion's answer prefix (module
        docstring); empty lists for an open-ended item."""
        import torch

        device = next(self.model.parameters()).device
        tokenizer = self.processor.tokenizer
        out: list[list[list[float]]] = []
        with torch.inference_mode():
            for row, completion in zip(items.itertuples(index=False), completions):
                if not _options(row):  # open-ended item: nothing to score
                    out.append([])
                    continue
                image = load_image(row.image_path, self.pixels)
                prefix = render_prompt(
                    self.processor, build_messages(row.prompt, system=self.system, with_image=image is not None)
                )
                prefix += answer_prefix(completion or "")
                answers = answer_continuations(_options(row), self.answer_form)
                texts = [prefix + c for c in answers]
                lengths = continuation_lengths(tokenizer, prefix, answers)
                inputs = self.processor(
                    text=texts,
                    images=[image] * len(texts) if image is not None else None,
                    padding=True,
                    padding_side="left",
                    return_tensors="pt",
                )
                inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
                span = max(lengths)  # only the positions that predict continuation tokens go through the softmax
                logp = torch.log_softmax(self.model(**inputs).logits[:, -span - 1 : -1, :].float(), dim=-1)
                targets = inputs["input_ids"][:, -span:]
                token_lp = logp.gather(2, targets[..., None]).squeeze(2)
                out.append([[float(v) for v in token_lp[k, span - n :]] for k, n in enumerate(lengths)])
        return OptionScores.from_tokens(out, self.answer_form)


class VllmRunner:
    """Greedy vLLM generation over suite items: same prompts, seed and stop ids as `HFRunner`."""

    name = "vllm"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        *,
        adapter_dir: str | Path | None = None,
        lora_mode: str = "auto",
        max_new_tokens: int = 512,
        batch_size: int = 256,
        seed: int = 0,
        system: str | None = SYSTEM_PROMPT,
        max_pixels: int | None = None,
        options: EngineOptions = EngineOptions(),
        engine: VllmEngine | None = None,
        answer_form: str = "letter",
    ) -> None:
        self.answer_form = checked_answer_form(answer_form)  # before the engine is built
        if engine is None:
            if model_dir is None:
                raise ValueError("give model_dir or an engine")
            if max_pixels is not None:  # same image resize bound as HFRunner(max_pixels=...), so same image tokens
                options = dataclasses.replace(options, max_pixels=max_pixels)
            engine = VllmEngine.load(model_dir, adapter_dir=adapter_dir, lora_mode=lora_mode, options=options)
        self.engine = engine
        self.pixels = pixel_limits(engine.processor)
        self.max_new_tokens, self.batch_size, self.seed, self.system = max_new_tokens, batch_size, seed, system

    def _prompt(self, prompt: str, image: Image.Image | None, suffix: str = "") -> dict[str, Any]:
        text = self.engine.render(build_messages(prompt, system=self.system, with_image=image is not None))
        return self.engine.prompt_from_text(text + suffix, [image] if image is not None else [])

    def run(self, items: pd.DataFrame, progress: Progress | None = None) -> list[str]:
        params = self.engine.sampling(max_tokens=self.max_new_tokens, temperature=0.0, seed=self.seed)
        rows = list(zip(items["prompt"], items["image_path"]))
        out: list[str] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start : start + self.batch_size]
            prompts = [self._prompt(p, load_image(path, self.pixels)) for p, path in chunk]
            results = self.engine.generate(prompts, [params] * len(prompts))
            out += [r.outputs[0].text if r.outputs else "" for r in results]
            if progress is not None:
                progress(len(out), len(rows))
        return out

    def option_scores(self, items: pd.DataFrame, completions: Sequence[str]) -> OptionScores:
        """Same quantities as `HFRunner.option_scores`, from vLLM prompt log-probs (one 1-token request/option).

        Why `detokenize=False` and `flat_logprobs=True`: vLLM otherwise decodes the token of every prompt position
        and builds a dict per position; on the CPU demo that was half the scoring time (measured: 15.6 s -> 9.4 s
        for 1,188 options, identical log-probs), and only the answer's last few positions are read."""
        params = self.engine.sampling(
            max_tokens=1, temperature=0.0, seed=self.seed, prompt_logprobs=0, detokenize=False, flat_logprobs=True
        )
        tokenizer = self.engine.processor.tokenizer
        prompts, lengths, spans = [], [], []
        for row, completion in zip(items.itertuples(index=False), completions):
            image = load_image(row.image_path, self.pixels)
            prefix = self.engine.render(build_messages(row.prompt, system=self.system, with_image=image is not None))
            prefix += answer_prefix(completion or "")
            answers = answer_continuations(_options(row), self.answer_form)
            first = len(prompts)
            prompts += [self.engine.prompt_from_text(prefix + c, [image] if image is not None else []) for c in answers]
            lengths += continuation_lengths(tokenizer, prefix, answers)
            spans.append((first, len(prompts)))
        results = self.engine.generate(prompts, [params] * len(prompts)) if prompts else []
        tails = [_prompt_tail_logprobs(r, n) for r, n in zip(results, lengths)]
        return OptionScores.from_tokens([tails[a:b] for a, b in spans], self.answer_form)


def _prompt_tail_logprobs(result: Any, n: int) -> list[float]:
    """Log-probs of the last `n` prompt tokens; -inf for a token vLLM returned no entry for."""
    tokens = result.prompt_token_ids[-n:]
    entries = list((result.prompt_logprobs or [])[-n:])  # a list or vLLM's FlatLogprobs: slice before expanding
    entries = [None] * (n - len(entries)) + entries
    return [
        float(entry[token].logprob) if entry and token in entry else -math.inf for token, entry in zip(tokens, entries)
    ]
