"""The whole asset graph materializes in process on the embedded demo, exactly as `skinr1 demo` runs it."""

from __future__ import annotations

import json

import dagster as dg
import mlflow
import pandas as pd
import pytest

from skinr1_pipeline.definitions import build_definitions
from skinr1_pipeline.runner import materialize_all
from skinr1_pipeline.settings import load_settings
from skinr1_pipeline.storage.run_folders import latest_complete, pins
from skinr1_pipeline_tests.toy_chain import toy_run_config

pytestmark = pytest.mark.slow

# The whole graph at toy scale (presets.py, the `scale: toy` preset): every stage runs for real (synthesis,
# tokenizer + tiny model, LoRA SFT, GRPO, RL-only GRPO, four variant evaluations, report, registry), with step and
# token budgets cut so CI stays short; here with two warm-up, two option-drill and two format steps, so those run too,
# and GRPO logging its completions.
E2E_CHANGES = {
    "demo_source_data": {"images_per_class": 10},
    "base_model": {"warmup_steps": 2, "option_drill_steps": 2, "format_steps": 2},
    "sft_checkpoint": {"option_drill_rows": 24},
    "grpo_checkpoint": {
        "overrides": {"max_steps": 1, "limit_items": 4, "max_completion_length": 16, "log_completions_every": 1}
    },
}


def latest(settings, *parts: str):
    """The newest complete run folder an asset (partition) wrote under the outputs."""
    folder = latest_complete(settings.outputs_dir.joinpath(*parts))
    assert folder is not None, parts
    return folder


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    home = tmp_path_factory.mktemp("skinr1_home")
    settings = load_settings({"SKINR1_HOME": str(home)})
    defs = build_definitions(settings)
    with dg.instance_for_test() as instance:
        outcome = materialize_all(defs, instance, run_config=toy_run_config(defs, E2E_CHANGES), log=print)
        yield settings, defs, outcome


def test_every_asset_materializes(demo_run):
    settings, defs, outcome = demo_run
    assert outcome.success
    expected = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert outcome.materialized_keys() == expected
    assert {
        "demo_source_data",
        "taxonomy_graph",
        "ddx_graph",
        "label_mapping",
        "raw_datasets",
        "unified_samples",
        "knowledge_base",
        "skin_rationale_trajectories",
        "base_model",
        "sft_checkpoint",
        "rl_mcq_dataset",
        "grpo_checkpoint",
        "rl_only_checkpoint",
        "eval_suites",
        "variant_evaluations",
        "ablation_table",
        "evaluation_reports",
    } <= expected


def test_the_time_is_attributed_to_every_asset_step(demo_run):
    """`skinr1 demo` prints each stage's share of the time from these; a missing step would hide where it went."""
    from skinr1_pipeline.runner import stage_shares

    _, _, outcome = demo_run
    steps = outcome.step_seconds
    assert {"raw_datasets[ham10000]", "variant_evaluations[sft]", "sft_checkpoint", "base_model"} <= set(steps)
    assert outcome.materialized_keys() <= {name.split("[")[0] for name in steps}
    assert all(0 <= seconds <= outcome.seconds for seconds in steps.values())
    rows = stage_shares(steps, outcome.seconds)
    assert rows[-1][0].startswith("(outside steps") and [r[1] for r in rows[:-1]] == sorted(steps.values())[::-1]
    assert sum(share for _, _, share in rows) == pytest.approx(1.0)


def test_gate_checks_pass(demo_run):
    _, _, outcome = demo_run
    results = {(e.asset_key.to_user_string(), e.check_name): e.passed for e in outcome.check_evaluations()}
    for gate in [
        ("taxonomy_graph", "taxonomy_invariants"),
        ("ddx_graph", "ddx_graph_valid"),
        ("raw_datasets", "every_label_mapped"),
        ("unified_samples", "no_split_leakage"),
        ("unified_samples", "splits_populated"),
        ("skin_rationale_trajectories", "trajectories_parse_and_agree"),
        ("sft_checkpoint", "sft_losses_finite"),
        ("sft_checkpoint", "sft_format_compliance"),
        ("grpo_checkpoint", "grpo_keeps_sft_accuracy"),
        ("evaluation_reports", "champion_promotion"),
        ("eval_suites", "set_first_suites_resist_blind_guessing"),
        ("knowledge_base", "every_loader_class_has_knowledge"),
    ]:
        assert results.get(gate) is True, gate


def test_broken_demo_files_are_quarantined_with_their_reasons(demo_run):
    settings, _, _ = demo_run

    manifest = json.loads((settings.demo_dir / "demo_manifest.json").read_text())
    quarantine = pd.concat(
        pd.read_parquet(latest(settings, "raw_datasets", d) / "quarantine.parquet") for d in settings.datasets
    )
    found = {(str(p).split("/")[-1], r) for p, r in zip(quarantine["image_path"], quarantine["reason"])}
    for broken in manifest["broken"]:
        assert (str(broken["path"]).split("/")[-1], broken["reason"]) in found, broken
    assert len(quarantine) == len(manifest["broken"])  # nothing else lost


def test_unified_samples_cover_demo_domains_and_splits(demo_run):
    settings, _, _ = demo_run
    samples = pd.read_parquet(latest(settings, "unified_samples") / "unified_samples.parquet")
    assert set(samples["source_dataset"]) == set(settings.datasets)
    assert set(samples["modality"]) == {"dermoscopic", "clinical"}
    assert set(samples["split"]) == {"train", "valid", "test"}
    assert samples["image_sha256"].is_unique
    assert samples["bucket"].isin(["benign", "precancerous_in_situ", "malignant"]).all()
    # Derm7pt contributes two images (clinical + dermoscopic) of one lesion, always in the same split.
    derm7pt = samples[samples["source_dataset"] == "derm7pt"]
    assert (derm7pt.groupby("lesion_id")["split"].nunique() == 1).all()


def test_mlflow_has_a_parent_run_per_dagster_run_with_nested_asset_runs(demo_run):
    settings, _, outcome = demo_run
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    runs = client.search_runs([experiment.experiment_id], max_results=500)
    parents = {r.info.run_id: r for r in runs if r.data.tags.get("skinr1.role") == "parent"}
    children = [r for r in runs if r.data.tags.get("skinr1.role") == "child"]
    assert {r.data.tags["dagster.run_id"] for r in parents.values()} == {res.run_id for res in outcome.results}
    assert all(r.data.tags["mlflow.parentRunId"] in parents for r in children)
    assets = {(r.data.tags["dagster.asset_key"], r.data.tags["dagster.partition"]) for r in children}
    assert {("raw_datasets", d) for d in settings.datasets} <= assets
    assert ("unified_samples", "") in assets
    unified = next(r for r in children if r.data.tags["dagster.asset_key"] == "unified_samples")
    inputs = client.get_run(unified.info.run_id).inputs.dataset_inputs
    assert {i.dataset.name for i in inputs} == {"unified_train", "unified_valid", "unified_test"}
    assert all(i.dataset.digest for i in inputs)


def test_training_stages_leave_adapters_metrics_and_completions(demo_run):
    settings, _, outcome = demo_run
    models = settings.home / "models"
    for stage in ("sft", "grpo", "rl_only"):
        assert (models / stage / "latest" / "adapter" / "adapter_model.safetensors").is_file(), stage
    assert list((models / "grpo" / "latest" / "completions").glob("step_*.parquet"))
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    runs = {
        r.data.tags.get("dagster.asset_key"): r for r in client.search_runs([experiment.experiment_id], max_results=500)
    }
    sft = runs["sft_checkpoint"]
    assert "train_loss" in sft.data.metrics or "loss" in sft.data.metrics  # logged by the trainer in the Pipes child
    assert "heldout_parse_rate" in sft.data.metrics
    assert client.list_artifacts(sft.info.run_id, "sft_adapter")
    # The SFT data reached MLflow as a dataset input, with the per-type counts in the asset metadata.
    synthesis = client.get_run(runs["skin_rationale_trajectories"].info.run_id)
    assert {i.dataset.name for i in synthesis.inputs.dataset_inputs} == {"skin_rationale_trajectories"}


def test_sft_starts_from_trajectories_of_in_distribution_train_samples_only(demo_run):
    settings, _, _ = demo_run
    samples = pd.read_parquet(latest(settings, "unified_samples") / "unified_samples.parquet").set_index("sample_id")
    trajectories = pd.read_parquet(latest(settings, "skin_rationale_trajectories") / "trajectories.parquet")
    used = samples.loc[trajectories["sample_id"].unique()]
    assert set(used["split"]) == {"train"} and set(used["modality"]) == {"dermoscopic"}
    items = pd.read_parquet(latest(settings, "rl_mcq_dataset") / "items.parquet")
    assert set(samples.loc[items["sample_id"].unique(), "modality"]) == {"dermoscopic"}


def test_evaluation_reports_every_variant_and_registers_a_candidate(demo_run, capsys):
    settings, _, _ = demo_run
    evaluation = latest(settings, "ablation_table")
    table = pd.read_csv(evaluation / "ablation_table.csv", index_col=0)
    assert list(table.index) == ["base", "sft", "rl_only", "sft_grpo"]
    for variant in table.index:
        scored = pd.read_parquet(latest(settings, "variant_evaluations", variant) / "scored.parquet")
        assert {"in_domain", "malignancy", "hierarchical", "ood"} <= set(scored["suite"])
        in_domain = scored[scored["suite"] == "in_domain"]
        real = in_domain["condition"] == "real"
        assert in_domain.loc[real, "option_logprobs"].map(len).eq(4).all()  # one log-prob per option, for calibration
        assert in_domain.loc[real, "answer_logprobs"].map(len).eq(4).all() and in_domain["likely_correct"].dtype == bool
        # the image-control rows are read through their generated answers only: no option scored
        assert (~real).any() and in_domain.loc[~real, "answer_logprobs"].map(len).eq(0).all()
    likelihood = pd.read_csv(evaluation / "answer_likelihood_table.csv", index_col=0)
    assert list(likelihood.index) == list(table.index) and "in_domain" in likelihood.columns
    assert "open_ended" not in likelihood.columns  # nothing to choose from, nothing to score
    baselines = pd.read_csv(evaluation / "image_blind_baselines.csv", index_col="suite")
    items = pd.read_parquet(latest(settings, "eval_suites") / "suite_items.parquet")
    real = items[items["condition"] == "real"]
    assert baselines["n"].to_dict() == real.groupby("suite").size().to_dict()
    assert (baselines["best"] >= baselines["uniform"]).all() and baselines.loc["in_domain", "uniform"] == 0.25
    assert {"in_domain_paper", "hierarchical_paper", "ddx_paper", "ood_paper"} <= set(baselines.index)
    # Image controls: the in-domain and OOD items again with a shuffled and a blank image, paired per variant.
    controls = items[items["condition"] != "real"]
    assert set(controls["suite"]) == {"in_domain", "ood"} and set(controls["condition"]) == {"shuffled", "blank"}
    assert set(controls["base_item_id"]) == set(real.loc[real["suite"].isin(["in_domain", "ood"]), "item_id"])
    uses = pd.read_csv(evaluation / "image_use.csv")
    assert set(uses["variant"]) == set(table.index) and set(uses["suite"]) == {"in_domain", "ood"}
    blind = pd.read_csv(evaluation / "versus_blind.csv")
    assert set(blind["variant"]) == set(table.index) and "in_domain" in set(blind["suite"])
    claims = pd.read_csv(evaluation / "paired_claims.csv")
    assert {"sft_grpo > sft", "sft > base", "sft_grpo > rl_only"} <= set(claims["claim"])
    # The image-only reference answers every multiple-choice suite (open questions have no options to map onto).
    reference = pd.read_csv(evaluation / "image_only_reference.csv")
    assert set(reference["suite"]) == set(real.loc[real["options"].map(len) > 0, "suite"])
    assert set(reference["variant"]) == {"image_only"} and reference["accuracy"].between(0, 1).all()
    from skinr1_pipeline.cli import _print_honesty_tables  # what `skinr1 demo` prints after the ablation table

    capsys.readouterr()
    _print_honesty_tables(evaluation)
    printed = capsys.readouterr().out
    assert "Best image-blind guesser" in printed
    assert all(
        heading in printed
        for heading in (
            "minus the best blind guesser",
            "real vs shuffled vs blank",
            "image signal the train split teaches",
            "The paper's claims",
        )
    )
    assert all(variant in printed for variant in table.index) and "sft_grpo > rl_only" in printed
    html = (latest(settings, "evaluation_reports") / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html and "sft_grpo" in html and "Answer likelihood" in html
    assert "Against image-blind guessing" in html and "Does each variant read the image?" in html
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_tracking_uri)
    candidate = client.get_model_version_by_alias("skinr1-grpo", "candidate")
    evidence = {k: candidate.tags[k] == "True" for k in ("beats_blind_guessers", "beats_shuffled_image")}
    # First candidate, no champion yet: promoted only with the evidence that it reads the image.
    expected = "promoted" if all(evidence.values()) else "kept champion"
    assert candidate.tags["promotion_decision"] == expected, candidate.tags
    # The version references its base model (not a copy): that run folder is pinned against pruning.
    assert pins(candidate.tags["base_model_path"]) == [f"skinr1-grpo-v{candidate.version}"]


CONCURRENT_RUN = """
import sys
import dagster as dg
from skinr1_pipeline.definitions import build_definitions
from skinr1_pipeline.runner import materialize_all
from skinr1_pipeline.settings import load_settings

defs = build_definitions(load_settings())
selection = dg.AssetSelection.assets("rl_mcq_dataset", "eval_suites")
config = {"ops": {"rl_mcq_dataset": {"config": {"seed": int(sys.argv[1])}},
                  "eval_suites": {"config": {"per_suite_limit": 3, "seed": int(sys.argv[1])}}}}
with dg.DagsterInstance.get() as instance:
    outcome = materialize_all(defs, instance, run_config=config, selection=selection)
sys.exit(0 if outcome.success else 1)
"""


def test_two_concurrent_runs_of_the_same_assets_both_finish_in_their_own_folders(demo_run, tmp_path):
    """Last in this module: it adds run folders. Both runs share one Dagster instance, as under `dagster dev`."""
    import os
    import subprocess
    import sys

    from skinr1_pipeline.storage.run_folders import is_complete, run_folders

    settings, _, _ = demo_run
    before = {name: set(run_folders(settings.outputs_dir / name)) for name in ("rl_mcq_dataset", "eval_suites")}
    env = {**os.environ, "SKINR1_HOME": str(settings.home), "DAGSTER_HOME": str(tmp_path)}
    env.pop("SKINR1_CONFIG", None)
    # Create the shared instance's tables first: two processes creating a fresh SQLite schema at once race.
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert instance.get_runs() == []
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", CONCURRENT_RUN, str(seed)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for seed in (1, 2)
    ]
    logs = [run.communicate(timeout=600)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], "\n".join(log[-3000:] for log in logs)
    for name, file in (("rl_mcq_dataset", "items.parquet"), ("eval_suites", "suite_items.parquet")):
        folders = set(run_folders(settings.outputs_dir / name))
        new = folders - before[name]
        assert len(new) == 2 and before[name] <= folders, name  # one folder per run; the earlier one untouched
        for folder in folders:
            assert is_complete(folder) and len(pd.read_parquet(folder / file)), folder
        assert latest(settings, name) in new
    items = {
        seed: pd.read_parquet(f / "items.parquet")
        for seed, f in enumerate(
            sorted(set(run_folders(settings.outputs_dir / "rl_mcq_dataset")) - before["rl_mcq_dataset"])
        )
    }
    assert not items[0]["prompt"].equals(items[1]["prompt"])  # each run wrote its own seed's items
