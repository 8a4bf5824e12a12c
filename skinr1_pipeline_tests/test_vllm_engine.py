"""vLLM for real (CPU build) on a tiny random Qwen2.5-VL: engine, LoRA, synthesis generator, evaluation runners.

One tiny model and ONE engine for the whole file (loading is most of the cost): the engine is built with the LoRA
adapter enabled, and the base-model tests use a second `VllmEngine` view of the same `vllm.LLM` without the
`LoRARequest`. The engine runs in-process (`VLLM_ENABLE_V1_MULTIPROCESSING=0`) so pytest needs no main guard.
A random model writes garbage, so synthesis must reject everything, with every rejection counted by reason.
"""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from skinr1_pipeline.data.demo.generate import generate_demo_data
from skinr1_pipeline.evaluation.metrics import score_predictions
from skinr1_pipeline.evaluation.runners import HFRunner, VllmRunner, answer_prefix, load_image
from skinr1_pipeline.evaluation.suites import SuiteConfig, build_suites
from skinr1_pipeline.modeling import vllm_engine
from skinr1_pipeline.modeling.chat import build_messages, render_prompt
from skinr1_pipeline.modeling.model_factory import load_adapter_model, load_model, validate_model_dir
from skinr1_pipeline.modeling.vllm_engine import EngineOptions, VllmEngine, engine_kwargs
from skinr1_pipeline.synthesis.pipeline import demo_samples, synthesize
from skinr1_pipeline.synthesis.trajectories import TYPES, BuildExtras, SamplingParams
from skinr1_pipeline.synthesis.verify import REASONS
from skinr1_pipeline.synthesis.vllm_generator import VllmGenerator

pytestmark = [pytest.mark.slow, pytest.mark.vllm]
ALL_SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="session")
def demo(tmp_path_factory, knowledge):
    out = tmp_path_factory.mktemp("vllm_demo")
    generate_demo_data(out, seed=0, n_per_class=1, image_size=(96, 72), include_broken=False)
    return demo_samples(out, knowledge.tax)


@pytest.fixture(scope="session")
def items(demo, knowledge):
    """Two items per suite (MCQ and open-ended), each with an image."""
    tax, ddx, _ = knowledge
    built = build_suites(demo[0], tax, ddx, SuiteConfig(splits=ALL_SPLITS)).items
    return built.groupby("suite", sort=True).head(2).reset_index(drop=True)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, items) -> Path:
    from skinr1_pipeline.modeling.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("vllm_model") / "model", list(items["prompt"]), seed=0)


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory, model_dir) -> Path:
    """A LoRA adapter with large non-zero B, so "adapter applied" visibly differs from the base model."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        load_model(model_dir, dtype="float32", device="cpu"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"),
    )
    gen = torch.Generator().manual_seed(0)
    for name, param in model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0.0, 0.5, generator=gen)
    out = tmp_path_factory.mktemp("vllm_adapter") / "adapter"
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def lora_engine(model_dir, adapter_dir):
    engine = VllmEngine.load(model_dir, adapter_dir=adapter_dir, lora_mode="lora")
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def engine(lora_engine, model_dir) -> VllmEngine:
    """The base model: the same LLM, no LoRARequest."""
    return VllmEngine(lora_engine.llm, lora_engine.processor, model_dir)


@pytest.fixture(scope="session")
def hf_runner(model_dir) -> HFRunner:
    return HFRunner(model_dir, max_new_tokens=24, batch_size=4, dtype="float32", device="cpu")


def requests_for(demo, knowledge, n: int, ttype: str = "hierarchy", max_tokens: int = 16):
    samples, feats = demo
    tax, ddx, kb = knowledge
    out = []
    for i in range(n):
        row = samples.iloc[i].to_dict()
        extras = BuildExtras(
            image_features=feats[row["sample_id"]],
            mcq_fraction=0.0,
            sampling=SamplingParams(temperature=0.7, top_p=0.95, max_tokens=max_tokens, seed=i),
        )
        out.append(TYPES[ttype].build(row, tax, ddx, kb, random.Random(i), extras))
    return out


# ---------------------------------------------------------------------------------------------------- engine


def test_engine_kwargs_per_backend():
    cpu = engine_kwargs("/m", EngineOptions(), on_gpu=False, lora_rank=4)
    assert cpu["dtype"] == "float32" and cpu["enforce_eager"] and cpu["gpu_memory_utilization"] == 0.1
    assert cpu["kv_cache_memory_bytes"] == 2**30 and cpu["enable_chunked_prefill"] is False
    assert cpu["max_num_batched_tokens"] >= cpu["max_model_len"]
    assert cpu["enable_lora"] and cpu["max_lora_rank"] == 8  # rank 4 rounded up to a rank vLLM accepts
    gpu = engine_kwargs("/m", EngineOptions(max_pixels=112 * 112), on_gpu=True)
    assert gpu["dtype"] == "auto" and not gpu["enforce_eager"] and "kv_cache_memory_bytes" not in gpu
    assert "enable_lora" not in gpu and "enable_chunked_prefill" not in gpu
    assert gpu["mm_processor_kwargs"] == {"max_pixels": 112 * 112}


def test_engine_restores_torch_threading(lora_engine):
    torch.set_num_threads(2)
    assert torch.get_num_threads() == 2  # vLLM's in-process worker had replaced set_num_threads with a no-op
    assert lora_engine.lora_mode == "lora" and lora_engine.stop_token_ids


def test_prompt_counts_images(engine, demo):
    from PIL import Image

    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]}]
    image = Image.new("RGB", (64, 48), (120, 60, 40))
    prompt = engine.prompt(messages, [image])
    assert prompt["prompt"].count("<|image_pad|>") == 1 and prompt["multi_modal_data"]["image"].size == (64, 48)
    with pytest.raises(ValueError, match="image part"):
        engine.prompt(messages, [])


# ---------------------------------------------------------------------------------------------------- synthesis


def test_synthesize_with_vllm_rejects_garbage_and_counts_reasons(engine, demo, knowledge):
    samples, feats = demo
    tax, ddx, kb = knowledge
    gen = VllmGenerator(engine=engine, batch_size=4)
    result = synthesize(
        samples.head(3),
        tax,
        ddx,
        kb,
        gen,
        types=("hierarchy", "ddx"),
        splits=ALL_SPLITS,
        image_features=feats,
        sampling=SamplingParams(max_tokens=24),
    )
    counts = result.counts
    assert counts["requests"] >= 3 and counts["accepted"] == 0 and len(result.trajectories) == 0
    assert counts["rejected"] == counts["requests"] == sum(counts["rejections"].values())
    assert set(counts["rejections"]) <= set(REASONS) and counts["rejections"].get("bad_format", 0) >= 1
    assert (result.rejections["text"].str.len() > 0).all()  # the model did write something for every request
    assert not gen.failures


def test_generator_seeds_are_per_request_and_failures_become_empty(engine, demo, knowledge):
    reqs = requests_for(demo, knowledge, 3)
    gen = VllmGenerator(engine=engine, batch_size=8)
    together = gen.generate(reqs)
    alone = gen.generate([reqs[2]])
    assert alone[0] == together[2] and all(together)  # independent of batch composition
    text_only = VllmGenerator(engine=engine, use_images=False).generate(reqs[:1])
    assert isinstance(text_only[0], str) and text_only[0]
    broken = dataclasses.replace(reqs[0], request_id="missing-image", image_path="/nonexistent.png")
    too_long = dataclasses.replace(reqs[1], request_id="too-long", prompt="skin " * 6000)  # > max_model_len
    out = gen.generate([broken, reqs[1], too_long])
    assert out[0] == "" and out[2] == "" and out[1] == together[1]
    assert gen.failures["prepare:FileNotFoundError"] == 1 and sum(gen.failures.values()) == 2


# ---------------------------------------------------------------------------------------------------- LoRA


def test_lora_request_applies_the_adapter(lora_engine, engine, model_dir, adapter_dir, items):
    mcq = items[items["options"].map(len) > 0].head(2).reset_index(drop=True)
    completions = ["<thinking>x</thinking>"] * len(mcq)
    peft_model = load_adapter_model(model_dir, adapter_dir, trainable=False, dtype="float32", device="cpu")
    hf_lora = HFRunner(model=peft_model, processor=lora_engine.processor).option_scores(mcq, completions).letters
    vllm_lora = VllmRunner(engine=lora_engine).option_scores(mcq, completions).letters
    vllm_base = VllmRunner(engine=engine).option_scores(mcq, completions).letters
    np.testing.assert_allclose(np.concatenate(vllm_lora), np.concatenate(hf_lora), atol=2e-3)
    assert np.abs(np.concatenate(vllm_lora) - np.concatenate(vllm_base)).max() > 1e-2


def test_merge_fallback_when_native_lora_fails(monkeypatch, lora_engine, model_dir, adapter_dir, items):
    """`auto` falls back to serving a merged checkpoint; the merged weights equal base + adapter."""
    built: list[dict] = []

    def no_lora(*args, **kwargs):
        raise RuntimeError("LoRA not supported for this model on this backend")

    monkeypatch.setattr(VllmEngine, "_load_lora", classmethod(no_lora))
    monkeypatch.setattr(vllm_engine, "_build_llm", lambda kwargs, in_process: built.append(kwargs) or lora_engine.llm)
    merged = VllmEngine.load(model_dir, adapter_dir=adapter_dir, lora_mode="auto")
    try:
        assert merged.lora_mode == "merge" and merged.lora_request is None
        assert built[0]["model"] == str(merged.served_dir) and "enable_lora" not in built[0]
        validate_model_dir(merged.served_dir)
        mcq = items[items["options"].map(len) > 0].head(1).reset_index(drop=True)
        done = ["<thinking>x</thinking>"]
        via_merge = HFRunner(merged.served_dir, dtype="float32", device="cpu").option_scores(mcq, done).letters
        peft_model = load_adapter_model(model_dir, adapter_dir, trainable=False, dtype="float32", device="cpu")
        via_peft = HFRunner(model=peft_model, processor=lora_engine.processor).option_scores(mcq, done).letters
        np.testing.assert_allclose(via_merge[0], via_peft[0], atol=1e-4)
    finally:
        merged._temp_dir.cleanup()  # not close(): the LLM belongs to the session engine
    with pytest.raises(RuntimeError, match="not supported"):
        VllmEngine.load(model_dir, adapter_dir=adapter_dir, lora_mode="lora")


# ---------------------------------------------------------------------------------------------------- evaluation


def test_hf_and_vllm_runners_on_suite_items(engine, hf_runner, items, knowledge):
    seen: list[tuple[int, int]] = []
    vllm_runner = VllmRunner(engine=engine, max_new_tokens=24, batch_size=5)
    vllm_out = vllm_runner.run(items, progress=lambda d, t: seen.append((d, t)))
    hf_out = hf_runner.run(items)
    assert len(vllm_out) == len(hf_out) == len(items) and all(isinstance(t, str) for t in vllm_out + hf_out)
    assert seen[-1] == (len(items), len(items)) and len(seen) == -(-len(items) // 5)
    # Same prompts, same weights, greedy: identical text except where float noise flips a near-tie late on.
    same = sum(a == b for a, b in zip(vllm_out, hf_out))
    assert same >= len(items) // 2, list(zip(vllm_out, hf_out))
    assert all(a[:5] == b[:5] for a, b in zip(vllm_out, hf_out))
    assert vllm_runner.run(items.head(3)) == vllm_out[:3]  # deterministic
    tax = knowledge.tax
    scored_v = score_predictions(items, vllm_out, taxonomy=tax)
    scored_h = score_predictions(items, hf_out, taxonomy=tax)
    assert len(scored_v) == len(scored_h) == len(items)
    assert not scored_v["format_ok"].any() and not scored_h["format_ok"].any()  # garbage never parses


def test_option_letter_logprobs_agree_between_backends(engine, hf_runner, items):
    subset = items.head(4).reset_index(drop=True)
    completions = ["<thinking>scaly plaque</thinking>\n<diagnosis>", "no tags at all", "", "<thinking>x</thinking>"]
    assert answer_prefix(completions[0]).endswith("<diagnosis>") and answer_prefix("").endswith("<diagnosis>")
    v = VllmRunner(engine=engine).option_scores(subset, completions).letters
    h = hf_runner.option_scores(subset, completions).letters
    for row, a, b in zip(subset.itertuples(), v, h):
        assert len(a) == len(b) == len(row.options)
        np.testing.assert_allclose(a, b, atol=2e-3)


def test_answer_scores_agree_between_backends_and_sum_the_answer_tokens(engine, hf_runner, items):
    subset = items[items["options"].map(len) > 0].head(3).reset_index(drop=True)
    completions = ["<thinking>scaly plaque</thinking>\n<diagnosis>", "no tags at all", ""]
    hf_scores = hf_runner.option_scores(subset, completions)
    h, letters_only = hf_scores.answers, hf_scores.letters
    v = VllmRunner(engine=engine).option_scores(subset, completions).answers
    tokenizer = hf_runner.processor.tokenizer
    for row, a, b, lone in zip(subset.itertuples(), h, v, letters_only):
        assert len(a) == len(b) == len(row.options)
        np.testing.assert_allclose(a, b, atol=5e-3)
        # The answer "B. text" is the letter's token plus more tokens, each with log-prob < 0.
        assert all(x < y for x, y in zip(a, lone))
    # By hand for one option: one forward pass over prompt + answer prefix + answer, sum of the answer's tokens.
    row, completion = subset.iloc[0], completions[0]
    image = load_image(row["image_path"], hf_runner.pixels)
    prefix = render_prompt(
        hf_runner.processor, build_messages(row["prompt"], system=hf_runner.system, with_image=True)
    ) + answer_prefix(completion)
    answer = f"B. {row['options'][1]}"
    n = len(tokenizer(answer, add_special_tokens=False)["input_ids"])
    inputs = hf_runner.processor(text=[prefix + answer], images=[image], return_tensors="pt")
    with torch.inference_mode():
        logp = torch.log_softmax(hf_runner.model(**inputs).logits[0].float(), dim=-1)
    ids = inputs["input_ids"][0]
    by_hand = sum(float(logp[t - 1, ids[t]]) for t in range(len(ids) - n, len(ids)))
    assert abs(h[0][1] - by_hand) < 1e-3
    first = len(ids) - n  # the letter's token: the first one of the answer
    assert abs(letters_only[0][1] - float(logp[first - 1, ids[first]])) < 1e-3


def test_auto_serves_natively_only_adapters_vllm_lora_covers(tmp_path, model_dir, adapter_dir):
    from peft import LoraConfig, get_peft_model

    from skinr1_pipeline.modeling.vllm_engine import lora_servable

    assert lora_servable(adapter_dir)  # q_proj/v_proj: language-model LoRA only
    for name, extra in (
        ("full_head", dict(target_modules=["q_proj"], modules_to_save=["lm_head"])),
        ("merger", dict(target_modules=r".*visual\.merger\.mlp\.0")),
    ):
        model = get_peft_model(load_model(model_dir, dtype="float32", device="cpu"), LoraConfig(r=4, **extra))
        model.save_pretrained(tmp_path / name)
        assert not lora_servable(tmp_path / name), name  # vLLM would ignore these tensors: merge instead


@pytest.mark.parametrize(("preset", "in_process", "seen"), [(None, True, "0"), (None, False, None), ("1", True, "1")])
def test_a_cpu_engine_core_runs_in_process_unless_the_environment_says_otherwise(
    monkeypatch, preset: str | None, in_process: bool, seen: str | None
) -> None:
    """On CPU the engine core runs in the caller's process (no second process importing vLLM again); the variable is
    set only while the engine is built, and an explicit environment setting wins."""
    import vllm

    key = "VLLM_ENABLE_V1_MULTIPROCESSING"
    if preset is None:
        monkeypatch.delenv(key, raising=False)
    else:
        monkeypatch.setenv(key, preset)
    during: list[str | None] = []
    monkeypatch.setattr(vllm, "LLM", lambda **kwargs: during.append(os.environ.get(key)) or "llm")
    assert vllm_engine._build_llm({"model": "m"}, in_process) == "llm"
    assert during == [seen] and os.environ.get(key) == preset
    assert vllm_engine._in_process(EngineOptions(in_process=True)) and not vllm_engine._in_process(
        EngineOptions(in_process=False)
    )
