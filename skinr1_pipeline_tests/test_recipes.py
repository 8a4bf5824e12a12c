"""Training recipes (YAML) and the profile's choices as resources: what differs between demo and gpu is chosen in
definitions.py, not branched on in asset bodies."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from skinr1_pipeline.definitions import build_definitions
from skinr1_pipeline.modeling.prompt_format import COMPACT_SYSTEM_PROMPT, SYSTEM_PROMPT
from skinr1_pipeline.settings import SettingsError, load_settings
from skinr1_pipeline.training.config import ConfigError
from skinr1_pipeline.training.grpo import GRPORunConfig
from skinr1_pipeline.training.recipes import RECIPES, RecipeChoices, build_run_config, recipe_choices, recipe_path
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
    demo_recipe, gpu_recipe = demo.resources["training_recipe"], gpu.resources["training_recipe"]
    assert (demo_recipe.recipe, gpu_recipe.recipe) == ("demo", "paper")
    assert (demo_recipe.choices().option_drill_rows, demo_recipe.choices().rationale_style) == (1500, "compact")
    assert (gpu_recipe.choices().option_drill_rows, gpu_recipe.choices().rationale_style) == (0, "full")
    assert "random initial weights" in demo_recipe.choices().caveat and gpu_recipe.choices().caveat == ""
    assert (demo_recipe.choices().mcq_construction, gpu_recipe.choices().mcq_construction) == ("set_first", "paper")
    assert (demo_recipe.choices().answer_form, gpu_recipe.choices().answer_form) == ("text", "letter")
    assert (demo_recipe.choices().system_prompt, gpu_recipe.choices().system_prompt) == ("compact", "full")

    def base_inputs(defs: dg.Definitions) -> set[str]:
        return {k.to_user_string() for k in defs.resolve_asset_graph().get(dg.AssetKey("base_model")).parent_keys}

    # The local 7B does not wait for (or go stale with) the rationales; the built demo model reads them.
    assert base_inputs(gpu) == set()
    assert base_inputs(demo) == {"skin_rationale_trajectories", "taxonomy_graph", "unified_samples"}


def test_the_recipes_system_prompt_reaches_both_trainers_and_no_trainer_file_may_set_its_own(tmp_path: Path) -> None:
    """One prompt for every stage: the drill, SFT, GRPO, the gates and the evaluation read the recipe's choice."""
    for recipe, text in (("demo", COMPACT_SYSTEM_PROMPT), ("paper", SYSTEM_PROMPT)):
        assert build_run_config(SFTRunConfig, recipe, "sft", **SFT_PATHS).system_prompt == text
        assert build_run_config(GRPORunConfig, recipe, "grpo", **GRPO_PATHS).system_prompt == text
    assert len(COMPACT_SYSTEM_PROMPT) < len(SYSTEM_PROMPT) / 3
    (tmp_path / "sft.yaml").write_text("max_steps: 5\n")
    (tmp_path / "recipe.yaml").write_text("system_prompt: compact\n")
    assert build_run_config(SFTRunConfig, tmp_path, "sft", **SFT_PATHS).system_prompt == COMPACT_SYSTEM_PROMPT
    (tmp_path / "recipe.yaml").write_text("system_prompt: terse\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml: .*system_prompt = 'terse'"):
        recipe_choices(tmp_path)
    (tmp_path / "recipe.yaml").unlink()
    (tmp_path / "sft.yaml").write_text("max_steps: 5\nsystem_prompt: be brief\n")
    with pytest.raises(ConfigError, match=r"sft\.yaml: set system_prompt in recipe\.yaml"):
        build_run_config(SFTRunConfig, tmp_path, "sft", **SFT_PATHS)


def test_recipe_choices_are_read_strictly_and_default_to_the_papers(tmp_path: Path) -> None:
    assert recipe_choices(tmp_path) == RecipeChoices(rationale_style="full", option_drill_rows=0, caveat="")
    (tmp_path / "recipe.yaml").write_text("rationale_style: compact\noption_drill_rows: 10\n")
    assert recipe_choices(tmp_path) == RecipeChoices(rationale_style="compact", option_drill_rows=10)
    for bad, message in (
        ("rationale_style: terse\n", "rationale_style = 'terse'"),
        ("option_drill_rows: -1\n", "option_drill_rows must be >= 0"),
        ("drill_rows: 3\n", r"unknown RecipeChoices keys \['drill_rows'\]"),
    ):
        (tmp_path / "recipe.yaml").write_text(bad)
        with pytest.raises(ConfigError, match=rf"recipe\.yaml: .*{message}"):
            recipe_choices(tmp_path)


def test_a_labs_recipe_is_named_in_the_config_file_and_checked_at_load(tmp_path: Path) -> None:
    lab = tmp_path / "lab_recipe"
    lab.mkdir()
    for step in ("sft", "grpo"):
        (lab / f"{step}.yaml").write_text("max_steps: 3\n")
    config = tmp_path / "skinr1.yaml"
    config.write_text(f"training_recipe: {lab}\n")
    env = {"SKINR1_HOME": str(tmp_path / "home"), "SKINR1_CONFIG": str(config)}
    defs = build_definitions(load_settings(env))
    assert defs.resources["training_recipe"].recipe == str(lab)
    (lab / "grpo.yaml").unlink()
    with pytest.raises(SettingsError, match=r"training_recipe: training recipe .*has no grpo\.yaml"):
        load_settings(env)
    config.write_text("training_recipe: 3\n")
    with pytest.raises(SettingsError, match="training_recipe must be a recipe name or folder"):
        load_settings(env)
