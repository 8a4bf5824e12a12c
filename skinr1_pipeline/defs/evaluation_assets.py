"""Evaluation assets: the suites, one evaluation per model variant (a partition each), the ablation table, the
report, and the registry gate that promotes the GRPO adapter only when it beats the current champion."""

import json
from dataclasses import asdict
from typing import Literal

import dagster as dg
import pandas as pd
import yaml
from pydantic import Field

from skinr1_pipeline.defs.compute import Compute, ComputeStep
from skinr1_pipeline.defs.metadata import markdown_table, md, raw_value
from skinr1_pipeline.defs.resources import MlflowTracking, PipelineHome
from skinr1_pipeline.defs.training_assets import GPU_POOL, grpo_config, train_and_gate, training_dir
from skinr1_pipeline.evaluation.cli import AnswerConfig
from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.settings import Settings

VARIANTS = ("base", "sft", "rl_only", "sft_grpo")
ANSWERS_CLI = "skinr1_pipeline.evaluation.cli"
REGISTERED_MODEL = "skinr1-grpo"


class SuitesConfig(dg.Config):
    splits: list[str] = Field(default=["test"])
    per_suite_limit: int = Field(default=0, description="cap items per suite (0 = all); stable by item id")
    seed: int = 42


class VariantEvalConfig(dg.Config):
    # Literal fields: Dagster rejects any other value before the run starts, naming the field and the choices.
    runner: Literal["hf", "vllm"] = Field(default="vllm",
                                          description="hf | vllm: same prompts, greedy; vLLM is the fast engine")
    max_new_tokens: int = 512
    batch_size: int = 16
    calibration: bool = Field(default=True, description="score each option's log-probability for ECE")
    answer_likelihood: bool = Field(default=True, description="score each option's whole answer text after the "
                                    "model's own reasoning (answer-likelihood accuracy, next to the generated one)")
    vllm_lora_mode: Literal["merge", "lora", "auto"] = Field(
        default="auto", description="merge | lora | auto; vLLM's LoRA covers only language-model LoRA, so auto "
        "merges (on the device, in the model's dtype) any adapter that also trains the vision side or whole modules")
    vllm_tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs one vLLM engine spans")


class RLOnlyConfig(dg.Config):
    overrides: str = Field(default="{}", description="JSON object of GRPORunConfig fields over the profile preset")
    resume: bool = Field(default=False, description="continue the checkpoints left in models/rl_only instead of a "
                         "new run; false moves them to rl_only.previous")


class RegistryConfig(dg.Config):
    register_candidate: bool = True
    min_delta: float = Field(default=0.0, description="how much better in-domain accuracy must be to promote")


def build_evaluation_assets(settings: Settings) -> tuple[list, list, list]:
    demo = settings.profile == "demo"
    variants = dg.StaticPartitionsDefinition(list(VARIANTS))

    @dg.asset(group_name="training", code_version="1", kinds={"pytorch", "mlflow"}, pool=GPU_POOL)
    def rl_only_checkpoint(context: dg.AssetExecutionContext, config: RLOnlyConfig, home: PipelineHome,
                           mlflow: MlflowTracking, compute: Compute, base_model: str, rl_mcq_dataset: str) -> dict:
        """The RL-only ablation: GRPO from the base model with a fresh LoRA, no SFT."""
        out_dir = training_dir(context, home, "rl_only", resume=config.resume)
        cfg = grpo_config(demo, base_model, None, rl_mcq_dataset, out_dir, config.overrides, resume=config.resume)
        reported, adapter_dir, _, run_id = train_and_gate(
            context, compute, mlflow, settings, step="grpo", cfg=cfg, out_dir=out_dir, artifact="rl_only_adapter",
            gate=None)
        return dg.MaterializeResult(
            metadata={k: v for k, v in reported.items() if k not in ("reward_history", "metrics")},
            value={"adapter_dir": adapter_dir, "run_id": run_id})

    @dg.asset(group_name="evaluation", code_version="1", kinds={"parquet"})
    def eval_suites(context: dg.AssetExecutionContext, config: SuitesConfig, home: PipelineHome,
                    unified_samples: pd.DataFrame, taxonomy_graph: Taxonomy, ddx_graph: DDxGraph,
                    skin_rationale_trajectories: str, rl_mcq_dataset: str) -> str:
        """In-domain, malignancy, hierarchical, DDx, OOD and open-ended items; items whose image or sample any
        training stage saw are flagged and excluded."""
        from skinr1_pipeline.evaluation.contamination import check_contamination
        from skinr1_pipeline.evaluation.suites import SuiteConfig, build_suites

        suite_config = SuiteConfig(splits=tuple(config.splits), holdout_sources=settings.ood_sources,
                                   holdout_modalities=settings.ood_modalities, seed=config.seed)
        build = build_suites(unified_samples, taxonomy_graph, ddx_graph, suite_config)
        items = build.items
        if config.per_suite_limit:
            items = items.sort_values("item_id").groupby("suite", sort=False).head(config.per_suite_limit)
        trained_on = [
            pd.read_parquet(skin_rationale_trajectories, columns=["sample_id"]),
            pd.read_parquet(rl_mcq_dataset, columns=["sample_id", "image_sha256", "split"]).query("split == 'train'"),
            unified_samples[unified_samples["split"] == "train"][["sample_id", "image_sha256"]],
        ]
        report = check_contamination(items, trained_on)
        clean = report.clean(items)
        path = home.path("outputs", "evaluation", "suite_items.parquet")
        clean.to_parquet(path, index=False)
        report.flags.to_parquet(path.with_name("contamination_flags.parquet"), index=False)
        per_suite = clean.groupby("suite").size().rename("items").reset_index()
        context.add_output_metadata({
            "path": dg.MetadataValue.path(str(path)), "items": len(clean),
            "per_suite": md(markdown_table(per_suite)),
            "contamination": md(markdown_table(report.summary)),
            "dropped_while_building": md(markdown_table(build.dropped.groupby(["suite", "reason"]).size()
                                                        .rename("samples").reset_index())),
        })
        return str(path)

    @dg.asset(group_name="evaluation", code_version="1", kinds={"pytorch"}, partitions_def=variants, pool=GPU_POOL)
    def variant_evaluations(context: dg.AssetExecutionContext, config: VariantEvalConfig, home: PipelineHome,
                            mlflow: MlflowTracking, compute: Compute, eval_suites: str, taxonomy_graph: Taxonomy, base_model: str,
                            sft_checkpoint: dict, grpo_checkpoint: dict, rl_only_checkpoint: dict) -> dict:
        """One model variant answers every suite item (greedy, fixed seed); answers scored per suite."""
        from skinr1_pipeline.evaluation.comparison import variant_summary
        from skinr1_pipeline.evaluation.metrics import score_predictions

        variant = context.partition_key
        adapter = {"base": None, "sft": sft_checkpoint["adapter_dir"], "rl_only": rl_only_checkpoint["adapter_dir"],
                   "sft_grpo": grpo_checkpoint["adapter_dir"]}[variant]
        out = home.dir("outputs", "evaluation", variant)
        answers = AnswerConfig(
            items_path=eval_suites, model_dir=base_model, adapter_dir=adapter, output_path=str(out / "answers.parquet"),
            runner=config.runner, lora_mode=config.vllm_lora_mode, max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size, max_pixels=sft_checkpoint["max_pixels"], calibration=config.calibration,
            answer_likelihood=config.answer_likelihood, tensor_parallel_size=config.vllm_tensor_parallel_size)
        config_path = out / "answers_config.yaml"
        config_path.write_text(yaml.safe_dump(asdict(answers), sort_keys=False))
        # The model answers where it runs (compute); scoring needs no model and stays here.
        reported = compute.run(context, ComputeStep(module=ANSWERS_CLI, args=["--config", str(config_path)],
                                                    workdir=out))
        answered = pd.read_parquet(out / "answers.parquet")
        completions = answered["completion"].tolist()
        items = answered.drop(columns=["completion"])
        seconds = float(raw_value(reported.get("generation_seconds")))
        scored = score_predictions(items, completions, taxonomy=taxonomy_graph)
        scored["completion"] = completions
        scored.to_parquet(out / "scored.parquet", index=False)
        by_suite = {suite: frame.reset_index(drop=True) for suite, frame in scored.groupby("suite")}
        summary = variant_summary(by_suite)
        breakdowns = _breakdowns(by_suite, calibration=config.calibration)
        for suite, extra in breakdowns.items():
            summary.setdefault(suite, {})["breakdowns"] = extra
        served = str(raw_value(reported.get("adapter_served_as")))
        with mlflow.asset_run(context, params={"variant": variant, "runner": config.runner,
                                               "adapter_dir": adapter or "", "adapter_served_as": served}):
            import mlflow as mlf

            mlf.log_metrics({f"{suite}_accuracy": s["accuracy"] for suite, s in summary.items()
                             if s.get("accuracy") == s.get("accuracy")})
            mlf.log_metric("items_per_second", len(items) / max(seconds, 1e-9))
            mlf.log_dict(summary, "summary.json")
        rows = [{"suite": s, "n": v["n"], "accuracy": v["accuracy"], "ci": f"[{v['ci_low']:.2f}, {v['ci_high']:.2f}]",
                 "format_ok": v.get("format_ok_rate"), "answer_likelihood": v.get("likelihood", {}).get("accuracy")}
                for s, v in summary.items()]
        in_domain = breakdowns.get("in_domain", {})
        metadata = {
            "variant": variant, "items": len(items), "seconds": round(seconds, 1), "adapter_served_as": served,
            "per_suite": md(markdown_table(pd.DataFrame(rows))),
            "in_domain_by_dataset": md(markdown_table(pd.DataFrame(in_domain.get("by_dataset", [])))),
            "in_domain_by_class": md(markdown_table(pd.DataFrame(in_domain.get("by_class", [])))),
            "in_domain_by_fitzpatrick": md(markdown_table(pd.DataFrame(in_domain.get("by_fitzpatrick", [])))),
            "ood_by_fitzpatrick": md(markdown_table(pd.DataFrame(breakdowns.get("ood", {}).get("by_fitzpatrick", [])))),
            "calibration_ece": md(markdown_table(pd.DataFrame(
                [{"suite": k, **v["ece"]} for k, v in breakdowns.items() if "ece" in v]))),
        }
        # A Pipes step hands back a MaterializeResult; its `value` still goes through the IO manager.
        return dg.MaterializeResult(metadata=metadata, value={"variant": variant, "summary": summary,
                                                              "scored_path": str(out / "scored.parquet")})

    @dg.asset(group_name="evaluation", code_version="2", kinds={"pandas"})
    def ablation_table(context: dg.AssetExecutionContext, home: PipelineHome, variant_evaluations: dict[str, dict],
                       eval_suites: str, taxonomy_graph: Taxonomy) -> pd.DataFrame:
        """The paper's ablation table: base vs SFT-only vs RL-only vs SFT+GRPO on every suite, with 95% CIs, and
        each variant read against what image-blind guessing scores on the same items."""
        from skinr1_pipeline.evaluation.baselines import blind_baselines
        from skinr1_pipeline.evaluation.comparison import ablation_table as build_table
        from skinr1_pipeline.evaluation.comparison import likelihood_table, paper_shape, versus_guessing

        summaries = {v: e["summary"] for v, e in variant_evaluations.items()}
        table = build_table(summaries)
        table.to_csv(home.path("outputs", "evaluation", "ablation_table.csv"))
        likelihood = likelihood_table(summaries)
        likelihood.to_csv(home.path("outputs", "evaluation", "answer_likelihood_table.csv"))
        baselines = blind_baselines(pd.read_parquet(eval_suites), taxonomy_graph)
        baselines.to_csv(home.path("outputs", "evaluation", "image_blind_baselines.csv"), index=False)
        verdicts = versus_guessing(summaries, baselines)
        verdicts.to_csv(home.path("outputs", "evaluation", "versus_guessing.csv"))
        shape = paper_shape(table)
        display = table[[c for c in table.columns if not c.endswith(("_acc", "_ci_low", "_ci_high", "_n", "_format_ok",
                                                                      "_credit"))]]
        context.add_output_metadata({"table": md(markdown_table(display.reset_index())),
                                     "answer_likelihood": md(markdown_table(likelihood.reset_index())),
                                     "image_blind_baselines": md(markdown_table(baselines.round(3))),
                                     "versus_guessing": md(markdown_table(verdicts.reset_index())),
                                     "paper_shape": md("```\n" + json.dumps(shape, indent=1, default=str)[:4000] + "\n```")})
        return table

    @dg.asset(group_name="evaluation", code_version="2", kinds={"mlflow", "html"})
    def evaluation_reports(context: dg.AssetExecutionContext, config: RegistryConfig, home: PipelineHome,
                           mlflow: MlflowTracking, ablation_table: pd.DataFrame, variant_evaluations: dict[str, dict],
                           base_model: str, grpo_checkpoint: dict, eval_suites: str) -> dict:
        """A report a clinician-researcher reads (Markdown + self-contained HTML with figures), logged to MLflow;
        the SFT+GRPO adapter logged as a pyfunc model and registered with alias `candidate`."""
        from skinr1_pipeline.evaluation.comparison import paper_shape
        from skinr1_pipeline.evaluation.report import read_curves, write_report

        scored = {v: {s: f.reset_index(drop=True) for s, f in pd.read_parquet(e["scored_path"]).groupby("suite")}
                  for v, e in variant_evaluations.items()}
        summaries = {v: e["summary"] for v, e in variant_evaluations.items()}
        run_ids = _training_run_ids(settings, context)
        curves = read_curves(settings.mlflow_tracking_uri, run_ids) if run_ids else None
        flags = pd.read_parquet(home.path("outputs", "evaluation", "contamination_flags.parquet"))
        baselines = pd.read_csv(home.path("outputs", "evaluation", "image_blind_baselines.csv"))  # ablation_table's
        caveats = ["Demo profile: a ~1M-parameter Qwen2.5-VL with random initial weights trained for minutes on "
                   "generated images; the numbers show the pipeline works, not clinical performance."] if demo else []
        files = write_report(home.dir("outputs", "evaluation", "report"), table=ablation_table, summaries=summaries,
                             scored=scored, curves=curves, contamination=flags, caveats=caveats, baselines=baselines)
        result: dict = {"report_html": str(files.html), "report_md": str(files.markdown), "registered_version": None}
        with mlflow.asset_run(context) as run:
            if run is not None:
                import mlflow as mlf

                mlf.log_artifact(str(files.html), "report")
                mlf.log_artifact(str(files.markdown), "report")
                mlf.log_table(ablation_table.reset_index(), "ablation_table.json")
                mlf.log_table(baselines, "image_blind_baselines.json")
                in_domain = summaries.get("sft_grpo", {}).get("in_domain", {}).get("accuracy")
                if config.register_candidate and in_domain is not None:
                    result.update(_register(grpo_checkpoint["adapter_dir"], base_model, eval_suites, in_domain))
        context.add_output_metadata({
            "report_html": dg.MetadataValue.path(str(files.html)),
            "report": md(files.markdown.read_text("utf-8")[:60000]),
            "paper_shape": paper_shape(ablation_table).get("overall", ""),
            "registered_version": str(result["registered_version"] or ""),
        })
        return {**result, "min_delta": config.min_delta}

    @dg.asset_check(asset=evaluation_reports, blocking=True,
                    description="Promote the candidate to `champion` only if it beats the current champion in-domain")
    def champion_promotion(evaluation_reports: dict) -> dg.AssetCheckResult:
        version = evaluation_reports.get("registered_version")
        if not version:
            return dg.AssetCheckResult(passed=False, metadata={"reason": "no candidate was registered"})
        from mlflow import MlflowClient

        from skinr1_pipeline.tracking.registry import decide_and_promote

        client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
        decision = decide_and_promote(client, REGISTERED_MODEL, version, min_delta=evaluation_reports["min_delta"])
        # Keeping the current champion is a correct outcome, not a failure: the check passes either way and says which.
        return dg.AssetCheckResult(passed=True, metadata={k: str(v) for k, v in decision.as_dict().items()})

    schedule = dg.ScheduleDefinition(
        name="weekly_evaluation",
        target=dg.AssetSelection.keys("eval_suites", "variant_evaluations", "ablation_table", "evaluation_reports"),
        cron_schedule="0 3 * * 1",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Re-run evaluation weekly (enable in the UI); change the cron in defs/evaluation_assets.py.",
    )
    return ([rl_only_checkpoint, eval_suites, variant_evaluations, ablation_table, evaluation_reports],
            [champion_promotion], [schedule])


def _breakdowns(by_suite: dict[str, pd.DataFrame], *, calibration: bool) -> dict[str, dict]:
    """Per suite: accuracy by source dataset, class and Fitzpatrick type, and ECE where option log-probs exist."""
    from skinr1_pipeline.evaluation.metrics import expected_calibration_error, grouped_accuracy

    out: dict[str, dict] = {}
    for suite, frame in by_suite.items():
        entry = {"by_dataset": grouped_accuracy(frame, "source_dataset").to_dict("records"),
                 "by_class": grouped_accuracy(frame, "taxonomy_node").to_dict("records"),
                 "by_fitzpatrick": grouped_accuracy(frame, "fitzpatrick").to_dict("records")}
        mcq = frame[frame["option_logprobs"].map(lambda x: x is not None and len(x) > 0)] \
            if calibration and "option_logprobs" in frame else frame.iloc[:0]
        if len(mcq):
            entry["ece"] = {k: v for k, v in expected_calibration_error(mcq).items() if isinstance(v, (int, float))}
        out[suite] = entry
    return out


def _training_run_ids(settings: Settings, context: dg.AssetExecutionContext) -> dict[str, str]:
    """The latest MLflow runs of the training assets, for loss and reward curves."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return {}
    out = {}
    for key in ("sft_checkpoint", "grpo_checkpoint", "rl_only_checkpoint"):
        runs = client.search_runs([experiment.experiment_id], f"tags.`dagster.asset_key` = '{key}'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if runs:
            out[key] = runs[0].info.run_id
    return out


def _register(adapter_dir: str, base_model: str, eval_suites: str, in_domain: float) -> dict:
    from skinr1_pipeline.tracking.pyfunc_model import log_skinr1_model
    from skinr1_pipeline.tracking.registry import register_candidate

    example = pd.read_parquet(eval_suites, columns=["image_path", "prompt"]).iloc[0]
    info = log_skinr1_model(base_model, adapter_dir, name="skinr1_grpo", input_example_image_path=example["image_path"],
                            input_example_prompt=example["prompt"], model_config={"max_new_tokens": 32})
    version = register_candidate(info.model_uri, REGISTERED_MODEL, tags={"in_domain_accuracy": in_domain})
    return {"registered_version": version, "model_uri": info.model_uri}
