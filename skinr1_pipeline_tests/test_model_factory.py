"""Tiny model build, local-only loading with clear errors, chat message format and batched generation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from skinr1_pipeline.modeling.chat import assistant_message, build_messages, render_prompt
from skinr1_pipeline.modeling.generation import generate
from skinr1_pipeline.modeling.model_factory import (
    SYSTEM_PROMPT_FILE,
    ModelDirError,
    load_model,
    load_processor,
    save_system_prompt,
    taught_system_prompt,
    validate_model_dir,
)
from skinr1_pipeline.modeling.prompt_format import (
    COMPACT_SYSTEM_PROMPT,
    SYSTEM_PROMPT,
    build_mcq_prompt,
    build_open_prompt,
)
from skinr1_pipeline.modeling.tiny_model import MANIFEST_NAME, build_tiny_model

TINY = dict(vocab_size=512, text_hidden=64, text_layers=1, vision_depth=1, vision_hidden=32, max_pixels=56 * 56 * 4)
CORPUS = [
    build_mcq_prompt("What is this?", ["melanoma", "dermatofibroma", "melanocytic nevus", "actinic keratosis"]),
    build_open_prompt(),
    "<thinking>pink scaly patch</thinking><diagnosis>actinic keratosis</diagnosis>",
]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", CORPUS, seed=0, **TINY)


def _image(color: tuple[int, int, int], size=(120, 90)) -> Image.Image:
    return Image.new("RGB", size, color)


def test_tiny_model_round_trips(tiny_dir: Path) -> None:
    manifest = json.loads((tiny_dir / MANIFEST_NAME).read_text())
    assert manifest["kind"] == "tiny_random_qwen2_5_vl" and manifest["seed"] == 0
    processor = load_processor(tiny_dir)
    model = load_model(tiny_dir, device="cpu")
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert sum(p.numel() for p in model.parameters()) == manifest["parameters"]
    tok = processor.tokenizer
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert model.config.text_config.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert tok.decode(tok(SYSTEM_PROMPT)["input_ids"]) == SYSTEM_PROMPT
    # the format tags were in the corpus, so they compress to few tokens
    assert len(tok("<thinking>")["input_ids"]) <= 3


def test_tiny_model_is_deterministic_per_seed(tiny_dir: Path, tmp_path: Path) -> None:
    same = build_tiny_model(tmp_path / "same", CORPUS, seed=0, **TINY)
    other = build_tiny_model(tmp_path / "other", CORPUS, seed=1, **TINY)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert (same / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    assert (other / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()
    assert (other / "model.safetensors").read_bytes() != (tiny_dir / "model.safetensors").read_bytes()


def test_factory_rejects_bad_dirs(tiny_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelDirError, match="does not exist"):
        load_model(tmp_path / "absent")

    no_config = tmp_path / "no_config"
    no_config.mkdir()
    with pytest.raises(ModelDirError, match=r"no_config has no config\.json"):
        load_model(no_config)

    adapter_like = tmp_path / "adapter_like"
    adapter_like.mkdir()
    (adapter_like / "adapter_config.json").write_text("{}")
    with pytest.raises(ModelDirError, match="LoRA adapter"):
        validate_model_dir(adapter_like)

    wrong_type = tmp_path / "wrong_type"
    wrong_type.mkdir()
    (wrong_type / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ModelDirError, match=r"model_type='llama'.*qwen2_5_vl"):
        load_model(wrong_type)

    bin_only = tmp_path / "bin_only"
    shutil.copytree(tiny_dir, bin_only)
    (bin_only / "model.safetensors").unlink()
    (bin_only / "pytorch_model.bin").write_bytes(b"\x00")
    with pytest.raises(ModelDirError, match=r"bin_only has no \*\.safetensors.*pytorch_model\.bin"):
        load_model(bin_only)

    with pytest.raises(ModelDirError, match="tokenizer"):
        load_processor(no_config)


def test_chat_messages_format() -> None:
    msgs = build_messages("What is this?")
    assert msgs == [
        {"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
    ]
    assert build_messages("q", system=None, with_image=False) == [
        {"role": "user", "content": [{"type": "text", "text": "q"}]}
    ]
    assert assistant_message("<thinking>x</thinking>") == {
        "role": "assistant",
        "content": [{"type": "text", "text": "<thinking>x</thinking>"}],
    }
    with pytest.raises(ValueError):
        build_messages("  ")


def test_chat_template_renders_qwen_layout(tiny_dir: Path) -> None:
    processor = load_processor(tiny_dir)
    text = render_prompt(processor, build_messages("Q?", system="SYS"))
    assert text == (
        "<|im_start|>system\nSYS<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Q?<|im_end|>\n<|im_start|>assistant\n"
    )
    full = processor.apply_chat_template(
        build_messages("Q?", system=None, with_image=False) + [assistant_message("A")], tokenize=False
    )
    assert full.endswith("<|im_start|>user\nQ?<|im_end|>\n<|im_start|>assistant\nA<|im_end|>\n")
    assert full.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")


def test_generate_returns_one_string_per_prompt(tiny_dir: Path) -> None:
    processor = load_processor(tiny_dir)
    model = load_model(tiny_dir, device="cpu")
    images = [_image((200, 90, 80)), None, _image((90, 60, 40), size=(60, 160))]
    prompts = ["What is this?", "A text-only question that is longer than the others", "x"]
    seen = []
    out = generate(
        model,
        processor,
        images,
        prompts,
        max_new_tokens=4,
        batch_size=2,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert len(out) == 3 and all(isinstance(s, str) for s in out)
    assert seen == [(2, 3), (3, 3)]
    again = generate(model, processor, images, prompts, max_new_tokens=4, batch_size=3)
    assert again == out  # greedy, and batch composition does not change results
    sampled = generate(model, processor, images[:1], prompts[:1], max_new_tokens=4, do_sample=True, seed=3)
    assert len(sampled) == 1
    with pytest.raises(ValueError):
        generate(model, processor, images[:1], prompts, max_new_tokens=4)


def test_saved_weights_remember_the_system_prompt_they_were_taught_with(tmp_path: Path) -> None:
    """`skinr1 diagnose` and the MLflow model ask a model as it was trained: the adapter's prompt, else the base's,
    else (a model this pipeline did not train) the paper's."""
    base, adapter = tmp_path / "base", tmp_path / "adapter"
    base.mkdir()
    adapter.mkdir()
    assert taught_system_prompt(base, adapter) == SYSTEM_PROMPT
    save_system_prompt(base, None)  # trained without a system prompt: nothing to remember
    assert not (base / SYSTEM_PROMPT_FILE).exists()
    save_system_prompt(base, COMPACT_SYSTEM_PROMPT)
    assert taught_system_prompt(base, adapter) == taught_system_prompt(base) == COMPACT_SYSTEM_PROMPT
    save_system_prompt(adapter, "adapter's own")
    assert taught_system_prompt(base, adapter) == "adapter's own"
