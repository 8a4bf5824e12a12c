"""GRPO stage on a tiny random Qwen2.5-VL (CPU): continuity from SFT, RL-only, resume, rewards, completions, CLI.

A random tiny model never writes the answer format, so the paper's rewards are constantly 0, every group has zero
advantage and no gradient flows. Runs that must show learning add a `probe` reward (distinct characters in the
completion) through `REWARD_FUNCTIONS`, which gives groups a spread without touching the production rewards.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from transformers import TrainerCallback

from skinr1_pipeline.modeling import prompt_format as pf
from skinr1_pipeline.training import rewards
from skinr1_pipeline.training.callbacks import RewardRecorder
from skinr1_pipeline.training.config import ADAPTER_DIR
from skinr1_pipeline.training.grpo import (
    PARAMS_FILE,
    GRPOConfigError,
    GRPORunConfig,
    adapter_state,
    demo_grpo_config,
    items_to_dataset,
    load_config,
    run_grpo,
)
from skinr1_pipeline_tests.tiny_models import write_mcq_items

pytestmark = pytest.mark.slow
REPO_ROOT = Path(__file__).resolve().parents[1]


def _correct_completion(options, scores, bucket) -> str:
    best = int(np.argmax(scores))
    return pf.format_completion("features fit the chosen option", pf.format_mcq_answer(list(options), best, bucket))


def probe_reward(completions, **kwargs):
    """Spread within every group: number of distinct characters of the completion, scaled."""
    return [len(set(rewards.completion_text(c) or "")) / 10.0 for c in completions]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("grpo")


@pytest.fixture(scope="module")
def items_path(workdir: Path) -> Path:
    return write_mcq_items(workdir)


@pytest.fixture(scope="module")
def model_dir(workdir: Path, items_path: Path) -> Path:
    from skinr1_pipeline.modeling.tiny_model import build_tiny_model

    prompts = pd.read_parquet(items_path)["prompt"].tolist()
    return build_tiny_model(
        workdir / "model", prompts, seed=0, text_hidden=64, text_layers=1, vision_depth=1, vision_hidden=32
    )


@pytest.fixture(scope="module")
def sft_adapter(workdir: Path, model_dir: Path, items_path: Path) -> Path:
    """The SFT stage's real output: 2 steps of run_sft with the demo preset's adapter layout (LoRA on every linear
    layer plus embeddings, LM head and merger trained in full), so GRPO is tested on what the pipeline hands it."""
    from skinr1_pipeline.training.sft import SFTRunConfig, run_sft

    items = pd.read_parquet(items_path)
    items["completion"] = [
        _correct_completion(o, s, b) for o, s, b in zip(items["options"], items["option_scores"], items["bucket"])
    ]
    train = workdir / "sft_train.parquet"
    items[["sample_id", "image_path", "prompt", "completion"]].to_parquet(train)
    result = run_sft(
        SFTRunConfig(
            model_dir=str(model_dir),
            train_path=str(train),
            output_dir=str(workdir / "sft"),
            lora_r=4,
            lora_alpha=8,
            freeze_vision=False,
            lora_on_merger=False,
            modules_to_save=["embed_tokens", "lm_head", "merger"],
            learning_rate=1e-3,
            warmup_ratio=0.0,
            max_steps=2,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
            max_pixels=112 * 112,
            max_length=1024,
            seed=0,
            save_steps=100,
            logging_steps=1,
            use_cpu=True,
        )
    )
    return Path(result.adapter_dir)


@pytest.fixture(scope="module")
def with_probe():
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(rewards.REWARD_FUNCTIONS, "probe", probe_reward)
        yield


def tiny_cfg(model_dir: Path, items_path: Path, output_dir: Path, **overrides) -> GRPORunConfig:
    base = dict(
        model_dir=model_dir,
        items_path=items_path,
        output_dir=output_dir,
        num_generations=2,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_completion_length=12,
        learning_rate=1e-3,
        max_steps=2,
        save_steps=100,
        logging_steps=1,
        log_completions_every=1,
        max_pixels=112 * 112,
        seed=0,
        lora_r=4,
        lora_alpha=8,
        use_vllm=False,
    )
    return GRPORunConfig(**{**base, **overrides})


class AdapterSnapshot(TrainerCallback):
    """Adapter tensors as the trainer holds them when training begins (step 0, or the resumed step)."""

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.step = state.global_step
        self.adapters = list(model.peft_config)
        self.default = adapter_state(model, "default")
        self.ref = adapter_state(model, "ref") if "ref" in model.peft_config else None
        self.trainable = {n for n, p in model.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def sft_run(workdir, model_dir, items_path, sft_adapter, with_probe):
    """Two GRPO steps continuing the SFT adapter, checkpointing every step (the resume test continues it)."""
    snapshot = AdapterSnapshot()
    cfg = tiny_cfg(
        model_dir,
        items_path,
        workdir / "grpo_sft",
        adapter_dir=sft_adapter,
        save_steps=1,
        reward_weights={"format": 1.0, "granularity": 1.0, "malignancy": 1.0, "probe": 1.0},
    )
    return cfg, run_grpo(cfg, callbacks=[snapshot]), snapshot


def _saved(adapter_dir: Path | str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(Path(adapter_dir) / "adapter_model.safetensors"))


def test_grpo_end_to_end(sft_run, items_path):
    cfg, result, _ = sft_run
    assert result.steps == 2 and result.start_step == 0 and result.resumed_from is None
    assert result.n_items == 6  # the valid-split item is not trained on
    losses = [e["loss"] for e in result.train_log if "loss" in e]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)
    assert [h["step"] for h in result.reward_history] == [1, 2]
    for entry in result.reward_history:
        assert set(entry) >= {"format", "granularity", "malignancy", "probe", "total"}
        assert entry["probe"] > 0 and entry["completions"] == 4

    assert [Path(p).name for p in result.completions_tables] == ["step_0001.parquet", "step_0002.parquet"]
    table = pd.read_parquet(result.completions_tables[-1])
    assert {
        "step",
        "sample_id",
        "prompt",
        "completion",
        "reward_format",
        "reward_granularity",
        "reward_malignancy",
        "reward_probe",
        "reward_total",
    } <= set(table.columns)
    assert len(table) == 4 and (table["step"] == 2).all()
    items = pd.read_parquet(items_path).set_index("sample_id")
    for row in table.itertuples():  # every completion is filed under the sample whose prompt it answered
        assert pf.prompt_options(row.prompt) == list(items.loc[row.sample_id, "options"])
    assert np.allclose(
        table["reward_total"],
        table[[c for c in table.columns if c.startswith("reward_") and c != "reward_total"]].sum(1),
    )

    params = json.loads((Path(cfg.output_dir) / PARAMS_FILE).read_text())
    assert params["loss_type"] == "grpo" and params["beta"] == 0.04 and params["num_generations"] == 2
    assert params["reference"] == "base + SFT adapter, frozen copy"
    assert Path(result.adapter_dir) == Path(cfg.output_dir) / ADAPTER_DIR
    assert not (Path(result.adapter_dir) / "ref").exists()  # only the policy adapter is the stage's output
    assert (Path(result.adapter_dir) / "tokenizer.json").is_file()  # the processor travels with the adapter


def test_adapter_continues_from_sft(sft_run, sft_adapter):
    _, result, snapshot = sft_run
    sft = _saved(sft_adapter)
    assert snapshot.step == 0 and snapshot.adapters == ["default", "ref"]
    assert set(snapshot.default) == set(sft)
    assert all(torch.equal(snapshot.default[k], sft[k]) for k in sft), "step 0 must be the SFT adapter"
    assert all(torch.equal(snapshot.ref[k], sft[k]) for k in sft), "the KL reference is the frozen SFT adapter"
    assert snapshot.trainable and all(".default." in n for n in snapshot.trainable)

    trained = _saved(result.adapter_dir)
    assert set(trained) == set(sft)
    assert any(not torch.equal(trained[k], sft[k]) for k in sft), "GRPO must move the adapter"


def test_resume_continues_from_last_checkpoint(sft_run, workdir):
    cfg, first, _ = sft_run
    out = workdir / "grpo_resume"
    shutil.copytree(cfg.output_dir, out)
    (out / "checkpoint-7").mkdir()  # a save cut short by the kill: no trainer state, must be ignored
    with pytest.raises(GRPOConfigError, match="resume=true"):
        run_grpo(GRPORunConfig(**{**cfg.to_params(), "output_dir": str(out), "max_steps": 3}))

    snapshot = AdapterSnapshot()
    resumed = run_grpo(
        GRPORunConfig(**{**cfg.to_params(), "output_dir": str(out), "max_steps": 3, "resume": True}),
        callbacks=[snapshot],
    )
    assert resumed.start_step == 2 and resumed.steps == 3
    assert Path(resumed.resumed_from).name == "checkpoint-2"
    assert snapshot.step == 2
    assert [h["step"] for h in resumed.reward_history] == [3]
    assert [e["step"] for e in resumed.train_log if "loss" in e] == [3]
    assert (out / "completions" / "step_0003.parquet").is_file()
    checkpoint = _saved(out / "checkpoint-2")
    assert all(torch.equal(snapshot.default[k], checkpoint[k]) for k in checkpoint), "resume restores the adapter"
    assert snapshot.adapters == ["default", "ref"] and all(".default." in n for n in snapshot.trainable)
    first_sft = _saved(cfg.adapter_dir)
    assert all(torch.equal(snapshot.ref[k], first_sft[k]) for k in first_sft), "the reference stays the SFT adapter"


def test_rl_only_from_base(workdir, model_dir, items_path):
    snapshot = AdapterSnapshot()
    cfg = tiny_cfg(model_dir, items_path, workdir / "grpo_rl_only", max_steps=1, gradient_checkpointing=False)
    result = run_grpo(cfg, callbacks=[snapshot])
    assert result.steps == 1
    assert snapshot.adapters == ["default"]  # reference = base with the adapter disabled, no copy
    assert all(torch.count_nonzero(v) == 0 for k, v in snapshot.default.items() if "lora_B" in k)
    config = json.loads((Path(result.adapter_dir) / "adapter_config.json").read_text())
    assert config["r"] == 4 and config["lora_alpha"] == 8 and config["lora_dropout"] == 0.1
    assert json.loads((Path(cfg.output_dir) / PARAMS_FILE).read_text())["reference"] == "base, adapter disabled"


def test_config_validation_and_overrides(tmp_path):
    from skinr1_pipeline.training.config import ConfigError

    with pytest.raises(GRPOConfigError, match="multiple of num_generations"):
        GRPORunConfig(
            model_dir="m",
            items_path="i",
            output_dir="o",
            num_generations=3,
            per_device_train_batch_size=4,
            gradient_accumulation_steps=1,
        )
    with pytest.raises(GRPOConfigError, match="unknown reward"):
        GRPORunConfig(model_dir="m", items_path="i", output_dir="o", reward_weights={"length": 1.0})
    path = tmp_path / "cfg.yaml"
    path.write_text("model_dir: m\nitems_path: i\noutput_dir: o\nreward_weights: {format: 1.0, granularity: 1.0}\n")
    cfg = load_config(
        path, ["--beta", "0", "--reward_weights", "{format: 1, granularity: 0.5}", "--report_to=[mlflow]"]
    )
    assert cfg.beta == 0.0 and cfg.reward_weights == {"format": 1.0, "granularity": 0.5}
    assert cfg.report_to == ["mlflow"]
    with pytest.raises(ConfigError, match="unknown GRPORunConfig keys"):
        load_config(path, ["--temprature", "0.7"])
    demo = demo_grpo_config("m", "i", "o", adapter_dir="a", max_steps=3)
    assert demo.max_steps == 3 and demo.loss_type == "grpo" and demo.beta == 0.04 and demo.num_generations == 4
    assert demo.use_vllm == "auto" and demo.vllm_mode == "colocate"
    with pytest.raises(GRPOConfigError, match="needs vllm_server_base_url"):
        GRPORunConfig(model_dir="m", items_path="i", output_dir="o", vllm_mode="server")
    with pytest.raises(GRPOConfigError, match="vllm_mode must be one of"):
        GRPORunConfig(model_dir="m", items_path="i", output_dir="o", vllm_mode="remote")


def test_rewards_stay_aligned_through_dataset_conversion(items_path):
    from trl.data_utils import prepare_multimodal_messages

    items = pd.read_parquet(items_path)
    items = items[items["split"] == "train"].sample(frac=1.0, random_state=3).reset_index(drop=True)
    dataset = items_to_dataset(items).shuffle(seed=1)
    assert dataset.features["image"].decode
    by_id = items.set_index("sample_id")
    batch = [dataset[i] for i in range(len(dataset))]
    for row in batch:
        source = by_id.loc[row["sample_id"]]
        assert row["options"] == list(source["options"]) and row["option_scores"] == list(source["option_scores"])
        assert pf.prompt_options(row["prompt"]) == row["options"]
        assert row["image"].mode == "RGB" and row["image"].size == Image.open(source["image_path"]).size

    # Score the batch the way TRL does: image-filled prompts + the row's own columns, each with its right answer.
    prompts = [prepare_multimodal_messages(r["prompt"], images=[r["image"]]) for r in batch]
    completions = [
        [{"role": "assistant", "content": _correct_completion(r["options"], r["option_scores"], r["bucket"])}]
        for r in batch
    ]
    columns = {k: [r[k] for r in batch] for k in ("options", "option_scores", "bucket", "sample_id", "item_id")}
    recorder = RewardRecorder(["granularity", "malignancy"], [1.0, 1.0])
    granularity = recorder.wrap("granularity", rewards.granularity_reward)
    malignancy = recorder.wrap("malignancy", rewards.malignancy_reward)
    assert granularity(prompts=prompts, completions=completions, **columns) == [0.75] * len(batch)
    assert malignancy(prompts=prompts, completions=completions, **columns) == [0.25] * len(batch)
    rows = recorder.pop_rows()
    assert [r["sample_id"] for r in rows] == columns["sample_id"]
    assert all(r["reward_total"] == 1.0 for r in rows)

    # One row's columns shifted against its prompt: the rewards refuse to pay rather than mis-pay.
    shifted = {**columns, "options": columns["options"][1:] + columns["options"][:1]}
    with pytest.raises(rewards.RewardAlignmentError):
        rewards.granularity_reward(prompts=prompts, completions=completions, **shifted)


def test_items_with_mismatched_prompt_are_rejected(items_path):
    items = pd.read_parquet(items_path)
    items["options"] = [
        list(o)[::-1] if sid == "sample-2" else list(o) for sid, o in zip(items["sample_id"], items["options"])
    ]
    with pytest.raises(GRPOConfigError, match="sample-2"):
        items_to_dataset(items)


def test_prompt_length_limit_refuses_instead_of_truncating(items_path, model_dir):
    from skinr1_pipeline.modeling.model_factory import load_processor
    from skinr1_pipeline.training.grpo import check_prompt_lengths

    dataset = items_to_dataset(pd.read_parquet(items_path).head(2))
    processor = load_processor(model_dir, max_pixels=112 * 112)
    check_prompt_lengths(dataset, processor, 100_000)
    with pytest.raises(GRPOConfigError, match="exceed max_prompt_length=20: sample-0"):
        check_prompt_lengths(dataset, processor, 20)


class _FakeMlflow:
    """Stands in for the mlflow module (importing the real one costs more than this whole file's budget)."""

    def __init__(self, active: bool):
        self.active, self.tables, self.params = active, [], {}

    def active_run(self):
        return object() if self.active else None

    def log_params(self, params):
        self.params.update(params)

    def log_table(self, data, artifact_file):
        self.tables.append((artifact_file, data.copy()))


@pytest.mark.parametrize("active", [True, False])
def test_completions_table_goes_to_mlflow_only_with_an_active_run(tmp_path, monkeypatch, active):
    from types import SimpleNamespace

    from skinr1_pipeline.training.callbacks import CompletionsTableCallback, RunParamsCallback

    fake = _FakeMlflow(active)
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    RunParamsCallback({"beta": 0.04, "reward_weights": {"format": 1.0}}).on_train_begin(
        None, SimpleNamespace(is_world_process_zero=True), None
    )
    assert fake.params == ({"grpo.beta": 0.04, "grpo.reward_weights": '{"format": 1.0}'} if active else {})
    recorder = RewardRecorder(["format", "malignancy"], [1.0, 2.0])
    fmt = recorder.wrap("format", lambda completions, **kw: [1.0, 0.0])
    mal = recorder.wrap("malignancy", lambda completions, **kw: [0.25, None])
    callback = CompletionsTableCallback(recorder, tmp_path, every=2)
    for step in (1, 2):
        kwargs = dict(prompts=["p1", "p2"], completions=["c1", "c2"], sample_id=["s1", "s2"])
        fmt(**kwargs), mal(**kwargs)
        callback.on_step_end(None, SimpleNamespace(global_step=step, is_world_process_zero=True), None)
    assert [h["step"] for h in callback.history] == [1, 2]
    assert callback.history[0]["total"] == pytest.approx((1.5 + 0.0) / 2)  # None is skipped, like TRL's nansum
    assert [p.name for p in callback.tables] == ["step_0002.parquet"]
    assert [a for a, _ in fake.tables] == (["completions/step_0002.json"] if active else [])
    assert pd.read_parquet(callback.tables[0])["sample_id"].tolist() == ["s1", "s2"]


def test_main_under_dagster_pipes(workdir, model_dir, items_path):
    from dagster_pipes import encode_param

    out = workdir / "grpo_cli"
    config = workdir / "grpo_cli.yaml"
    config.write_text(
        json.dumps(
            {
                "model_dir": str(model_dir),
                "items_path": str(items_path),
                "output_dir": str(out),
                "num_generations": 2,
                "per_device_train_batch_size": 4,
                "gradient_accumulation_steps": 1,
                "max_completion_length": 8,
                "max_pixels": 112 * 112,
                "lora_r": 4,
                "lora_alpha": 8,
                "gradient_checkpointing": False,
            }
        )
    )
    messages = workdir / "pipes_messages.jsonl"
    context = {
        "asset_keys": ["grpo_adapter"],
        "code_version_by_asset_key": None,
        "provenance_by_asset_key": None,
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "test",
        "job_name": None,
        "retry_number": 0,
        "extras": {},
    }
    env = {
        **os.environ,
        "DAGSTER_PIPES_CONTEXT": encode_param({"data": context}),
        "DAGSTER_PIPES_MESSAGES": encode_param({"path": str(messages)}),
    }
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "skinr1_pipeline.training.grpo",
            "--config",
            str(config),
            "--max_steps",
            "1",
            "--log_completions_every",
            "1",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    payload = json.loads(proc.stdout.strip().splitlines()[-1])
    assert payload["steps"] == 1 and Path(payload["adapter_dir"]).is_dir()
    assert payload["params"]["max_completion_length"] == 8
    reported = [json.loads(line) for line in messages.read_text().splitlines()]
    materializations = [m for m in reported if m["method"] == "report_asset_materialization"]
    assert len(materializations) == 1
    metadata = materializations[0]["params"]["metadata"]
    assert metadata["steps"]["raw_value"] == 1 and metadata["adapter_dir"]["raw_value"] == payload["adapter_dir"]
    assert [h["step"] for h in metadata["reward_history"]["raw_value"]] == [1]
    assert any(
        m["method"] == "log" and m["params"]["message"].startswith("GRPO [") and "1/1 (100%)" in m["params"]["message"]
        for m in reported
    )


def test_pipes_progress_is_throttled_like_sft():
    from types import SimpleNamespace

    from skinr1_pipeline.training.cli import PipesProgress

    lines: list[str] = []
    callback = PipesProgress("GRPO", lines.append)
    for step in range(1, 6):
        callback.on_log(
            None,
            SimpleNamespace(global_step=step, max_steps=5),
            None,
            logs={"loss": 0.5, "rewards/format": 1.0, "histogram": [1, 2]},
        )
    assert len(lines) == 2  # the first and the last step; the ones between fall inside the 10 s window
    assert lines[0].startswith("GRPO [") and " 1/5 " in lines[0] and " 5/5 (100%) " in lines[1]
    assert '"loss": 0.5' in lines[1] and '"rewards/format": 1.0' in lines[1] and "histogram" not in lines[1]


def test_vllm_rollout_corrections_keep_one_image_placeholder_and_only_policy_weights():
    from skinr1_pipeline.training.trl_vllm_fixes import collapse_image_runs, engine_options, policy_weights

    pad, start, end = 9, 7, 8
    prompt = [1, start, pad, pad, pad, end, 2, start, pad, pad, end, pad, 3]
    assert collapse_image_runs(prompt, pad) == [1, start, pad, end, 2, start, pad, end, pad, 3]
    assert collapse_image_runs([1, 2], pad) == [1, 2]
    stream = [
        ("model.embed_tokens.weight", 1),
        ("model.embed_tokens.modules_to_save.ref.weight", 2),
        ("lm_head.weight", 3),
        ("lm_head.modules_to_save.ref.weight", 4),
    ]
    assert [n for n, _ in policy_weights(iter(stream))] == ["model.embed_tokens.weight", "lm_head.weight"]
    assert engine_options(dtype="float32", min_pixels=3136, max_pixels=None) == {
        "dtype": "float32",
        "mm_processor_kwargs": {"min_pixels": 3136},
    }
    assert engine_options(dtype="bfloat16", min_pixels=None, max_pixels=None) == {"dtype": "bfloat16"}


def test_rollouts_never_sample_vision_tokens():
    from skinr1_pipeline.modeling.chat import vision_token_ids
    from skinr1_pipeline.training.grpo import sampling_bans

    class Tokenizer:
        def get_vocab(self):
            return {"<|image_pad|>": 5, "<|vision_start|>": 3, "hello": 9}

    assert vision_token_ids(Tokenizer()) == [3, 5]
    assert sampling_bans([3, 5], use_vllm=True) == {"logit_bias": {3: -100.0, 5: -100.0}}
    assert sampling_bans([3, 5], use_vllm=False) == {"suppress_tokens": [3, 5]}
    assert sampling_bans([], use_vllm=True) == {}
