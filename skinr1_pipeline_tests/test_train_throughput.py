"""The training-throughput benchmark: the 7B shapes and their FLOPs, and a real (tiny, CPU) SFT + GRPO run whose
record has every figure the GPU run reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import train_throughput  # noqa: E402

from skinr1_pipeline.modeling.architectures import ModelFlops, model_flops, qwen2_5_vl_7b_config  # noqa: E402
from skinr1_pipeline.modeling.tiny_model import build_processor, default_corpus  # noqa: E402


def test_7b_shapes_match_the_published_model() -> None:
    from transformers import Qwen2_5_VLForConditionalGeneration

    config = qwen2_5_vl_7b_config(build_processor(default_corpus(), vocab_size=600, max_pixels=448 * 448).tokenizer)
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    assert sum(p.numel() for p in model.parameters()) == 8_292_166_656  # Qwen2.5-VL-7B-Instruct's count
    flops = model_flops(model)
    # 28 layers x (q, k, v, o, gate, up, down) + the 152,064 x 3,584 LM head, 2 FLOPs per multiply-accumulate.
    layer = 3584 * 3584 * 2 + 3584 * 512 * 2 + 3 * 3584 * 18944
    assert flops.text_per_token == 2 * (28 * layer + 152064 * 3584)
    assert flops.attention_per_token_per_position == 2 * 2 * 28 * 3584


def test_forward_flops_counts_tokens_causal_attention_and_patches() -> None:
    flops = ModelFlops(text_per_token=10.0, attention_per_token_per_position=1.0, vision_per_patch=100.0)
    # 2 sequences of 3 tokens: 6 tokens, attended positions 2 x (1 + 2 + 3) = 12, 5 patches.
    assert train_throughput.forward_flops(flops, 6, 2, 5) == 6 * 10 + 12 + 500


@pytest.mark.slow
def test_tiny_run_reports_every_figure(tmp_path: Path) -> None:
    out = tmp_path / "record.json"
    assert (
        train_throughput.main(
            [
                "--arch",
                "tiny",
                "--sft-steps",
                "2",
                "--grpo-steps",
                "2",
                "--sft-batch",
                "2",
                "--completion-tokens",
                "8",
                "--max-pixels",
                str(112 * 112),
                "--peak-tflops",
                "1",
                "--rollouts",
                "hf",
                "--workdir",
                str(tmp_path / "work"),
                "--json",
                str(out),
            ]
        )
        == 0
    )
    record = json.loads(out.read_text())
    assert record["image_tokens"] * 4 == record["image_patches"] > 0
    for stage, steps in (("sft", 2), ("grpo_hf", 2)):
        s = record[stage]
        assert s["steps"] == steps and s["tokens_per_step"] > 0 and s["tokens_per_s"] > 0
        assert s["model_tflops_per_step"] > 0 and 0 < s["mfu"] < 1 and s["peak_host_rss_gib"] > 0
    # TRL's own timers were captured, so the split comes from measurements, not from a subtraction alone.
    assert {"transformers.generate", "_calculate_rewards", "_prepare_inputs", "compute_loss"} <= set(
        record["grpo_hf"]["timers_seen"]
    )
    assert record["grpo_hf"]["rollouts"] == "transformers generate" and "grpo_vllm" not in record
    split = record["grpo_hf"]["split_per_step_mean"]
    assert split["rollout_s"] > 0 and split["reward_s"] > 0 and split["update_s"] > 0
    assert split["logprobs_and_other_prep_s"] >= 0  # generation and rewards are timed inside the preparation
    assert 0 < split["of_which_loss_forward_s"] < split["update_s"]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(SystemExit):
        train_throughput.main(["--arch", "tiny", "--generations", "1"])
