"""Where steps run: the compute resources start training in one process, in two (torchrun, gloo) and as a Ray job
of two Ray Train workers on a local cluster, each through the real Dagster assets, and each materializes once with
rank 0's metadata; a failing rank fails the step with its own message."""

import json
import os
import sys
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest
import yaml

from skinr1_pipeline.defs.compute import ComputeStep, LocalCompute, RayCompute, StepFailed, compute_resource
from skinr1_pipeline.runtime.launch import FAILURE_DIR_ENV, failure_summary, launch_command, rank_failures
from skinr1_pipeline.settings import SettingsError, load_settings
from skinr1_pipeline_tests.failing_rank import MESSAGE

UPSTREAM_CONFIG = {
    "ops": {
        "demo_source_data": {"config": {"images_per_class": 10}},
        "base_model": {"config": {"warmup_steps": 2, "option_drill_steps": 2, "format_steps": 2}},
    }
}
TRAINING_CONFIG = {
    "ops": {
        "sft_checkpoint": {
            "config": {
                "overrides": {"max_steps": 2, "max_train_samples": 16, "save_steps": 1},
                "gate_items": 2,
                "max_new_tokens": 16,
                "format_floor": 0.0,
            }
        },
        "grpo_checkpoint": {
            "config": {
                "overrides": {"max_steps": 1, "limit_items": 4, "max_completion_length": 16},
                "gate_items": 2,
                "max_new_tokens": 16,
                "accuracy_margin": 1.0,
            }
        },
    }
}
TRAINED = ("sft_checkpoint", "grpo_checkpoint")


# ---------------------------------------------------------------------------------------------- commands, settings


def test_launch_commands_per_launcher():
    py = sys.executable
    assert launch_command("python", "m", ["a"]) == [py, "-m", "m", "a"]
    assert launch_command("torchrun", "m", ["a"], processes=2) == [
        py,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "m",
        "a",
    ]
    assert launch_command("accelerate", "m", ["a"], processes=8, launcher_args=["--mixed_precision", "bf16"]) == [
        py,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        "8",
        "--multi_gpu",
        "--mixed_precision",
        "bf16",
        "-m",
        "m",
        "a",
    ]
    with pytest.raises(ValueError, match="one process"):
        launch_command("python", "m", [], processes=2)
    with pytest.raises(ValueError, match="launcher must be one of"):
        launch_command("mpirun", "m", [])


def test_failed_ranks_are_read_back_lowest_first(tmp_path):
    (tmp_path / "rank-1.txt").write_text("Traceback (most recent call last):\n  ...\nRuntimeError: out of memory\n")
    (tmp_path / "rank-0.txt").write_text("Traceback:\nValueError: bad batch\n")
    (tmp_path / "rank-x.txt").write_text("not a rank file")
    failures = rank_failures(tmp_path)
    assert [r for r, _ in failures] == [0, 1]
    text = failure_summary(failures)
    assert text.startswith("rank 0: ValueError: bad batch; rank 1: RuntimeError: out of memory")
    assert "traceback of rank 0" in text and failure_summary([]) == ""


def test_training_cli_records_the_failing_rank(tmp_path, monkeypatch):
    from skinr1_pipeline.training.cli import main

    monkeypatch.setenv(FAILURE_DIR_ENV, str(tmp_path / "failures"))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    config = tmp_path / "cfg.yaml"
    config.write_text("model_dir: m\ntrain_path: t\noutput_dir: o\nlearning_rat: 1\n")
    with pytest.raises(ValueError, match="unknown SFTRunConfig keys"):
        main(["sft", "--config", str(config)])
    ((rank, text),) = rank_failures(tmp_path / "failures")
    assert rank == 1 and "unknown SFTRunConfig keys ['learning_rat']" in text


def test_settings_choose_the_compute_resource(tmp_path):
    config = tmp_path / "skinr1.yaml"
    config.write_text("model_dir: /m\ncompute:\n  launcher: torchrun\n  processes: 8\n  env: {NCCL_DEBUG: WARN}\n")
    local = compute_resource(
        load_settings({"SKINR1_PROFILE": "gpu", "SKINR1_CONFIG": str(config), "SKINR1_HOME": str(tmp_path)})
    )
    assert isinstance(local, LocalCompute) and local.processes == 8 and local.env == {"NCCL_DEBUG": "WARN"}
    step = ComputeStep(module="skinr1_pipeline.training.cli", args=["sft"], workdir=tmp_path, trainer=True)
    assert local.command(step)[:6] == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "8",
    ]
    evaluation = ComputeStep(module="skinr1_pipeline.evaluation.cli", args=["--config", "c"], workdir=tmp_path)
    assert local.command(evaluation) == [sys.executable, "-m", "skinr1_pipeline.evaluation.cli", "--config", "c"]
    config.write_text(
        "model_dir: /m\ncompute:\n  kind: ray\n  address: http://head:8265\n  workers: 4\n"
        "  gpus_per_worker: 1\n  cpus_per_worker: 8\n"
    )
    ray = compute_resource(
        load_settings({"SKINR1_PROFILE": "gpu", "SKINR1_CONFIG": str(config), "SKINR1_HOME": str(tmp_path)})
    )
    assert isinstance(ray, RayCompute) and ray.storage_path == str(tmp_path / "ray_results")
    argv, request = ray.entrypoint(step)
    assert argv[2] == "skinr1_pipeline.training.ray_job" and argv[-8:] == [
        "--workers",
        "4",
        "--cpus-per-worker",
        "8.0",
        "--gpus-per-worker",
        "1.0",
        "--storage",
        ray.storage_path,
    ]
    assert request == {"entrypoint_num_cpus": 0}  # the workers hold the GPUs, not the driver
    assert ray.entrypoint(evaluation)[1] == {"entrypoint_num_cpus": 8.0, "entrypoint_num_gpus": 1.0}
    config.write_text("model_dir: /m\ncompute:\n  kind: ray\n")
    with pytest.raises(SettingsError, match="compute.address"):
        load_settings({"SKINR1_PROFILE": "gpu", "SKINR1_CONFIG": str(config)})


@pytest.mark.slow  # torchrun starts two worker processes, each importing torch
def test_a_failing_rank_fails_the_step_with_its_own_message(tmp_path):
    @dg.asset
    def trained(context: dg.AssetExecutionContext, compute: LocalCompute):
        compute.run(
            context, ComputeStep(module="skinr1_pipeline_tests.failing_rank", args=[], workdir=tmp_path, trainer=True)
        )

    result = dg.materialize(
        [trained], resources={"compute": LocalCompute(launcher="torchrun", processes=2)}, raise_on_error=False
    )
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    error = failure.step_failure_data.error
    assert error.cls_name == StepFailed.__name__ or StepFailed.__name__ in str(error.cause)
    assert f"rank 1: RuntimeError: {MESSAGE}" in error.message and "2 local process(es) via torchrun" in error.message


# ---------------------------------------------------------------------------------------- through the Dagster assets


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    """Everything SFT and GRPO read (demo data, samples, trajectories, RL items, the tiny base model), once."""
    from skinr1_pipeline.definitions import build_definitions
    from skinr1_pipeline.runner import materialize_all

    home = tmp_path_factory.mktemp("compute_home")
    settings = load_settings({"SKINR1_HOME": str(home)})
    with dg.instance_for_test() as instance:
        defs = build_definitions(settings)
        needed = dg.AssetSelection.assets(*TRAINED).upstream() - dg.AssetSelection.assets(*TRAINED)
        outcome = materialize_all(defs, instance, run_config=UPSTREAM_CONFIG, selection=needed, log=print)
        assert outcome.success
        yield settings, instance


def train_with(upstream, compute, keys=TRAINED):
    from skinr1_pipeline.definitions import build_definitions
    from skinr1_pipeline.runner import materialize_all

    settings, instance = upstream
    defs = build_definitions(settings, compute=compute)
    outcome = materialize_all(
        defs, instance, run_config=TRAINING_CONFIG, selection=dg.AssetSelection.assets(*keys), log=print
    )
    assert outcome.success, [e.message for r in outcome.results for e in r.all_events if e.is_failure]
    events = {}
    for result in outcome.results:
        for event in result.get_asset_materialization_events():
            events.setdefault(event.asset_key.to_user_string(), []).append(event)
    return settings, {key: [e.materialization.metadata for e in found] for key, found in events.items()}


def sft_epoch(settings) -> tuple[float, float]:
    """(epochs the SFT run reports, epochs one process would have covered): DDP over N ranks covers N times more."""
    result = json.loads((settings.home / "models" / "sft" / "latest" / "sft_result.json").read_text())
    run = result["config"]
    rows = min(len(pd.read_parquet(run["train_path"])), run["max_train_samples"])
    return result["result"]["metrics"]["epoch"], run["max_steps"] * run["per_device_train_batch_size"] / rows


@pytest.mark.slow
@pytest.mark.vllm  # GRPO's rollouts are colocated vLLM here (the demo's use_vllm: auto)
def test_two_processes_train_and_gate_and_materialize_once(upstream):
    settings, metadata = train_with(upstream, LocalCompute(launcher="torchrun", processes=2))
    for key in TRAINED:
        assert len(metadata[key]) == 1, key  # rank 1 reports nothing: no "Multiple materialize results"
        assert metadata[key][0]["processes"].value == 2 and metadata[key][0]["heldout_n"].value == 2
    assert metadata["grpo_checkpoint"][0]["rollouts"].value == "vllm colocate (CPU weight sync)"
    epoch, one_process = sft_epoch(settings)
    assert epoch == pytest.approx(2 * one_process)  # both ranks trained, on different rows
    assert (Path(metadata["grpo_checkpoint"][0]["adapter_dir"].value) / "adapter_model.safetensors").is_file()


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    from skinr1_pipeline_tests.ray_cluster import RAY_ENV, local_ray_head

    old = {k: os.environ.get(k) for k in RAY_ENV}
    os.environ.update(RAY_ENV)  # the job client talks to a cluster without token auth
    try:
        with local_ray_head(
            Path(tmp_path_factory.mktemp("ray")), num_cpus=2, log_path=tmp_path_factory.mktemp("ray_log") / "head.log"
        ) as head:
            yield head
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.slow
@pytest.mark.daemon  # a local Ray head
def test_sft_on_a_local_ray_cluster_with_two_workers(upstream, ray_head, tmp_path):
    compute = RayCompute(
        address=ray_head["address"], workers=2, cpus_per_worker=1.0, storage_path=str(tmp_path / "ray_results")
    )
    settings, metadata = train_with(upstream, compute, keys=("sft_checkpoint",))
    (sft,) = metadata["sft_checkpoint"]
    assert sft["ray_train_workers"].value == 2 and sft["processes"].value == 2 and sft["heldout_n"].value == 2
    epoch, one_process = sft_epoch(settings)
    assert epoch == pytest.approx(2 * one_process)
    config = yaml.safe_load((settings.home / "models" / "sft" / "latest" / "run_config.yaml").read_text())
    assert config["report_to"] == ["mlflow"]


@pytest.mark.slow
@pytest.mark.daemon  # a local Ray head
def test_an_evaluation_runs_as_a_ray_job_and_hands_back_its_answers(ray_head, tmp_path):
    from skinr1_pipeline.evaluation.cli import AnswerConfig
    from skinr1_pipeline_tests.tiny_models import tiny_base_and_adapter, write_mcq_items

    base, adapter = tiny_base_and_adapter(tmp_path / "base", tmp_path / "adapter")
    items = write_mcq_items(tmp_path / "items", n=2)
    config = tmp_path / "answers.yaml"
    config.write_text(
        yaml.safe_dump(
            vars(
                AnswerConfig(
                    items_path=str(items),
                    model_dir=str(base),
                    adapter_dir=str(adapter),
                    output_path=str(tmp_path / "a.parquet"),
                    runner="hf",
                    max_new_tokens=4,
                )
            )
        )
    )
    compute = RayCompute(address=ray_head["address"], storage_path=str(tmp_path / "ray_results"))

    @dg.asset
    def answered(context: dg.AssetExecutionContext, compute: RayCompute):
        reported = compute.run(
            context,
            ComputeStep(module="skinr1_pipeline.evaluation.cli", args=["--config", str(config)], workdir=tmp_path),
        )
        return dg.MaterializeResult(metadata=reported)

    result = dg.materialize([answered], resources={"compute": compute})
    (event,) = result.get_asset_materialization_events()
    assert event.materialization.metadata["items"].value == 3  # 2 train items + 1 valid item
    answers = pd.read_parquet(tmp_path / "a.parquet")
    assert len(answers) == 3 and answers["completion"].map(lambda c: isinstance(c, str)).all()
    assert answers["answer_logprobs"].map(len).eq(4).all()  # every option scored
