"""Per-step reward history and completions tables for GRPO, independent of TRL's own completion logging.

Why our own: TRL 1.16 ships its completions table only to wandb/trackio and its parquet lacks the row's
`sample_id`, so a suspicious reward cannot be traced back to the image and item that earned it. Here every reward
function is wrapped by a `RewardRecorder` that keeps what the reward actually saw (prompt, completion, sample_id and
its score); `CompletionsTableCallback` turns those records into a per-step reward history and, every N steps, a
Parquet table at `output_dir/completions/step_XXXX.parquet`, also logged to MLflow when an MLflow run is active.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import TrainerCallback

from skinr1_pipeline.modeling.prompt_format import completion_text, prompt_text
from skinr1_pipeline.storage.atomic import write_parquet

logger = logging.getLogger(__name__)

COMPLETIONS_DIR = "completions"


def user_text(prompt: Any) -> str | None:
    """Text of the user turns only: the system prompt is the same in every row and would dominate the table."""
    if isinstance(prompt, (list, tuple)):
        users = [m for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
        if users:
            return prompt_text(users)
    return prompt_text(prompt)


class RewardRecorder:
    """Wraps reward functions so each call's inputs and scores are kept, grouped by generation batch.

    TRL calls every reward function once per generation batch with the same `completions` list object, so that
    object's identity groups the calls; the recorder holds a reference to it, so the id cannot be reused meanwhile.
    """

    def __init__(self, names: Sequence[str], weights: Sequence[float]):
        if len(names) != len(weights):
            raise ValueError(f"{len(names)} reward names but {len(weights)} weights")
        self.names = list(names)
        self.weights = dict(zip(names, (float(w) for w in weights)))
        self._batches: list[dict[str, Any]] = []

    def wrap(self, name: str, fn: Callable[..., list]) -> Callable[..., list]:
        """`fn` with recording; keeps `__name__` so TRL's `rewards/<fn>/mean` metrics keep their names."""
        if name not in self.weights:
            raise ValueError(f"reward {name!r} is not one of {self.names}")

        @functools.wraps(fn)
        def recorded(*args: Any, **kwargs: Any) -> list:
            scores = fn(*args, **kwargs)
            self._record(name, kwargs, scores)
            return scores

        return recorded

    def _record(self, name: str, kwargs: Mapping[str, Any], scores: Sequence[Any]) -> None:
        completions = kwargs.get("completions")
        if completions is None:
            return
        batch = self._batches[-1] if self._batches else None
        if batch is None or batch["completions"] is not completions:
            n = len(completions)
            batch = {
                "completions": completions,
                "prompts": kwargs.get("prompts") or [None] * n,
                "sample_id": kwargs.get("sample_id") or [None] * n,
                "item_id": kwargs.get("item_id") or [None] * n,
                "scores": {},
            }
            self._batches.append(batch)
        batch["scores"][name] = [float("nan") if s is None else float(s) for s in scores]

    def pop_rows(self) -> list[dict[str, Any]]:
        """One row per recorded completion since the last call (then forgets them)."""
        rows = []
        for batch in self._batches:
            for i, completion in enumerate(batch["completions"]):
                row = {
                    "sample_id": batch["sample_id"][i],
                    "item_id": batch["item_id"][i],
                    "prompt": user_text(batch["prompts"][i]),
                    "completion": completion_text(completion),
                }
                total, any_score = 0.0, False
                for name in self.names:
                    score = batch["scores"].get(name, [float("nan")] * len(batch["completions"]))[i]
                    row[f"reward_{name}"] = score
                    if not math.isnan(score):  # TRL sums weighted rewards with nansum
                        total += self.weights[name] * score
                        any_score = True
                row["reward_total"] = total if any_score else float("nan")
                rows.append(row)
        self._batches.clear()
        return rows


def _mean(values: pd.Series) -> float | None:
    valid = values.dropna()
    return float(valid.mean()) if len(valid) else None


class CompletionsTableCallback(TrainerCallback):
    """After each optimizer step: append the step's reward means to `history`; every `every` steps write the table."""

    def __init__(self, recorder: RewardRecorder, output_dir: str | Path, every: int):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        self.recorder = recorder
        self.dir = Path(output_dir) / COMPLETIONS_DIR
        self.every = every
        self.history: list[dict[str, Any]] = []
        self.tables: list[Path] = []

    def on_step_end(self, args, state, control, **kwargs):
        rows = self.recorder.pop_rows()
        if not rows or not state.is_world_process_zero:
            return control
        step = int(state.global_step)
        frame = pd.DataFrame(rows)
        frame.insert(0, "step", step)
        entry: dict[str, Any] = {"step": step, "completions": len(frame)}
        for name in [*self.recorder.names, "total"]:
            entry[name] = _mean(frame[f"reward_{name}"])
        self.history.append(entry)
        if step % self.every == 0:
            self.write(frame, step)
        return control

    def write(self, frame: pd.DataFrame, step: int) -> Path:
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.dir / f"step_{step:04d}.parquet"
        write_parquet(frame, path)
        self.tables.append(path)
        _log_table_to_mlflow(frame, f"{COMPLETIONS_DIR}/step_{step:04d}.json")
        return path


class RunParamsCallback(TrainerCallback):
    """Logs the run's params (prefixed `grpo.`) to MLflow once training begins.

    Why at train begin: under Dagster the child process has no MLflow run until transformers' MLflowCallback (which
    runs before user callbacks) attaches to the asset's run from MLFLOW_RUN_ID.
    """

    def __init__(self, params: Mapping[str, Any]):
        self.params = dict(params)

    def on_train_begin(self, args, state, control, **kwargs):
        mlflow = active_mlflow()
        if mlflow is None or not state.is_world_process_zero:
            return control
        flat = {f"grpo.{k}": json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in self.params.items()}
        try:
            mlflow.log_params(flat)
        except Exception as exc:  # noqa: BLE001 - e.g. a resumed run re-logging a changed value; files hold them
            logger.warning("could not log GRPO params to MLflow: %s", exc)
        return control


class AdapterCheckpointGuard(TrainerCallback):
    """On resume, fail at step start unless the policy adapter equals the checkpoint's saved adapter.

    A resume that quietly restarts from the initial adapter looks healthy in every metric; this makes it loud.
    """

    def __init__(self, checkpoint: str | Path):
        self.checkpoint = Path(checkpoint)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from peft import get_peft_model_state_dict
        from safetensors.torch import load_file

        saved = load_file(str(self.checkpoint / "adapter_model.safetensors"))
        current = get_peft_model_state_dict(model, adapter_name="default")
        bad = [
            k
            for k, v in saved.items()
            if k not in current or not torch.equal(v.to(current[k].device, current[k].dtype), current[k])
        ]
        if bad:
            raise RuntimeError(
                f"resuming from {self.checkpoint}: {len(bad)} policy adapter tensors differ from the "
                f"checkpoint (e.g. {bad[0]}); refusing to continue from the wrong weights"
            )
        return control


def active_mlflow():
    """The mlflow module when this process has an active MLflow run, else None.

    mlflow is looked up in `sys.modules` instead of imported: a run can only be active if something already imported
    mlflow, and the GPU host may not have it installed at all.
    """
    mlflow = sys.modules.get("mlflow")
    if mlflow is None or mlflow.active_run() is None:
        return None
    return mlflow


def _log_table_to_mlflow(frame: pd.DataFrame, artifact_file: str) -> None:
    mlflow = active_mlflow()
    if mlflow is None:
        return
    try:
        mlflow.log_table(data=frame, artifact_file=artifact_file)
    except Exception as exc:  # noqa: BLE001 - telemetry must not kill a multi-hour run; the Parquet copy exists
        logger.warning("could not log %s to MLflow: %s", artifact_file, exc)
