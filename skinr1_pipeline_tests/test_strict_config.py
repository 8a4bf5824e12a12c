"""The settings file (SKINR1_CONFIG): every key is read or refused by name, and wrong types are SettingsErrors.

Why: `split_seed` was once read and then ignored, so every split stayed on the default seed with no warning; a
misspelt key did the same. Each refusal names the file, the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from skinr1_pipeline.data.ingest import IngestResult
from skinr1_pipeline.data.schema import SAMPLE_COLUMNS
from skinr1_pipeline.settings import FILE_KEYS, SettingsError, load_settings


def settings_from(tmp_path: Path, body: str, profile: str = "gpu", **env: str):
    config = tmp_path / "skinr1.yaml"
    config.write_text(body)
    return load_settings({"SKINR1_PROFILE": profile, "SKINR1_CONFIG": str(config), "SKINR1_HOME": str(tmp_path), **env})


@pytest.mark.parametrize(
    "body, key, allowed",
    [
        ("model_dir: /m\nsplit_sed: 3\n", "split_sed", "split_seed"),
        ("model_dir: /m\ndatasets:\n  imagenet: /data/imagenet\n", "datasets.imagenet", "ham10000"),
        ("model_dir: /m\nood:\n  source: [pad_ufes_20]\n", "ood.source", "modalities, sources"),
        ("model_dir: /m\ncompute:\n  gpus: 8\n", "compute.gpus", "gpus_per_worker"),
        ("model_dir: /m\nteacher:\n  temperature: 0\n", "teacher.temperature", "api_model"),
    ],
)
def test_unknown_keys_name_the_file_the_key_and_the_allowed_keys(tmp_path, body, key, allowed) -> None:
    with pytest.raises(SettingsError) as err:
        settings_from(tmp_path, body)
    message = str(err.value)
    assert f"SKINR1_CONFIG={tmp_path / 'skinr1.yaml'}: {key} is not" in message
    assert "allowed: " in message and allowed in message.split("allowed: ", 1)[1]


@pytest.mark.parametrize(
    "body, profile, expected",
    [
        ("split_seed: abc\n", "demo", "split_seed='abc' must be an integer >= 0"),
        ("split_seed: 2.5\n", "demo", "split_seed=2.5 must be an integer >= 0"),
        ("split_seed: true\n", "demo", "split_seed=True must be an integer >= 0"),
        ("demo_images_per_class: -3\n", "demo", "demo_images_per_class=-3 must be an integer >= 1"),
        ("demo_seed: [1]\n", "demo", "demo_seed=[1] must be an integer >= 0"),
        ("model_dir: 5\n", "gpu", "model_dir must be a non-empty string"),
        ("model_dir: /m\ndatasets:\n  ham10000: [a, b]\n", "gpu", "datasets.ham10000 must be a non-empty string"),
        ("model_dir: /m\nmlflow_experiment: ''\n", "gpu", "mlflow_experiment must be a non-empty string"),
        ("model_dir: /m\nood: [clinical]\n", "gpu", "ood must be a mapping"),
        ("model_dir: /m\nood:\n  sources: [imagenet]\n", "gpu", "ood.sources: 'imagenet' is not allowed"),
        ("model_dir: /m\nood:\n  modalities: [xray]\n", "gpu", "ood.modalities: 'xray' is not allowed"),
        ("model_dir: /m\ncompute: {processes: many}\n", "gpu", "compute.processes='many' must be an integer >= 1"),
        ("model_dir: /m\ncompute: {workers: 0}\n", "gpu", "compute.workers=0 must be an integer >= 1"),
        ("model_dir: /m\ncompute: {cpus_per_worker: fast}\n", "gpu", "compute.cpus_per_worker='fast' must be a number"),
        ("model_dir: /m\ncompute: {launcher_args: --bf16}\n", "gpu", "compute.launcher_args must be a list"),
        ("model_dir: /m\ncompute: {env: {A: [1]}}\n", "gpu", "compute.env must be a mapping of variable names"),
        ("model_dir: /m\ncompute: {address: 8265}\n", "gpu", "compute.address must be a string"),
    ],
)
def test_wrong_types_are_settings_errors_naming_the_key_and_what_was_expected(tmp_path, body, profile, expected):
    with pytest.raises(SettingsError, match=expected.replace("[", r"\[").replace(".", r"\.")):
        settings_from(tmp_path, body, profile)


def test_keys_one_profile_ignores_are_refused_on_the_other(tmp_path) -> None:
    with pytest.raises(SettingsError, match=r"datasets is read on the gpu profile only .*SKINR1_PROFILE=demo"):
        settings_from(tmp_path, "datasets:\n  ham10000: /data/ham\n", "demo")
    with pytest.raises(SettingsError, match=r"demo_seed is read on the demo profile only"):
        settings_from(tmp_path, "model_dir: /m\ndemo_seed: 3\n", "gpu")


def test_every_allowed_key_is_read(tmp_path) -> None:
    gpu = settings_from(
        tmp_path,
        f"""
datasets: {{ham10000: {tmp_path / "ham"}}}
model_dir: {tmp_path / "qwen"}
label_map_dir: {tmp_path / "maps"}
mlflow_tracking_uri: sqlite:///{tmp_path / "m.db"}
mlflow_experiment: mine
split_seed: 7
ood: {{modalities: [clinical], sources: [pad_ufes_20]}}
compute: {{processes: 2, env: {{OMP_NUM_THREADS: 4}}}}
teacher: {{generator: template}}
automation: {{training: true, interval_seconds: 5}}
launcher: torchrun
accelerate_args: [--bf16]
training_recipe: demo
train_seed: 4
""",
    )
    assert (gpu.dataset_roots, gpu.base_model_dir, gpu.label_map_dir) == (
        {"ham10000": tmp_path / "ham"},
        tmp_path / "qwen",
        tmp_path / "maps",
    )
    assert (gpu.mlflow_tracking_uri, gpu.mlflow_experiment, gpu.split_seed) == (
        f"sqlite:///{tmp_path / 'm.db'}",
        "mine",
        7,
    )
    assert (gpu.ood_modalities, gpu.ood_sources, gpu.teacher.generator) == (("clinical",), ("pad_ufes_20",), "template")
    assert (gpu.compute.launcher, gpu.compute.processes, gpu.compute.launcher_args, gpu.compute.env) == (
        "torchrun",
        2,
        ("--bf16",),
        (("OMP_NUM_THREADS", "4"),),
    )
    assert (gpu.automation.training, gpu.automation.evaluation, gpu.automation.interval_seconds) == (True, True, 5)
    assert (gpu.training_recipe, gpu.train_seed, gpu.model_seed) == ("demo", 4, 4)
    demo = settings_from(tmp_path, "demo_seed: 3\ndemo_images_per_class: 5\nscale: toy\n", "demo")
    assert (demo.demo_seed, demo.demo_images_per_class, demo.split_seed, demo.scale) == (3, 5, 42, "toy")
    assert settings_from(tmp_path, "demo_seed: 3\n", "demo", SKINR1_DEMO_SEED="9").demo_seed == 9  # env wins
    unseeded = settings_from(tmp_path, "demo_seed: 3\n", "demo")
    assert (unseeded.train_seed, unseeded.model_seed) == (None, 3)  # the trainers keep the recipe's seed
    seeded = settings_from(tmp_path, "demo_seed: 3\n", "demo", SKINR1_TRAIN_SEED="2")
    assert (seeded.train_seed, seeded.model_seed, seeded.demo_seed) == (2, 2, 3)  # the data keeps its seed
    assert set(FILE_KEYS) == {
        "datasets",
        "model_dir",
        "label_map_dir",
        "mlflow_tracking_uri",
        "mlflow_experiment",
        "split_seed",
        "ood",
        "compute",
        "teacher",
        "automation",
        "scale",
        "launcher",
        "accelerate_args",
        "demo_seed",
        "demo_images_per_class",
        "training_recipe",
        "train_seed",
    }  # a new key needs a line above


# ------------------------------------------------------------------------------- split_seed through the asset


def _ingested(dataset: str, n: int) -> IngestResult:
    """`n` one-image lesions without an official split, so only the seed decides where each goes."""
    rows = [
        {
            **dict.fromkeys(SAMPLE_COLUMNS),
            "sample_id": f"{dataset}/{i}",
            "source_dataset": dataset,
            "image_path": f"/x/{dataset}/{i}.jpg",
            "raw_label": "mel",
            "modality": "dermoscopic",
            "lesion_id": f"{dataset}-L{i}",
            "metadata_file": "m.csv",
            "metadata_row": i + 1,
            "taxonomy_node": "melanoma",
            "taxonomy_path": ["skin_condition", "melanoma"],
            "taxonomy_depth": 1,
            "bucket": "malignant",
            "image_sha256": f"{dataset}{i:064d}"[-64:],
            "image_width": 4,
            "image_height": 3,
            "image_dhash": f"{i:016x}",
        }
        for i in range(n)
    ]
    samples = pd.DataFrame(rows).drop(columns=["split", "split_rule"])
    return IngestResult(dataset, "/x", samples, pd.DataFrame(), {})


_OUTPUTS: dict[str, pd.DataFrame] = {}


class _Upstream(dg.ConfigurableIOManager):
    """Hands `unified_samples` its inputs from memory and keeps its output, so no upstream asset has to run."""

    def handle_output(self, context: dg.OutputContext, obj) -> None:
        _OUTPUTS[context.asset_key.path[-1]] = obj

    def load_input(self, context: dg.InputContext):
        from skinr1_pipeline.knowledge.taxonomy import Taxonomy

        if context.asset_key.path[-1] == "taxonomy_graph":
            return Taxonomy.load()
        return {name: _ingested(name, 30) for name in ("ham10000", "pad_ufes_20")}


def _splits(tmp_path: Path, body: str, run_config: dict | None = None) -> pd.Series:
    from skinr1_pipeline.defs.data_assets import build_data_defs
    from skinr1_pipeline.defs.resources import MlflowTracking, PipelineHome

    assets = build_data_defs(settings_from(tmp_path, body, "demo")).assets
    asset = next(a for a in assets if a.key == dg.AssetKey("unified_samples"))
    upstream = [dg.AssetSpec(key) for key in ("taxonomy_graph", "raw_datasets")]
    result = dg.materialize(
        [asset, *upstream],
        selection=[asset.key],
        resources={
            "io_manager": _Upstream(),
            "home": PipelineHome(home=str(tmp_path / "home")),
            "mlflow": MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}"),
        },
        run_config={"ops": {"unified_samples": {"config": run_config or {}}}},
    )
    assert result.success
    return _OUTPUTS["unified_samples"].set_index("sample_id")["split"].sort_index()


@pytest.mark.slow  # materializes Dagster assets
def test_split_seed_in_the_config_file_decides_the_splits_unless_the_run_names_a_seed(tmp_path) -> None:
    seven = _splits(tmp_path, "split_seed: 7\n")
    eight = _splits(tmp_path, "split_seed: 8\n")
    assert not seven.equals(eight)  # the file's seed reached assign_splits
    assert _splits(tmp_path, "split_seed: 8\n", {"seed": 7}).equals(seven)  # an explicit run config still wins


@pytest.mark.slow  # materializes Dagster assets
def test_demo_seed_and_images_per_class_from_the_settings_reach_the_demo_data(tmp_path) -> None:
    from skinr1_pipeline.defs.data_assets import build_data_defs
    from skinr1_pipeline.defs.resources import MlflowTracking, PipelineHome

    assets = build_data_defs(settings_from(tmp_path, "demo_seed: 5\ndemo_images_per_class: 2\n", "demo")).assets
    demo = next(a for a in assets if a.key == dg.AssetKey("demo_source_data"))
    untracked = MlflowTracking(tracking_uri="", enabled=False)

    def manifest(run_config: dict) -> dict:
        result = dg.materialize(
            [demo],
            resources={"home": PipelineHome(home=str(tmp_path / "home")), "mlflow": untracked},
            run_config={"ops": {"demo_source_data": {"config": run_config}}},
        )
        return result.output_for_node("demo_source_data")

    assert {k: manifest({"include_broken_files": False})[k] for k in ("seed", "n_per_class")} == {
        "seed": 5,
        "n_per_class": 2,
    }
    explicit = manifest({"include_broken_files": False, "seed": 1, "images_per_class": 3})
    assert (explicit["seed"], explicit["n_per_class"]) == (1, 3)  # the run config still wins
