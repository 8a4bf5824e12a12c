"""Option-reading drill for the tiny demo model.

Why: a real Qwen2.5-VL arrives able to copy text from its prompt and relate names it knows; the demo's 2-layer LM
starts from random weights. Trained on ~460 MCQ rationales only, SFT taught it the form of the option scan but not the
reading: it wrote "benign neoplasm: fits, level 2." for every option line. This drill gives the language model
that skill the way pretraining gives it to a real one: many synthetic multiple-choice items built from the taxonomy
and the *train* labels and images only (no held-out sample). The impression is given; the model learns to write the
option scan (`tasks.mcq.option_scan_lines`) and the answer, in the exact chat layout SFT uses. It runs after the
vision warm-up (which, run second, erased it) and shows a train image of the item's label.

SFT alone erases most of it, so `mix_drill_rows` also mixes drill rows into the SFT data; a fifth of them ask the
3-way status question (`status_drill_items`), without which malignancy answers lost their `<thinking>` block. The
README ("How the demo model is prepared") has the measurements behind each choice.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from skinr1_pipeline.data.image_open import model_image
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.modeling.chat import assistant_message, build_messages, render_prompt
from skinr1_pipeline.modeling.prompt_format import (
    DEFAULT_MCQ_QUESTION,
    build_mcq_prompt,
    format_completion,
    format_mcq_answer,
    parse_completion,
)
from skinr1_pipeline.storage.atomic import write_parquet
from skinr1_pipeline.tasks.mcq import (
    MALIGNANCY_OPTIONS,
    MAX_CORRECT,
    impression_line,
    ineligible_distractors,
    malignancy_prompt,
    option_path,
    option_scan_lines,
)

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class DrillItem:
    label: str  # the taxonomy node the impression names
    prompt: str  # the user turn: question and lettered options
    options: tuple[str, ...]
    opening: str  # the completion's first line (the impression), given as context
    target: str  # the rest of the completion: what the model learns to write
    answer_index: int


def drill_items(labels: Sequence[str], taxonomy: Taxonomy, n: int, seed: int, n_options: int = 4) -> list[DrillItem]:
    """`n` items: a label drawn from `labels`, 1..3 nodes of its path and distractors from the other labels' paths
    (as `tasks.mcq` builds them); the answer is the deepest offered node of the path."""
    nodes = sorted({x for x in labels if isinstance(x, str) and x in taxonomy and x != taxonomy.root})
    if not nodes:
        raise ValueError("the option drill needs at least one label that is a non-root taxonomy node")
    pool = sorted({p for x in nodes for p in option_path(taxonomy, x)})
    rng = random.Random(seed)
    items = []
    while len(items) < n:
        node = rng.choice(nodes)
        path = option_path(taxonomy, node)
        banned = ineligible_distractors(taxonomy, node)
        distractors = [p for p in pool if p not in banned]
        k = rng.randint(1, min(MAX_CORRECT, len(path), n_options - 1))
        if len(distractors) < n_options - k:
            raise ValueError(
                f"label {node}: {len(distractors)} distractor node(s) among the labels' paths, "
                f"{n_options - k} needed; give the drill more distinct labels"
            )
        option_nodes = rng.sample(path, k) + rng.sample(distractors, n_options - k)
        rng.shuffle(option_nodes)
        answer = max(range(n_options), key=lambda i: path.index(option_nodes[i]) if option_nodes[i] in path else -1)
        names = [taxonomy[x].name for x in option_nodes]
        items.append(
            _scan_item(
                node,
                taxonomy,
                build_mcq_prompt(DEFAULT_MCQ_QUESTION, names),
                names,
                option_nodes,
                path,
                answer,
                taxonomy[node].bucket,
            )
        )
    return items


def _scan_item(
    node: str,
    taxonomy: Taxonomy,
    prompt: str,
    names: Sequence[str],
    option_nodes: Sequence[str],
    path: Sequence[str],
    answer: int,
    status: str | None,
) -> DrillItem:
    """The item whose completion opens with `node`'s impression, scans the options against `path` and answers."""
    opening = impression_line(taxonomy[node].name)
    completion = format_completion(
        "\n".join([opening, *option_scan_lines(names, option_nodes, path)]), format_mcq_answer(names, answer, status)
    )
    cut = completion.index(opening) + len(opening) + 1
    return DrillItem(node, prompt, tuple(names), completion[:cut], completion[cut:], answer)


def status_drill_items(labels: Sequence[str], taxonomy: Taxonomy, n: int, seed: int) -> list[DrillItem]:
    """`n` items of the 3-way status question (benign / malignant / precancerous in situ, the malignancy suite's
    fixed options): the impression names a train label, the scan places each status against the label's bucket.

    Why: without them the option-drilled model met this question, whose options are no diagnoses, with no
    `<thinking>` block at all (every malignancy answer unreadable on the demo).
    """
    nodes = sorted({x for x in labels if isinstance(x, str) and x in taxonomy and taxonomy[x].bucket})
    if not nodes:
        raise ValueError("the status drill needs at least one label with a malignancy bucket")
    names = [text for text, _ in MALIGNANCY_OPTIONS]
    buckets = [bucket for _, bucket in MALIGNANCY_OPTIONS]
    prompt = malignancy_prompt()
    rng = random.Random(seed)
    items = []
    for _ in range(n):
        node = rng.choice(nodes)
        bucket = taxonomy[node].bucket
        items.append(_scan_item(node, taxonomy, prompt, names, buckets, [bucket], buckets.index(bucket), None))
    return items


def _texts(processor, item: DrillItem, with_image: bool) -> tuple[str, str]:
    """(context, target) in SFT's chat layout: the prompt turn plus the given impression, then the rest of the turn."""
    messages = build_messages(item.prompt, with_image=with_image)
    context = render_prompt(processor, messages) + item.opening
    full = processor.apply_chat_template(messages + [assistant_message(item.opening + item.target)], tokenize=False)
    if not full.startswith(context):
        raise RuntimeError("the chat template does not render the assistant turn after the generation prompt")
    return context, full[len(context) :]


def training_batch(processor, items: Sequence[DrillItem], images: Sequence[Image.Image | None]) -> dict[str, Any]:
    """Model inputs with labels on the target tokens only (right padding)."""
    tok = processor.tokenizer
    texts, tails = [], []
    for item, image in zip(items, images):
        context, target = _texts(processor, item, image is not None)
        texts.append(context + target)
        tails.append(len(tok(target, add_special_tokens=False)["input_ids"]))
    present = [im for im in images if im is not None]
    batch = processor(text=texts, images=present or None, padding=True, padding_side="right", return_tensors="pt")
    labels = torch.full_like(batch["input_ids"], -100)
    for i, (n, length) in enumerate(zip(tails, batch["attention_mask"].sum(dim=1).tolist())):
        labels[i, length - n : length] = batch["input_ids"][i, length - n : length]
    batch["labels"] = labels
    return dict(batch)


@torch.no_grad()
def drill_accuracy(
    model,
    processor,
    items: Sequence[DrillItem],
    images: Sequence[Image.Image | None] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 160,
) -> float:
    """Share of items whose greedy continuation parses and picks the answer's letter (0 for an unparseable one)."""
    tok = processor.tokenizer
    images = list(images) if images is not None else [None] * len(items)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    hits = 0
    for start in range(0, len(items), batch_size):
        chunk, chunk_images = items[start : start + batch_size], images[start : start + batch_size]
        contexts = [_texts(processor, it, im is not None)[0] for it, im in zip(chunk, chunk_images)]
        present = [im for im in chunk_images if im is not None]
        enc = processor(text=contexts, images=present or None, padding=True, padding_side="left", return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
        for it, row in zip(chunk, out):
            text = it.opening + tok.decode(row[enc["input_ids"].shape[1] :], skip_special_tokens=True)
            parsed = parse_completion(text, list(it.options))
            hits += bool(parsed.ok and parsed.option_index == it.answer_index)
    return hits / len(items) if items else float("nan")


def _pick_images(
    items: Sequence[DrillItem], image_paths: Mapping[str, Sequence[str]] | None, seed: int, max_pixels: int
) -> list[Image.Image | None]:
    """A train image of each item's label (None without `image_paths` or for a label without images)."""
    if not image_paths:
        return [None] * len(items)
    rng = random.Random(seed)
    cache: dict[str, Image.Image] = {}
    out: list[Image.Image | None] = []
    for item in items:
        paths = image_paths.get(item.label) or ()
        if not paths:
            out.append(None)
            continue
        path = rng.choice(list(paths))
        if path not in cache:
            cache[path] = model_image(path, max_pixels=max_pixels)
        out.append(cache[path])
    return out


def train_option_drill(
    model_dir: str | Path,
    labels: Sequence[str],
    taxonomy: Taxonomy,
    *,
    steps: int,
    image_paths: Mapping[str, Sequence[str]] | None = None,
    seed: int = 0,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    eval_items: int = 64,
    max_pixels: int = 112 * 112,
) -> dict[str, Any]:
    """Train the language model (embeddings, layers, head; the vision tower is untouched) on fresh drill items, then
    overwrite the weights in `model_dir`. Returns losses, the held-out drill accuracy (fresh items) and timing.

    With `image_paths` (label -> train image files) each item shows a train image of its label, as SFT prompts do;
    without them the copying keys on text-only positions that image tokens later shift (see the module docstring).
    """
    from skinr1_pipeline.modeling.model_factory import load_model, load_processor
    from skinr1_pipeline.training.demo_pretraining import replace_weights

    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    torch.manual_seed(seed)
    model_dir = Path(model_dir)
    processor = load_processor(model_dir, max_pixels=max_pixels)
    model = load_model(model_dir, dtype=torch.float32, device="cpu").train()
    params = []
    for name, p in model.named_parameters():
        p.requires_grad_(not name.startswith("model.visual."))
        if p.requires_grad:
            params.append(p)
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    warmup = max(1, min(50, steps // 10))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.1, 1.0 - s / steps)
    )
    items = drill_items(labels, taxonomy, steps * batch_size, seed)
    images = _pick_images(items, image_paths, seed, max_pixels)
    held_out = drill_items(labels, taxonomy, eval_items, seed + 1)
    held_out_images = _pick_images(held_out, image_paths, seed + 1, max_pixels)
    start, losses = time.perf_counter(), []
    for step in range(steps):
        window = slice(step * batch_size, (step + 1) * batch_size)
        loss = model(**training_batch(processor, items[window], images[window])).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"option drill loss is {loss.item()} at step {step + 1}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    train_seconds = time.perf_counter() - start
    model.eval()
    accuracy = drill_accuracy(model, processor, held_out, held_out_images)
    with tempfile.TemporaryDirectory(prefix="skinr1-drill-") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        replace_weights(model_dir, Path(tmp))
    every = max(1, steps // 10)
    return {
        "steps": steps,
        "batch_size": batch_size,
        "seconds": round(train_seconds, 1),
        "with_images": any(im is not None for im in images),
        "train_loss": [{"step": s + 1, "loss": losses[s]} for s in range(0, steps, every)]
        + ([{"step": steps, "loss": losses[-1]}] if (steps - 1) % every else []),
        "held_out_items": len(held_out),
        "held_out_accuracy": accuracy,
    }


def drill_rows(
    labels: Sequence[str],
    taxonomy: Taxonomy,
    n: int,
    seed: int,
    image_paths: Mapping[str, Sequence[str]],
    status_share: float = 0.2,
) -> pd.DataFrame:
    """`n` drill items as SFT rows (sample_id, image_path, prompt, completion), each with a train image of its label;
    a `status_share` of them ask the 3-way status question (`status_drill_items`).

    Why: drilled into the base model alone, the option reading faded during SFT; rows mixed into the SFT data keep
    it trained while SFT teaches the rest.
    """
    import pandas as pd

    if not 0.0 <= status_share <= 1.0:
        raise ValueError(f"status_share must be in [0, 1], got {status_share}")
    n_status = round(n * status_share)
    items = drill_items(labels, taxonomy, n - n_status, seed) + status_drill_items(labels, taxonomy, n_status, seed)
    rng = random.Random(seed)
    rows = []
    for i, item in enumerate(items):
        paths = sorted(image_paths.get(item.label) or ())
        if not paths:
            raise ValueError(f"label {item.label}: no train image to show with its drill items")
        rows.append(
            {
                "sample_id": f"option_drill/{i}",
                "image_path": rng.choice(paths),
                "prompt": item.prompt,
                "completion": item.opening + item.target,
            }
        )
    return pd.DataFrame(rows, columns=["sample_id", "image_path", "prompt", "completion"])


def mix_drill_rows(
    trajectories_path: str | Path,
    out_path: str | Path,
    train_samples: pd.DataFrame,
    taxonomy: Taxonomy,
    n: int,
    seed: int,
) -> dict[str, int]:
    """Write the SFT data with `n` drill rows (train labels and images only) shuffled among the trajectories.

    Shuffled, not appended, so a run that reads only the first rows (`max_train_samples`) still sees both kinds.
    Returns the counts written.
    """
    import pandas as pd

    from skinr1_pipeline.training.sft import REQUIRED_COLUMNS, resolve_image_path

    if n < 0:
        raise ValueError(f"the number of drill rows must be >= 0, got {n}")
    if "split" in train_samples and set(train_samples["split"]) - {"train"}:
        splits = sorted(set(train_samples["split"]))
        raise ValueError(f"drill rows must come from train samples only; got splits {splits}")
    trajectories = pd.read_parquet(trajectories_path, columns=list(REQUIRED_COLUMNS))
    # Relative image paths are relative to the trajectories' folder; the mixed file lives elsewhere.
    trajectories["image_path"] = [
        str(resolve_image_path(str(p), Path(trajectories_path).parent)) for p in trajectories["image_path"]
    ]
    paths = train_samples.groupby("taxonomy_node")["image_path"].agg(list).to_dict()
    rows = drill_rows(train_samples["taxonomy_node"], taxonomy, n, seed, paths) if n else trajectories.iloc[:0]
    mixed = pd.concat([trajectories, rows], ignore_index=True).sample(frac=1.0, random_state=seed)
    write_parquet(mixed, out_path)
    return {"trajectories": len(trajectories), "drill_rows": len(rows)}
