"""Config mistakes are caught before a run starts, with the field's path and the allowed values in the message."""

from __future__ import annotations

import dagster as dg
import pytest

from skinr1_pipeline.definitions import build_definitions
from skinr1_pipeline.settings import load_settings


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    defs = build_definitions(load_settings({"SKINR1_PROFILE": "demo", "SKINR1_HOME": str(home)}))
    return defs.resolve_implicit_global_asset_job_def()


@pytest.mark.parametrize(
    "field, value, allowed", [("runner", "gpu", "'hf', 'vllm'"), ("vllm_lora_mode", "fuse", "'merge', 'lora', 'auto'")]
)
def test_out_of_set_values_name_field_and_choices(job, field, value, allowed) -> None:
    with pytest.raises(dg.DagsterInvalidConfigError) as err:
        dg.validate_run_config(job, {"ops": {"variant_evaluations": {"config": {field: value}}}})
    message = str(err.value)
    assert f"variant_evaluations:config:{field}" in message and value in message and allowed in message


def test_allowed_values_pass(job) -> None:
    dg.validate_run_config(
        job, {"ops": {"variant_evaluations": {"config": {"runner": "hf", "vllm_lora_mode": "lora"}}}}
    )


@pytest.mark.parametrize(
    "field, value, allowed",
    [("generator", "gpt", "'template', 'vllm', 'openai'"), ("style", "tiny", "'', 'full', 'compact'")],
)
def test_synthesis_choices_are_checked_before_the_run(job, field, value, allowed) -> None:
    with pytest.raises(dg.DagsterInvalidConfigError) as err:
        dg.validate_run_config(job, {"ops": {"skin_rationale_trajectories": {"config": {field: value}}}})
    assert f"skin_rationale_trajectories:config:{field}" in str(err.value) and allowed in str(err.value)


@pytest.mark.parametrize(
    "field, value, allowed",
    [
        ("types", ["hierarchy", "gossip"], "hierarchy, ddx"),
        ("splits", ["train", "holdout"], "train, valid, test"),
        ("splits", [], "train, valid, test"),
    ],
)
def test_synthesis_lists_name_the_bad_entry_and_the_choices(field, value, allowed) -> None:
    from pydantic import ValidationError

    from skinr1_pipeline.defs.synthesis_assets import SynthesisConfig

    with pytest.raises(ValidationError) as err:
        SynthesisConfig(**{field: value})
    message = str(err.value)
    assert f"{field}:" in message and allowed in message and (str(value[-1]) if value else "empty") in message
