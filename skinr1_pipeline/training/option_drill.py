"""Option-reading drill for the tiny demo model.

Why: a real Qwen2.5-VL arrives able to copy text from its prompt and relate names it knows; the demo's 2-layer LM
starts from random weights. Trained on ~460 MCQ rationales only, SFT taught it the form of the option scan but not the
reading: it wrote "benign neoplasm: fits, level 2." for every option line. This drill gives the language model
that skill the way pretraining gives it to a real one: many synthetic multiple-choice items built from the taxonomy
and the *train* labels and images only (no held-out sample). The impression is given; the model learns to write the
option scan (`tasks.mcq.option_scan_lines`) and the answer, in the exact chat layout SFT uses. It runs after the
vision warm-up (which, run second, erased it) and shows a train image of the item's label.

In the `text` answer form (`prompt_format.ANSWER_FORMS`, the demo recipe's) the completion writes the impression's
taxonomy path instead of the option scan and answers with the offered name on it: copying a name, which the 2-layer
model learns, instead of looking up its letter, which it did not.

SFT alone erases most of it, so `mix_drill_rows` also mixes drill rows into the SFT data; a fifth of them ask the
3-way status question (`status_drill_items`), without which malignancy answers lost their `<thinking>` block. The
README ("How the demo model is prepared") has the measurements behind each choice.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from PIL import Image

from skinr1_pipeline.data.image_open import model_image
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.modeling.chat import assistant_message, build_messages, render_prompt
from skinr1_pipeline.modeling.prompt_format import (
    DEFAULT_MCQ_QUESTION,
    SYSTEM_PROMPT,
    build_mcq_prompt,
    checked_answer_form,
    format_completion,
    format_mcq_answer,
    parse_completion,
)
from skinr1_pipeline.storage.atomic import write_parquet
from skinr1_pipeline.tasks.mcq import (
    MALIGNANCY_OPTIONS,
    impression_line,
    malignancy_prompt,
    option_path,
    option_scan_lines,
    path_line,
)
from skinr1_pipeline.training.demo_pretraining import check_steps

if TYPE_CHECKING:
    import pandas as pd


# Share of drill items offering labels (the in-domain suites' options: the impression's own name is among them) rather
# than one taxonomy level (the hierarchical suite's: the impression must be placed under one of them).
LABEL_SHARE = 0.5


@dataclass(frozen=True)
class DrillItem:
    label: str  # the taxonomy node the impression names
    prompt: str  # the user turn: question and lettered options
    options: tuple[str, ...]
    opening: str  # the completion's first line (the impression), given as context
    target: str  # the rest of the completion: what the model learns to write
    answer_index: int
    unlearned: str = ""  # a span of `target` written but not learned (no loss on its tokens): the format warm-up's name


def drill_items(
    labels: Sequence[str], taxonomy: Taxonomy, n: int, seed: int, n_options: int = 4, form: str = "letter"
) -> list[DrillItem]:
    """`n` set-first items: the option set is drawn first (`n_options` labels none of which is an ancestor of another,
    in a `LABEL_SHARE` of items, else nodes at one taxonomy level of the labels' paths), then the answer uniformly
    among them, then a label at or below the answer, whose impression the item gives.

    Why set-first: built as the paper builds its items (the label's own ancestors among the options, the deepest one
    the answer), the drill taught the deepest-offered-ancestor shortcut, which answers those items without the image
    (the blind structure guess scored 0.43 on the demo's paper-built in-domain items). Here exactly one option lies on
    the impression's path and no function of the option list picks it above 1/n, so the one thing to learn is how
    the impression relates to each option. `form` (`ANSWER_FORMS`) is how the completion reaches the answer: the
    option scan and the letter, or the impression's taxonomy path and the offered text on it.
    """
    checked_answer_form(form)
    nodes = sorted({x for x in labels if isinstance(x, str) and x in taxonomy and x != taxonomy.root})
    if not nodes:
        raise ValueError("the option drill needs at least one label that is a non-root taxonomy node")
    under: dict[str, list[str]] = {}  # option node -> the labels at or below it
    levels: dict[int, set[str]] = {}
    for label in nodes:
        for depth, node in enumerate(option_path(taxonomy, label), start=1):
            under.setdefault(node, []).append(label)
            levels.setdefault(depth, set()).add(node)
    sets = [sorted(level) for _, level in sorted(levels.items()) if len(level) >= n_options]
    by_label = _antichain(nodes, taxonomy, n_options, random.Random(seed)) is not None
    if not sets and not by_label:
        widest = max(len(level) for level in levels.values())
        raise ValueError(
            f"the option drill needs {n_options} options at one taxonomy level or {n_options} labels none of which "
            f"is an ancestor of another; the {len(nodes)} label(s) give at most {widest} per level"
        )
    rng = random.Random(seed)
    items = []
    while len(items) < n:
        if sets and not (by_label and rng.random() < LABEL_SHARE):
            options = rng.sample(sets[rng.randrange(len(sets))], n_options)
        else:  # a greedy draw can block itself (an inner label first); draw again
            options = _antichain(nodes, taxonomy, n_options, rng)
            if options is None:
                continue
        answer = rng.randrange(n_options)
        label = rng.choice(sorted(under[options[answer]]))
        names = [taxonomy[x].name for x in options]
        path = option_path(taxonomy, label)
        prompt = build_mcq_prompt(DEFAULT_MCQ_QUESTION, names)
        items.append(_scan_item(label, taxonomy, prompt, names, options, path, answer, taxonomy[label].bucket, form))
    return items


def _antichain(nodes: Sequence[str], taxonomy: Taxonomy, k: int, rng: random.Random) -> list[str] | None:
    """`k` of `nodes` in random order, none an ancestor of another (None when the nodes do not allow it)."""
    chosen: list[str] = []
    for node in rng.sample(list(nodes), len(nodes)):
        if all(node not in taxonomy.path(c) and c not in taxonomy.path(node) for c in chosen):
            chosen.append(node)
            if len(chosen) == k:
                return chosen
    return None


def _with_status_items(
    labels: Sequence[str], taxonomy: Taxonomy, n: int, seed: int, status_share: float, form: str
) -> list[DrillItem]:
    """`n` items: drill items, then a `status_share` of status items (`status_drill_items`), unshuffled."""
    n_status = round(n * status_share)
    return drill_items(labels, taxonomy, n - n_status, seed, form=form) + status_drill_items(
        labels, taxonomy, n_status, seed, form=form
    )


def _scan_item(
    node: str,
    taxonomy: Taxonomy,
    prompt: str,
    names: Sequence[str],
    option_nodes: Sequence[str],
    path: Sequence[str],
    answer: int,
    status: str | None,
    form: str = "letter",
    path_is_taxonomy: bool = True,
) -> DrillItem:
    """The item whose completion opens with `node`'s impression, then scans the options against `path` and answers
    by letter (`letter`), or writes the taxonomy path and answers by the offered text (`text`; the status question,
    whose `path` holds a bucket, not taxonomy nodes, goes straight to the answer: `path_is_taxonomy=False`)."""
    opening = impression_line(taxonomy[node].name)
    if form == "text":
        steps = [path_line([taxonomy[x].name for x in path])] if path_is_taxonomy else []
    else:
        steps = option_scan_lines(names, option_nodes, path)
    completion = format_completion("\n".join([opening, *steps]), format_mcq_answer(names, answer, status, form=form))
    cut = completion.index(opening) + len(opening) + 1
    return DrillItem(node, prompt, tuple(names), completion[:cut], completion[cut:], answer)


def status_drill_items(
    labels: Sequence[str], taxonomy: Taxonomy, n: int, seed: int, form: str = "letter"
) -> list[DrillItem]:
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
        answer = buckets.index(bucket)
        items.append(_scan_item(node, taxonomy, prompt, names, buckets, [bucket], answer, None, form, False))
    return items


def _texts(processor, item: DrillItem, with_image: bool, system: str | None) -> tuple[str, str]:
    """(context, target) in SFT's chat layout (SFT's system prompt, the prompt turn, the given impression), then the
    rest of the turn."""
    messages = build_messages(item.prompt, system=system, with_image=with_image)
    context = render_prompt(processor, messages) + item.opening
    full = processor.apply_chat_template(messages + [assistant_message(item.opening + item.target)], tokenize=False)
    if not full.startswith(context):
        raise RuntimeError("the chat template does not render the assistant turn after the generation prompt")
    return context, full[len(context) :]


def training_batch(
    processor, items: Sequence[DrillItem], images: Sequence[Image.Image | None], system: str | None = SYSTEM_PROMPT
) -> dict[str, Any]:
    """Model inputs with labels on the target tokens only (right padding), less the tokens of each item's
    `unlearned` span (its first occurrence in the target; a token that straddles the span's edge is not learned)."""
    tok = processor.tokenizer
    texts, tails, skipped = [], [], []
    for item, image in zip(items, images):
        context, target = _texts(processor, item, image is not None, system)
        texts.append(context + target)
        encoded = tok(target, add_special_tokens=False, return_offsets_mapping=bool(item.unlearned))
        tails.append(len(encoded["input_ids"]))
        skipped.append(_span_tokens(encoded["offset_mapping"], target, item.unlearned) if item.unlearned else [])
    present = [im for im in images if im is not None]
    batch = processor(text=texts, images=present or None, padding=True, padding_side="right", return_tensors="pt")
    labels = torch.full_like(batch["input_ids"], -100)
    for i, (n, length) in enumerate(zip(tails, batch["attention_mask"].sum(dim=1).tolist())):
        labels[i, length - n : length] = batch["input_ids"][i, length - n : length]
        for k in skipped[i]:
            labels[i, length - n + k] = -100
    batch["labels"] = labels
    return dict(batch)


def _span_tokens(offsets: Sequence[tuple[int, int]], target: str, span: str) -> list[int]:
    """Indices of the target's tokens that overlap the first occurrence of `span`."""
    start = target.find(span)
    if start < 0:
        raise ValueError(f"unlearned span {span!r} is not in the target {target!r}")
    end = start + len(span)
    return [k for k, (a, b) in enumerate(offsets) if a < end and b > start]


@torch.no_grad()
def drill_scores(
    model,
    processor,
    items: Sequence[DrillItem],
    images: Sequence[Image.Image | None] | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 160,
    system: str | None = SYSTEM_PROMPT,
) -> tuple[float, float]:
    """(share of items whose greedy continuation parses, share that picks the answer's letter)."""
    tok = processor.tokenizer
    images = list(images) if images is not None else [None] * len(items)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    parsed_count = hits = 0
    for start in range(0, len(items), batch_size):
        chunk, chunk_images = items[start : start + batch_size], images[start : start + batch_size]
        contexts = [_texts(processor, it, im is not None, system)[0] for it, im in zip(chunk, chunk_images)]
        present = [im for im in chunk_images if im is not None]
        enc = processor(text=contexts, images=present or None, padding=True, padding_side="left", return_tensors="pt")
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_id)
        for it, row in zip(chunk, out):
            text = it.opening + tok.decode(row[enc["input_ids"].shape[1] :], skip_special_tokens=True)
            parsed = parse_completion(text, list(it.options))
            parsed_count += bool(parsed.ok)
            hits += bool(parsed.ok and parsed.option_index == it.answer_index)
    if not items:
        return float("nan"), float("nan")
    return parsed_count / len(items), hits / len(items)


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
    form: str = "letter",
    system: str | None = SYSTEM_PROMPT,
) -> dict[str, Any]:
    """Train the language model (embeddings, layers, head; the vision tower is untouched) on fresh drill items, then
    overwrite the weights in `model_dir`. Returns losses, the held-out drill accuracy (fresh items) and timing.

    With `image_paths` (label -> train image files) each item shows a train image of its label, as SFT prompts do;
    without them the copying keys on text-only positions that image tokens later shift (see the module docstring).
    """
    check_steps(steps, batch_size)
    items = drill_items(labels, taxonomy, steps * batch_size, seed, form=form)
    held_out = drill_items(labels, taxonomy, eval_items, seed + 1, form=form)
    return _train_language_model(
        model_dir,
        (items, _pick_images(items, image_paths, seed, max_pixels)),
        (held_out, _pick_images(held_out, image_paths, seed + 1, max_pixels)),
        steps=steps,
        seed=seed,
        batch_size=batch_size,
        learning_rate=learning_rate,
        max_pixels=max_pixels,
        system=system,
    )


def format_items(
    labels: Sequence[str], taxonomy: Taxonomy, n: int, seed: int, status_share: float = 0.2, form: str = "letter"
):
    """`n` items that teach the answer format and nothing about diagnosis: drill and status items whose whole
    completion is the target, the impression naming a label under a uniformly drawn option; the caller shows an image
    drawn independently of the item (`format_warm_up`). The impression's name is written but not learned
    (`DrillItem.unlearned`): everything around it is.

    Why: the demo's base model, trained from random weights, never writes the answer format, so "RL-only" (GRPO from
    the base) could earn no reward and "RL-only < SFT" was built in. After this the base answers in the format, as an
    instruction-tuned base would before it learns dermatology, and SFT and RL-only start from it alike. Why the name
    is not learned: the image is unrelated to it, so learning it taught the model to name a diagnosis without the
    image (300 steps of that, name learned, made SFT ignore the image); the name the base writes stays the one its
    captioning warm-up reads off the image.
    """
    items = _with_status_items(labels, taxonomy, n, seed, status_share, form)
    random.Random(seed).shuffle(items)
    return [
        replace(item, opening="", target=item.opening + item.target, unlearned=taxonomy[item.label].name)
        for item in items
    ]


def format_warm_up(
    model_dir: str | Path,
    labels: Sequence[str],
    taxonomy: Taxonomy,
    image_files: Sequence[str],
    *,
    steps: int,
    seed: int = 0,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    eval_items: int = 64,
    max_pixels: int = 112 * 112,
    form: str = "letter",
    system: str | None = SYSTEM_PROMPT,
) -> dict[str, Any]:
    """Train the language model on `format_items`, each shown with a train image drawn at random from `image_files`
    (unrelated to the item's label), then overwrite the weights in `model_dir`. Returns losses, timing and, on fresh
    items, the parse rate (the point) and the letter accuracy (near 1/n by construction)."""
    check_steps(steps, batch_size)
    if not image_files:
        raise ValueError("the format warm-up needs train images to show; none were given")
    items = format_items(labels, taxonomy, steps * batch_size, seed, form=form)
    held_out = format_items(labels, taxonomy, eval_items, seed + 1, form=form)
    # Every label offered every train image: the image an item shows is drawn independently of its label.
    any_image = dict.fromkeys({item.label for item in (*items, *held_out)}, list(image_files))
    return _train_language_model(
        model_dir,
        (items, _pick_images(items, any_image, seed, max_pixels)),
        (held_out, _pick_images(held_out, any_image, seed + 1, max_pixels)),
        steps=steps,
        seed=seed,
        batch_size=batch_size,
        learning_rate=learning_rate,
        max_pixels=max_pixels,
        system=system,
    )


def _train_language_model(
    model_dir: str | Path,
    train: tuple[Sequence[DrillItem], Sequence[Image.Image | None]],
    held_out: tuple[Sequence[DrillItem], Sequence[Image.Image | None]],
    *,
    steps: int,
    seed: int,
    batch_size: int,
    learning_rate: float,
    max_pixels: int,
    system: str | None,
) -> dict[str, Any]:
    """AdamW on the language model's parameters (the vision tower frozen) over `train` in batches, then the held-out
    parse rate and letter accuracy; the weights in `model_dir` are replaced by the trained ones."""
    from skinr1_pipeline.modeling.model_factory import load_model, load_processor
    from skinr1_pipeline.training.demo_pretraining import save_in_place

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
    items, images = train
    start, losses = time.perf_counter(), []
    for step in range(steps):
        window = slice(step * batch_size, (step + 1) * batch_size)
        loss = model(**training_batch(processor, items[window], images[window], system)).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"language-model drill loss is {loss.item()} at step {step + 1}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    train_seconds = time.perf_counter() - start
    model.eval()
    parsed, accuracy = drill_scores(model, processor, *held_out, system=system)
    save_in_place(model, model_dir)
    every = max(1, steps // 10)
    return {
        "steps": steps,
        "batch_size": batch_size,
        "seconds": round(train_seconds, 1),
        "with_images": any(im is not None for im in images),
        "train_loss": [{"step": s + 1, "loss": losses[s]} for s in range(0, steps, every)]
        + ([{"step": steps, "loss": losses[-1]}] if (steps - 1) % every else []),
        "held_out_items": len(held_out[0]),
        "held_out_parse_rate": parsed,
        "held_out_accuracy": accuracy,
    }


def drill_rows(
    labels: Sequence[str],
    taxonomy: Taxonomy,
    n: int,
    seed: int,
    image_paths: Mapping[str, Sequence[str]],
    status_share: float = 0.2,
    form: str = "letter",
) -> pd.DataFrame:
    """`n` drill items as SFT rows (sample_id, image_path, prompt, completion), each with a train image of its label;
    a `status_share` of them ask the 3-way status question (`status_drill_items`).

    Why: drilled into the base model alone, the option reading faded during SFT; rows mixed into the SFT data keep
    it trained while SFT teaches the rest.
    """
    import pandas as pd

    if not 0.0 <= status_share <= 1.0:
        raise ValueError(f"status_share must be in [0, 1], got {status_share}")
    items = _with_status_items(labels, taxonomy, n, seed, status_share, form)
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
    form: str = "letter",
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
    labels = train_samples["taxonomy_node"]
    rows = drill_rows(labels, taxonomy, n, seed, paths, form=form) if n else trajectories.iloc[:0]
    mixed = pd.concat([trajectories, rows], ignore_index=True).sample(frac=1.0, random_state=seed)
    write_parquet(mixed, out_path)
    return {"trajectories": len(trajectories), "drill_rows": len(rows)}
