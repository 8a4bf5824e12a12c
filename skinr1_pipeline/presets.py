"""Asset config per scale (the settings' `scale:`), as the run config Dagster gives each asset.

Why here and not in each asset's config defaults: runs that Dagster's automation launches carry no run config of
their own, so a scale that must reach them is attached to every run the sensors request (`defs.automation`,
`defs.sensors`). `full` adds nothing (each asset's own defaults); `toy` is the smallest chain in which every stage
still runs: no vision classifier, warm-up, option drill or format warm-up for the base model, two SFT steps, one
GRPO step, three items per suite, short generations, gates opened (the format floor, GRPO's margin) because two
steps cannot teach the format, and each run in one process (a step process per asset would import torch again for
each). Numbers from it mean nothing.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

TOY_ASSET_CONFIG: dict[str, dict[str, Any]] = {
    "base_model": {"vision_steps": 0, "warmup_steps": 0, "option_drill_steps": 0, "format_steps": 0},
    "sft_checkpoint": {
        "overrides": {"max_steps": 2, "max_train_samples": 16, "save_steps": 1},
        "gate_items": 4,
        "max_new_tokens": 24,
        "format_floor": 0.0,
        "option_drill_rows": 0,
    },
    "grpo_checkpoint": {
        "overrides": {"max_steps": 1, "limit_items": 4, "max_completion_length": 16},
        "gate_items": 4,
        "max_new_tokens": 24,
        "accuracy_margin": 1.0,
    },
    "rl_only_checkpoint": {"overrides": {"max_steps": 1, "limit_items": 4, "max_completion_length": 16}},
    "eval_suites": {"per_suite_limit": 3},
    "variant_evaluations": {"max_new_tokens": 24, "runner": "hf"},
}

ASSET_CONFIG_BY_SCALE: dict[str, dict[str, dict[str, Any]]] = {"full": {}, "toy": TOY_ASSET_CONFIG}
EXECUTION_BY_SCALE: dict[str, dict[str, Any]] = {"full": {}, "toy": {"config": {"in_process": {}}}}


def run_config_for(scale: str, asset_names: Iterable[str], *, executor: bool = True) -> dict[str, Any]:
    """The run config of a run materializing `asset_names` at `scale`: only those assets' entries, because Dagster
    refuses config for an op that is not in the run; `executor=False` leaves out the executor choice (for
    in-process APIs, which have their own)."""
    preset = ASSET_CONFIG_BY_SCALE[scale]
    ops = {name: {"config": copy.deepcopy(preset[name])} for name in sorted(set(asset_names)) if name in preset}
    execution = EXECUTION_BY_SCALE[scale] if executor else {}
    return {**({"ops": ops} if ops else {}), **({"execution": execution} if execution else {})}
