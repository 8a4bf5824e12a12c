"""SkinRationale assets: the knowledge base and the verified reasoning trajectories SFT trains on."""

import json
import time
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import pandas as pd
from pydantic import Field, field_validator

from skinr1_pipeline.data.holdout import training_rows
from skinr1_pipeline.data.schema import SPLITS
from skinr1_pipeline.defs.code_versions import code_version_of
from skinr1_pipeline.defs.metadata import counts_table, markdown_table, md
from skinr1_pipeline.defs.resources import MlflowTracking, PipelineHome, TrainingRecipe
from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.knowledge_base import KnowledgeBase, load_knowledge_base
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.progress import LogProgress
from skinr1_pipeline.settings import Settings, TeacherSettings
from skinr1_pipeline.storage.atomic import write_parquet
from skinr1_pipeline.synthesis.trajectories import TYPES


class KnowledgeConfig(dg.Config):
    path: str = Field(default="", description="A knowledge-base YAML replacing the packaged one ('' = packaged)")


class SynthesisConfig(dg.Config):
    # Literal fields are checked by Dagster before the run; the list fields by the validator below. Both name the
    # field and the allowed values.
    generator: Literal["", "template", "vllm", "openai"] = Field(
        default="",
        description="template | vllm | openai; '' = the profile's `teacher:` (template on demo, the "
        "base model through vLLM on gpu)",
    )
    teacher_model_dir: str = Field(
        default="", description="vllm: local instruct model directory ('' = the profile's teacher.model_dir)"
    )
    base_url: str = Field(
        default="",
        description="openai: e.g. http://127.0.0.1:8000/v1 (a `vllm serve` endpoint; "
        "'' = the profile's teacher.base_url)",
    )
    api_model: str = Field(default="", description="openai: model name the endpoint serves ('' = the profile's)")
    types: list[str] = Field(default=["hierarchy", "ddx", "ddx_switch", "contrast", "contrast_switch"])
    per_sample: int = 1
    mcq_fraction: float = 0.5
    seed: int = 0
    splits: list[str] = Field(
        default=["train"], description="splits to write trajectories for (valid/test stay held out)"
    )
    max_tokens: int = 1024
    temperature: float = 0.7
    corpus_dir: str = Field(
        default="", description="Optional folder of licensed textbook .txt/.md to ground rationales"
    )
    mcq_construction: Literal["", "paper", "set_first"] = Field(
        default="",
        description="paper | set_first; '' = the training recipe's (set_first on the demo recipe: one taxonomy "
        "level per question, so no option-structure shortcut is taught; paper on the paper's)",
    )
    answer_form: Literal["", "letter", "text"] = Field(
        default="",
        description="letter | text; '' = the training recipe's (text on the demo recipe: the offered option's text "
        "after the taxonomy path, no letter; letter on the paper's)",
    )
    style: Literal["", "full", "compact"] = Field(
        default="",
        description="full | compact; '' = the training recipe's `rationale_style` (compact on the demo recipe: "
        "short rationales a tiny model can learn in CPU minutes; full on the paper's)",
    )
    # openai teacher transport. The key is a StringSource: give it in run config as {"env": "SKINR1_TEACHER_API_KEY"}
    # so Dagster reads the variable at run time and stores only its name; it never reaches MLflow or metadata.
    api_key: str = Field(
        default="",
        repr=False,
        description="openai: bearer token; set it as "
        "{env: SKINR1_TEACHER_API_KEY} (a literal would be stored with the run's config). Refused "
        "over plain http unless base_url is loopback",
    )
    concurrency: int = Field(default=8, ge=1, le=256, description="openai: requests in flight")
    timeout: float = Field(
        default=120.0,
        gt=0,
        description="openai: total seconds per HTTP attempt (connect to last body byte), not per socket read",
    )
    max_retries: int = Field(
        default=5,
        ge=0,
        le=20,
        description="openai: retries of a timeout, connection error, 5xx or 429 (backoff with jitter)",
    )
    max_response_bytes: int = Field(default=8 * 2**20, ge=1024, description="openai: larger replies fail as too_large")
    max_consecutive_failures: int = Field(
        default=8,
        ge=1,
        description="openai: stop the run (TeacherUnavailable) after this many requests in a row spent all retries",
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="openai: merged into every request body, "
        "e.g. {top_k: 20} or {chat_template_kwargs: {enable_thinking: false}} for "
        "vLLM; may not set model, messages, stream or seed",
    )

    @field_validator("extra_body")
    @classmethod
    def _free_body_keys(cls, value: dict[str, Any]) -> dict[str, Any]:
        from skinr1_pipeline.synthesis.http_generator import RESERVED_BODY_KEYS

        taken = sorted(RESERVED_BODY_KEYS & set(value))
        if taken:
            raise ValueError(f"extra_body: {taken} not allowed (the generator sets them); any other key is sent")
        return value

    @field_validator("types")
    @classmethod
    def _known_types(cls, value: list[str]) -> list[str]:
        return _only(value, "types", tuple(TYPES))

    @field_validator("splits")
    @classmethod
    def _known_splits(cls, value: list[str]) -> list[str]:
        return _only(value, "splits", SPLITS)


def _only(value: list[str], field: str, allowed: tuple[str, ...]) -> list[str]:
    unknown = [v for v in value if v not in allowed]
    if unknown or not value:
        raise ValueError(f"{field}: {unknown or 'empty list'} not allowed; allowed: {', '.join(allowed)}")
    return value


def teacher_choice(config: SynthesisConfig, teacher: TeacherSettings) -> TeacherSettings:
    """The asset config's teacher fields over the profile's `teacher:` section (an empty field keeps the profile's)."""
    generator = config.generator or teacher.generator
    same = generator == teacher.generator
    return TeacherSettings(
        generator=generator,
        model_dir=config.teacher_model_dir or (teacher.model_dir if same else ""),
        base_url=config.base_url or (teacher.base_url if same else ""),
        api_model=config.api_model or (teacher.api_model if same else ""),
    )


def _generator(teacher: TeacherSettings, config: SynthesisConfig, progress_dir: Path):
    if teacher.generator == "template":
        from skinr1_pipeline.synthesis.generators import TemplateGenerator

        return TemplateGenerator(seed=config.seed)
    if teacher.generator == "vllm":
        if not teacher.model_dir:
            raise dg.Failure("synthesis generator=vllm needs teacher_model_dir (a local model directory)")
        from skinr1_pipeline.synthesis.vllm_generator import VllmGenerator

        return VllmGenerator(teacher.model_dir)
    if not (teacher.base_url and teacher.api_model):
        raise dg.Failure("synthesis generator=openai needs base_url and api_model")
    from skinr1_pipeline.synthesis.http_generator import OpenAICompatibleGenerator

    try:
        return OpenAICompatibleGenerator(
            teacher.base_url,
            teacher.api_model,
            api_key=config.api_key or None,
            timeout=config.timeout,
            max_retries=config.max_retries,
            concurrency=config.concurrency,
            extra_body=config.extra_body,
            max_response_bytes=config.max_response_bytes,
            max_consecutive_failures=config.max_consecutive_failures,
            progress_path=progress_dir / "http_progress.jsonl",
        )
    except ValueError as exc:  # plain-http key, credentials in the URL, a bad URL: messages carry no secret
        raise dg.Failure(f"synthesis generator=openai: {exc}") from None


def config_params(config: SynthesisConfig) -> dict[str, Any]:
    """The config as MLflow params: the key only as set/unset, base_url without credentials or query values."""
    from skinr1_pipeline.synthesis.http_generator import redact_url

    params = config.model_dump(exclude={"api_key"})
    params["api_key_set"] = bool(config.api_key)
    params["base_url"] = redact_url(config.base_url) if config.base_url else ""
    return params


def _demo_features(settings: Settings) -> dict[str, dict] | None:
    """Per-image features the demo generator drew, keyed by resolved image path, so rationales cite what is there
    (none without generated demo sources: real images have no drawn features)."""
    path = settings.demo_dir / "demo_features.jsonl"
    if not path.exists():
        return None
    features = {}
    for line in path.read_text("utf-8").splitlines():
        record = json.loads(line)
        features[str((settings.demo_dir / record["path"]).resolve())] = record["features"]
    return features


def build_synthesis_defs(settings: Settings) -> dg.Definitions:
    @dg.asset(
        group_name="knowledge",
        kinds={"yaml"},
        code_version=code_version_of(
            __name__, "knowledge.knowledge_base", data=("knowledge/data/knowledge_base.yaml",)
        ),
    )
    def knowledge_base(
        context: dg.AssetExecutionContext,
        config: KnowledgeConfig,
        mlflow: MlflowTracking,
        taxonomy_graph: Taxonomy,
        ddx_graph: DDxGraph,
    ) -> KnowledgeBase:
        """Disease knowledge (morphology, dermoscopy, sites, behaviour, DDx discriminators), schema-validated."""
        kb = load_knowledge_base(taxonomy_graph, ddx_graph, config.path or None)
        rows = [{"diagnosis": node, "source": kb.citation(node) or ""} for node in sorted(kb.entries)]
        with mlflow.asset_run(context, params={"path": config.path or "packaged"}) as run:
            if run is not None:
                import mlflow as mlf

                mlf.log_metric("entries", len(kb))
                mlf.log_table(pd.DataFrame(rows), "knowledge_entries.json")
        context.add_output_metadata(
            {"entries": len(kb), "entries_table": md(markdown_table(pd.DataFrame(rows), max_rows=100))}
        )
        return kb

    @dg.asset(
        group_name="synthesis",
        kinds={"parquet"},
        code_version=code_version_of(
            __name__,
            "synthesis.pipeline",
            "synthesis.generators",
            "synthesis.vllm_generator",
            "synthesis.http_generator",
            "data.holdout",
            "knowledge.corpus",
            "training.recipes",
            data=("knowledge/data/lesion_features.yaml", "recipes/*/recipe.yaml"),
        ),
    )
    def skin_rationale_trajectories(
        context: dg.AssetExecutionContext,
        config: SynthesisConfig,
        home: PipelineHome,
        mlflow: MlflowTracking,
        unified_samples: pd.DataFrame,
        taxonomy_graph: Taxonomy,
        ddx_graph: DDxGraph,
        knowledge_base: KnowledgeBase,
        training_recipe: TrainingRecipe,
    ) -> str:
        """Verified `<thinking>`/`<diagnosis>` trajectories (a Hugging Face dataset on disk) for LoRA SFT."""
        from datasets import Dataset

        from skinr1_pipeline.synthesis.http_generator import TeacherUnavailable, redact_url
        from skinr1_pipeline.synthesis.pipeline import synthesize
        from skinr1_pipeline.synthesis.trajectories import SamplingParams

        out_dir = home.run_dir(context, "outputs", "skin_rationale_trajectories")
        # The teacher's resume cache outlives a run (a rerun after a crash must find it); it is keyed per request.
        cache_dir = home.dir("outputs", "skin_rationale_trajectories", "teacher_cache")
        corpus = None
        if config.corpus_dir:
            from skinr1_pipeline.knowledge.corpus import Corpus

            corpus = Corpus.from_dir(config.corpus_dir)
        samples = training_rows(unified_samples, settings.ood_modalities, settings.ood_sources)
        teacher = teacher_choice(config, settings.teacher)
        recipe = training_recipe.choices()
        generator = _generator(teacher, config, cache_dir)
        start = time.perf_counter()
        try:
            result = synthesize(
                samples,
                taxonomy_graph,
                ddx_graph,
                knowledge_base,
                generator,
                types=config.types,
                per_sample=config.per_sample,
                seed=config.seed,
                splits=config.splits,
                image_features=_demo_features(settings),
                corpus=corpus,
                mcq_fraction=config.mcq_fraction,
                sampling=SamplingParams(temperature=config.temperature, max_tokens=config.max_tokens),
                style=config.style or recipe.rationale_style,
                mcq_construction=config.mcq_construction or recipe.mcq_construction,
                answer_form=config.answer_form or recipe.answer_form,
                progress=LogProgress("rationales generated", context.log.info, unit="traj"),
            )
        except TeacherUnavailable as exc:  # circuit breaker: answers so far stay in the cache for the rerun
            raise dg.Failure(description=str(exc), metadata={"consecutive_failures": exc.consecutive}) from None
        finally:
            if hasattr(generator, "close"):
                generator.close()  # a vLLM engine holds memory and worker processes
        seconds = time.perf_counter() - start
        trajectories, rejections = result.trajectories, result.rejections
        if trajectories.empty:
            raise dg.Failure(
                f"no trajectory passed verification; rejections: {result.counts['rejections']}; "
                f"generation failures: {result.counts['transport_failures']}"
            )
        dataset_path = out_dir / "trajectories.parquet"
        write_parquet(Dataset.from_pandas(trajectories, preserve_index=False), dataset_path)
        write_parquet(rejections, out_dir / "rejections.parquet")
        home.seal(context, out_dir)
        counts = result.counts
        with mlflow.asset_run(
            context,
            params={
                **config_params(config),
                "samples": len(samples),
                "teacher_generator": teacher.generator,
                "style_used": config.style or recipe.rationale_style,
                "mcq_construction_used": config.mcq_construction or recipe.mcq_construction,
                "answer_form_used": config.answer_form or recipe.answer_form,
            },
        ) as run:
            if run is not None:
                import mlflow as mlf

                from skinr1_pipeline.tracking.mlflow_runs import log_parquet_input

                mlf.log_metrics(
                    {
                        "accepted": len(trajectories),
                        "rejected": counts["rejected"],
                        "seconds": seconds,
                        "transport_failed": counts["transport_failed"],
                        **{f"transport_failures/{k}": v for k, v in counts["transport_failures"].items()},
                    }
                )
                # Read back from the file SFT reads, so both runs log one digest for it (completions included).
                log_parquet_input(dataset_path, "skin_rationale_trajectories", "sft")
                mlf.log_dict(result.counts, "synthesis_counts.json")
        per_type = pd.DataFrame(result.counts["per_type"]).T.reset_index(names="trajectory_type")
        examples = trajectories.groupby("trajectory_type").head(1)
        rendered = "\n\n".join(
            f"**{r.trajectory_type}** ({r.question_form}, {r.taxonomy_node})\n\n"
            f"> {r.prompt.splitlines()[0]}\n\n```\n{r.completion}\n```"
            for r in examples.itertuples()
        )
        context.add_output_metadata(
            {
                "dataset_path": dg.MetadataValue.path(str(dataset_path)),
                "accepted": len(trajectories),
                "rejected": counts["rejected"],  # by the verifier
                "transport_failed": counts["transport_failed"],  # no usable text from the generator (see the table)
                "acceptance_rate": round(len(trajectories) / max(1, counts["requests"]), 4),
                "trajectories_per_second": round(result.counts["requests"] / max(seconds, 1e-9), 1),
                "per_type": md(markdown_table(per_type)),
                "per_class": md(counts_table(result.counts["per_class"], "taxonomy_node", "trajectories")),
                "per_question_form": md(counts_table(result.counts["per_question_form"], "form", "trajectories")),
                "rejections_by_reason": md(counts_table(counts["rejections"], "reason")),
                "transport_failures": md(counts_table(counts["transport_failures"], "kind")),
                "generator_stats": md(counts_table(counts.get("generator_stats", {}), "event")),
                "skipped_not_applicable": md(counts_table(result.counts["skipped"], "reason")),
                "examples": md(rendered),
                "generator": teacher.generator,
                "teacher": teacher.model_dir or teacher.api_model or "knowledge-grounded template",
                **({"teacher_endpoint": redact_url(teacher.base_url)} if teacher.generator == "openai" else {}),
            }
        )
        return str(dataset_path)

    @dg.asset_check(
        asset=skin_rationale_trajectories,
        blocking=True,
        description="Every kept trajectory parses strictly and its diagnosis agrees with its label",
    )
    def trajectories_parse_and_agree(skin_rationale_trajectories: str) -> dg.AssetCheckResult:
        from skinr1_pipeline.modeling.prompt_format import parse_completion

        frame = pd.read_parquet(skin_rationale_trajectories)
        bad = []
        for row in frame.itertuples():
            options = list(row.options) if len(row.options) else None
            parsed = parse_completion(row.completion, options)
            if not parsed.ok:
                bad.append({"sample_id": row.sample_id, "type": row.trajectory_type, "error": parsed.error})
        return dg.AssetCheckResult(
            passed=not bad,
            metadata={
                "checked": len(frame),
                "failures": len(bad),
                "first_failures": md(markdown_table(pd.DataFrame(bad), 10)),
            },
        )

    @dg.asset_check(
        asset=knowledge_base,
        additional_ins={"taxonomy_graph": dg.AssetIn("taxonomy_graph")},
        description="Every class a supported dataset loader can produce has a knowledge entry (its own or "
        "an ancestor's), so none silently gets no trajectories",
    )
    def every_loader_class_has_knowledge(
        knowledge_base: KnowledgeBase, taxonomy_graph: Taxonomy
    ) -> dg.AssetCheckResult:
        from skinr1_pipeline.knowledge.coverage import coverage_summary, knowledge_coverage
        from skinr1_pipeline.knowledge.label_maps import load_label_maps

        summary = coverage_summary(
            knowledge_coverage(taxonomy_graph, knowledge_base, load_label_maps(taxonomy_graph, settings.label_map_dir))
        )
        missing = summary[summary["uncovered"] > 0]
        return dg.AssetCheckResult(
            passed=missing.empty,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "per_dataset": md(markdown_table(summary.drop(columns="uncovered_nodes"))),
                "classes_without_knowledge": md(markdown_table(missing[["dataset", "uncovered_nodes"]]))
                if len(missing)
                else "none",
            },
        )

    return dg.Definitions(
        assets=[knowledge_base, skin_rationale_trajectories],
        asset_checks=[trajectories_parse_and_agree, every_loader_class_has_knowledge],
    )
