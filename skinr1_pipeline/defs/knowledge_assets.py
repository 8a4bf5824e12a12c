"""Knowledge assets: the taxonomy tree, the differential-diagnosis graph and the per-dataset label maps."""

import dagster as dg
import pandas as pd

from skinr1_pipeline.defs.code_versions import code_version_of
from skinr1_pipeline.defs.metadata import markdown_table, md
from skinr1_pipeline.defs.resources import MlflowTracking
from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.label_maps import LabelMap, load_label_maps
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.settings import Settings
from skinr1_pipeline.tracking.mlflow_runs import log_dataframe_input

MIN_DIAGNOSIS_NODES = 150
MIN_DDX_GROUPS = 40


@dg.asset(
    group_name="knowledge",
    kinds={"networkx"},
    code_version=code_version_of(__name__, "knowledge.taxonomy", data=("knowledge/data/taxonomy.yaml",)),
)
def taxonomy_graph(context: dg.AssetExecutionContext, mlflow: MlflowTracking) -> Taxonomy:
    """The hierarchical disease taxonomy (root -> category -> behaviour -> lineage -> diagnosis -> subtype)."""
    taxonomy = Taxonomy.load()
    summary = taxonomy.summary()
    with mlflow.asset_run(context, params={"source": taxonomy.source}) as run:
        if run is not None:
            import mlflow as mlf

            mlf.log_metrics({f"taxonomy_{k}": v for k, v in summary.items() if isinstance(v, int)})
            mlf.log_dict({n.id: n.as_record() for n in taxonomy}, "taxonomy_nodes.json")
    by_bucket = summary["diagnoses_per_bucket"]
    context.add_output_metadata(
        {
            "nodes": summary["nodes"],
            "edges": summary["edges"],
            "diagnosis_nodes": summary["diagnosis_nodes"],
            "max_depth": summary["max_depth"],
            "nodes_per_level": md(
                markdown_table(
                    pd.DataFrame(
                        {"level": list(summary["nodes_per_level"]), "nodes": list(summary["nodes_per_level"].values())}
                    )
                )
            ),
            "diagnoses_per_bucket": md(
                markdown_table(pd.DataFrame({"bucket": list(by_bucket), "diagnoses": list(by_bucket.values())}))
            ),
            "tree": md(taxonomy.render_markdown(max_depth=3)),
        }
    )
    return taxonomy


@dg.asset_check(
    asset=taxonomy_graph,
    blocking=True,
    description="One root, a tree, unique names/synonyms, derivable buckets, enough diagnoses",
)
def taxonomy_invariants(taxonomy_graph: Taxonomy) -> dg.AssetCheckResult:
    problems: list[str] = []
    try:
        taxonomy_graph.validate()
    except ValueError as exc:
        problems.append(str(exc))
    n_dx = len(taxonomy_graph.diagnosis_nodes())
    if n_dx < MIN_DIAGNOSIS_NODES:
        problems.append(f"only {n_dx} diagnosis nodes, expected at least {MIN_DIAGNOSIS_NODES}")
    return dg.AssetCheckResult(
        passed=not problems, metadata={"diagnosis_nodes": n_dx, "problems": "\n".join(problems) or "none"}
    )


@dg.asset(
    group_name="knowledge",
    kinds={"networkx"},
    code_version=code_version_of(__name__, "knowledge.ddx", data=("knowledge/data/ddx.yaml",)),
)
def ddx_graph(context: dg.AssetExecutionContext, mlflow: MlflowTracking, taxonomy_graph: Taxonomy) -> DDxGraph:
    """Differential-diagnosis graph over taxonomy nodes; each edge says why two conditions are confused."""
    graph = DDxGraph.load(taxonomy_graph)
    summary = graph.summary()
    with mlflow.asset_run(context) as run:
        if run is not None:
            import mlflow as mlf

            mlf.log_metrics({f"ddx_{k}": v for k, v in summary.items() if isinstance(v, (int, float))})
    edges = pd.DataFrame(graph.to_records())
    context.add_output_metadata(
        {
            **{k: v for k, v in summary.items() if isinstance(v, (int, float, str))},
            "edges_sample": md(markdown_table(edges, max_rows=25)),
        }
    )
    return graph


@dg.asset_check(
    asset=ddx_graph,
    blocking=True,
    additional_ins={"taxonomy_graph": dg.AssetIn("taxonomy_graph")},
    description="Every DDx node is a taxonomy node; enough clinical groups",
)
def ddx_graph_valid(ddx_graph: DDxGraph, taxonomy_graph: Taxonomy) -> dg.AssetCheckResult:
    unknown = sorted(n for n in ddx_graph.graph.nodes if n not in taxonomy_graph)
    groups = ddx_graph.summary().get("groups", 0)
    passed = not unknown and groups >= MIN_DDX_GROUPS
    return dg.AssetCheckResult(
        passed=passed, metadata={"unknown_nodes": ", ".join(unknown) or "none", "groups": groups}
    )


def build_label_mapping_asset(settings: Settings) -> dg.AssetsDefinition:
    @dg.asset(
        name="label_mapping",
        group_name="knowledge",
        code_version=code_version_of(__name__, "knowledge.label_maps", data=("knowledge/data/label_maps/*.yaml",)),
    )
    def label_mapping(
        context: dg.AssetExecutionContext, mlflow: MlflowTracking, taxonomy_graph: Taxonomy
    ) -> dict[str, LabelMap]:
        """Every raw label of every supported dataset -> a taxonomy node (group labels map to internal nodes)."""
        maps = load_label_maps(taxonomy_graph, extra_dir=settings.label_map_dir)
        rows = []
        for name, label_map in sorted(maps.items()):
            for raw, node in sorted(label_map.labels.items()):
                rows.append(
                    {
                        "dataset": name,
                        "label": raw,
                        "node": node,
                        "depth": taxonomy_graph.depth(node),
                        "bucket": taxonomy_graph[node].bucket,
                    }
                )
        table = pd.DataFrame(rows)
        per_dataset = table.groupby("dataset").size().to_dict()
        with mlflow.asset_run(context, params={"extra_dir": str(settings.label_map_dir or "")}) as run:
            if run is not None:
                import mlflow as mlf

                mlf.log_metrics({"labels": len(table), "datasets": len(maps)})
                log_dataframe_input(table, "label_mapping", str(settings.label_map_dir or "packaged"), "mapping")
        context.add_output_metadata(
            {
                "datasets": len(maps),
                "labels": len(table),
                "labels_per_dataset": md(
                    markdown_table(pd.DataFrame({"dataset": list(per_dataset), "labels": list(per_dataset.values())}))
                ),
                "configured_datasets": ", ".join(settings.datasets),
                "mapping": md(markdown_table(table[table["dataset"].isin(settings.datasets)], max_rows=120)),
            }
        )
        return maps

    return label_mapping


def build_knowledge_defs(settings: Settings) -> dg.Definitions:
    """The taxonomy, the DDx graph and the label mapping, with their checks."""
    return dg.Definitions(
        assets=[taxonomy_graph, ddx_graph, build_label_mapping_asset(settings)],
        asset_checks=[taxonomy_invariants, ddx_graph_valid],
    )
