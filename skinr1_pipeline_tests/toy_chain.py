"""The demo pipeline with stand-ins for its model steps, for tests of orchestration and tracking (the weekly
schedule, MLflow lineage) that must not pay for training and generation.

Why the stand-ins sit in the `compute` resource: it is where the assets already hand model work over (a child
process, a Ray job), so every asset body, Dagster run and MLflow run is the real one; only "train" makes an untrained
LoRA adapter (and logs a short loss curve, different for every call) and "answer" gives every item the same answer.
test_pipeline_e2e.py runs the real models.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import yaml

from skinr1_pipeline.defs.compute import TRAINING_CLI, Compute, ComputeStep
from skinr1_pipeline.evaluation.cli import load_config as load_answer_config
from skinr1_pipeline.presets import run_config_for
from skinr1_pipeline.storage.atomic import write_parquet

ANSWERS_CLI = "skinr1_pipeline.evaluation.cli"
ANSWER = "<thinking>stand-in</thinking><diagnosis>melanoma; status: malignant</diagnosis>"
_calls = itertools.count(1)


class StandInCompute(Compute):
    """In-process stand-ins for the training and answering steps (see the module docstring)."""

    def describe(self) -> str:
        return "in-process stand-ins"

    def run(self, context: dg.AssetExecutionContext, step: ComputeStep) -> dict[str, Any]:
        if step.module == TRAINING_CLI:
            return _train(step, next(_calls))
        if step.module == ANSWERS_CLI:
            return _answer(step)
        raise ValueError(f"no stand-in for {step.module}")


def _train(step: ComputeStep, call: int) -> dict[str, Any]:
    from mlflow import MlflowClient
    from peft import LoraConfig, get_peft_model

    from skinr1_pipeline.modeling.model_factory import load_model

    config = yaml.safe_load(Path(step.args[step.args.index("--config") + 1]).read_text("utf-8"))
    adapter_dir = Path(config["output_dir"]) / "adapter"
    model = get_peft_model(
        load_model(config["model_dir"], device="cpu"),
        LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], lora_dropout=0.0),
    )
    model.save_pretrained(adapter_dir)
    losses = [{"step": s, "loss": float(100 * call + s)} for s in (1, 2, 3)]  # tells one run's curve from another's
    if step.env.get("MLFLOW_RUN_ID"):
        client = MlflowClient(tracking_uri=step.env["MLFLOW_TRACKING_URI"])
        for point in losses:
            client.log_metric(step.env["MLFLOW_RUN_ID"], "loss", point["loss"], step=point["step"])
            if step.args[0] == "grpo":
                client.log_metric(step.env["MLFLOW_RUN_ID"], "reward", -point["loss"], step=point["step"])
    gate = (
        {
            "n": 2,
            "parse_rate": 1.0,
            "accuracy": 0.5,
            "answer_likelihood_accuracy": 0.5,
            "credit": 0.5,
            "examples": [{"item_id": "stand-in", "completion": ANSWER}],
        }
        if "--gate" in step.args
        else None
    )
    return {"adapter_dir": str(adapter_dir), "train_loss": losses, "gate": gate, "steps": 3, "processes": 1}


def _answer(step: ComputeStep) -> dict[str, Any]:
    cfg = load_answer_config(step.args[step.args.index("--config") + 1])
    items = pd.read_parquet(cfg.items_path)
    write_parquet(items.assign(completion=[ANSWER] * len(items)), cfg.output_path)
    return {
        "answers_path": cfg.output_path,
        "items": len(items),
        "generation_seconds": 0.01,
        "runner": "stand-in",
        "adapter_served_as": "stand-in",
    }


def toy_run_config(defs: dg.Definitions, changes: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The toy preset (`presets.run_config_for("toy", ...)`) for every asset of `defs`, with `changes` (asset ->
    config entries) laid over it; in-process APIs choose their own executor."""
    names = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    config = run_config_for("toy", names, executor=False)
    ops = config.setdefault("ops", {})
    for name, entries in (changes or {}).items():
        assert name in names, f"{name} is not an asset of these definitions"
        ops.setdefault(name, {"config": {}})["config"].update(entries)
    return config


def materialize_chain(settings, instance: dg.DagsterInstance, selection: dg.AssetSelection | None = None):
    """`runner.materialize_all` of the toy chain (one Dagster run per segment and partition, as `skinr1 demo`)."""
    from skinr1_pipeline.definitions import build_definitions
    from skinr1_pipeline.runner import materialize_all

    defs = build_definitions(settings, compute=StandInCompute())
    run_config = toy_run_config(defs, {"demo_source_data": {"images_per_class": 10}})
    outcome = materialize_all(defs, instance, run_config=run_config, selection=selection, log=print)
    assert outcome.success, [e.message for r in outcome.results for e in r.all_events if e.is_failure]
    return defs, outcome
