"""Evaluation assets: the suites, one evaluation per model variant (a partition each), the ablation table, the
report, and the registry gate that promotes the GRPO adapter only when it beats the current champion."""

from dataclasses import asdict
from pathlib import Path
from typing import Literal

import dagster as dg
import pandas as pd
from pydantic import Field

from skinr1_pipeline.defs.code_versions import code_version_of
from skinr1_pipeline.defs.compute import Compute, ComputeStep
from skinr1_pipeline.defs.metadata import markdown_table, md, raw_value
from skinr1_pipeline.defs.resources import MlflowTracking, PipelineHome, TrainingRecipe
from skinr1_pipeline.defs.training_assets import GPU_POOL
from skinr1_pipeline.evaluation.cli import AnswerConfig
from skinr1_pipeline.evaluation.suites import SUITES
from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.settings import Settings
from skinr1_pipeline.storage.atomic import write_csv, write_parquet, write_yaml
from skinr1_pipeline.storage.run_folders import is_run_folder, pin
from skinr1_pipeline.tracking.mlflow_runs import EVALUATED_RUN_TAG, REGISTERED_MODEL

VARIANTS = ("base", "sft", "rl_only", "sft_grpo")
VARIANT_ASSETS = {"base": "", "sft": "sft_checkpoint", "rl_only": "rl_only_checkpoint", "sft_grpo": "grpo_checkpoint"}
ANSWERS_CLI = "skinr1_pipeline.evaluation.cli"
HEADLINE_SUITE = "in_domain"  # the suite the champion gate reads
MIN_ITEMS_TO_TEST = 20  # set-first suites smaller than this are listed by the blind-guessing check, not tested
CONTAMINATION_FLAGS = "contamination_flags.parquet"  # beside eval_suites' items
WEEKLY_TAG = "skinr1/weekly_evaluation"  # the scheduled tick a weekly run belongs to


class SuitesConfig(dg.Config):
    splits: list[str] = Field(default=["test"])
    per_suite_limit: int = Field(default=0, description="cap items per suite (0 = all); stable by item id")
    seed: int = 42
    paper_suites: bool = Field(
        default=True,
        description="also build the paper-comparable (leaky) suites <suite>_paper, reported beside their blind ceiling",
    )
    control_suites: list[str] = Field(
        default=["in_domain", "ood"],
        description="suites answered again with a shuffled and a blank image (does a variant read the image?)",
    )
    closeness: float = Field(
        default=3.0,
        ge=1.0,
        description="set-first items: preference for the anchor's close relatives as the other options (1 = none)",
    )
    near_duplicate_distance: int = Field(
        default=-1,
        ge=-1,
        le=64,
        description="dHash bits within which an "
        "evaluation image counts as a copy of a training image; -1 = calibrate on "
        "re-encoded copies of the training images",
    )


class VariantEvalConfig(dg.Config):
    # Literal fields: Dagster rejects any other value before the run starts, naming the field and the choices.
    runner: Literal["hf", "vllm"] = Field(
        default="vllm", description="hf | vllm: same prompts, greedy; vLLM is the fast engine"
    )
    max_new_tokens: int = 512
    batch_size: int = 16
    calibration: bool = Field(default=True, description="score each option's log-probability for ECE")
    answer_likelihood: bool = Field(
        default=True,
        description="score each option's whole answer text after the "
        "model's own reasoning (answer-likelihood accuracy, next to the generated one)",
    )
    vllm_lora_mode: Literal["merge", "lora", "auto"] = Field(
        default="auto",
        description="merge | lora | auto; vLLM's LoRA covers only language-model LoRA, so auto "
        "merges (on the device, in the model's dtype) any adapter that also trains the vision side or whole modules",
    )
    vllm_tensor_parallel_size: int = Field(default=1, ge=1, description="GPUs one vLLM engine spans")


class RegistryConfig(dg.Config):
    register_candidate: bool = True
    min_delta: float = Field(default=0.0, description="how much better in-domain accuracy must be to promote")


def build_evaluation_defs(settings: Settings) -> dg.Definitions:
    variants = dg.StaticPartitionsDefinition(list(VARIANTS))

    @dg.asset(
        group_name="evaluation",
        kinds={"parquet"},
        code_version=code_version_of(
            __name__,
            "evaluation.suites",
            "evaluation.contamination",
            "data.dedup",
            "data.holdout",
            "data.loaders.omnimedvqa",
        ),
    )
    def eval_suites(
        context: dg.AssetExecutionContext,
        config: SuitesConfig,
        home: PipelineHome,
        mlflow: MlflowTracking,
        unified_samples: pd.DataFrame,
        taxonomy_graph: Taxonomy,
        ddx_graph: DDxGraph,
        skin_rationale_trajectories: str,
        rl_mcq_dataset: str,
    ) -> str:
        """Set-first headline suites (no image-blind guesser beats 1/n), the paper-comparable suites, OmniMedVQA's
        questions when configured, and image controls; items whose image (exact or a near-duplicate) or sample any
        training stage saw are flagged and excluded."""
        from skinr1_pipeline.data.dedup import calibrated_distance
        from skinr1_pipeline.evaluation.contamination import attach_image_hashes, check_contamination
        from skinr1_pipeline.evaluation.suites import SuiteConfig, build_suites, image_controls, write_blank_image

        unknown = sorted(set(config.control_suites) - set(SUITES))
        if unknown:
            raise dg.Failure(f"eval_suites.control_suites names unknown suites {unknown}; known: {list(SUITES)}")
        suite_config = SuiteConfig(
            splits=tuple(config.splits),
            holdout_sources=settings.ood_sources,
            holdout_modalities=settings.ood_modalities,
            seed=config.seed,
            closeness=config.closeness,
            paper_suites=config.paper_suites,
        )
        questions, question_records = _omnimedvqa(unified_samples)
        build = build_suites(
            unified_samples,
            taxonomy_graph,
            ddx_graph,
            suite_config,
            omnimedvqa=questions,
            omnimedvqa_records=question_records,
        )
        items = attach_image_hashes(build.items, unified_samples)
        if config.per_suite_limit:
            items = items.sort_values("item_id").groupby("suite", sort=False).head(config.per_suite_limit)
        train = unified_samples[unified_samples["split"] == "train"]
        columns = [c for c in ("sample_id", "image_sha256", "image_dhash", "image_path") if c in train]
        trained_on = [
            pd.read_parquet(skin_rationale_trajectories, columns=["sample_id"]),
            pd.read_parquet(rl_mcq_dataset, columns=["sample_id", "image_sha256", "split"]).query("split == 'train'"),
            train[columns],
        ]
        distance, calibration = calibrated_distance(config.near_duplicate_distance, train, seed=config.seed)
        report = check_contamination(items, trained_on, near_duplicate_distance=distance)
        clean = report.clean(items)
        out = home.run_dir(context, "outputs", "eval_suites")
        controls = image_controls(
            clean,
            suites=config.control_suites,
            seed=config.seed,
            blank_image=str(write_blank_image(out / "blank_control.png")),
        )
        answered = pd.concat([clean, controls], ignore_index=True) if len(controls) else clean
        path = write_parquet(answered, out / "suite_items.parquet")
        write_parquet(report.flags, out / CONTAMINATION_FLAGS)
        home.seal(context, out)
        with mlflow.asset_run(context, params=config.model_dump()) as run:
            if run is not None:
                import mlflow as mlf

                from skinr1_pipeline.tracking.mlflow_runs import log_parquet_input

                mlf.log_metrics(
                    {"items": len(clean), "control_items": len(controls), "contamination_flags": len(report.flags)}
                )
                log_parquet_input(path, "eval_suites", "evaluation")
        per_suite = (
            answered.groupby(["suite", "construction", "condition"], dropna=False).size().rename("items").reset_index()
        )
        context.add_output_metadata(
            {
                "path": dg.MetadataValue.path(str(path)),
                "items": len(clean),
                "control_items": len(controls),
                "per_suite": md(markdown_table(per_suite)),
                "contamination": md(markdown_table(report.summary)),
                "near_duplicate_distance": distance if distance is not None else "not checked (no dHash)",
                "near_duplicate_threshold": md(calibration),
                "dropped_while_building": md(
                    markdown_table(build.dropped.groupby(["suite", "reason"]).size().rename("samples").reset_index())
                ),
            }
        )
        return str(path)

    @dg.asset_check(
        asset=eval_suites,
        blocking=True,
        additional_ins={"taxonomy_graph": dg.AssetIn("taxonomy_graph"), "ddx_graph": dg.AssetIn("ddx_graph")},
        description="No image-blind guesser beats chance on a set-first suite by more than its interval",
    )
    def set_first_suites_resist_blind_guessing(
        eval_suites: str, taxonomy_graph: Taxonomy, ddx_graph: DDxGraph
    ) -> dg.AssetCheckResult:
        from skinr1_pipeline.evaluation.baselines import above_chance, blind_hits

        items = pd.read_parquet(eval_suites)
        set_first = items[(items["condition"] == "real") & (items["construction"] == "set_first")]
        if set_first.empty:
            return dg.AssetCheckResult(passed=True, metadata={"suites": "no set-first items to check"})
        sizes = set_first.groupby("suite").size()
        # Below this many items no guesser can be shown above chance after the correction; say so, do not test.
        small = sizes[sizes < MIN_ITEMS_TO_TEST]
        testable = set_first[~set_first["suite"].isin(small.index)]
        tested = above_chance(blind_hits(testable, taxonomy_graph, ddx_graph)) if len(testable) else None
        leaking = tested[tested["above_chance"]] if tested is not None else pd.DataFrame()
        best = (
            tested.sort_values("accuracy", ascending=False).groupby("suite", sort=False).head(1)
            if tested is not None
            else pd.DataFrame()
        )
        return dg.AssetCheckResult(
            passed=leaking.empty,
            metadata={
                "best_guesser_per_suite": md(markdown_table(best.round(4))) if len(best) else "none tested",
                "above_chance": md(markdown_table(leaking.round(4))) if len(leaking) else "none",
                "too_few_items_to_test": ", ".join(f"{k} ({v})" for k, v in small.items()) or "none",
            },
        )

    def _omnimedvqa(unified_samples: pd.DataFrame) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
        """OmniMedVQA's dermatology questions when the profile lists it (an evaluation-only dataset)."""
        if "omnimedvqa" not in settings.datasets:
            return None, None
        from skinr1_pipeline.data.holdout import evaluation_only
        from skinr1_pipeline.data.loaders.omnimedvqa import load_questions

        return load_questions(settings.dataset_root("omnimedvqa")), unified_samples[evaluation_only(unified_samples)]

    @dg.asset(
        group_name="evaluation",
        kinds={"pytorch"},
        partitions_def=variants,
        pool=GPU_POOL,
        code_version=code_version_of(__name__, "evaluation.cli", "evaluation.comparison", "evaluation.metrics"),
    )
    def variant_evaluations(
        context: dg.AssetExecutionContext,
        config: VariantEvalConfig,
        home: PipelineHome,
        mlflow: MlflowTracking,
        compute: Compute,
        training_recipe: TrainingRecipe,
        eval_suites: str,
        taxonomy_graph: Taxonomy,
        base_model: str,
        sft_checkpoint: dict,
        grpo_checkpoint: dict,
        rl_only_checkpoint: dict,
    ) -> dict:
        """One model variant answers every suite item (greedy, fixed seed); answers scored per suite."""
        from skinr1_pipeline.evaluation.comparison import image_use, variant_summary
        from skinr1_pipeline.evaluation.metrics import score_predictions

        variant = context.partition_key
        adapter = {
            "base": None,
            "sft": sft_checkpoint["adapter_dir"],
            "rl_only": rl_only_checkpoint["adapter_dir"],
            "sft_grpo": grpo_checkpoint["adapter_dir"],
        }[variant]
        # The runs named by the values, not the latest of each asset: the adapter scored here is the one they trained.
        training_runs = {
            "sft_checkpoint": sft_checkpoint.get("mlflow_run_id", ""),
            "rl_only_checkpoint": rl_only_checkpoint.get("mlflow_run_id", ""),
            "grpo_checkpoint": grpo_checkpoint.get("mlflow_run_id", ""),
        }
        adapter_asset = VARIANT_ASSETS[variant]
        adapter_run = training_runs.get(adapter_asset, "")
        out = home.run_dir(context, "outputs", "variant_evaluations")
        choices = training_recipe.choices()  # how the variants were taught to answer, and with which system prompt
        answers = AnswerConfig(
            items_path=eval_suites,
            model_dir=base_model,
            adapter_dir=adapter,
            output_path=str(out / "answers.parquet"),
            runner=config.runner,
            lora_mode=config.vllm_lora_mode,
            max_new_tokens=config.max_new_tokens,
            batch_size=config.batch_size,
            max_pixels=sft_checkpoint["max_pixels"],
            calibration=config.calibration,
            answer_likelihood=config.answer_likelihood,
            tensor_parallel_size=config.vllm_tensor_parallel_size,
            answer_form=choices.answer_form,
            system_prompt=choices.system_prompt,
        )
        config_path = write_yaml(out / "answers_config.yaml", asdict(answers))
        # The model answers where it runs (compute); scoring needs no model and stays here.
        reported = compute.run(
            context, ComputeStep(module=ANSWERS_CLI, args=["--config", str(config_path)], workdir=out)
        )
        answered = pd.read_parquet(out / "answers.parquet")
        completions = answered["completion"].tolist()
        items = answered.drop(columns=["completion"])
        seconds = float(raw_value(reported.get("generation_seconds")))
        scored = score_predictions(items, completions, taxonomy=taxonomy_graph)
        scored["completion"] = completions
        write_parquet(scored, out / "scored.parquet")
        home.seal(context, out)
        real = scored[scored["condition"] == "real"]
        by_suite = {suite: frame.reset_index(drop=True) for suite, frame in real.groupby("suite")}
        summary = variant_summary(by_suite)
        uses_image = image_use(scored)
        breakdowns = _breakdowns(by_suite, calibration=config.calibration)
        for suite, extra in breakdowns.items():
            summary.setdefault(suite, {})["breakdowns"] = extra
        served = str(raw_value(reported.get("adapter_served_as")))
        with mlflow.asset_run(
            context,
            params={
                "variant": variant,
                "runner": config.runner,
                "adapter_dir": adapter or "",
                "adapter_served_as": served,
            },
            upstream=training_runs,
            tags={EVALUATED_RUN_TAG: adapter_run} if adapter_run else None,
        ) as run:
            if run is not None:
                import mlflow as mlf

                from skinr1_pipeline.tracking.mlflow_runs import log_parquet_input

                log_parquet_input(eval_suites, "eval_suites", "evaluation")
                mlf.log_metrics(
                    {
                        f"{suite}_accuracy": s["accuracy"]
                        for suite, s in summary.items()
                        if s.get("accuracy") == s.get("accuracy")
                    }
                )
                mlf.log_metric("items_per_second", len(items) / max(seconds, 1e-9))
                mlf.log_metrics(
                    {
                        f"{u['suite']}_real_minus_{c}": u[f"real_minus_{c}"]
                        for u in uses_image
                        for c in ("shuffled", "blank")
                        if u.get(f"real_minus_{c}") == u.get(f"real_minus_{c}")
                    }
                )
                mlf.log_dict(summary, "summary.json")
                mlf.log_dict({"image_use": uses_image}, "image_use.json")
        rows = [
            {
                "suite": s,
                "n": v["n"],
                "accuracy": v["accuracy"],
                "ci": f"[{v['ci_low']:.2f}, {v['ci_high']:.2f}]",
                "format_ok": v.get("format_ok_rate"),
                "answer_likelihood": v.get("likelihood", {}).get("accuracy"),
            }
            for s, v in summary.items()
        ]
        in_domain = breakdowns.get("in_domain", {})
        metadata = {
            "variant": variant,
            "items": len(items),
            "seconds": round(seconds, 1),
            "adapter_served_as": served,
            "per_suite": md(markdown_table(pd.DataFrame(rows))),
            "image_use": md(markdown_table(_image_use_rows(uses_image))),
            "in_domain_by_dataset": md(markdown_table(pd.DataFrame(in_domain.get("by_dataset", [])))),
            "in_domain_by_class": md(markdown_table(pd.DataFrame(in_domain.get("by_class", [])))),
            "in_domain_by_fitzpatrick": md(markdown_table(pd.DataFrame(in_domain.get("by_fitzpatrick", [])))),
            "ood_by_fitzpatrick": md(markdown_table(pd.DataFrame(breakdowns.get("ood", {}).get("by_fitzpatrick", [])))),
            "hierarchical_by_level": md(
                markdown_table(pd.DataFrame(breakdowns.get("hierarchical", {}).get("by_level", [])))
            ),
            "calibration_ece": md(
                markdown_table(pd.DataFrame([{"suite": k, **v["ece"]} for k, v in breakdowns.items() if "ece" in v]))
            ),
        }
        # A Pipes step hands back a MaterializeResult; its `value` still goes through the IO manager.
        return dg.MaterializeResult(
            metadata=metadata,
            value={
                "variant": variant,
                "summary": summary,
                "image_use": uses_image,
                "scored_path": str(out / "scored.parquet"),
                "mlflow_run_id": run.info.run_id if run is not None else "",
                "adapter_asset": adapter_asset,
                "adapter_run_id": adapter_run,
            },
        )

    @dg.asset(
        group_name="evaluation",
        kinds={"pandas"},
        code_version=code_version_of(
            __name__, "evaluation.baselines", "evaluation.comparison", "evaluation.image_reference"
        ),
    )
    def ablation_table(
        context: dg.AssetExecutionContext,
        home: PipelineHome,
        mlflow: MlflowTracking,
        variant_evaluations: dict[str, dict],
        eval_suites: str,
        taxonomy_graph: Taxonomy,
        ddx_graph: DDxGraph,
        unified_samples: pd.DataFrame,
    ) -> dict:
        """The paper's ablation table (base vs SFT-only vs RL-only vs SFT+GRPO on every suite, 95% intervals), read
        against the best image-blind guesser and each variant's shuffled-image control, with the paper's claims
        tested on paired items (exact McNemar, Holm-adjusted), and the image-only reference per suite: is there
        signal in the image that the train split could teach (`evaluation.image_reference`)?"""
        from skinr1_pipeline.data.holdout import training_rows
        from skinr1_pipeline.evaluation.baselines import blind_hits, summarize_hits
        from skinr1_pipeline.evaluation.comparison import ablation_table as build_table
        from skinr1_pipeline.evaluation.comparison import likelihood_table, paired_claims, paper_shape, versus_blind
        from skinr1_pipeline.evaluation.image_reference import REFERENCE_MAX_PIXELS, REFERENCE_NAME, image_only_answers

        out = home.run_dir(context, "outputs", "ablation_table")
        summaries = {v: e["summary"] for v, e in variant_evaluations.items()}
        table = build_table(summaries)
        write_csv(table, out / "ablation_table.csv")
        likelihood = likelihood_table(summaries)
        write_csv(likelihood, out / "answer_likelihood_table.csv")
        items = pd.read_parquet(eval_suites)
        real_items = items[items["condition"] == "real"]
        hits = blind_hits(real_items, taxonomy_graph, ddx_graph)
        baselines = summarize_hits(hits)
        write_csv(baselines, out / "image_blind_baselines.csv", index=False)
        scored = {v: pd.read_parquet(e["scored_path"]) for v, e in variant_evaluations.items()}
        blind = versus_blind(scored, hits)
        write_csv(blind, out / "versus_blind.csv", index=False)
        claims = paired_claims(scored)
        write_csv(claims, out / "paired_claims.csv", index=False)
        samples = training_rows(unified_samples, settings.ood_modalities, settings.ood_sources)  # what models train on
        reference = versus_blind(
            {
                REFERENCE_NAME: image_only_answers(
                    real_items, samples[samples["split"] == "train"], taxonomy_graph, max_pixels=REFERENCE_MAX_PIXELS
                )
            },
            hits,
        )
        write_csv(reference, out / "image_only_reference.csv", index=False)
        uses_image = pd.DataFrame(
            [{"variant": v, **u} for v, e in variant_evaluations.items() for u in e.get("image_use", [])]
        )
        write_csv(uses_image, out / "image_use.csv", index=False)
        home.seal(context, out)
        shape = paper_shape(claims)
        with mlflow.asset_run(context, upstream=_evaluation_runs(variant_evaluations)) as run:
            if run is not None:
                import mlflow as mlf

                mlf.log_param("paper_shape", shape.get("verdict", ""))
                mlf.log_table(table.reset_index(), "ablation_table.json")
                for csv in sorted(out.glob("*.csv")):
                    mlf.log_artifact(str(csv), "tables")
        display = table[
            [c for c in table.columns if not c.endswith(("_acc", "_ci_low", "_ci_high", "_n", "_format_ok", "_credit"))]
        ]
        context.add_output_metadata(
            {
                "table": md(markdown_table(display.reset_index())),
                "answer_likelihood": md(markdown_table(likelihood.reset_index())),
                "image_blind_baselines": md(markdown_table(baselines.round(3))),
                "versus_blind": md(markdown_table(blind.round(3))),
                "image_use": md(markdown_table(uses_image.round(3))),
                "image_only_reference": md(markdown_table(reference.round(3))),
                "paired_claims": md(markdown_table(claims.round(4))),
                "paper_shape": shape["verdict"],
                "folder": dg.MetadataValue.path(str(out)),
            }
        )
        # The folder travels with the table: the report reads the side tables this run wrote, not a fixed path.
        return {"table": table, "dir": str(out)}

    @dg.asset(
        group_name="evaluation",
        kinds={"mlflow", "html"},
        code_version=code_version_of(
            __name__,
            "evaluation.comparison",
            "evaluation.report",
            "tracking.pyfunc_model",
            "tracking.registry",
            "training.recipes",
            data=("recipes/*/recipe.yaml",),
        ),
    )
    def evaluation_reports(
        context: dg.AssetExecutionContext,
        config: RegistryConfig,
        home: PipelineHome,
        mlflow: MlflowTracking,
        training_recipe: TrainingRecipe,
        ablation_table: dict,
        variant_evaluations: dict[str, dict],
        base_model: str,
        grpo_checkpoint: dict,
        eval_suites: str,
    ) -> dict:
        """A report a clinician-researcher reads (Markdown + self-contained HTML with figures), logged to MLflow;
        the SFT+GRPO adapter logged as a pyfunc model and registered with alias `candidate`, tagged with whether it
        beats the best image-blind guesser and its own shuffled-image control on the headline suite."""
        from skinr1_pipeline.evaluation.comparison import paper_shape, promotion_evidence
        from skinr1_pipeline.evaluation.report import read_curves, write_report

        scored = {
            v: {s: f.reset_index(drop=True) for s, f in _real_rows(e["scored_path"]).groupby("suite")}
            for v, e in variant_evaluations.items()
        }
        summaries = {v: e["summary"] for v, e in variant_evaluations.items()}
        run_ids = _training_run_ids(variant_evaluations)
        curves = read_curves(settings.mlflow_tracking_uri, run_ids) if run_ids and mlflow.enabled else None
        flags = pd.read_parquet(Path(eval_suites).with_name(CONTAMINATION_FLAGS))
        # Written by ablation_table from the same variant evaluations, in the folder its value names.
        table, tables_dir = ablation_table["table"], Path(ablation_table["dir"])
        baselines, blind, claims, uses_image = (
            _read_csv(tables_dir / f"{name}.csv")
            for name in ("image_blind_baselines", "versus_blind", "paired_claims", "image_use")
        )
        out = home.run_dir(context, "outputs", "evaluation_reports")
        caveat = training_recipe.choices().caveat
        caveats = [caveat] if caveat else []
        files = write_report(
            out / "report",
            table=table,
            summaries=summaries,
            scored=scored,
            curves=curves,
            contamination=flags,
            caveats=caveats,
            baselines=baselines,
            versus_blind=blind,
            claims=claims,
            image_use=uses_image,
        )
        evidence = promotion_evidence(blind, uses_image, variant="sft_grpo", suite=HEADLINE_SUITE)
        result: dict = {
            "report_html": str(files.html),
            "report_md": str(files.markdown),
            "registered_version": None,
            "evidence": evidence,
        }
        lineage_rows = None
        upstream = {
            **_evaluation_runs(variant_evaluations),
            "grpo_checkpoint": grpo_checkpoint.get("mlflow_run_id", ""),
        }
        with mlflow.asset_run(context, upstream=upstream) as run:
            if run is not None:
                import mlflow as mlf

                from skinr1_pipeline.tracking.mlflow_runs import log_parquet_input

                log_parquet_input(eval_suites, "eval_suites", "evaluation")
                for variant, evaluation in sorted(variant_evaluations.items()):
                    log_parquet_input(evaluation["scored_path"], f"scored_{variant}", "scored")
                lineage_rows = _log_lineage(settings.mlflow_tracking_uri, run.info.run_id)
                mlf.set_tags({f"skinr1.curves_from.{label}": run_id for label, run_id in run_ids.items()})
                mlf.log_artifact(str(files.html), "report")
                mlf.log_artifact(str(files.markdown), "report")
                mlf.log_table(table.reset_index(), "ablation_table.json")
                for name, frame in (
                    ("image_blind_baselines", baselines),
                    ("versus_blind", blind),
                    ("paired_claims", claims),
                    ("image_use", uses_image),
                ):
                    if len(frame):
                        mlf.log_table(frame, f"{name}.json")
                in_domain = summaries.get("sft_grpo", {}).get(HEADLINE_SUITE, {}).get("accuracy")
                if config.register_candidate and in_domain is not None:
                    result.update(
                        _register(
                            grpo_checkpoint["adapter_dir"],
                            base_model,
                            eval_suites,
                            {
                                "in_domain_accuracy": in_domain,
                                **evidence,
                                "report_run": run.info.run_id,
                                "training_run": grpo_checkpoint.get("mlflow_run_id", ""),
                            },
                        )
                    )
        home.seal(context, out)
        context.add_output_metadata(
            {
                "report_html": dg.MetadataValue.path(str(files.html)),
                "report": md(files.markdown.read_text("utf-8")[:60000]),
                "paper_shape": paper_shape(claims).get("verdict", "") if len(claims) else "not evaluated",
                "registered_version": str(result["registered_version"] or ""),
                "lineage": md(markdown_table(lineage_rows)) if lineage_rows is not None else "MLflow tracking is off",
                **{k: str(v) for k, v in evidence.items()},
            }
        )
        return {**result, "min_delta": config.min_delta}

    @dg.asset_check(
        asset=evaluation_reports,
        blocking=True,
        description="Promote the candidate to `champion` only if it beats the best image-blind guesser and "
        "its own shuffled-image control in-domain, and the current champion",
    )
    def champion_promotion(evaluation_reports: dict) -> dg.AssetCheckResult:
        version = evaluation_reports.get("registered_version")
        if not version:
            return dg.AssetCheckResult(passed=False, metadata={"reason": "no candidate was registered"})
        from mlflow import MlflowClient

        from skinr1_pipeline.tracking.registry import decide_and_promote

        client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
        decision = decide_and_promote(
            client,
            REGISTERED_MODEL,
            version,
            min_delta=evaluation_reports["min_delta"],
            required_tags=tuple(evaluation_reports.get("evidence", {})),
        )
        # Keeping the current champion is a correct outcome, not a failure: the check passes either way and says which.
        return dg.AssetCheckResult(passed=True, metadata={k: str(v) for k, v in decision.as_dict().items()})

    @dg.schedule(
        name="weekly_evaluation",
        target=dg.AssetSelection.assets(variant_evaluations),
        cron_schedule="0 3 * * 1",
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description="Re-scores every model variant weekly, one run per variant (enable in the UI; the cron is in "
        "defs/evaluation_assets.py). The ablation table and report follow through the evaluation "
        "stage's automation, or from the UI when that stage is off.",
    )
    def weekly_evaluation(context: dg.ScheduleEvaluationContext) -> list[dg.RunRequest]:
        """One run request per variant partition: a run without a partition key cannot materialize a partitioned
        asset, and one run per variant lets the `gpu` pool queue them one at a time."""
        tick = (
            context.scheduled_execution_time.strftime("%Y-%m-%dT%H:%M")
            if context.scheduled_execution_time
            else "manual"
        )
        return [
            dg.RunRequest(
                run_key=f"{tick}:{variant}",
                partition_key=variant,
                run_config=weekly_run_config(settings),
                tags={WEEKLY_TAG: tick},
            )
            for variant in variants.get_partition_keys()
        ]

    return dg.Definitions(
        assets=[eval_suites, variant_evaluations, ablation_table, evaluation_reports],
        asset_checks=[set_first_suites_resist_blind_guessing, champion_promotion],
        schedules=[weekly_evaluation],
    )


def weekly_run_config(settings: Settings) -> dict:
    """The weekly runs' config: the settings' scale preset for `variant_evaluations` (nothing at full scale), as
    for the runs the automation launches; a schedule's runs carry no config of their own."""
    from skinr1_pipeline.presets import run_config_for

    return run_config_for(settings.scale, ["variant_evaluations"])


def _image_use_rows(uses_image: list[dict]) -> pd.DataFrame:
    """Real / shuffled / blank accuracy and real minus shuffled [95% CI] per suite, for asset metadata."""
    return pd.DataFrame(
        [
            {
                "suite": u["suite"],
                "n": u["n"],
                "real": round(u["real"], 3),
                "shuffled": round(u["shuffled"], 3),
                "blank": round(u["blank"], 3),
                "real - shuffled [95% CI]": f"{u['real_minus_shuffled']:+.3f} "
                f"[{u['shuffled_ci_low']:+.3f}, {u['shuffled_ci_high']:+.3f}]",
                "McNemar p": round(u["shuffled_mcnemar_p"], 4),
                "verdict": u["verdict"],
            }
            for u in uses_image
        ]
    )


def _breakdowns(by_suite: dict[str, pd.DataFrame], *, calibration: bool) -> dict[str, dict]:
    """Per suite: accuracy by source dataset, class and Fitzpatrick type, and ECE where option log-probs exist."""
    from skinr1_pipeline.evaluation.metrics import expected_calibration_error, grouped_accuracy

    out: dict[str, dict] = {}
    for suite, frame in by_suite.items():
        entry = {
            "by_dataset": grouped_accuracy(frame, "source_dataset").to_dict("records"),
            "by_class": grouped_accuracy(frame, "taxonomy_node").to_dict("records"),
            "by_fitzpatrick": grouped_accuracy(frame, "fitzpatrick").to_dict("records"),
        }
        if "level" in frame and frame["level"].notna().any():
            entry["by_level"] = grouped_accuracy(frame[frame["level"].notna()], "level").to_dict("records")
        mcq = (
            frame[frame["option_logprobs"].map(lambda x: x is not None and len(x) > 0)]
            if calibration and "option_logprobs" in frame
            else frame.iloc[:0]
        )
        if len(mcq):
            entry["ece"] = {k: v for k, v in expected_calibration_error(mcq).items() if isinstance(v, (int, float))}
        out[suite] = entry
    return out


def _training_run_ids(variant_evaluations: dict[str, dict]) -> dict[str, str]:
    """The MLflow runs that trained the evaluated adapters, as the variant values name them (for loss and reward
    curves): not the latest run of each asset, which a later or concurrent training may have replaced."""
    return {
        e["adapter_asset"]: e["adapter_run_id"]
        for _, e in sorted(variant_evaluations.items())
        if e.get("adapter_run_id")
    }


def _evaluation_runs(variant_evaluations: dict[str, dict]) -> dict[str, str]:
    """Input label -> MLflow run of each variant evaluation, as the values name them."""
    from skinr1_pipeline.tracking.mlflow_runs import input_label

    return {input_label("variant_evaluations", v): e.get("mlflow_run_id", "") for v, e in variant_evaluations.items()}


# From the report back to the raw data, through the headline variant: evaluation -> GRPO -> SFT -> trajectories ->
# samples -> every raw dataset (labels as in `skinr1.upstream.*` tags).
REPORT_ROUTE = (
    "variant_evaluations.sft_grpo",
    "grpo_checkpoint",
    "sft_checkpoint",
    "skin_rationale_trajectories",
    "unified_samples",
    "raw_datasets.*",
)


def _log_lineage(tracking_uri: str, run_id: str) -> pd.DataFrame:
    """On the report's (active) run: `lineage.json` (every run upstream of it), `skinr1.chain.*` tags and a
    description linking the chain from the raw data to this report; returns the chain as rows (data first)."""
    import mlflow as mlf

    from skinr1_pipeline.tracking import mlflow_runs

    nodes = mlflow_runs.collect_lineage(tracking_uri, run_id)
    steps = mlflow_runs.follow(nodes, run_id, REPORT_ROUTE)
    chain = [
        {
            "input": step["input"],
            "runs": [
                {
                    "run_id": r,
                    **{
                        k: nodes.get(r, {}).get(k)
                        for k in ("asset", "partition", "orchestrator_run_id", "lineage", "datasets")
                    },
                }
                for r in step["runs"]
            ],
        }
        for step in reversed(steps)
    ]
    mlf.log_dict(
        {
            "report_run": run_id,
            "lineage": nodes.get(run_id, {}).get("lineage", ""),
            "route": REPORT_ROUTE,
            "chain": chain,
            "runs": nodes,
        },
        "lineage.json",
    )
    mlf.set_tags(
        {
            **mlflow_runs.chain_tags(nodes, steps),
            mlflow_runs.NOTE_TAG: mlflow_runs.chain_markdown(nodes, steps, "Lineage of this report"),
        }
    )
    return pd.DataFrame(
        [
            {
                "stage": step["input"].removesuffix(".*"),
                "mlflow_run": r["run_id"],
                "partition": r["partition"] or "",
                "datasets": ", ".join(f"{d['name']}={d['digest']}" for d in r["datasets"] or []),
            }
            for step in chain
            for r in step["runs"]
        ]
    )


def _real_rows(scored_path: str) -> pd.DataFrame:
    """A variant's scored answers with their own images (image controls are read through `image_use`)."""
    scored = pd.read_parquet(scored_path)
    return scored[scored["condition"] == "real"] if "condition" in scored else scored


def _read_csv(path) -> pd.DataFrame:
    """A table ablation_table wrote; an empty table reads back as an empty frame."""
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _register(adapter_dir: str, base_model: str, eval_suites: str, tags: dict) -> dict:
    from skinr1_pipeline.tracking.pyfunc_model import log_skinr1_model
    from skinr1_pipeline.tracking.registry import register_candidate

    example = pd.read_parquet(eval_suites, columns=["image_path", "prompt"]).iloc[0]
    info = log_skinr1_model(
        base_model,
        adapter_dir,
        name="skinr1_grpo",
        input_example_image_path=example["image_path"],
        input_example_prompt=example["prompt"],
        model_config={"max_new_tokens": 32},
    )
    base = (info.metadata or {}).get("skinr1_base_model", {})  # referenced, not copied: say which base it needs
    version = register_candidate(
        info.model_uri,
        REGISTERED_MODEL,
        tags={**tags, "base_model_path": base.get("path", ""), "base_model_digest": base.get("digest", "")},
    )
    if is_run_folder(base_model):  # a base this pipeline built: pruning must not take it from the registered version
        pin(base_model, f"{REGISTERED_MODEL}-v{version}", {"model_uri": info.model_uri})
    return {"registered_version": version, "model_uri": info.model_uri}
