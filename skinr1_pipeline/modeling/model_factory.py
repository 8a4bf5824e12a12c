"""The one place that turns a local directory into a Qwen2.5-VL model + processor (+ LoRA adapter).

Why local-only and strict: the pipeline must never reach the hub (offline machines) nor execute repository code, and a
wrong directory (a text-only model, a pickle-only checkpoint, an adapter dir passed as a base) should fail up front
with a message naming the path and what was expected, not deep inside transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from skinr1_pipeline.data.image_open import DEFAULT_MIN_MODEL_PIXELS
from skinr1_pipeline.modeling.prompt_format import SYSTEM_PROMPT
from skinr1_pipeline.storage.atomic import write_text

SUPPORTED_MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl")
_LOCAL = {"local_files_only": True, "trust_remote_code": False}


class ModelDirError(ValueError):
    """A model or adapter directory is missing or does not hold what the pipeline needs."""


def validate_model_dir(model_dir: str | Path) -> dict[str, Any]:
    """Check `model_dir` holds a Qwen2-VL/Qwen2.5-VL checkpoint in safetensors; return its config dict."""
    path = Path(model_dir)
    if not path.is_dir():
        raise ModelDirError(f"model directory {path} does not exist or is not a directory")
    cfg_path = path / "config.json"
    if not cfg_path.is_file():
        hint = (
            " (it looks like a LoRA adapter dir; pass it as adapter_dir)"
            if (path / "adapter_config.json").is_file()
            else ""
        )
        raise ModelDirError(f"{path} has no config.json; expected a saved Qwen2.5-VL model directory{hint}")
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelDirError(f"{cfg_path} is not readable JSON: {exc}") from exc
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ModelDirError(f"{cfg_path} has model_type={model_type!r}; expected one of {SUPPORTED_MODEL_TYPES}")
    if not (any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()):
        found = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt*"))
        extra = f"; found only {found} (pickle weights are not loaded, convert to safetensors)" if found else ""
        raise ModelDirError(f"{path} has no *.safetensors weights{extra}")
    return config


def _validate_processor_dir(path: Path) -> None:
    if not path.is_dir():
        raise ModelDirError(f"processor directory {path} does not exist or is not a directory")
    if not ((path / "tokenizer.json").is_file() or (path / "tokenizer_config.json").is_file()):
        raise ModelDirError(f"{path} has no tokenizer files (tokenizer.json / tokenizer_config.json)")
    if not any((path / name).is_file() for name in ("preprocessor_config.json", "processor_config.json")):
        raise ModelDirError(f"{path} has no image processor config (preprocessor_config.json or processor_config.json)")


def load_processor(model_dir: str | Path, *, max_pixels: int | None = None, min_pixels: int | None = None):
    """Load the processor saved with the model; `max_pixels` caps image size (image tokens grow with pixels)."""
    from transformers import AutoProcessor

    path = Path(model_dir)
    _validate_processor_dir(path)
    processor = AutoProcessor.from_pretrained(str(path), **_LOCAL)
    if max_pixels is not None or min_pixels is not None:
        set_pixel_limits(processor, max_pixels=max_pixels, min_pixels=min_pixels)
    if getattr(processor, "chat_template", None) is None:
        raise ModelDirError(f"{path}: the processor has no chat template")
    return processor


def set_pixel_limits(processor, *, max_pixels: int | None = None, min_pixels: int | None = None) -> None:
    """Set the image processor's resize bounds (total pixels), keeping min <= max."""
    ip = processor.image_processor
    size = dict(ip.size or {})
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if size.get("shortest_edge") and size.get("longest_edge") and size["shortest_edge"] > size["longest_edge"]:
        size["shortest_edge"] = size["longest_edge"]
    ip.size = size
    for attr, value in (("max_pixels", size.get("longest_edge")), ("min_pixels", size.get("shortest_edge"))):
        if hasattr(ip, attr):
            setattr(ip, attr, value)


def pixel_limits(processor) -> tuple[int, int | None]:
    """(min_pixels, max_pixels) the processor resizes images into, for `data.image_open.model_image`; max is None
    when the processor sets none."""
    size = processor.image_processor.size or {}
    return int(size.get("shortest_edge") or DEFAULT_MIN_MODEL_PIXELS), size.get("longest_edge")


def resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype | str:
    """`dtype="auto"`: bf16 on a bf16-capable GPU, fp32 on CPU (CPU bf16 matmuls are slow and lossy for tiny
    models)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        if str(device).startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    try:
        return {
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
            "fp16": torch.float16,
            "float16": torch.float16,
            "fp32": torch.float32,
            "float32": torch.float32,
        }[dtype]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected auto, bfloat16, float16 or float32") from None


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    model_dir: str | Path,
    *,
    dtype: str | torch.dtype = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
):
    """Load a Qwen2(.5)-VL for conditional generation from a validated local directory, in eval mode."""
    from transformers import AutoModelForImageTextToText

    path = Path(model_dir)
    validate_model_dir(path)
    device = device or default_device()
    kwargs: dict[str, Any] = dict(_LOCAL, use_safetensors=True, dtype=resolve_dtype(dtype, device))
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(str(path), **kwargs)
    return model.to(device).eval()


SYSTEM_PROMPT_FILE = "system_prompt.txt"


def save_system_prompt(model_dir: str | Path, system: str | None) -> None:
    """Record beside saved weights the system prompt they were trained with, so a later reader (`skinr1 diagnose`,
    the MLflow model) asks them the same way; nothing is written for training without one."""
    if system:
        write_text(Path(model_dir) / SYSTEM_PROMPT_FILE, system)


def taught_system_prompt(model_dir: str | Path, adapter_dir: str | Path | None = None) -> str:
    """The system prompt recorded with the adapter, else with the base model, else the paper's (a model this
    pipeline did not train, such as Qwen2.5-VL-7B-Instruct, records none)."""
    for folder in (adapter_dir, model_dir):
        if folder is not None and (Path(folder) / SYSTEM_PROMPT_FILE).is_file():
            return (Path(folder) / SYSTEM_PROMPT_FILE).read_text(encoding="utf-8")
    return SYSTEM_PROMPT


def validate_adapter_dir(adapter_dir: str | Path) -> dict[str, Any]:
    path = Path(adapter_dir)
    cfg = path / "adapter_config.json"
    if not cfg.is_file():
        raise ModelDirError(f"{path} has no adapter_config.json; expected a saved PEFT (LoRA) adapter directory")
    if not (path / "adapter_model.safetensors").is_file():
        raise ModelDirError(f"{path} has no adapter_model.safetensors")
    return json.loads(cfg.read_text(encoding="utf-8"))


def load_adapter_model(
    model_dir: str | Path,
    adapter_dir: str | Path,
    *,
    trainable: bool,
    dtype: str | torch.dtype = "auto",
    device: str | None = None,
    attn_implementation: str | None = None,
):
    """Base model + LoRA adapter. `trainable=True` keeps the adapter's weights trainable (GRPO continues from SFT)."""
    from peft import PeftModel

    validate_adapter_dir(adapter_dir)
    base = load_model(model_dir, dtype=dtype, device=device, attn_implementation=attn_implementation)
    model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable, local_files_only=True)
    if not trainable:
        model.eval()
    return model
