"""One model variant answers the evaluation items where the model is, and hands the answers back as a file.

    python -m skinr1_pipeline.evaluation.cli --config answers.yaml

Run by the `variant_evaluations` asset through the compute resource (a child process, or a Ray job holding a GPU),
so the Dagster process never loads a model. Scoring the answers needs no model and stays with the asset. The answers
file (`output_path`: the items plus `completion`, and with `calibration` / `answer_likelihood` the per-option
`option_logprobs` / `answer_logprobs`) is written atomically: a killed run leaves the previous file intact. Under
Dagster Pipes the path, item count and seconds are reported as materialization metadata.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skinr1_pipeline.modeling.prompt_format import system_prompt_text
from skinr1_pipeline.storage.atomic import write_parquet

RUNNERS = ("hf", "vllm")


@dataclass
class AnswerConfig:
    items_path: str
    model_dir: str
    output_path: str
    adapter_dir: str | None = None
    runner: str = "vllm"
    lora_mode: str = "auto"  # vLLM: auto = the adapter through vLLM's LoRA when it covers every trained tensor
    max_new_tokens: int = 512
    batch_size: int = 16
    max_pixels: int | None = None
    calibration: bool = True
    answer_likelihood: bool = True
    tensor_parallel_size: int = 1  # vLLM: GPUs one engine spans
    seed: int = 0
    answer_form: str = "letter"  # how the model was taught to name an option (`prompt_format.ANSWER_FORMS`)
    system_prompt: str = "full"  # the one it was taught with (`prompt_format.SYSTEM_PROMPTS`)

    def __post_init__(self) -> None:
        if self.runner not in RUNNERS:
            raise ValueError(f"runner must be one of {RUNNERS}, got {self.runner!r}")
        if self.tensor_parallel_size < 1 or self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("tensor_parallel_size, max_new_tokens and batch_size must be >= 1")
        system_prompt_text(self.system_prompt)  # an unknown name fails here, before a model is loaded


def build_runner(cfg: AnswerConfig):
    from skinr1_pipeline.evaluation.runners import HFRunner, VllmRunner
    from skinr1_pipeline.modeling.vllm_engine import EngineOptions

    if cfg.runner == "vllm":
        extra = {"tensor_parallel_size": cfg.tensor_parallel_size} if cfg.tensor_parallel_size > 1 else {}
        return VllmRunner(
            cfg.model_dir,
            adapter_dir=cfg.adapter_dir,
            lora_mode=cfg.lora_mode,
            max_new_tokens=cfg.max_new_tokens,
            max_pixels=cfg.max_pixels,
            seed=cfg.seed,
            options=EngineOptions(seed=cfg.seed, extra=extra),
            system=system_prompt_text(cfg.system_prompt),
            answer_form=cfg.answer_form,
        )
    return HFRunner(
        cfg.model_dir,
        adapter_dir=cfg.adapter_dir,
        max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.batch_size,
        max_pixels=cfg.max_pixels,
        seed=cfg.seed,
        system=system_prompt_text(cfg.system_prompt),
        answer_form=cfg.answer_form,
    )


def answer(cfg: AnswerConfig, progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Generate (and score the options of) every item; write the answers file; return what to report."""
    import pandas as pd

    from skinr1_pipeline.evaluation.runners import answer_items

    items = pd.read_parquet(cfg.items_path)
    runner = build_runner(cfg)
    try:
        answered = answer_items(
            runner, items, calibration=cfg.calibration, answer_likelihood=cfg.answer_likelihood, progress=progress
        )
    finally:
        if hasattr(runner, "engine"):
            runner.engine.close()
    path = write_parquet(answered.answers, cfg.output_path)
    lora_mode = getattr(getattr(runner, "engine", None), "lora_mode", "hf")
    return {
        "answers_path": str(path),
        "items": len(items),
        "generation_seconds": round(answered.generation_seconds, 2),
        "option_scoring_seconds": round(answered.scoring_seconds, 2),
        "runner": cfg.runner,
        "adapter_served_as": lora_mode,
    }


def load_config(path: str | Path) -> AnswerConfig:
    """The YAML/JSON file's AnswerConfig; an unknown key is an error naming it."""
    import yaml

    values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: expected a mapping of AnswerConfig fields")
    unknown = sorted(set(values) - {f.name for f in dataclasses.fields(AnswerConfig)})
    if unknown:
        raise ValueError(f"{path}: unknown AnswerConfig keys {unknown}")
    return AnswerConfig(**values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m skinr1_pipeline.evaluation.cli", description="answer evaluation items with one model variant"
    )
    parser.add_argument("--config", required=True, help="YAML/JSON file with AnswerConfig fields")
    cfg = load_config(parser.parse_args(argv).config)
    if not os.environ.get("DAGSTER_PIPES_CONTEXT"):
        print(json.dumps(answer(cfg)), flush=True)
        return 0
    from dagster_pipes import open_dagster_pipes

    from skinr1_pipeline.progress import LogProgress

    with open_dagster_pipes() as pipes:
        pipes.log.info(f"answering with {json.dumps(dataclasses.asdict(cfg))}")
        reported = answer(cfg, progress=LogProgress("answers", pipes.log.info, unit="item"))
        pipes.report_asset_materialization(metadata=reported)
    print(json.dumps(reported), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
