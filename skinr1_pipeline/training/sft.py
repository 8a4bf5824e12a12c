"""Stage 1: LoRA SFT of Qwen2.5-VL on reasoning trajectories, with TRL's `SFTTrainer`.

Data: a Parquet file with `sample_id, image_path, prompt, completion` (extra columns ignored). Each row becomes a TRL
conversational prompt-completion example: prompt = system + user(image, prompt text) via `modeling.chat`, completion =
one assistant turn. TRL's vision collator tokenises prompt and completion separately and, with
`completion_only_loss` (its default for prompt-completion data), sets the labels of every prompt token (system, image
pads, question) and of padding to -100, so the loss is on the assistant reply only (its closing `<|im_end|>` included,
which is what teaches the model to stop).

Why a demo preset: the demo base model is tiny and only briefly warmed up, so paper-style LoRA (rank 64, lr 3e-5)
barely moves it. `demo_sft_config` trains embeddings and head fully and uses a high learning rate so it can move
within a CPU budget, and keeps the warmed-up vision tower frozen.

Run as `python -m skinr1_pipeline.training.sft --config cfg.yaml [--key value ...]` (= `training.cli sft`), alone,
under Dagster Pipes, or as one rank of a torchrun/accelerate/Ray Train job.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import TrainerCallback

from skinr1_pipeline.data.image_open import DEFAULT_MIN_MODEL_PIXELS, model_image
from skinr1_pipeline.modeling.chat import assistant_message, build_messages
from skinr1_pipeline.modeling.model_factory import load_model, load_processor, pixel_limits, save_system_prompt
from skinr1_pipeline.modeling.prompt_format import SYSTEM_PROMPT
from skinr1_pipeline.runtime.distributed import current_rank, training_device
from skinr1_pipeline.storage.atomic import write_json
from skinr1_pipeline.training.config import (
    ADAPTER_DIR,
    from_mapping,
    load_mapping,
    newest_checkpoint,
    optimization_args,
    parse_overrides,
    resolve_bf16,
    resolve_use_cpu,
    to_mapping,
)

logger = logging.getLogger(__name__)

REQUIRED_COLUMNS = ("sample_id", "image_path", "prompt", "completion")
RESULT_FILE = "sft_result.json"
LM_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VISION_BLOCK_LINEARS = ("qkv", "proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class SFTRunConfig:
    """One SFT run. Defaults follow the paper's recipe (research/paper.md section 4) except where noted."""

    model_dir: str
    train_path: str
    output_dir: str
    eval_path: str | None = None
    # LoRA
    lora_r: int = 64
    lora_alpha: int = 32
    lora_dropout: float = 0.1
    #: Explicit PEFT target (list of names or one regex); None derives it from the three switches below.
    target_modules: list[str] | str | None = None
    freeze_vision: bool = True  # no LoRA on the vision tower blocks
    lora_on_merger: bool = True  # the paper also adapts the vision->LLM merger (model.visual.merger.mlp.0/.2)
    modules_to_save: list[str] | None = None  # trained fully and saved with the adapter (e.g. embed_tokens)
    # optimisation
    learning_rate: float = 3e-5
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    weight_decay: float = 0.0
    num_train_epochs: float = 4.0
    max_steps: int = -1
    per_device_train_batch_size: int = 1
    per_device_eval_batch_size: int = 1
    gradient_accumulation_steps: int = 16
    gradient_checkpointing: bool | None = None  # None: on GPU only (memory), off on CPU (speed)
    # data
    max_pixels: int = 448 * 448
    max_length: int | None = 4096
    max_train_samples: int | None = None
    system_prompt: str | None = SYSTEM_PROMPT
    # bookkeeping
    seed: int = 42
    save_steps: int = 50
    save_total_limit: int | None = 3
    eval_steps: int = 50
    logging_steps: int = 10
    resume: bool | Literal["auto"] = "auto"  # True/"auto": continue from the last checkpoint-N in output_dir if any
    use_cpu: bool | None = None  # None: CPU unless CUDA is visible
    bf16: bool | None = None  # None: bf16 on a bf16-capable GPU
    attn_implementation: str | None = None
    report_to: list[str] = field(default_factory=list)  # e.g. ["mlflow"]; MLflow reads MLFLOW_* env vars
    run_name: str | None = None
    dataloader_num_workers: int = 0

    def __post_init__(self) -> None:
        if self.resume not in (True, False, "auto"):
            raise ValueError(f"resume must be true, false or 'auto', got {self.resume!r}")
        if self.lora_r < 1 or self.per_device_train_batch_size < 1 or self.gradient_accumulation_steps < 1:
            raise ValueError("lora_r, per_device_train_batch_size and gradient_accumulation_steps must be >= 1")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError("set max_steps > 0 or num_train_epochs > 0")
        if isinstance(self.report_to, str):
            self.report_to = [] if self.report_to in ("", "none") else [self.report_to]


@dataclass
class SFTResult:
    adapter_dir: str
    train_loss: list[dict[str, float]]  # [{"step": s, "loss": l}, ...] from the trainer's log history
    eval_loss: list[dict[str, float]]
    metrics: dict[str, float]
    steps: int
    seconds: float
    resumed_from: str | None
    trainable_parameters: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def demo_sft_config(
    model_dir: str | Path, train_path: str | Path, output_dir: str | Path, **overrides: Any
) -> SFTRunConfig:
    """The `demo` recipe (`recipes/demo/sft.yaml`): the tiny demo model on CPU, sized for the compact demo
    trajectories (~80 tokens).

    LoRA on every linear layer of the language model; embeddings and LM head are trained in full
    (`modules_to_save`). The vision tower and merger stay frozen: the warm-up (`training.demo_pretraining`) already
    taught them to read the image, and adapting them at this learning rate let SFT wash that out (two of five runs
    collapsed to one diagnosis for nearly every image; neither frozen run did). Per-example cost does not depend on
    batch size here, so batch 2 buys the most optimizer steps per second. The README ("How the demo model is
    prepared") has what this preset measured.
    """
    from skinr1_pipeline.training.recipes import build_run_config

    paths = {"model_dir": str(model_dir), "train_path": str(train_path), "output_dir": str(output_dir)}
    return build_run_config(SFTRunConfig, "demo", "sft", **paths, **overrides)


# --- data ----------------------------------------------------------------------------------------------------------


def resolve_image_path(image_path: str, base_dir: Path) -> Path:
    """Absolute paths as given; relative ones against the Parquet file's folder first, then the working directory."""
    p = Path(image_path)
    if p.is_absolute():
        return p
    candidate = base_dir / p
    return candidate if candidate.exists() else p


def load_trajectory_dataset(
    parquet_path: str | Path,
    *,
    max_pixels: int | None,
    system: str | None = SYSTEM_PROMPT,
    max_samples: int | None = None,
    min_pixels: int = DEFAULT_MIN_MODEL_PIXELS,
):
    """Parquet rows as a `datasets.Dataset` whose items are TRL conversational prompt-completion examples.

    Validated up front (columns, empty fields, image files) so a bad file fails before the model loads; images are
    decoded lazily in a transform, as TRL's vision collator expects PIL images and decoding all upfront costs memory.
    """
    import datasets
    import pandas as pd

    path = Path(parquet_path)
    if not path.is_file():
        raise FileNotFoundError(f"SFT data file {path} does not exist")
    frame = pd.read_parquet(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}; expected {list(REQUIRED_COLUMNS)}")
    frame = frame[list(REQUIRED_COLUMNS)]
    empty = frame.isna().any(axis=1)
    frame = frame.astype(str)
    bad = frame[empty | (frame["prompt"].str.strip() == "") | (frame["completion"].str.strip() == "")]
    if len(bad):
        raise ValueError(f"{path}: {len(bad)} rows have empty fields, e.g. sample_id={bad.iloc[0]['sample_id']!r}")
    if max_samples is not None:
        frame = frame.iloc[:max_samples]
    if frame.empty:
        raise ValueError(f"{path} has no rows")
    frame = frame.assign(image_path=[str(resolve_image_path(p, path.parent)) for p in frame["image_path"]])
    absent = [p for p in frame["image_path"] if not Path(p).is_file()]
    if absent:
        raise FileNotFoundError(f"{path}: {len(absent)} image files are missing, e.g. {absent[0]}")

    def to_examples(batch: dict[str, list]) -> dict[str, list]:
        return {
            "images": [[model_image(p, max_pixels=max_pixels, min_pixels=min_pixels)] for p in batch["image_path"]],
            "prompt": [build_messages(t, system=system, with_image=True) for t in batch["prompt"]],
            "completion": [[assistant_message(t)] for t in batch["completion"]],
        }

    return datasets.Dataset.from_pandas(frame, preserve_index=False).with_transform(to_examples)


# --- model / trainer -----------------------------------------------------------------------------------------------


def lora_target_pattern(cfg: SFTRunConfig) -> list[str] | str:
    """PEFT `target_modules`: a full-match regex over module names unless the config gives one explicitly.

    Language-model projections always; the vision blocks' linears only when `freeze_vision` is off; the merger when
    `lora_on_merger` (and it is not already trained in full through `modules_to_save`).
    """
    if cfg.target_modules is not None:
        return cfg.target_modules
    parts = [r"(.*\.)?language_model\.layers\.\d+\.(self_attn|mlp)\.(" + "|".join(LM_PROJECTIONS) + ")"]
    if not cfg.freeze_vision:
        parts.append(r"(.*\.)?visual\.blocks\.\d+\.(attn|mlp)\.(" + "|".join(VISION_BLOCK_LINEARS) + ")")
    if cfg.lora_on_merger and "merger" not in (cfg.modules_to_save or []):
        parts.append(r"(.*\.)?visual\.merger\.mlp\.[02]")  # mlp.1 is the GELU
    return "|".join(f"(?:{p})" for p in parts)


def _lora_config(cfg: SFTRunConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        bias="none",
        target_modules=lora_target_pattern(cfg),
        modules_to_save=cfg.modules_to_save,
        task_type="CAUSAL_LM",
    )


def last_checkpoint(output_dir: str | Path) -> str | None:
    """Path of the highest checkpoint-N folder in `output_dir` that holds trainer state, or None."""
    found = newest_checkpoint(output_dir)
    return str(found) if found else None


class _ProgressCallback(TrainerCallback):
    """Forwards trainer logs (with the global step) to a caller's function (tests, benchmarks)."""

    def __init__(self, fn: Callable[[dict[str, Any]], None]):
        self.fn = fn

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs:
            self.fn({"step": state.global_step, "max_steps": state.max_steps, **logs})


def build_trainer(
    cfg: SFTRunConfig,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
):
    """Model, processor, datasets and a configured `SFTTrainer` (not yet trained). Tests inspect its collator;
    `callbacks` are extra `TrainerCallback`s (timing, checks)."""
    from trl import SFTConfig, SFTTrainer

    use_cpu = resolve_use_cpu(cfg.use_cpu)
    bf16 = resolve_bf16(cfg.bf16, use_cpu)
    grad_ckpt = (not use_cpu) if cfg.gradient_checkpointing is None else cfg.gradient_checkpointing
    processor = load_processor(cfg.model_dir, max_pixels=cfg.max_pixels)
    model = load_model(
        cfg.model_dir,
        dtype=torch.bfloat16 if bf16 else torch.float32,
        device=training_device(use_cpu),
        attn_implementation=cfg.attn_implementation,
    )
    model.train()
    min_pixels, max_pixels = pixel_limits(processor)  # images reach the processor at its own size: no second resize
    train_ds = load_trajectory_dataset(
        cfg.train_path,
        max_pixels=max_pixels,
        min_pixels=min_pixels,
        system=cfg.system_prompt,
        max_samples=cfg.max_train_samples,
    )
    eval_ds = (
        load_trajectory_dataset(cfg.eval_path, max_pixels=max_pixels, min_pixels=min_pixels, system=cfg.system_prompt)
        if cfg.eval_path
        else None
    )
    args = SFTConfig(
        **optimization_args(cfg),
        per_device_eval_batch_size=cfg.per_device_eval_batch_size,
        gradient_checkpointing=grad_ckpt,
        max_length=cfg.max_length,
        completion_only_loss=True,
        pad_to_multiple_of=None,
        remove_unused_columns=False,
        dataset_kwargs={"skip_prepare_dataset": True},
        eval_strategy="steps" if eval_ds is not None else "no",
        eval_steps=cfg.eval_steps if eval_ds is not None else None,
        logging_first_step=True,
        use_cpu=use_cpu,
        # CPU ranks of a multi-process job (torchrun, Ray Train): gloo, never MPI by accident; one process: none
        ddp_backend="gloo" if use_cpu and current_rank().distributed else None,
        bf16=bf16,
        fp16=False,
        report_to=list(cfg.report_to) or "none",
        run_name=cfg.run_name,
        dataloader_num_workers=cfg.dataloader_num_workers,
        dataloader_pin_memory=not use_cpu,
        disable_tqdm=True,
    )
    extra = [*([_ProgressCallback(progress)] if progress is not None else []), *callbacks]
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        processing_class=processor,
        peft_config=_lora_config(cfg),
        callbacks=extra or None,
    )
    return trainer


def _history(log_history: list[dict[str, Any]], key: str) -> list[dict[str, float]]:
    return [{"step": int(e["step"]), key: float(e[key])} for e in log_history if key in e and "step" in e]


def run_sft(
    cfg: SFTRunConfig,
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    callbacks: Sequence[TrainerCallback] = (),
) -> SFTResult:
    """Train, checkpoint every `save_steps`, resume when asked, save the adapter (+ processor) to output_dir/adapter."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    resume_from = last_checkpoint(out) if cfg.resume in (True, "auto") else None
    if cfg.resume is True and resume_from is None:
        logger.info("resume requested but %s has no checkpoint; starting from scratch", out)
    trainer = build_trainer(cfg, progress=progress, callbacks=callbacks)
    started = time.perf_counter()
    train_output = trainer.train(resume_from_checkpoint=resume_from)
    seconds = time.perf_counter() - started
    metrics = {k: float(v) for k, v in train_output.metrics.items() if isinstance(v, (int, float))}
    if trainer.eval_dataset is not None:
        metrics.update({k: float(v) for k, v in trainer.evaluate().items() if isinstance(v, (int, float))})

    adapter_dir = out / ADAPTER_DIR
    if trainer.args.should_save:  # rank 0 of a multi-process job writes; the others hold the same weights
        trainer.model.save_pretrained(str(adapter_dir), safe_serialization=True)
        trainer.processing_class.save_pretrained(str(adapter_dir))
        save_system_prompt(adapter_dir, cfg.system_prompt)
    history = trainer.state.log_history
    train_loss = _history(history, "loss")
    if not all(math.isfinite(e["loss"]) for e in train_loss):
        raise FloatingPointError(f"non-finite training loss in {train_loss}")
    result = SFTResult(
        adapter_dir=str(adapter_dir),
        train_loss=train_loss,
        eval_loss=_history(history, "eval_loss"),
        metrics=metrics,
        steps=int(trainer.state.global_step),
        seconds=round(seconds, 3),
        resumed_from=resume_from,
        trainable_parameters=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    )
    if trainer.args.should_save:
        payload = {"config": to_mapping(cfg), "result": result.to_dict()}
        write_json(out / RESULT_FILE, payload)
    return result


# --- CLI / Dagster Pipes -------------------------------------------------------------------------------------------


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> SFTRunConfig:
    """YAML/JSON file of SFTRunConfig keys, then `--key value` overrides; unknown keys and wrong types fail."""
    values = load_mapping(path)
    values.update(parse_overrides(list(overrides)))
    return from_mapping(SFTRunConfig, values)


def pipes_metadata(result: SFTResult) -> dict[str, Any]:
    last = result.train_loss[-1]["loss"] if result.train_loss else None
    return {
        "adapter_dir": {"raw_value": result.adapter_dir, "type": "path"},
        "steps": result.steps,
        "seconds": result.seconds,
        "final_train_loss": last,
        "train_loss": {"raw_value": result.train_loss, "type": "json"},
        "eval_loss": {"raw_value": result.eval_loss, "type": "json"},
        "metrics": {"raw_value": result.metrics, "type": "json"},
        "resumed_from": result.resumed_from or "",
        "trainable_parameters": result.trainable_parameters,
    }


if __name__ == "__main__":  # `python -m skinr1_pipeline.training.sft --config cfg.yaml` = `training.cli sft ...`
    from skinr1_pipeline.training.cli import main

    sys.exit(main(step="sft"))
