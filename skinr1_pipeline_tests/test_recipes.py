"""Training recipes (YAML) and the profile's choices as resources: what differs between demo and gpu is chosen in
definitions.py, not branched on in asset bodies."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from skinr1_pipeline.definitions import build_definitions
from skinr1_pipeline.settings import load_settings
from skinr1_pipeline.training.config import ConfigError
from skinr1_pipeline.training.grpo import GRPORunConfig
from skinr1_pipeline.training.recipes import RECIPES, build_run_config, recipe_path
from skinr1_pipeline.training.sft import SFTRunConfig

SFT_PATHS = {"model_dir": "m", "train_path": "t.parquet", "output_dir": "o"}
GRPO_PATHS = {"model_dir": "m", "items_path": "i.parquet", "output_dir": "o"}


def test_the_paper_recipe_is_the_run_configs_annotated_defaults() -> None:
    """The recipe files are what a lab edits; the defaults carry the [code]/[paper] annotations: they must agree."""
    assert build_run_config(SFTRunConfig, "paper", "sft", **SFT_PATHS) == SFTRunConfig(**SFT_PATHS)
    assert build_run_config(GRPORunConfig, "paper", "grpo", **GRPO_PATHS) == GRPORunConfig(**GRPO_PATHS)


def test_the_demo_recipe_trains_the_tiny_model_and_overrides_win() -> None:
    sft = build_run_config(SFTRunConfig, "demo", "sft", **SFT_PATHS, max_steps=7)
    assert (sft.max_steps, sft.max_pixels, sft.modules_to_save, sft.lora_on_merger) == (
        7,
        112 * 112,
        ["embed_tokens", "lm_head"],
        False,
    )
    grpo = build_run_config(GRPORunConfig, "demo", "grpo", **GRPO_PATHS, adapter_dir="a")
    assert (grpo.max_steps, grpo.learning_rate, grpo.vllm_max_model_length) == (16, 5e-5, 1024)
    assert set(RECIPES) == {p.name for p in recipe_path("demo", "sft").parent.parent.iterdir() if p.is_dir()}


def test_a_labs_recipe_folder_is_read_strictly(tmp_path: Path) -> None:
    (tmp_path / "sft.yaml").write_text("max_steps: 5\nlearning_rate: 1.0e-4\n")
    assert build_run_config(SFTRunConfig, tmp_path, "sft", **SFT_PATHS).max_steps == 5
    (tmp_path / "sft.yaml").write_text("max_stepz: 5\n")
    with pytest.raises(ConfigError, match=r"sft\.yaml.*unknown SFTRunConfig keys \['max_stepz'\]"):
        build_run_config(SFTRunConfig, tmp_path, "sft", **SFT_PATHS)
    (tmp_path / "sft.yaml").write_text("max_steps: many\n")
    with pytest.raises(ConfigError, match=r"sft\.yaml.*SFTRunConfig\.max_steps = 'many'"):
        build_run_config(SFTRunConfig, tmp_path, "sft", **SFT_PATHS)
    with pytest.raises(ConfigError, match="has no grpo.yaml"):
        build_run_config(GRPORunConfig, tmp_path, "grpo", **GRPO_PATHS)
    with pytest.raises(ConfigError, match="no training step 'dpo'"):
        recipe_path("paper", "dpo")


def test_each_profile_chooses_its_recipe_and_model_source_in_definitions(tmp_path: Path) -> None:
    demo = build_definitions(load_settings({"SKINR1_HOME": str(tmp_path / "demo")}))
    config = tmp_path / "skinr1.yaml"
    config.write_text(f"model_dir: {tmp_path / 'qwen'}\ndatasets:\n  ham10000: {tmp_path / 'ham'}\n")
    gpu = build_definitions(
        load_settings({"SKINR1_PROFILE": "gpu", "SKINR1_CONFIG": str(config), "SKINR1_HOME": str(tmp_path / "gpu")})
    )
    assert demo.resources["training_recipe"].recipe == "demo"
    assert demo.resources["training_recipe"].option_drill_rows == 1500
    assert (gpu.resources["training_recipe"].recipe, gpu.resources["training_recipe"].option_drill_rows) == ("paper", 0)

    def base_inputs(defs: dg.Definitions) -> set[str]:
        return {k.to_user_string() for k in defs.resolve_asset_graph().get(dg.AssetKey("base_model")).parent_keys}

    # The local 7B does not wait for (or go stale with) the rationales; the built demo model reads them.
    assert base_inputs(gpu) == set()
    assert base_inputs(demo) == {"skin_rationale_trajectories", "taxonomy_graph", "unified_samples"}
