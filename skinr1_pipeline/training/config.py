"""Config plumbing shared by the training entry points (SFT, GRPO): YAML/JSON files, `--key value` overrides,
typed dataclass construction and hardware auto-detection.

Why here and plain: the training modules run as subprocesses (Dagster Pipes) and on the lent GPU machine with few
wheels, so this must not import dagster or mlflow, and a typo in a config key must fail loudly instead of being
silently ignored.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")
#: The folder, inside a training run's output folder, that holds the trained LoRA adapter (SFT and GRPO alike).
ADAPTER_DIR = "adapter"


class ConfigError(ValueError):
    """A training config file or override is unreadable, names an unknown key or has a value of the wrong type."""


def load_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML (or JSON, a YAML subset) mapping from `path`."""
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config {p}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config {p} is not valid YAML/JSON: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {p} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """`["--lr", "1e-3", "--report_to", "[]", "--bf16=false"]` -> {"lr": 0.001, "report_to": [], "bf16": False}.

    Values are parsed as YAML scalars/flow collections, so numbers, booleans, null and `[a, b]` lists work. Dashes in
    keys become underscores.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or len(tok) <= 2:
            raise ConfigError(f"expected --key value, got {tok!r}")
        key, eq, raw = tok[2:].partition("=")
        if not eq:
            if i + 1 >= len(tokens):
                raise ConfigError(f"override --{key} has no value")
            raw = tokens[i + 1]
            i += 1
        i += 1
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"override --{key}: cannot parse {raw!r}: {exc}") from exc
        out[key.replace("-", "_")] = _yaml11_number(value)
    return out


def _yaml11_number(value: Any) -> Any:
    """YAML 1.1 reads `1e-3` (no dot) as a string; treat such strings as the float they spell."""
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+(\.\d*)?[eE][+-]?\d+", value.strip()):
        return float(value)
    return value


def _matches(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin in (list, tuple, Sequence):
        return isinstance(value, (list, tuple))
    if origin in (dict, Mapping):
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _coerce(value: Any, hint: Any) -> Any:
    """Light coercion for values that arrive as strings or ints where the field wants a float/str path."""
    if hint is float or float in typing.get_args(hint):
        if isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                return value
    if isinstance(value, Path):
        return str(value)
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build dataclass `cls` from `data`, rejecting unknown keys and values of the wrong type (names the key)."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        value = _coerce(value, hints[key])
        if not _matches(value, hints[key]):
            raise ConfigError(f"{cls.__name__}.{key} = {value!r} does not match type {hints[key]}")
        kwargs[key] = list(value) if isinstance(value, tuple) else value
    missing = [
        n
        for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise ConfigError(f"{cls.__name__} needs {missing}")
    return cls(**kwargs)


def check_overrides(cls: type, overrides: Mapping[str, Any], *, set_by_asset: Sequence[str] = ()) -> None:
    """Reject override keys `cls` does not have, keys the caller sets itself, and values of the wrong type, before
    anything runs (the full config is built later, over a profile preset)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(fields)}")
    owned = sorted(set(overrides) & set(set_by_asset))
    if owned:
        raise ConfigError(f"{owned} are set by the asset (from its inputs or the recipe) and cannot be overridden")
    hints = typing.get_type_hints(cls)
    for key, value in overrides.items():
        if not _matches(_coerce(value, hints[key]), hints[key]):
            raise ConfigError(f"{cls.__name__}.{key} = {value!r} does not match type {hints[key]}")


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)` for run results: non-finite floats as null, numpy/torch scalars as numbers."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def to_mapping(obj: Any) -> dict[str, Any]:
    """JSON-safe dict of a config dataclass (for logs, MLflow params and Pipes metadata)."""
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))


def resolve_use_cpu(use_cpu: bool | None) -> bool:
    """None means: CPU unless a CUDA device is visible."""
    if use_cpu is not None:
        return bool(use_cpu)
    import torch

    return not torch.cuda.is_available()


def resolve_bf16(bf16: bool | None, use_cpu: bool) -> bool:
    """None means: bf16 on a bf16-capable GPU, fp32 on CPU (CPU bf16 autocast is slow and lossy for tiny models)."""
    if bf16 is not None:
        return bool(bf16)
    if use_cpu:
        return False
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def newest_checkpoint(output_dir: str | Path, required: Sequence[str] = ("trainer_state.json",)) -> Path | None:
    """Highest `checkpoint-N` folder holding every `required` file; a kill mid-save leaves one without them."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = []
    for path in root.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", path.name)
        if m and path.is_dir() and all((path / name).is_file() for name in required):
            found.append((int(m.group(1)), path))
    return max(found)[1] if found else None


def optimization_args(cfg: Any) -> dict[str, Any]:
    """The trainer arguments SFT and GRPO share, read from fields both run configs define under the same names."""
    return dict(
        output_dir=cfg.output_dir,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler_type,
        warmup_steps=cfg.warmup_ratio,  # transformers 5: a float < 1 is a ratio of the total steps
        weight_decay=cfg.weight_decay,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        seed=cfg.seed,
        data_seed=cfg.seed,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        logging_steps=cfg.logging_steps,
    )
