"""A tiny, randomly initialised Qwen2.5-VL built entirely offline, for the demo profile and for tests.

Why: the real base model (Qwen2.5-VL-7B-Instruct) cannot be downloaded here, yet every downstream stage (SFT, GRPO,
evaluation) must run end to end with the same classes, processor and chat template the real model uses. So we train a
byte-level BPE tokenizer on the project's own text (Qwen's special tokens included), wrap it in a real
`Qwen2_5_VLProcessor`, and instantiate `Qwen2_5_VLForConditionalGeneration` from a ~1M-parameter config. The result is
saved with `save_pretrained` (safetensors) and loads through `model_factory` exactly like a real checkpoint.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import torch

from skinr1_pipeline.storage.atomic import write_json

#: Qwen2.5-VL's special tokens; ids follow this order (0..n-1) in the tiny tokenizer.
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
MANIFEST_NAME = "skinr1_model.json"
DEFAULT_SYSTEM = "You are a helpful assistant."

# Qwen2-VL-style template, written for this project (no whitespace control; transformers renders with
# trim_blocks, so a newline right after a block tag is written as an expression). Content may be a
# string or a list of typed parts; an image part becomes <|vision_start|><|image_pad|><|vision_end|> (the processor
# expands the pad to the patch count). The assistant body and its <|im_end|> sit inside {% generation %} so
# transformers can return an assistant-token mask that includes the end-of-turn token the model must learn to emit.
CHAT_TEMPLATE = (
    "{% macro render(content) %}"
    "{% if content is string %}{{ content }}"
    "{% else %}{% for part in content %}"
    "{% if part['type'] == 'image' or 'image' in part or 'image_url' in part %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' or 'video' in part %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in part %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "{% endmacro %}"
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\n" + DEFAULT_SYSTEM + "<|im_end|>\n"
    "{% endif %}"
    "{% for message in messages %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['role'] == 'assistant' %}"
    "{% generation %}{{ render(message['content']) }}<|im_end|>{% endgeneration %}"
    "{% else %}{{ render(message['content']) }}<|im_end|>"
    "{% endif %}"
    "{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _train_tokenizer(corpus: list[str], vocab_size: int):
    """Byte-level BPE over `corpus`; deterministic for a given corpus order (single-threaded merges are ordered)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=list(SPECIAL_TOKENS[1:]),
        model_max_length=32768,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def default_corpus() -> list[str]:
    """Project text the tokenizer should compress well: the prompt contract and taxonomy names."""
    from skinr1_pipeline.modeling import prompt_format as pf

    texts = [
        *pf.SYSTEM_PROMPTS.values(),
        pf.build_open_prompt(),
        DEFAULT_SYSTEM,
        pf.format_completion("the lesion shows features", "melanoma; status: malignant"),
    ]
    try:
        from skinr1_pipeline.knowledge.taxonomy import Taxonomy

        tax = Taxonomy.load()
        texts += [n.name for n in tax]
        texts.append(pf.build_mcq_prompt(pf.DEFAULT_MCQ_QUESTION, [n.name for n in tax][:4]))
    except Exception:  # noqa: BLE001 - the taxonomy only enriches the corpus; the tokenizer works without it
        pass
    return texts


def _model_config(tokenizer, *, text_hidden: int, text_layers: int, vision_depth: int, vision_hidden: int):
    from transformers import Qwen2_5_VLConfig

    heads = max(1, text_hidden // 32)
    head_dim = text_hidden // heads
    # mrope splits head_dim/2 rotary frequencies over (temporal, height, width), in Qwen's 1:1.5:1.5 proportion.
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    mrope = [t, h, half - t - h]
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=text_hidden * 2,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2),
        max_position_embeddings=4096,
        max_window_layers=text_layers,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    vision_heads = max(1, vision_hidden // 16)
    vision_config = dict(
        depth=vision_depth,
        hidden_size=vision_hidden,
        intermediate_size=vision_hidden * 2,
        num_heads=vision_heads,
        out_hidden_size=text_hidden,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[vision_depth - 1],
    )
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


MIN_PIXELS = 56 * 56


def build_processor(texts: list[str], *, vocab_size: int, max_pixels: int):
    """A real `Qwen2_5_VLProcessor` around a BPE tokenizer trained on `texts` (Qwen's special tokens first)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    if max_pixels < MIN_PIXELS:
        raise ValueError(f"max_pixels must be at least {MIN_PIXELS}")
    tokenizer = _train_tokenizer(texts, vocab_size)
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=max_pixels)
    video_processor = Qwen2VLVideoProcessor(min_pixels=MIN_PIXELS, max_pixels=max_pixels)
    return Qwen2_5_VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def build_tiny_model(
    out_dir: Path,
    corpus: Iterable[str],
    *,
    seed: int = 0,
    vocab_size: int = 2048,
    text_hidden: int = 128,
    text_layers: int = 2,
    vision_depth: int = 2,
    vision_hidden: int = 64,
    max_pixels: int = 112 * 112,
) -> Path:
    """Build and save a tiny Qwen2.5-VL (model + processor + manifest) under `out_dir`; same inputs, same bytes.

    `corpus` should hold the text the model will see (prompts, SYSTEM_PROMPT, tags, taxonomy names, trajectories);
    `default_corpus()` is always added so the format tags and the system prompt tokenize compactly.
    """
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    if text_hidden % 32 or vision_hidden % 16:
        raise ValueError("text_hidden must be a multiple of 32 and vision_hidden a multiple of 16")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = [t for t in corpus if isinstance(t, str) and t.strip()] + default_corpus()
    processor = build_processor(texts, vocab_size=vocab_size, max_pixels=max_pixels)
    tokenizer = processor.tokenizer

    config = _model_config(
        tokenizer,
        text_hidden=text_hidden,
        text_layers=text_layers,
        vision_depth=vision_depth,
        vision_hidden=vision_hidden,
    )
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.float32).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id,
        eos_token_id=[config.text_config.eos_token_id, config.text_config.bos_token_id],
        pad_token_id=config.text_config.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out_dir, safe_serialization=True)
    processor.save_pretrained(out_dir)

    corpus_digest = hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()
    manifest = {
        "kind": "tiny_random_qwen2_5_vl",
        "why": "offline stand-in for Qwen2.5-VL-7B-Instruct: same classes and chat format, random weights",
        "seed": seed,
        "vocab_size_requested": vocab_size,
        "vocab_size": len(tokenizer),
        "text_hidden": text_hidden,
        "text_layers": text_layers,
        "vision_depth": vision_depth,
        "vision_hidden": vision_hidden,
        "min_pixels": MIN_PIXELS,
        "max_pixels": max_pixels,
        "parameters": sum(p.numel() for p in model.parameters()),
        "corpus_texts": len(texts),
        "corpus_sha256": corpus_digest,
        "special_token_ids": {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS},
    }
    write_json(out_dir / MANIFEST_NAME, manifest, sort_keys=True)
    return out_dir
