"""Data assets: demo sources, one ingest partition per source dataset, and the unified, split sample table."""

import time

import dagster as dg
import pandas as pd

from skinr1_pipeline.data.dedup import calibrated_distance, deduplicate, near_duplicates
from skinr1_pipeline.data.ingest import IngestResult, ingest_dataset
from skinr1_pipeline.data.splits import SplitPolicy, assign_splits, leakage_report
from skinr1_pipeline.defs.code_versions import code_version_of
from skinr1_pipeline.defs.metadata import markdown_table, md
from skinr1_pipeline.defs.resources import MlflowTracking, PipelineHome
from skinr1_pipeline.knowledge.label_maps import LabelMap
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.progress import LogProgress
from skinr1_pipeline.settings import Settings
from skinr1_pipeline.storage.atomic import write_parquet
from skinr1_pipeline.tracking.mlflow_runs import frame_digest, log_dataframe_input


class DemoDataConfig(dg.Config):
    seed: int | None = None  # None: the settings' demo_seed (SKINR1_DEMO_SEED or the config file)
    images_per_class: int | None = None  # None: the settings' demo_images_per_class
    include_broken_files: bool = True


class IngestConfig(dg.Config):
    image_workers: int = 0  # 0 = one per CPU core


class SplitConfig(dg.Config):
    seed: int | None = None  # None: the settings' split_seed (the config file's split_seed, default 42)
    train: float = 0.6
    valid: float = 0.2
    test: float = 0.2
    valid_from_train: float = 0.25  # for datasets with official train/test only (Skin-R1 carves 25 %)


def build_data_defs(settings: Settings) -> dg.Definitions:
    partitions = dg.StaticPartitionsDefinition(list(settings.datasets))
    assets: list[dg.AssetsDefinition] = []
    upstream_deps: list[dg.AssetKey] = []

    if settings.profile == "demo":

        @dg.asset(group_name="data", code_version=code_version_of(__name__, "data.demo"), kinds={"python"})
        def demo_source_data(
            context: dg.AssetExecutionContext, config: DemoDataConfig, home: PipelineHome, mlflow: MlflowTracking
        ) -> dict:
            """Dermatology-like images written in the real HAM10000, PAD-UFES-20 and Derm7pt layouts."""
            from skinr1_pipeline.data.demo import generate_demo_data

            start = time.perf_counter()
            manifest = generate_demo_data(
                home.path("demo_sources", mkdir=True),
                seed=settings.demo_seed if config.seed is None else config.seed,
                n_per_class=(
                    settings.demo_images_per_class if config.images_per_class is None else config.images_per_class
                ),
                include_broken=config.include_broken_files,
            ).to_dict()
            rows = [
                {"dataset": d, "label": label, "images": n}
                for d, counts in manifest["class_counts"].items()
                for label, n in counts.items()
            ]
            with mlflow.asset_run(
                context, params={"seed": manifest.get("seed", ""), "root": str(home.path("demo_sources", mkdir=False))}
            ) as run:
                if run is not None:
                    import mlflow as mlf

                    mlf.log_metrics({"images": sum(r["images"] for r in rows), "broken": len(manifest["broken"])})
            context.add_output_metadata(
                {
                    "seconds": round(time.perf_counter() - start, 2),
                    "images": sum(r["images"] for r in rows),
                    "per_class": md(markdown_table(pd.DataFrame(rows), max_rows=60)),
                    "deliberately_broken": md(markdown_table(pd.DataFrame(manifest["broken"]))),
                    "root": dg.MetadataValue.path(str(home.path("demo_sources", mkdir=False))),
                }
            )
            return manifest

        assets.append(demo_source_data)
        upstream_deps.append(demo_source_data.key)

    @dg.asset(
        group_name="data",
        partitions_def=partitions,
        deps=upstream_deps,
        code_version=code_version_of(__name__, "data.ingest", "data.loaders.*"),
        kinds={"pandas"},
        check_specs=[
            dg.AssetCheckSpec(
                "every_label_mapped", asset="raw_datasets", description="Every raw label maps to a taxonomy node"
            ),
            dg.AssetCheckSpec("quarantine_rate", asset="raw_datasets", description="Under 5 % of rows quarantined"),
        ],
    )
    def raw_datasets(
        context: dg.AssetExecutionContext,
        config: IngestConfig,
        mlflow: MlflowTracking,
        home: PipelineHome,
        taxonomy_graph: Taxonomy,
        label_mapping: dict[str, LabelMap],
    ):
        """One source dataset read by its real loader, labels mapped, images validated and hashed."""
        dataset = context.partition_key
        root = settings.dataset_root(dataset)
        start = time.perf_counter()
        result = ingest_dataset(
            dataset,
            root,
            taxonomy_graph,
            label_mapping[dataset],
            workers=config.image_workers or None,
            progress=LogProgress(f"{dataset} image checks", context.log.info, unit="img"),
        )
        seconds = time.perf_counter() - start
        folder = home.run_dir(context, "outputs", "raw_datasets")
        export = write_parquet(result.samples, folder / "samples.parquet")
        write_parquet(result.quarantine, folder / "quarantine.parquet")
        home.seal(context, folder)
        # The content, not the folder's mtimes: a touched but unchanged dataset keeps its data version.
        digest = frame_digest(result.samples)
        with mlflow.asset_run(context, params={"dataset": dataset, "root": str(root)}) as run:
            if run is not None:
                import mlflow as mlf

                mlf.log_metrics(
                    {"samples": len(result.samples), "quarantined": len(result.quarantine), "ingest_seconds": seconds}
                )
                log_dataframe_input(result.samples, name=f"raw_{dataset}", source=str(root), context="ingest")
        for note in result.notes:
            context.log.info(f"{dataset}: {note}")
        counts = result.samples.groupby(["taxonomy_node", "raw_label"]).size().reset_index(name="images")
        coverage = float(result.mapping_report.get("coverage", 1.0))
        rate = len(result.quarantine) / max(result.rows_seen, 1)
        yield dg.Output(
            result,
            data_version=dg.DataVersion(digest),
            metadata={
                "samples_digest": digest,
                "samples": len(result.samples),
                "quarantined": len(result.quarantine),
                "images_per_second": round(result.rows_seen / max(seconds, 1e-9), 1),
                "per_class": md(markdown_table(counts, max_rows=120)),
                "quarantine": md(markdown_table(result.quarantine, max_rows=50)),
                "quarantine_reasons": md(
                    markdown_table(
                        pd.DataFrame(
                            {
                                "reason": list(result.quarantine_counts()),
                                "rows": list(result.quarantine_counts().values()),
                            }
                        )
                    )
                ),
                "notes": md("\n".join(f"- {n}" for n in result.notes) or "_none_"),
                "export": dg.MetadataValue.path(str(export)),
            },
        )
        yield dg.AssetCheckResult(
            check_name="every_label_mapped", passed=coverage == 1.0, metadata={"coverage": coverage}
        )
        yield dg.AssetCheckResult(
            check_name="quarantine_rate",
            passed=rate < 0.05,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"rate": round(rate, 4), "by_reason": str(result.quarantine_counts())},
        )

    @dg.asset(group_name="data", code_version=code_version_of(__name__, "data.dedup", "data.splits"), kinds={"pandas"})
    def unified_samples(
        context: dg.AssetExecutionContext,
        config: SplitConfig,
        mlflow: MlflowTracking,
        home: PipelineHome,
        taxonomy_graph: Taxonomy,
        raw_datasets: dict[str, IngestResult],
    ) -> dg.Output[pd.DataFrame]:
        """All datasets in one schema: de-duplicated by image hash and split by patient/lesion without leakage."""
        frames = [raw_datasets[name].samples for name in sorted(raw_datasets)]
        combined = pd.concat([f.astype(object) for f in frames], ignore_index=True).infer_objects()
        dedup = deduplicate(combined, taxonomy_graph, dataset_priority=list(settings.datasets))
        seed = settings.split_seed if config.seed is None else config.seed
        policy = SplitPolicy(
            seed=seed, ratios=(config.train, config.valid, config.test), valid_from_train=config.valid_from_train
        )
        samples = assign_splits(dedup.samples, policy)
        folder = home.run_dir(context, "outputs", "unified_samples")
        export = write_parquet(samples, folder / "unified_samples.parquet")
        write_parquet(dedup.duplicates, folder / "duplicates.parquet")
        home.seal(context, folder)
        # The pipeline's data version: every MLflow run downstream is tagged with it (`skinr1.lineage`).
        digest = frame_digest(samples)
        with mlflow.asset_run(
            context, params={"split_seed": policy.seed, "ratios": list(policy.ratios)}, lineage=digest
        ) as run:
            if run is not None:
                import mlflow as mlf

                for split, part in samples.groupby("split"):
                    log_dataframe_input(part, name=f"unified_{split}", source=str(export), context=str(split))
                mlf.log_metrics({"samples": len(samples), "duplicates_removed": len(dedup.duplicates)})
        by_split = samples.pivot_table(
            index="taxonomy_node", columns="split", values="sample_id", aggfunc="count", fill_value=0
        ).reset_index()
        by_level = samples.groupby(["taxonomy_depth", "split"]).size().unstack(fill_value=0).reset_index()
        by_source = samples.groupby(["source_dataset", "split"]).size().unstack(fill_value=0).reset_index()
        context.add_output_metadata(
            {
                "samples_digest": digest,
                "samples": len(samples),
                "duplicates_removed": len(dedup.duplicates),
                "per_class_and_split": md(markdown_table(by_split, max_rows=100)),
                "per_depth_and_split": md(markdown_table(by_level)),
                "per_source_and_split": md(markdown_table(by_source)),
                "split_rules": md(
                    markdown_table(samples["split_rule"].value_counts().rename_axis("rule").reset_index(name="samples"))
                ),
                "duplicates": md(markdown_table(dedup.duplicates, max_rows=30)),
                "export": dg.MetadataValue.path(str(export)),
            }
        )
        return dg.Output(samples, data_version=dg.DataVersion(digest))

    @dg.asset_check(asset=unified_samples, blocking=True, description="No image hash, lesion or patient in two splits")
    def no_split_leakage(unified_samples: pd.DataFrame) -> dg.AssetCheckResult:
        report = leakage_report(unified_samples)
        leaked = {k: v for k, v in report.items() if v}
        return dg.AssetCheckResult(
            passed=not leaked,
            metadata={k: len(v) for k, v in report.items()}
            | {"examples": str({k: v[:5] for k, v in leaked.items()}) or "none"},
        )

    @dg.asset_check(asset=unified_samples, description="Every split has samples and every sample has a split")
    def splits_populated(unified_samples: pd.DataFrame) -> dg.AssetCheckResult:
        counts = unified_samples["split"].value_counts(dropna=False).to_dict()
        missing = [s for s in ("train", "valid", "test") if counts.get(s, 0) == 0]
        unassigned = int(unified_samples["split"].isna().sum())
        return dg.AssetCheckResult(
            passed=not missing and unassigned == 0,
            metadata={"counts": str({str(k): int(v) for k, v in counts.items()}), "unassigned": unassigned},
        )

    @dg.asset_check(
        asset=unified_samples,
        description="Near-duplicate images (perceptual hash within the distance "
        "calibrated on re-encoded copies) across datasets or splits: copies that exact-hash dedup misses",
    )
    def near_duplicates_across_splits(unified_samples: pd.DataFrame) -> dg.AssetCheckResult:
        distance, how = calibrated_distance(-1, unified_samples, seed=settings.split_seed)
        if distance is None:
            return dg.AssetCheckResult(passed=True, severity=dg.AssetCheckSeverity.WARN, metadata={"checked": how})
        pairs = near_duplicates(unified_samples, distance)
        cross_split = pairs[pairs["split_a"] != pairs["split_b"]]
        return dg.AssetCheckResult(
            passed=cross_split.empty,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={
                "distance": distance,
                "calibration": md(how),
                "pairs": len(pairs),
                "cross_split_pairs": len(cross_split),
                "cross_dataset_pairs": int((pairs["source_a"] != pairs["source_b"]).sum()),
                "examples": md(markdown_table(pairs, max_rows=20)),
            },
        )

    return dg.Definitions(
        assets=[*assets, raw_datasets, unified_samples],
        asset_checks=[no_split_leakage, splits_populated, near_duplicates_across_splits],
    )
