"""Training assets: base model, LoRA SFT, RL multiple-choice data, GRPO. Training and its held-out gate run where
the model is, through the `compute` resource (a child process, torchrun/accelerate, or a Ray job) and Dagster Pipes,
so the same entry points serve one CPU, eight GPUs and a cluster."""

import json
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from skinr1_pipeline.data.holdout import training_rows
from skinr1_pipeline.defs.code_versions import code_version_of
from skinr1_pipeline.defs.compute import TRAINING_CLI, Compute, ComputeStep
from skinr1_pipeline.defs.metadata import counts_table, markdown_table, md, raw_value
from skinr1_pipeline.defs.resources import MlflowTracking, PipelineHome, TrainingRecipe
from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.settings import Settings
from skinr1_pipeline.storage.atomic import write_json, write_parquet, write_yaml
from skinr1_pipeline.training.cli import GateConfig
from skinr1_pipeline.training.recipes import RecipeChoices

GPU_POOL = "gpu"
RECIPE_FILES = ("recipes/*/*.yaml",)  # a recipe edit makes the training assets stale


class BaseModelConfig(dg.Config):
    vision_steps: int = Field(
        default=400,
        description="demo only: steps training the vision tower as a classifier of the train labels before the "
        "warm-up, which then leaves it frozen (what a pretrained vision encoder brings; the valid accuracy is "
        "logged); 0 = none, the warm-up trains the tower through captioning instead",
    )
    warmup_steps: int = Field(
        default=400,
        description="demo only: image -> diagnosis-name captioning steps on train images, merged into the tiny "
        "model (what pretraining gives a real VLM); after the vision classifier 400 steps reached 71% valid "
        "caption accuracy and more did not help; 0 = none",
    )
    warmup_views: int = Field(
        default=4,
        description="demo only: flipped/rotated views per warm-up image (1 = the "
        "image only); more views, less memorising of ~200 train images",
    )
    option_drill_steps: int = Field(
        default=600,
        description="demo only: option-reading drill steps on synthetic "
        "MCQs from the train labels and images (the copying from context a pretrained "
        "LM has); 0 = none",
    )
    format_steps: int = Field(
        default=200,
        description="demo only: answer-format steps after the drill, with impressions drawn at random, images "
        "unrelated to them and no loss on the impression's name (the format an instruction-tuned base writes, no "
        "diagnosis), so the base and RL-only variants answer in the format; 0 = none",
    )


class SFTAssetConfig(dg.Config):
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="SFTRunConfig fields laid over the training recipe, e.g. {max_steps: 200} (checked by name and "
        "type before any folder is made; Dagster config maps take no null values)",
    )
    gate_items: int = Field(default=48, description="held-out MCQ items generated for the format gate")
    option_drill_rows: int | None = Field(
        default=None,
        description="option-reading drill rows (train labels and images) mixed into the SFT data, the reading of an "
        "option list a pretrained LM brings; unset = the training recipe's (1,500 on the demo, none on the paper "
        "recipe); 0 = the trajectories alone",
    )
    max_new_tokens: int = 512
    format_floor: float = Field(default=0.95, description="share of held-out generations that must parse")
    resume: bool = Field(
        default=False,
        description="continue the newest run folder of this asset that holds a "
        "checkpoint (after a crash or kill) instead of starting a new run in a new folder",
    )


class RLDataConfig(dg.Config):
    construction: Literal["set_first", "paper"] = Field(
        default="set_first",
        description="set_first: options fixed before the gold (no image-blind policy beats the "
        "uniform one's accuracy), LCA partial credit; paper: the authors' gold-first items, for exact reproduction",
    )
    n_options: int = 4
    hard_negative_fraction: float = Field(
        default=0.0, description="paper construction: share of distractors drawn from DDx neighbours"
    )
    seed: int = 42


class GRPOAssetConfig(dg.Config):
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="GRPORunConfig fields laid over the training recipe, e.g. {max_steps: 200} (checked by name and "
        "type before any folder is made; Dagster config maps take no null values)",
    )
    gate_items: int = 48
    max_new_tokens: int = 512
    accuracy_margin: float = Field(default=0.05, description="GRPO may trail SFT held-out accuracy by at most this")
    resume: bool = Field(
        default=False,
        description="continue the newest run folder of this asset that holds a "
        "checkpoint (after a crash or kill) instead of starting a new run in a new folder",
    )


class RLOnlyConfig(dg.Config):
    overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="GRPORunConfig fields laid over the training recipe, e.g. {max_steps: 200} (checked by name and "
        "type before any folder is made; Dagster config maps take no null values)",
    )
    resume: bool = Field(
        default=False,
        description="continue the newest run folder under models/rl_only that holds a "
        "checkpoint instead of starting a new run in a new folder",
    )


def training_dir(context: dg.AssetExecutionContext, home: PipelineHome, name: str, *, resume: bool) -> Path:
    """The folder a training asset writes: this run's own `models/<name>/<run id>/`, or with `resume` the most
    recent run folder holding a checkpoint (the killed run to continue).

    Why: the trainers resume from (SFT) or refuse (GRPO) checkpoints they find, which is right for a killed run but
    wrong when the base model or data changed since; a new materialization never continues a stale run, and it
    never touches the folder of the last good one (older folders go by `home.keep_runs`).
    """
    from skinr1_pipeline.storage.run_folders import newest_with
    from skinr1_pipeline.training.config import newest_checkpoint

    parent = home.run_parent(context, "models", name)
    if resume:
        found = newest_with(parent, lambda folder: newest_checkpoint(folder) is not None)
        if found is not None:
            context.log.info(f"resume=true: continuing the checkpoints in {found}")
            return found
        context.log.info(f"resume=true but no run folder under {parent} holds a checkpoint: starting a new run")
    return home.run_dir(context, "models", name)


def run_overrides(
    overrides: Mapping[str, Any], resume: bool, run_config: type, seed: int | None = None
) -> dict[str, Any]:
    """The asset config's overrides of `run_config` (plus `resume` when the asset asks to continue a run, and the
    settings' `train_seed` unless the overrides name a seed), checked by key and type before any folder is created,
    so a typo costs nothing."""
    from skinr1_pipeline.training.config import ConfigError, check_overrides

    overrides = {**({"seed": seed} if seed is not None else {}), **overrides, **({"resume": True} if resume else {})}
    try:
        check_overrides(
            run_config,
            overrides,
            # system_prompt: the recipe's choice, shown by every stage alike (training.recipes.RecipeChoices)
            set_by_asset=("model_dir", "adapter_dir", "items_path", "train_path", "output_dir", "system_prompt"),
        )
    except ConfigError as exc:
        raise dg.Failure(f"config.overrides: {exc}") from exc
    return overrides


BLIND_REWARD_FILE = "blind_policy_reward.json"


def _blind_reward_metrics(blind_reward: dict[str, Any]) -> dict[str, float]:
    """`baselines.best_blind_policy_reward` as MLflow metrics (expected granularity reward per policy)."""
    return {
        f"blind_reward_{k}": float(v)
        for k, v in blind_reward.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def _log_base_model(
    context: dg.AssetExecutionContext,
    mlflow: MlflowTracking,
    model_dir: str | Path,
    params: dict[str, Any],
    metrics: dict[str, float] | None = None,
) -> None:
    """The base model's MLflow run, tagged with the digest a registered adapter's base reference is checked
    against (`tracking.pyfunc_model.base_model_digest`)."""
    from skinr1_pipeline.tracking.pyfunc_model import base_model_digest

    fingerprint = base_model_digest(model_dir)
    with mlflow.asset_run(context, params=params, tags={"skinr1.base_model_digest": fingerprint["digest"]}) as run:
        if run is not None:
            import mlflow as mlf

            mlf.log_metrics(
                {"bytes_on_disk": fingerprint["bytes"], "model_files": fingerprint["files"], **(metrics or {})}
            )
    context.add_output_metadata({"base_model_digest": fingerprint["digest"]})


def train_and_gate(
    context: dg.AssetExecutionContext,
    compute: Compute,
    mlflow: MlflowTracking,
    settings: Settings,
    *,
    step: str,
    cfg: Any,
    out_dir: Path,
    artifact: str,
    gate: GateConfig | None,
    inputs: Sequence[tuple[str, str, str, str | None]] = (),
    upstream: Mapping[str, str] | None = None,
) -> tuple[dict[str, Any], str, dict[str, Any] | None, str]:
    """One training stage where the model is (`compute`): train into this asset's MLflow run, then, in the same job,
    score the adapter on the held-out slice (`gate`). Returns (reported metadata, adapter dir, gate scores, MLflow
    run id).

    `inputs`: (Parquet path, dataset name, context, split or None) logged as the run's dataset inputs before
    training, so the run records what it was trained and gated on; `upstream` as in `MlflowTracking.asset_run`.
    """
    from skinr1_pipeline.tracking.mlflow_runs import log_parquet_input
    from skinr1_pipeline.training.config import to_mapping

    cfg.report_to = ["mlflow"] if mlflow.enabled else []
    config_path = write_yaml(out_dir / "run_config.yaml", to_mapping(cfg))
    args = [step, "--config", str(config_path)]
    if gate is not None:
        gate_path = write_yaml(out_dir / "gate_config.yaml", asdict(gate))
        args += ["--gate", str(gate_path)]
    with mlflow.asset_run(context, upstream=upstream) as run:
        if run is not None:
            for path, name, usage, split in inputs:
                log_parquet_input(path, name, usage, split=split)
        env = (
            {}
            if run is None
            else {
                "MLFLOW_TRACKING_URI": settings.mlflow_tracking_uri,
                "MLFLOW_RUN_ID": run.info.run_id,
                "MLFLOW_EXPERIMENT_ID": run.info.experiment_id,
            }
        )
        reported = compute.run(
            context, ComputeStep(module=TRAINING_CLI, args=args, workdir=out_dir, trainer=True, env=env)
        )
        adapter_dir = str(raw_value(reported.get("adapter_dir")) or out_dir / "adapter")
        scores = raw_value(reported.get("gate"))
        if run is not None:
            import mlflow as mlf

            if scores:
                mlf.log_metrics(
                    {
                        "heldout_parse_rate": scores["parse_rate"],
                        "heldout_accuracy": scores["accuracy"],
                        "heldout_answer_likelihood_accuracy": scores["answer_likelihood_accuracy"],
                    }
                )
            blind_reward = Path(getattr(cfg, "items_path", "") or out_dir).with_name(BLIND_REWARD_FILE)
            if step == "grpo" and blind_reward.is_file():
                # Beside the reward curves: what a policy that never looks at the image would have been paid.
                mlf.log_metrics(_blind_reward_metrics(json.loads(blind_reward.read_text())))
            mlf.log_artifacts(adapter_dir, artifact)
    return reported, adapter_dir, scores, run.info.run_id if run is not None else ""


def heldout_gate(
    items_path: str, model_dir: str, limit: int, max_new_tokens: int, max_pixels: int | None, choices: RecipeChoices
) -> GateConfig:
    """The gate every training stage runs on the valid split of the RL items (same slice for every stage), asked
    with the recipe's system prompt and scored in its answer form."""
    return GateConfig(
        items_path=items_path,
        model_dir=model_dir,
        split="valid",
        limit=limit,
        max_new_tokens=max_new_tokens,
        max_pixels=max_pixels,
        answer_form=choices.answer_form,
        system_prompt=choices.system_prompt,
    )


def build_base_model_asset(settings: Settings) -> dg.AssetsDefinition:
    """`base_model` from the profile's model source: the local model directory the settings name (`model_dir:`, the
    gpu profile's Qwen2.5-VL-7B-Instruct), or, without one, the tiny demo model built here. Why two assets under
    one name: only the built model reads the trajectories and samples, so only it depends on them (a local 7B must
    not wait for, or go stale with, the rationales)."""
    if settings.base_model_dir is not None:
        return _local_base_model(Path(settings.base_model_dir))
    return _built_base_model(settings)


def _local_base_model(model_dir: Path) -> dg.AssetsDefinition:
    @dg.asset(
        name="base_model",
        group_name="training",
        kinds={"pytorch"},
        code_version=code_version_of(__name__, "modeling.model_factory", "tracking.pyfunc_model"),
    )
    def base_model(context: dg.AssetExecutionContext, mlflow: MlflowTracking) -> str:
        """The local model directory every stage starts from (checked: config, weights, processor, chat template)."""
        from skinr1_pipeline.modeling.model_factory import validate_model_dir

        model_config = validate_model_dir(model_dir)
        _log_base_model(context, mlflow, model_dir, {"model_dir": str(model_dir)})
        context.add_output_metadata(
            {"model_dir": dg.MetadataValue.path(str(model_dir)), "model_type": model_config.get("model_type", "")}
        )
        return str(model_dir)

    return base_model


def _built_base_model(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name="base_model",
        group_name="training",
        kinds={"pytorch"},
        code_version=code_version_of(
            __name__,
            "modeling.model_factory",
            "modeling.tiny_model",
            "training.demo_pretraining",
            "training.vision_classifier",
            "training.option_drill",
            "data.holdout",
            "tracking.pyfunc_model",
        ),
    )
    def base_model(
        context: dg.AssetExecutionContext,
        config: BaseModelConfig,
        home: PipelineHome,
        mlflow: MlflowTracking,
        training_recipe: TrainingRecipe,
        taxonomy_graph: Taxonomy,
        unified_samples: pd.DataFrame,
        skin_rationale_trajectories: str,
    ) -> str:
        """The tiny demo Qwen2.5-VL, built here: a tokenizer trained on the taxonomy, knowledge and trajectory
        text, warmed up on train images, then drilled on reading multiple-choice options (what pretraining gives a
        real VLM)."""
        from skinr1_pipeline.modeling.model_factory import save_system_prompt, validate_model_dir
        from skinr1_pipeline.modeling.tiny_model import build_tiny_model, default_corpus

        trajectories = pd.read_parquet(skin_rationale_trajectories, columns=["prompt", "completion"])
        corpus = [*default_corpus(), *trajectories["prompt"], *trajectories["completion"]]
        for node in taxonomy_graph:
            corpus.append(" ".join([node.name, *node.synonyms]))
        out_dir = home.run_dir(context, "models", "base")
        choices = training_recipe.choices()  # the answer form the drill and format warm-up write, SFT's system prompt
        start = time.perf_counter()
        build_tiny_model(out_dir, corpus, seed=settings.model_seed)
        samples = training_rows(unified_samples, settings.ood_modalities, settings.ood_sources)
        vision: dict[str, Any] = {"steps": 0}
        if config.vision_steps:
            from skinr1_pipeline.training.vision_classifier import train_vision_classifier

            train, valid = (samples[samples["split"] == split] for split in ("train", "valid"))
            vision = train_vision_classifier(
                out_dir,
                (train["image_path"], train["taxonomy_node"]),
                (valid["image_path"], valid["taxonomy_node"]),
                steps=config.vision_steps,
                seed=settings.model_seed,
            )
            context.log.info(
                f"vision classifier: {vision['steps']} steps in {vision['seconds']} s, valid accuracy "
                f"{vision['valid_accuracy']:.0%} over {vision['classes']} labels (majority label "
                f"{vision['valid_majority_rate'] or 0:.0%})"
            )
        warmup: dict[str, Any] = {"steps": 0}
        if config.warmup_steps:
            from skinr1_pipeline.training.demo_pretraining import warm_up

            warmup = warm_up(
                out_dir,
                samples,
                taxonomy_graph,
                steps=config.warmup_steps,
                views=config.warmup_views,
                seed=settings.model_seed,
                train_vision=not config.vision_steps,
            )
        drill: dict[str, Any] = {"steps": 0}
        if config.option_drill_steps:  # after the warm-up: its full embedding/head update erased a drill run before it
            from skinr1_pipeline.training.option_drill import train_option_drill

            train = samples[samples["split"] == "train"]
            drill = train_option_drill(
                out_dir,
                train["taxonomy_node"],
                taxonomy_graph,
                steps=config.option_drill_steps,
                seed=settings.model_seed,
                image_paths=train.groupby("taxonomy_node")["image_path"].agg(list).to_dict(),
                form=choices.answer_form,
                system=choices.system_text(),
            )
            context.log.info(
                f"option drill: {drill['steps']} steps in {drill['seconds']} s, held-out answer "
                f"accuracy {drill['held_out_accuracy']:.0%} on {drill['held_out_items']} fresh items"
            )
        answer_format: dict[str, Any] = {"steps": 0}
        if config.format_steps:  # last: the drill and warm-up targets would otherwise overwrite the format
            from skinr1_pipeline.training.option_drill import format_warm_up

            train = samples[samples["split"] == "train"]
            answer_format = format_warm_up(
                out_dir,
                train["taxonomy_node"],
                taxonomy_graph,
                list(train["image_path"]),
                steps=config.format_steps,
                seed=settings.model_seed,
                form=choices.answer_form,
                system=choices.system_text(),
            )
            context.log.info(
                f"format warm-up: {answer_format['steps']} steps in {answer_format['seconds']} s, held-out parse "
                f"rate {answer_format['held_out_parse_rate']:.0%}, letter accuracy "
                f"{answer_format['held_out_accuracy']:.0%} (chance by construction)"
            )
        if drill["steps"] or answer_format["steps"]:  # taught to answer after this prompt: `diagnose` asks with it
            save_system_prompt(out_dir, choices.system_text())
        model_config = validate_model_dir(out_dir)
        home.seal(context, out_dir)
        _log_base_model(
            context,
            mlflow,
            out_dir,
            {**config.model_dump(), "model_dir": str(out_dir)},
            {
                "vision_steps": vision["steps"],
                **({"vision_valid_accuracy": vision["valid_accuracy"]} if "valid_accuracy" in vision else {}),
                "warmup_steps": warmup["steps"],
                "option_drill_steps": drill["steps"],
                **({"option_drill_accuracy": drill["held_out_accuracy"]} if "held_out_accuracy" in drill else {}),
                "format_steps": answer_format["steps"],
                **(
                    {"format_parse_rate": answer_format["held_out_parse_rate"]}
                    if "held_out_parse_rate" in answer_format
                    else {}
                ),
            },
        )
        size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
        context.add_output_metadata(
            {
                "model_dir": dg.MetadataValue.path(str(out_dir)),
                "model_type": model_config.get("model_type", ""),
                "corpus_texts": len(corpus),
                "bytes_on_disk": size,
                "seconds": round(time.perf_counter() - start, 2),
                "warmup_steps": warmup["steps"],
                "warmup_images": warmup.get("images", 0),
                "warmup_views": warmup.get("views", 0),
                "warmup_final_loss": warmup["train_loss"][-1]["loss"] if warmup.get("train_loss") else float("nan"),
                "option_drill_steps": drill["steps"],
                "option_drill_accuracy": drill.get("held_out_accuracy", float("nan")),
                "option_drill_final_loss": drill["train_loss"][-1]["loss"] if drill.get("train_loss") else float("nan"),
                "format_steps": answer_format["steps"],
                "format_parse_rate": answer_format.get("held_out_parse_rate", float("nan")),
                "format_letter_accuracy": answer_format.get("held_out_accuracy", float("nan")),
            }
        )
        return str(out_dir)

    return base_model


def build_training_defs(settings: Settings) -> dg.Definitions:
    base_model = build_base_model_asset(settings)

    @dg.asset(
        group_name="training",
        kinds={"parquet"},
        code_version=code_version_of(__name__, "training.rl_data", "evaluation.baselines", "data.holdout"),
    )
    def rl_mcq_dataset(
        context: dg.AssetExecutionContext,
        config: RLDataConfig,
        home: PipelineHome,
        mlflow: MlflowTracking,
        unified_samples: pd.DataFrame,
        taxonomy_graph: Taxonomy,
        ddx_graph: DDxGraph,
    ) -> str:
        """Multiple-choice GRPO items on in-distribution samples (set-first by default; the paper's construction on
        request), with the granularity reward an image-blind policy would collect beside the uniform policy's."""
        from skinr1_pipeline.evaluation.baselines import best_blind_policy_reward
        from skinr1_pipeline.training.rl_data import build_rl_items

        samples = training_rows(unified_samples, settings.ood_modalities, settings.ood_sources)
        build = build_rl_items(
            samples,
            taxonomy_graph,
            construction=config.construction,
            ddx=ddx_graph,
            n_options=config.n_options,
            hard_negative_fraction=config.hard_negative_fraction,
            seed=config.seed,
        )
        items = build.items
        folder = home.run_dir(context, "outputs", "rl_mcq_dataset")
        path = write_parquet(items, folder / "items.parquet")
        write_parquet(build.dropped, folder / "dropped.parquet")
        blind_reward = best_blind_policy_reward(items[items["split"] == "train"], taxonomy_graph, ddx_graph)
        write_json(folder / BLIND_REWARD_FILE, blind_reward, indent=1, default=float)
        home.seal(context, folder)
        with mlflow.asset_run(context, params=config.model_dump()) as run:
            if run is not None:
                import mlflow as mlf

                from skinr1_pipeline.tracking.mlflow_runs import log_parquet_input

                for split in sorted(items["split"].unique()):  # from the file, so GRPO logs the same digests
                    log_parquet_input(path, f"rl_mcq_{split}", "grpo" if split == "train" else split, split=split)
                mlf.log_metrics(_blind_reward_metrics(blind_reward))
        per_split = items.groupby(["source_dataset", "split"]).size().rename("items").reset_index()
        example = items.iloc[0]
        context.add_output_metadata(
            {
                "path": dg.MetadataValue.path(str(path)),
                "items": len(items),
                "per_source_and_split": md(markdown_table(per_split)),
                "dropped_by_reason": md(counts_table({str(k): int(v) for k, v in build.drop_counts.items()}, "reason")),
                "blind_policy_reward": md(
                    counts_table(
                        {k: round(float(v), 4) for k, v in blind_reward.items() if isinstance(v, (int, float))},
                        "policy",
                    )
                ),
                "example": md(
                    f"```\n{example['prompt']}\n```\noptions scores: {list(example['option_scores'])}, "
                    f"bucket: {example['bucket']}"
                ),
            }
        )
        return str(path)

    @dg.asset(
        group_name="training",
        kinds={"pytorch", "mlflow"},
        pool=GPU_POOL,
        code_version=code_version_of(
            __name__, "training.cli", "training.recipes", "training.option_drill", "data.holdout", data=RECIPE_FILES
        ),
    )
    def sft_checkpoint(
        context: dg.AssetExecutionContext,
        config: SFTAssetConfig,
        home: PipelineHome,
        mlflow: MlflowTracking,
        compute: Compute,
        training_recipe: TrainingRecipe,
        base_model: str,
        skin_rationale_trajectories: str,
        rl_mcq_dataset: str,
        unified_samples: pd.DataFrame,
        taxonomy_graph: Taxonomy,
    ) -> dict:
        """LoRA SFT on the SkinRationale trajectories (TRL SFTTrainer, loss on the assistant turn), with the
        recipe's option-reading drill rows mixed in (the demo's)."""
        from skinr1_pipeline.training.sft import SFTRunConfig

        overrides = run_overrides(config.overrides, config.resume, SFTRunConfig, settings.train_seed)
        out_dir = training_dir(context, home, "sft", resume=config.resume)
        train_path, mixed = skin_rationale_trajectories, {}
        choices = training_recipe.choices()
        drill_rows = config.option_drill_rows
        if drill_rows is None:
            drill_rows = choices.option_drill_rows
        if drill_rows:
            from skinr1_pipeline.training.option_drill import mix_drill_rows

            samples = training_rows(unified_samples, settings.ood_modalities, settings.ood_sources)
            train_path = str(out_dir / "sft_data.parquet")
            mixed = mix_drill_rows(
                skin_rationale_trajectories,
                train_path,
                samples[samples["split"] == "train"],
                taxonomy_graph,
                drill_rows,
                settings.model_seed,
                form=choices.answer_form,
            )
            context.log.info(f"SFT data: {mixed['trajectories']} trajectories + {mixed['drill_rows']} drill rows")
        cfg = training_recipe.sft_config(
            model_dir=base_model, train_path=train_path, output_dir=str(out_dir), **overrides
        )
        inputs = [
            (skin_rationale_trajectories, "skin_rationale_trajectories", "training", None),
            *([(train_path, "sft_data", "training_mix", None)] if mixed else []),
            (rl_mcq_dataset, "rl_mcq_valid", "gate", "valid"),
        ]
        reported, adapter_dir, gate, run_id = train_and_gate(
            context,
            compute,
            mlflow,
            settings,
            step="sft",
            cfg=cfg,
            out_dir=out_dir,
            artifact="sft_adapter",
            gate=heldout_gate(
                rl_mcq_dataset,
                base_model,
                config.gate_items,
                config.max_new_tokens,
                cfg.max_pixels,
                choices,
            ),
            inputs=inputs,
        )
        home.seal(context, out_dir)
        losses = [float(p["loss"]) for p in raw_value(reported.get("train_loss")) or []]
        metadata = {
            **{k: v for k, v in reported.items() if k not in ("train_loss", "eval_loss", "metrics", "gate")},
            "loss_curve": md(markdown_table(pd.DataFrame(raw_value(reported.get("train_loss")) or []), 40)),
            "sft_drill_rows": mixed.get("drill_rows", 0),
            "heldout_parse_rate": gate["parse_rate"],
            "heldout_accuracy": gate["accuracy"],
            "heldout_n": gate["n"],
            "heldout_answer_likelihood_accuracy": gate["answer_likelihood_accuracy"],
            "sample_generation": md(f"```\n{gate['examples'][0]['completion']}\n```"),
        }
        # A Pipes step must hand back a MaterializeResult; its `value` still goes through the IO manager.
        return dg.MaterializeResult(
            metadata=metadata,
            value={
                "adapter_dir": adapter_dir,
                "losses": losses,
                "gate": gate,
                "max_pixels": cfg.max_pixels,
                "format_floor": config.format_floor,
                "mlflow_run_id": run_id,
            },
        )

    @dg.asset_check(asset=sft_checkpoint, blocking=True, description="Every logged SFT loss is finite")
    def sft_losses_finite(sft_checkpoint: dict) -> dg.AssetCheckResult:
        losses = sft_checkpoint["losses"]
        bad = [x for x in losses if not math.isfinite(x)]
        return dg.AssetCheckResult(
            passed=bool(losses) and not bad, metadata={"logged": len(losses), "non_finite": len(bad)}
        )

    @dg.asset_check(
        asset=sft_checkpoint,
        blocking=True,
        description="Enough held-out generations parse in the strict format (95% by default)",
    )
    def sft_format_compliance(sft_checkpoint: dict) -> dg.AssetCheckResult:
        rate, floor = sft_checkpoint["gate"]["parse_rate"], sft_checkpoint["format_floor"]
        return dg.AssetCheckResult(
            passed=rate >= floor, metadata={"parse_rate": rate, "n": sft_checkpoint["gate"]["n"], "floor": floor}
        )

    @dg.asset(
        group_name="training",
        kinds={"pytorch", "mlflow"},
        pool=GPU_POOL,
        code_version=code_version_of(__name__, "training.cli", "training.recipes", data=RECIPE_FILES),
    )
    def grpo_checkpoint(
        context: dg.AssetExecutionContext,
        config: GRPOAssetConfig,
        home: PipelineHome,
        mlflow: MlflowTracking,
        compute: Compute,
        training_recipe: TrainingRecipe,
        base_model: str,
        sft_checkpoint: dict,
        rl_mcq_dataset: str,
    ) -> dict:
        """GRPO continuing the SFT LoRA adapter, rewarded by format + hierarchical granularity + malignancy."""
        from skinr1_pipeline.training.grpo import GRPORunConfig

        overrides = run_overrides(config.overrides, config.resume, GRPORunConfig, settings.train_seed)
        out_dir = training_dir(context, home, "grpo", resume=config.resume)
        cfg = training_recipe.grpo_config(
            model_dir=base_model,
            adapter_dir=sft_checkpoint["adapter_dir"],
            items_path=rl_mcq_dataset,
            output_dir=str(out_dir),
            **overrides,
        )
        sft_run = sft_checkpoint.get("mlflow_run_id", "")  # values from before lineage lack it
        reported, adapter_dir, gate, run_id = train_and_gate(
            context,
            compute,
            mlflow,
            settings,
            step="grpo",
            cfg=cfg,
            out_dir=out_dir,
            artifact="grpo_adapter",
            gate=heldout_gate(
                rl_mcq_dataset,
                base_model,
                config.gate_items,
                config.max_new_tokens,
                sft_checkpoint["max_pixels"],
                training_recipe.choices(),
            ),
            inputs=[
                (rl_mcq_dataset, "rl_mcq_train", "grpo", "train"),
                (rl_mcq_dataset, "rl_mcq_valid", "gate", "valid"),
            ],
            upstream={"sft_checkpoint": sft_run},
        )
        home.seal(context, out_dir)
        metadata = {
            **{k: v for k, v in reported.items() if k not in ("reward_history", "metrics", "gate")},
            "heldout_parse_rate": gate["parse_rate"],
            "heldout_accuracy": gate["accuracy"],
            "heldout_answer_likelihood_accuracy": gate["answer_likelihood_accuracy"],
            "sft_heldout_accuracy": sft_checkpoint["gate"]["accuracy"],
            "heldout_n": gate["n"],
        }
        return dg.MaterializeResult(
            metadata=metadata,
            value={
                "adapter_dir": adapter_dir,
                "gate": gate,
                "sft_gate": sft_checkpoint["gate"],
                "margin": config.accuracy_margin,
                "mlflow_run_id": run_id,
                "sft_mlflow_run_id": sft_run,
            },
        )

    @dg.asset_check(
        asset=grpo_checkpoint,
        blocking=True,
        description="GRPO keeps held-out in-domain accuracy within the margin of SFT's",
    )
    def grpo_keeps_sft_accuracy(grpo_checkpoint: dict) -> dg.AssetCheckResult:
        grpo, sft, margin = (
            grpo_checkpoint["gate"]["accuracy"],
            grpo_checkpoint["sft_gate"]["accuracy"],
            grpo_checkpoint["margin"],
        )
        return dg.AssetCheckResult(
            passed=grpo >= sft - margin, metadata={"grpo_accuracy": grpo, "sft_accuracy": sft, "margin": margin}
        )

    @dg.asset(
        group_name="training",
        kinds={"pytorch", "mlflow"},
        pool=GPU_POOL,
        code_version=code_version_of(__name__, "training.cli", "training.recipes", data=RECIPE_FILES),
    )
    def rl_only_checkpoint(
        context: dg.AssetExecutionContext,
        config: RLOnlyConfig,
        home: PipelineHome,
        mlflow: MlflowTracking,
        compute: Compute,
        training_recipe: TrainingRecipe,
        base_model: str,
        rl_mcq_dataset: str,
    ) -> dict:
        """The RL-only ablation: GRPO from the base model with a fresh LoRA, no SFT."""
        from skinr1_pipeline.training.grpo import GRPORunConfig

        overrides = run_overrides(config.overrides, config.resume, GRPORunConfig, settings.train_seed)
        out_dir = training_dir(context, home, "rl_only", resume=config.resume)
        cfg = training_recipe.grpo_config(
            model_dir=base_model, adapter_dir=None, items_path=rl_mcq_dataset, output_dir=str(out_dir), **overrides
        )
        reported, adapter_dir, _, run_id = train_and_gate(
            context,
            compute,
            mlflow,
            settings,
            step="grpo",
            cfg=cfg,
            out_dir=out_dir,
            artifact="rl_only_adapter",
            gate=None,
            inputs=[(rl_mcq_dataset, "rl_mcq_train", "grpo", "train")],
        )
        home.seal(context, out_dir)
        return dg.MaterializeResult(
            metadata={k: v for k, v in reported.items() if k not in ("reward_history", "metrics")},
            value={"adapter_dir": adapter_dir, "mlflow_run_id": run_id},
        )

    return dg.Definitions(
        assets=[base_model, rl_mcq_dataset, sft_checkpoint, grpo_checkpoint, rl_only_checkpoint],
        asset_checks=[sft_losses_finite, sft_format_compliance, grpo_keeps_sft_accuracy],
    )
