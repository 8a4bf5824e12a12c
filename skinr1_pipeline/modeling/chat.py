"""Chat messages in TRL's conversational vision-language format, shared by SFT, GRPO and generation.

Why one module: SFT trains on exactly the prompt layout that GRPO and evaluation later generate from. Content is a list
of typed parts; the image part is a bare `{"type": "image"}` placeholder that TRL fills from the row's `images`
(and `render_prompt` renders as the vision tokens).
"""

from __future__ import annotations

from typing import Any

from skinr1_pipeline.modeling.prompt_format import SYSTEM_PROMPT

Message = dict[str, Any]


def build_messages(prompt_text: str, *, system: str | None = SYSTEM_PROMPT, with_image: bool = True) -> list[Message]:
    """System turn (when `system`) + one user turn: image placeholder first, then the question text."""
    if not isinstance(prompt_text, str) or not prompt_text.strip():
        raise ValueError("prompt_text must be a non-empty string")
    messages: list[Message] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    user: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
    user.append({"type": "text", "text": prompt_text})
    messages.append({"role": "user", "content": user})
    return messages


def assistant_message(text: str) -> Message:
    """The assistant turn holding a completion (SFT target)."""
    if not isinstance(text, str):
        raise ValueError("assistant text must be a string")
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def render_prompt(processor, messages: list[Message]) -> str:
    """Chat-template text for generation: the prompt messages followed by the assistant header."""
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


#: Tokens that stand for image or video content. A completion must never contain one: the model's forward pairs each
#: with a vision feature, so a sampled one breaks the next log-prob pass ("Image features and image tokens do not
#: match"). Sampling therefore bans them (`vision_token_ids`).
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def vision_token_ids(tokenizer) -> list[int]:
    """Ids of the `VISION_TOKENS` this tokenizer knows (a text-only tokenizer knows none)."""
    vocab = tokenizer.get_vocab()
    return sorted({vocab[t] for t in VISION_TOKENS if t in vocab})
