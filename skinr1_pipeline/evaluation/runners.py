"""Model runners for evaluation: one interface, `run(items) -> completions`, over HF `generate` or vLLM.

Why two backends behind one interface: HF `generate` is the reference (it is what SFT/GRPO train and sanity-check
with), vLLM is what makes evaluating thousands of images affordable. Both render the same prompts
(`chat.build_messages` + the processor's chat template, same system prompt, image first), decode greedily with a fixed
seed and stop at the same end-of-turn ids, so a metric difference between them is a backend difference, not a
prompt difference.

Option log-probs (for ECE, `metrics.expected_calibration_error`) are scored after the fact, cheaply: the model's own
completion up to its `<diagnosis>` tag (appended after the reasoning when the completion lacks one) is extended by
each option letter, and the log-prob of that final letter token is read - one short prefill per option, no sampling.
Both runners compute exactly this quantity, so their values agree up to float error.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import pandas as pd
from PIL import Image

from skinr1_pipeline.modeling.chat import build_messages, render_prompt
from skinr1_pipeline.modeling.prompt_format import DIAG_OPEN, SYSTEM_PROMPT, letters
from skinr1_pipeline.modeling.vllm_engine import EngineOptions, VllmEngine

Progress = Callable[[int, int], None]


class Runner(Protocol):
    name: str

    def run(self, items: pd.DataFrame, progress: Progress | None = None) -> list[str]: ...

    def option_logprobs(self, items: pd.DataFrame, completions: Sequence[str]) -> list[list[float]]: ...


def _has_image(path: Any) -> bool:
    return isinstance(path, (str, Path)) and bool(str(path))


def load_image(path: Any) -> Image.Image | None:
    """The item's image as RGB, or None for a text-only item (missing/NaN path)."""
    if not _has_image(path):
        return None
    with Image.open(Path(str(path))) as img:
        return img.convert("RGB")


def answer_prefix(completion: str) -> str:
    """The completion up to and including `<diagnosis>`, or the completion + a newline + the tag when it has none."""
    i = completion.find(DIAG_OPEN)
    if i >= 0:
        return completion[:i + len(DIAG_OPEN)]
    return completion.rstrip() + "\n" + DIAG_OPEN


def _options(row: Any) -> list[str]:
    opts = row.options if isinstance(row.options, (list, tuple)) else list(row.options)
    return [str(o) for o in opts]


class HFRunner:
    """Greedy HF `generate` over suite items (the reference backend)."""

    name = "hf"

    def __init__(self, model_dir: str | Path | None = None, *, adapter_dir: str | Path | None = None,
                 max_new_tokens: int = 512, batch_size: int = 8, seed: int = 0, system: str | None = SYSTEM_PROMPT,
                 max_pixels: int | None = None, device: str | None = None, dtype: str = "auto",
                 model: Any = None, processor: Any = None) -> None:
        from skinr1_pipeline.modeling.model_factory import load_adapter_model, load_model, load_processor

        if model is None or processor is None:
            if model_dir is None:
                raise ValueError("give model_dir, or both model and processor")
            processor = load_processor(model_dir, max_pixels=max_pixels)
            model = (load_adapter_model(model_dir, adapter_dir, trainable=False, dtype=dtype, device=device)
                     if adapter_dir else load_model(model_dir, dtype=dtype, device=device))
        self.model, self.processor = model, processor
        self.max_new_tokens, self.batch_size, self.seed, self.system = max_new_tokens, batch_size, seed, system

    def run(self, items: pd.DataFrame, progress: Progress | None = None) -> list[str]:
        from skinr1_pipeline.modeling.generation import generate

        images = [load_image(p) for p in items["image_path"]]
        return generate(self.model, self.processor, images, list(items["prompt"]),
                        max_new_tokens=self.max_new_tokens, do_sample=False, batch_size=self.batch_size,
                        seed=self.seed, system=self.system, progress=progress)

    def option_logprobs(self, items: pd.DataFrame, completions: Sequence[str]) -> list[list[float]]:
        """Per item, the log-prob of each option letter after the completion's answer prefix (module docstring);
        [] for an open-ended item."""
        import torch

        device = next(self.model.parameters()).device
        out: list[list[float]] = []
        with torch.inference_mode():
            for row, completion in zip(items.itertuples(index=False), completions):
                if not _options(row):  # open-ended item: nothing to score
                    out.append([])
                    continue
                image = load_image(row.image_path)
                base = render_prompt(self.processor, build_messages(row.prompt, system=self.system,
                                                                    with_image=image is not None))
                texts = [base + answer_prefix(completion or "") + letter for letter in letters(len(_options(row)))]
                inputs = self.processor(text=texts, images=[image] * len(texts) if image is not None else None,
                                        padding=True, padding_side="left", return_tensors="pt")
                inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in inputs.items()}
                logits = self.model(**inputs).logits[:, -2, :].float()
                logp = torch.log_softmax(logits, dim=-1)
                last = inputs["input_ids"][:, -1]
                out.append([float(v) for v in logp.gather(1, last[:, None]).squeeze(1)])
        return out


class VllmRunner:
    """Greedy vLLM generation over suite items: same prompts, seed and stop ids as `HFRunner`."""

    name = "vllm"

    def __init__(self, model_dir: str | Path | None = None, *, adapter_dir: str | Path | None = None,
                 lora_mode: str = "auto", max_new_tokens: int = 512, batch_size: int = 256, seed: int = 0,
                 system: str | None = SYSTEM_PROMPT, max_pixels: int | None = None,
                 options: EngineOptions = EngineOptions(), engine: VllmEngine | None = None) -> None:
        if engine is None:
            if model_dir is None:
                raise ValueError("give model_dir or an engine")
            if max_pixels is not None:  # same image resize bound as HFRunner(max_pixels=...), so same image tokens
                options = dataclasses.replace(options, max_pixels=max_pixels)
            engine = VllmEngine.load(model_dir, adapter_dir=adapter_dir, lora_mode=lora_mode, options=options)
        self.engine = engine
        self.max_new_tokens, self.batch_size, self.seed, self.system = max_new_tokens, batch_size, seed, system

    def _prompt(self, prompt: str, image: Image.Image | None, suffix: str = "") -> dict[str, Any]:
        text = self.engine.render(build_messages(prompt, system=self.system, with_image=image is not None))
        return self.engine.prompt_from_text(text + suffix, [image] if image is not None else [])

    def run(self, items: pd.DataFrame, progress: Progress | None = None) -> list[str]:
        params = self.engine.sampling(max_tokens=self.max_new_tokens, temperature=0.0, seed=self.seed)
        rows = list(zip(items["prompt"], items["image_path"]))
        out: list[str] = []
        for start in range(0, len(rows), self.batch_size):
            chunk = rows[start:start + self.batch_size]
            prompts = [self._prompt(p, load_image(path)) for p, path in chunk]
            results = self.engine.generate(prompts, [params] * len(prompts))
            out += [r.outputs[0].text if r.outputs else "" for r in results]
            if progress is not None:
                progress(len(out), len(rows))
        return out

    def option_logprobs(self, items: pd.DataFrame, completions: Sequence[str]) -> list[list[float]]:
        """Same quantity as `HFRunner.option_logprobs`, from vLLM prompt log-probs (one 1-token request/option)."""
        params = self.engine.sampling(max_tokens=1, temperature=0.0, seed=self.seed, prompt_logprobs=0)
        prompts, spans = [], []
        for row, completion in zip(items.itertuples(index=False), completions):
            image = load_image(row.image_path)
            prefix = answer_prefix(completion or "")
            first = len(prompts)
            prompts += [self._prompt(row.prompt, image, prefix + letter) for letter in letters(len(_options(row)))]
            spans.append((first, len(prompts)))
        results = self.engine.generate(prompts, [params] * len(prompts))
        scores = [_last_prompt_logprob(r) for r in results]
        return [scores[a:b] for a, b in spans]


def _last_prompt_logprob(result: Any) -> float:
    token = result.prompt_token_ids[-1]
    entry = (result.prompt_logprobs or [None])[-1]
    if not entry or token not in entry:
        return -math.inf
    return float(entry[token].logprob)
