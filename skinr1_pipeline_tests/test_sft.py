"""LoRA SFT end to end on a tiny random Qwen2.5-VL: label masking, adapter output, resume, CLI."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from PIL import Image

from skinr1_pipeline.modeling import prompt_format as pf
from skinr1_pipeline.modeling.generation import generate
from skinr1_pipeline.modeling.model_factory import load_adapter_model, load_processor
from skinr1_pipeline.modeling.tiny_model import build_tiny_model
from skinr1_pipeline.training.config import ConfigError, from_mapping, parse_overrides
from skinr1_pipeline.training.sft import (
    SFTRunConfig,
    build_trainer,
    demo_sft_config,
    last_checkpoint,
    lora_target_pattern,
    run_sft,
)

pytestmark = pytest.mark.slow
TINY = dict(vocab_size=512, text_hidden=64, text_layers=1, vision_depth=1, vision_hidden=32, max_pixels=56 * 56 * 4)
OPTIONS = ["melanoma", "dermatofibroma", "melanocytic nevus", "actinic keratosis"]
COLORS = [(120, 60, 40), (200, 120, 110), (90, 50, 50), (220, 150, 140)]


def _rows(img_dir: Path) -> list[dict]:
    rows = []
    for i in range(8):
        color = COLORS[i % 4]
        img = Image.new("RGB", (120 + 8 * i, 90), (230, 190, 170))
        img.paste(Image.new("RGB", (50, 40), color), (30, 25))
        path = img_dir / f"img_{i}.jpg"
        img.save(path)
        idx = i % 4
        if i % 2:
            prompt = pf.build_mcq_prompt(pf.DEFAULT_MCQ_QUESTION, OPTIONS)
            answer = pf.format_mcq_answer(OPTIONS, idx, "benign")
        else:
            prompt = pf.build_open_prompt()
            answer = pf.format_open_answer(OPTIONS[idx], "benign")
        completion = pf.format_completion(f"a {idx} coloured patch with sharp border", answer)
        # relative image paths resolve against the Parquet file's folder
        rows.append(
            {
                "sample_id": f"s{i}",
                "image_path": f"images/{path.name}",
                "prompt": prompt,
                "completion": completion,
                "extra_column": i,
            }
        )
    return rows


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sft")
    (root / "images").mkdir()
    rows = _rows(root / "images")
    pd.DataFrame(rows).to_parquet(root / "train.parquet")
    pd.DataFrame(rows[:2]).to_parquet(root / "eval.parquet")
    model_dir = build_tiny_model(
        root / "model", [r["prompt"] for r in rows] + [r["completion"] for r in rows], seed=0, **TINY
    )
    return {
        "root": root,
        "model": model_dir,
        "train": root / "train.parquet",
        "eval": root / "eval.parquet",
        "completions": [r["completion"] for r in rows],
    }


def _cfg(ws: dict, out: Path, **kw) -> SFTRunConfig:
    values = dict(
        model_dir=str(ws["model"]),
        train_path=str(ws["train"]),
        output_dir=str(out),
        lora_r=4,
        lora_alpha=8,
        learning_rate=1e-3,
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        max_pixels=56 * 56 * 4,
        max_length=1024,
        seed=0,
        save_steps=100,
        logging_steps=1,
        use_cpu=True,
        warmup_ratio=0.0,
    )
    values.update(kw)
    return SFTRunConfig(**values)


def test_collated_labels_mask_the_prompt(workspace, tmp_path) -> None:
    trainer = build_trainer(_cfg(workspace, tmp_path / "out"))
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
    tok = trainer.processing_class.tokenizer
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert batch["pixel_values"].shape[0] > 0 and (batch["input_ids"] == image_pad).any()
    assert ((batch["input_ids"] == image_pad) <= (batch["labels"] == -100)).all()
    for row in range(3):
        ids, labels, mask = batch["input_ids"][row], batch["labels"][row], batch["attention_mask"][row]
        supervised = (labels != -100).nonzero().flatten()
        assert len(supervised) > 0
        first = int(supervised[0])
        # everything before the first supervised token is prompt (or padding), and it ends with the assistant header
        prompt_text = tok.decode(ids[:first][mask[:first].bool()])
        assert prompt_text.startswith("<|im_start|>system\n" + pf.SYSTEM_PROMPT)
        assert prompt_text.endswith("<|im_start|>assistant\n")
        assert "<|vision_start|>" in prompt_text
        # the supervised tokens are exactly the assistant reply (+ its end-of-turn), contiguous, labels == inputs
        assert torch.equal(supervised, torch.arange(first, first + len(supervised)))
        assert torch.equal(labels[supervised], ids[supervised])
        target = tok.decode(ids[supervised])
        assert target == workspace["completions"][row] + "<|im_end|>\n"
        assert (labels[mask == 0] == -100).all()


def test_default_targets_exclude_vision_tower(workspace, tmp_path) -> None:
    trainer = build_trainer(_cfg(workspace, tmp_path / "out"))
    lora = {n.rsplit(".lora_A", 1)[0] for n, _ in trainer.model.named_modules() if n.endswith(".lora_A")}
    assert lora and not any(".visual.blocks." in n for n in lora)
    assert {n.rsplit(".", 1)[-1] for n in lora if "language_model" in n} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
    }
    assert any(".visual.merger." in n for n in lora)  # the paper's merger LoRA
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    # The demo preset keeps the warmed-up vision tower and merger frozen; embeddings and head train in full.
    demo = demo_sft_config(workspace["model"], workspace["train"], tmp_path / "demo")
    pattern = lora_target_pattern(demo)
    assert not re.fullmatch(pattern, "model.visual.blocks.0.attn.qkv")
    assert re.fullmatch(pattern, "model.language_model.layers.1.mlp.down_proj")
    assert not re.fullmatch(pattern, "model.visual.merger.mlp.0")
    assert set(demo.modules_to_save) == {"embed_tokens", "lm_head"}


def test_run_sft_writes_adapter_with_finite_losses(workspace, tmp_path) -> None:
    out = tmp_path / "out"
    logs: list[dict] = []
    result = run_sft(
        _cfg(workspace, out, max_steps=3, eval_path=str(workspace["eval"]), eval_steps=2, modules_to_save=["lm_head"]),
        progress=logs.append,
    )
    assert result.steps == 3 and result.resumed_from is None
    assert [e["step"] for e in result.train_loss] == [1, 2, 3]
    assert all(math.isfinite(e["loss"]) for e in result.train_loss)
    assert result.eval_loss and math.isfinite(result.metrics["eval_loss"])
    adapter = Path(result.adapter_dir)
    assert adapter == out / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file() and (adapter / "adapter_config.json").is_file()
    assert json.loads((out / "sft_result.json").read_text())["result"]["steps"] == 3
    assert any(e.get("loss") is not None for e in logs)

    frozen = load_adapter_model(workspace["model"], adapter, trainable=False, device="cpu")
    assert not any(p.requires_grad for p in frozen.parameters())
    processor = load_processor(workspace["model"], max_pixels=56 * 56 * 4)
    image = Image.open(workspace["root"] / "images" / "img_0.jpg")
    assert len(generate(frozen, processor, [image], [pf.build_open_prompt()], max_new_tokens=3)) == 1
    live = load_adapter_model(workspace["model"], adapter, trainable=True, device="cpu")
    assert any(p.requires_grad and "lora_" in n for n, p in live.named_parameters())


def test_resume_continues_from_last_checkpoint(workspace, tmp_path) -> None:
    out = tmp_path / "out"
    first = run_sft(_cfg(workspace, out, max_steps=2, save_steps=1, resume=False))
    assert first.steps == 2
    assert last_checkpoint(out) == str(out / "checkpoint-2")
    seen_steps: list[int] = []
    second = run_sft(
        _cfg(workspace, out, max_steps=4, save_steps=1, resume=True),
        progress=lambda logs: "loss" in logs and seen_steps.append(logs["step"]),
    )
    assert second.resumed_from == str(out / "checkpoint-2")
    assert second.steps == 4
    assert seen_steps == [3, 4]  # continued at step 3, did not redo steps 1-2
    assert [e["step"] for e in second.train_loss] == [1, 2, 3, 4]  # history restored from the checkpoint


def test_config_overrides_and_validation() -> None:
    assert parse_overrides(["--max_steps", "3", "--report-to", "[]", "--bf16=false", "--learning_rate", "1e-3"]) == {
        "max_steps": 3,
        "report_to": [],
        "bf16": False,
        "learning_rate": 1e-3,
    }
    base = {"model_dir": "m", "train_path": "t", "output_dir": "o"}
    assert from_mapping(SFTRunConfig, {**base, "learning_rate": 1}).learning_rate == 1.0
    with pytest.raises(ConfigError, match="unknown SFTRunConfig keys"):
        from_mapping(SFTRunConfig, {**base, "learning_rat": 1e-3})
    with pytest.raises(ConfigError, match="max_steps"):
        from_mapping(SFTRunConfig, {**base, "max_steps": "many"})
    with pytest.raises(ConfigError, match="needs"):
        from_mapping(SFTRunConfig, {"model_dir": "m"})
    with pytest.raises(ValueError, match="resume"):
        SFTRunConfig(**base, resume="sometimes")


def test_main_cli_subprocess(workspace, tmp_path) -> None:
    out = tmp_path / "cli_out"
    cfg = {
        "model_dir": str(workspace["model"]),
        "train_path": str(workspace["train"]),
        "output_dir": str(out),
        "lora_r": 4,
        "lora_alpha": 8,
        "max_steps": 5,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_pixels": 56 * 56 * 4,
        "use_cpu": True,
        "report_to": [],
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_PIPES_CONTEXT"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "skinr1_pipeline.training.sft",
            "--config",
            str(path),
            "--max_steps",
            "1",
            "--save_steps",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["steps"] == 1
    assert Path(result["adapter_dir"], "adapter_model.safetensors").is_file()


def test_training_killed_mid_run_resumes_from_its_last_complete_checkpoint(workspace, tmp_path) -> None:
    """SIGKILL the training entry point once it has saved a checkpoint, then resume: the newest checkpoint with
    trainer state is the one used, and training continues after its step instead of starting over."""
    import signal
    import time

    from skinr1_pipeline.training.config import newest_checkpoint

    out = tmp_path / "killed"
    cfg = {
        "model_dir": str(workspace["model"]),
        "train_path": str(workspace["train"]),
        "output_dir": str(out),
        "lora_r": 4,
        "lora_alpha": 8,
        "max_steps": 400,
        "save_steps": 1,
        "save_total_limit": 3,
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_pixels": 56 * 56 * 4,
        "use_cpu": True,
        "report_to": [],
        "logging_steps": 1,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_PIPES_CONTEXT"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "skinr1_pipeline.training.sft", "--config", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    deadline = time.monotonic() + 300
    while newest_checkpoint(out) is None or int(newest_checkpoint(out).name.split("-")[1]) < 2:
        assert proc.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    done = newest_checkpoint(out)
    assert done is not None and (done / "trainer_state.json").is_file()
    step = int(done.name.split("-")[1])
    seen: list[int] = []
    resumed = run_sft(
        _cfg(workspace, out, max_steps=step + 2, save_steps=1, resume=True),
        progress=lambda logs: "loss" in logs and seen.append(logs["step"]),
    )
    assert resumed.resumed_from == str(done) and resumed.steps == step + 2
    assert seen == [step + 1, step + 2]
