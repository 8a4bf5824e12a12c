"""The command line of both trainers: standalone, under Dagster Pipes, and as one process of a multi-process job.

    python -m skinr1_pipeline.training.cli sft --config cfg.yaml [--gate gate.yaml] [--key value ...]
    torchrun --nproc_per_node 8 -m skinr1_pipeline.training.cli grpo --config cfg.yaml --gate gate.yaml

Why one module: SFT and GRPO start, report and fail the same way, and a job of N processes must look like one run
to Dagster. Every rank trains; only rank 0 opens Dagster Pipes, reports the materialization, runs the held-out gate
(where the model is, so the Dagster process never needs a GPU) and prints the result. A rank that fails writes its
traceback to `$SKINR1_FAILURE_DIR/rank-<r>.txt` before it exits, so the launching step fails with that rank's
message instead of the launcher's bare exit code. Each rank's device comes from the launcher (`runtime.distributed`).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from skinr1_pipeline.modeling.prompt_format import system_prompt_text
from skinr1_pipeline.progress import LogProgress
from skinr1_pipeline.runtime.distributed import current_rank
from skinr1_pipeline.runtime.launch import FAILURE_DIR_ENV, failure_file
from skinr1_pipeline.storage.atomic import write_text
from skinr1_pipeline.training.config import from_mapping, json_default, load_mapping

STEPS = ("sft", "grpo")


@dataclass
class GateConfig:
    """The held-out check run on rank 0 after training: greedy answers to the first `limit` items of `split`."""

    items_path: str
    model_dir: str
    split: str = "valid"
    limit: int = 48
    max_new_tokens: int = 512
    max_pixels: int | None = None
    answer_form: str = "letter"  # how the model was taught to name an option (`prompt_format.ANSWER_FORMS`)
    system_prompt: str = "full"  # the one it was taught with (`prompt_format.SYSTEM_PROMPTS`)

    def __post_init__(self) -> None:
        system_prompt_text(self.system_prompt)  # an unknown name fails here, before training starts


def run_gate(gate: GateConfig, adapter_dir: str, log: Callable[[str], None]) -> dict[str, Any]:
    import pandas as pd

    from skinr1_pipeline.training.gates import heldout_mcq_scores

    items = pd.read_parquet(gate.items_path)
    chosen = items[items["split"] == gate.split]
    return heldout_mcq_scores(
        gate.model_dir,
        adapter_dir,
        chosen,
        limit=gate.limit,
        max_new_tokens=gate.max_new_tokens,
        max_pixels=gate.max_pixels,
        answer_form=gate.answer_form,
        system=system_prompt_text(gate.system_prompt),
        progress=lambda done, total: log(f"held-out gate: {done}/{total}"),
    )


class PipesProgress(TrainerCallback):
    """Trainer logs (loss, rewards, KL, lr) into the Dagster run log through the throttled bar: a long GPU run
    logs every `logging_steps`, and MLflow already keeps every value."""

    def __init__(self, label: str, log: Callable[[str], None]):
        self.bar = LogProgress(label, log, unit="step")

    def on_log(self, args, state, control, logs=None, **kwargs):
        scalars = {k: v for k, v in (logs or {}).items() if isinstance(v, (int, float, str))}
        self.bar(state.global_step, state.max_steps, json.dumps(scalars, default=json_default))


def _step(name: str):
    """(label, load config, run, Pipes metadata) of one trainer; imported lazily (each pulls in TRL)."""
    if name == "sft":
        from skinr1_pipeline.training import sft

        return "SFT", sft.load_config, sft.run_sft, sft.pipes_metadata
    from skinr1_pipeline.training import grpo

    return "GRPO", grpo.load_config, grpo.run_grpo, grpo.pipes_metadata


def record_failure(rank: int) -> Path | None:
    """Write the exception being handled to `$SKINR1_FAILURE_DIR/rank-<rank>.txt` (when the launcher set it)."""
    folder = os.environ.get(FAILURE_DIR_ENV)
    if not folder:
        return None
    path = failure_file(folder, rank)
    write_text(path, traceback.format_exc())
    return path


def run_step(
    step: str,
    config_path: str,
    overrides: Sequence[str],
    gate_path: str | None,
    *,
    log: Callable[[str], None] = print,
    callbacks: Sequence[TrainerCallback] = (),
) -> tuple[dict[str, Any], dict[str, Any]] | tuple[None, None]:
    """Train on this rank; rank 0 then runs the gate and returns (summary, Pipes metadata), the others (None, None).

    Shared by `train` (Pipes from this process) and `training.ray_job` (Ray Train workers, whose driver reports).
    """
    label, load_config, run, pipes_metadata = _step(step)
    cfg = load_config(config_path, overrides)
    gate = from_mapping(GateConfig, load_mapping(gate_path)) if gate_path else None
    rank = current_rank()
    if rank.is_main:
        log(f"{label} starting on {rank.world_size} process(es): {json.dumps(asdict(cfg), default=str)}")
    result = run(cfg, callbacks=list(callbacks))
    if not rank.is_main:
        return None, None
    summary = json.loads(json.dumps(asdict(result), default=json_default))
    summary.pop("train_log", None)
    summary["gate"] = run_gate(gate, result.adapter_dir, log) if gate else None
    metadata = {**pipes_metadata(result), "processes": rank.world_size}
    if summary["gate"] is not None:
        metadata["gate"] = {"raw_value": summary["gate"], "type": "json"}
    return summary, metadata


def train(step: str, config_path: str, overrides: Sequence[str], gate_path: str | None) -> dict[str, Any] | None:
    """`run_step`, reported through Dagster Pipes when this is rank 0 of a Pipes-launched job."""
    if not (current_rank().is_main and os.environ.get("DAGSTER_PIPES_CONTEXT")):
        return run_step(step, config_path, overrides, gate_path)[0]
    from dagster_pipes import open_dagster_pipes

    label = _step(step)[0]
    with open_dagster_pipes() as pipes:
        summary, metadata = run_step(
            step,
            config_path,
            overrides,
            gate_path,
            log=pipes.log.info,
            callbacks=[PipesProgress(label, pipes.log.info)],
        )
        pipes.report_asset_materialization(metadata=metadata)
    return summary


def main(argv: Sequence[str] | None = None, *, step: str | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m skinr1_pipeline.training.cli",
        description="SFT or GRPO of Qwen2.5-VL, standalone or under Dagster Pipes",
    )
    if step is None:
        parser.add_argument("step", choices=STEPS)
    parser.add_argument("--config", required=True, help="YAML/JSON file with the trainer's run config fields")
    parser.add_argument(
        "--gate",
        default=None,
        help="YAML/JSON file with GateConfig fields: the held-out check rank 0 runs on the trained adapter",
    )
    known, rest = parser.parse_known_args(argv)
    rank = current_rank()
    try:
        summary = train(step or known.step, known.config, rest, known.gate)
    except Exception:  # not SystemExit: `--help` and clean exits are no failures
        record_failure(rank.rank)
        raise
    if summary is not None:
        print(json.dumps(summary, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
