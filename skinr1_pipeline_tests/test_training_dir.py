"""A training materialization writes its own run folder; `resume` continues the newest one holding a checkpoint;
bad overrides fail before any folder exists."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

from skinr1_pipeline.defs.resources import PipelineHome
from skinr1_pipeline.defs.training_assets import run_overrides, training_dir
from skinr1_pipeline.training.grpo import GRPORunConfig
from skinr1_pipeline.training.sft import SFTRunConfig


def _run(instance: dg.DagsterInstance, run_id: str) -> SimpleNamespace:
    """What `training_dir` and `PipelineHome` read from an asset context, for a chosen run id."""
    return SimpleNamespace(
        run=SimpleNamespace(run_id=run_id), has_partition_key=False, instance=instance, log=logging.getLogger("test")
    )


def test_each_materialization_gets_its_own_folder_and_resume_continues_the_killed_one(tmp_path: Path) -> None:
    home = PipelineHome(home=str(tmp_path))
    with dg.instance_for_test() as instance:
        first = training_dir(_run(instance, "run-a"), home, "sft", resume=False)
        assert first == tmp_path / "models" / "sft" / "run-a"
        (first / "checkpoint-5").mkdir()
        (first / "checkpoint-5" / "trainer_state.json").write_text("{}")
        home.seal(_run(instance, "run-a"), first)

        second = training_dir(_run(instance, "run-b"), home, "sft", resume=False)
        assert second == tmp_path / "models" / "sft" / "run-b" and (first / "checkpoint-5").is_dir()
        (second / "checkpoint-7").mkdir()
        (second / "checkpoint-7" / "trainer_state.json").write_text("{}")  # then run-b is killed

        resumed = training_dir(_run(instance, "run-c"), home, "sft", resume=True)
        assert resumed == second  # continue where the killed run stopped, not a fresh folder
        assert (tmp_path / "models" / "sft" / "latest").resolve() == first  # the last good one is still named


def test_resume_without_any_checkpoint_starts_a_new_run(tmp_path: Path) -> None:
    home = PipelineHome(home=str(tmp_path))
    with dg.instance_for_test() as instance:
        folder = training_dir(_run(instance, "run-z"), home, "grpo", resume=True)
    assert folder == tmp_path / "models" / "grpo" / "run-z" and folder.is_dir()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"max_stepz": 3}, "unknown SFTRunConfig keys"),
        ({"max_steps": "many"}, "max_steps"),
        ({"output_dir": "/elsewhere"}, "set by the asset"),
        ({"system_prompt": "be brief"}, "system_prompt"),  # the recipe's choice, the same for every stage
    ],
)
def test_bad_overrides_fail_by_name_before_any_folder_moves(overrides: dict, message: str) -> None:
    with pytest.raises(dg.Failure, match=message):
        run_overrides(overrides, False, SFTRunConfig)


def test_the_train_seed_is_added_unless_the_overrides_name_one() -> None:
    assert run_overrides({"max_steps": 2}, False, SFTRunConfig, seed=3) == {"seed": 3, "max_steps": 2}
    assert run_overrides({"seed": 9}, False, SFTRunConfig, seed=3) == {"seed": 9}
    assert run_overrides({}, False, GRPORunConfig) == {}


def test_good_overrides_pass_and_resume_is_added() -> None:
    assert run_overrides({"max_steps": 2, "learning_rate": 1}, True, GRPORunConfig) == {
        "max_steps": 2,
        "learning_rate": 1,
        "resume": True,
    }
