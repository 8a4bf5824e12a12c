"""The demo model's vision-language warm-up: only train images, merged into the base weights in place."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from safetensors.torch import load_file

from skinr1_pipeline.data.demo import generate_demo_data
from skinr1_pipeline.modeling.model_factory import load_model, load_processor
from skinr1_pipeline.modeling.prompt_format import (
    COMPACT_SYSTEM_PROMPT,
    SYSTEM_PROMPT,
    format_mcq_answer,
    parse_completion,
)
from skinr1_pipeline.modeling.tiny_model import build_tiny_model, default_corpus
from skinr1_pipeline.synthesis.pipeline import demo_samples
from skinr1_pipeline.tasks.mcq import option_path, option_scan_lines, path_line
from skinr1_pipeline.training.demo_pretraining import CAPTION_PROMPT, augmented, caption_frame, warm_up
from skinr1_pipeline.training.option_drill import (
    drill_items,
    drill_rows,
    format_items,
    format_warm_up,
    mix_drill_rows,
    status_drill_items,
    train_option_drill,
    training_batch,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def warmup_world(tmp_path_factory, tax):
    """(taxonomy, demo samples, a tiny model folder); `warm_up` tests change the model folder in place."""
    root = tmp_path_factory.mktemp("warmup")
    generate_demo_data(root / "demo", seed=0, n_per_class=2, include_broken=False)
    samples, _ = demo_samples(root / "demo", tax)
    model_dir = build_tiny_model(root / "model", default_corpus(), seed=0)
    return tax, samples, model_dir


def test_captions_come_from_train_images_only(warmup_world):
    taxonomy, samples, _ = warmup_world
    captions = caption_frame(samples, taxonomy)
    train = samples[samples["split"] == "train"]
    assert list(captions["sample_id"]) == list(train["sample_id"])
    assert set(captions["prompt"]) == {CAPTION_PROMPT}
    assert captions["completion"].tolist() == [taxonomy[n].name for n in train["taxonomy_node"]]
    with pytest.raises(ValueError, match="needs train samples"):
        caption_frame(samples[samples["split"] != "train"], taxonomy)


def test_warm_up_merges_into_the_base_weights_in_place(warmup_world):
    taxonomy, samples, model_dir = warmup_world
    before = load_file(next(model_dir.glob("*.safetensors")))
    report = warm_up(model_dir, samples, taxonomy, steps=2, views=2)
    after = load_file(next(model_dir.glob("*.safetensors")))
    assert report["steps"] == 2 and report["images"] == int((samples["split"] == "train").sum())
    assert set(after) == set(before)  # a plain model again: no LoRA or modules_to_save wrappers left
    changed = [k for k in before if not before[k].equal(after[k])]
    assert any("visual" in k for k in changed) and any("embed_tokens" in k for k in changed)
    assert load_model(model_dir, device="cpu").config.model_type == "qwen2_5_vl"  # loads as a plain base model


def test_augmented_views_keep_labels_and_transform_the_image(warmup_world, tmp_path):
    taxonomy, samples, _ = warmup_world
    captions = caption_frame(samples, taxonomy).head(2)
    views = augmented(captions, tmp_path, 4, 112 * 112)
    assert len(views) == 8 and list(views["sample_id"]) == [s for s in captions["sample_id"] for _ in range(4)]
    assert list(views["completion"]) == [c for c in captions["completion"] for _ in range(4)]
    first = [Image.open(p).convert("RGB") for p in views["image_path"][:4]]
    assert np.asarray(first[1]).tolist() == np.asarray(first[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT)).tolist()
    assert len({np.asarray(im).tobytes() for im in first}) == 4  # four distinct views of one image
    with pytest.raises(ValueError, match="views"):
        augmented(captions, tmp_path, 0, 112 * 112)


# --- option-reading drill (text only) -------------------------------------------------------------------------------


def test_drill_items_are_set_first_so_no_option_structure_gives_the_answer(warmup_world):
    taxonomy, samples, _ = warmup_world
    labels = list(samples.loc[samples["split"] == "train", "taxonomy_node"])
    items = drill_items(labels, taxonomy, 2000, seed=3)
    assert items[:50] == drill_items(labels, taxonomy, 50, seed=3) and items[:50] != drill_items(
        labels, taxonomy, 50, 4
    )
    names = {n.name: n.id for n in taxonomy}
    blind_hits = {"deepest": 0, "shallowest": 0, "longest": 0, "most relatives offered": 0, "first": 0}
    for item in items:
        label = taxonomy.resolve(item.opening.split("Impression: ")[1].split(".\n")[0])
        assert label in set(labels)
        path = option_path(taxonomy, label)
        nodes = [names[o] for o in item.options]
        assert len(set(nodes)) == 4 and [i for i, n in enumerate(nodes) if n in path] == [item.answer_index]
        assert not any(a != b and a in taxonomy.path(b) for a in nodes for b in nodes)  # none above another
        assert item.target.startswith("\n".join(option_scan_lines(list(item.options), nodes, path)))
        assert parse_completion(item.opening + item.target, list(item.options)).option_index == item.answer_index
        depth = [len(taxonomy.path(n)) for n in nodes]
        relatives = [
            sum(names[o] in taxonomy.path(n) or n in taxonomy.path(names[o]) for o in item.options) for n in nodes
        ]
        picks = {
            "deepest": max(range(4), key=lambda i: depth[i]),
            "shallowest": min(range(4), key=lambda i: depth[i]),
            "longest": max(range(4), key=lambda i: len(item.options[i])),
            "most relatives offered": max(range(4), key=lambda i: relatives[i]),
            "first": 0,
        }
        for guesser, pick in picks.items():
            blind_hits[guesser] += pick == item.answer_index
    # The paper-built drill answered "deepest" 1.0; here every guesser that reads only the options is at 1/4
    # (2,000 items: one standard error is 0.01).
    assert all(abs(hits / len(items) - 0.25) < 0.04 for hits in blind_hits.values()), blind_hits
    with pytest.raises(ValueError, match="non-root taxonomy node"):
        drill_items(["not_a_node", taxonomy.root], taxonomy, 1, seed=0)
    with pytest.raises(ValueError, match="needs 4 options at one taxonomy level"):
        drill_items(["melanoma"], taxonomy, 1, seed=0)  # one label: one node per level


def test_text_form_drill_items_write_the_path_and_answer_with_the_offered_text(warmup_world):
    """The same set-first items as the letter form (same options and answers for a seed), but the target is the
    impression's taxonomy path and the offered name on it, never a letter or an option scan; status items answer
    with the status text."""
    taxonomy, samples, _ = warmup_world
    labels = list(samples.loc[samples["split"] == "train", "taxonomy_node"])
    letter, text = drill_items(labels, taxonomy, 300, seed=5), drill_items(labels, taxonomy, 300, seed=5, form="text")
    assert [(i.options, i.answer_index, i.opening) for i in letter] == [
        (i.options, i.answer_index, i.opening) for i in text
    ]
    for item in text:
        path = [taxonomy[n].name for n in option_path(taxonomy, item.label)]
        answer = format_mcq_answer(list(item.options), item.answer_index, taxonomy[item.label].bucket, form="text")
        assert item.target == f"{path_line(path)}\n</thinking>\n<diagnosis>{answer}</diagnosis>"
        assert item.options[item.answer_index] in path
        parsed = parse_completion(item.opening + item.target, list(item.options))
        assert parsed.option_index == item.answer_index
    for item in status_drill_items(labels, taxonomy, 20, seed=5, form="text"):
        assert item.target == f"</thinking>\n<diagnosis>{item.options[item.answer_index]}</diagnosis>"
    with pytest.raises(ValueError, match="form must be one of"):
        drill_items(labels, taxonomy, 1, seed=0, form="number")


def test_drill_batch_learns_only_the_target_tokens(warmup_world):
    taxonomy, samples, model_dir = warmup_world
    processor = load_processor(model_dir, max_pixels=112 * 112)
    train = samples[samples["split"] == "train"]
    items = drill_items(list(train["taxonomy_node"]), taxonomy, 2, seed=0)
    image = Image.open(train["image_path"].iloc[0]).convert("RGB").resize((112, 84))
    batch = training_batch(processor, items, [image, None])  # one row with an image, one text only
    assert batch["pixel_values"].shape[0] > 0 and batch["image_grid_thw"].shape[0] == 1
    for row, item in enumerate(items):
        learned = batch["labels"][row][batch["labels"][row] != -100]
        assert processor.tokenizer.decode(learned).strip() == (item.target + "<|im_end|>").strip()
    # The drill shows the system prompt SFT will show (the recipe's), and only that one; its tokens are never learned.
    compact = training_batch(processor, items, [image, None], COMPACT_SYSTEM_PROMPT)
    texts = [processor.tokenizer.decode(ids) for ids in compact["input_ids"]]
    assert all(COMPACT_SYSTEM_PROMPT in t and SYSTEM_PROMPT not in t for t in texts)
    assert compact["input_ids"].shape[1] < batch["input_ids"].shape[1]
    assert all((compact["labels"][row] != -100).sum() == (batch["labels"][row] != -100).sum() for row in range(2))


def test_option_drill_trains_the_language_model_only(warmup_world):
    taxonomy, samples, model_dir = warmup_world
    train = samples[samples["split"] == "train"]
    labels = list(train["taxonomy_node"])
    before = load_file(next(model_dir.glob("*.safetensors")))
    report = train_option_drill(
        model_dir,
        labels,
        taxonomy,
        steps=3,
        batch_size=2,
        eval_items=4,
        image_paths=train.groupby("taxonomy_node")["image_path"].agg(list).to_dict(),
    )
    after = load_file(next(model_dir.glob("*.safetensors")))
    assert set(after) == set(before)
    changed = {k for k in before if not before[k].equal(after[k])}
    assert changed and not any("visual." in k for k in changed)  # saved keys: visual.*, model.layers.*, ...
    assert any("model.layers." in k for k in changed) and any("embed_tokens" in k for k in changed)
    assert report["steps"] == 3 and report["with_images"] and report["held_out_items"] == 4
    assert 0.0 <= report["held_out_accuracy"] <= 1.0
    assert [r["step"] for r in report["train_loss"]] == [1, 2, 3] and all(r["loss"] > 0 for r in report["train_loss"])
    with pytest.raises(ValueError, match="steps and batch_size"):
        train_option_drill(model_dir, labels, taxonomy, steps=0)


def test_format_items_teach_the_whole_answer_and_no_diagnosis(warmup_world):
    taxonomy, samples, _ = warmup_world
    labels = list(samples.loc[samples["split"] == "train", "taxonomy_node"])
    items = format_items(labels, taxonomy, 400, seed=2)
    assert len(items) == 400 and sum(it.prompt == items[0].prompt for it in items) < 400  # MCQ and status questions
    status = [it for it in items if len(it.options) == 3]
    assert len(status) == 80  # a fifth ask the 3-way status question
    for item in items:
        assert item.opening == "" and item.target.startswith("<thinking>")  # the whole completion is written
        assert item.unlearned == taxonomy[item.label].name and item.unlearned in item.target
        assert parse_completion(item.target, list(item.options)).option_index == item.answer_index
    letters = [it.answer_index for it in items if len(it.options) == 4]
    assert min(letters.count(i) for i in range(4)) > 0.15 * len(letters)  # every letter answers, about 1/4 each


def test_the_format_warm_up_learns_everything_but_the_impressions_name(warmup_world):
    """The image a format item shows is unrelated to its impression, so learning the name would teach the model to
    name a diagnosis without looking; the format around it is learned."""
    taxonomy, samples, model_dir = warmup_world
    processor = load_processor(model_dir, max_pixels=112 * 112)
    labels = list(samples.loc[samples["split"] == "train", "taxonomy_node"])
    items = format_items(labels, taxonomy, 6, seed=4, form="text")
    batch = training_batch(processor, items, [None] * len(items), COMPACT_SYSTEM_PROMPT)
    plain = training_batch(processor, [replace(it, unlearned="") for it in items], [None] * len(items))
    tok = processor.tokenizer
    for row, item in enumerate(items):
        learned = batch["labels"][row] != -100
        skipped = (plain["labels"][row] != -100).sum() - learned.sum()
        assert skipped == len(tok(" " + item.unlearned, add_special_tokens=False)["input_ids"])
        learned_text = tok.decode(batch["labels"][row][learned])
        assert learned_text.startswith("<thinking>\nImpression:")
        assert f"Impression: {item.unlearned}" not in learned_text
    with pytest.raises(ValueError, match="unlearned span 'no such name' is not in the target"):
        training_batch(processor, [replace(items[0], unlearned="no such name")], [None])


def test_format_warm_up_shows_images_unrelated_to_the_item_and_reports_the_parse_rate(warmup_world):
    taxonomy, samples, model_dir = warmup_world
    train = samples[samples["split"] == "train"]
    before = load_file(next(model_dir.glob("*.safetensors")))
    report = format_warm_up(
        model_dir,
        list(train["taxonomy_node"]),
        taxonomy,
        list(train["image_path"]),
        steps=2,
        batch_size=2,
        eval_items=4,
    )
    after = load_file(next(model_dir.glob("*.safetensors")))
    changed = {k for k in before if not before[k].equal(after[k])}
    assert changed and not any("visual." in k for k in changed)
    assert report["steps"] == 2 and report["with_images"] and report["held_out_items"] == 4
    assert 0.0 <= report["held_out_accuracy"] <= report["held_out_parse_rate"] <= 1.0
    with pytest.raises(ValueError, match="needs train images"):
        format_warm_up(model_dir, list(train["taxonomy_node"]), taxonomy, [], steps=2)


def test_drill_rows_show_a_train_image_of_their_label_and_parse(warmup_world):
    taxonomy, samples, _ = warmup_world
    train = samples[samples["split"] == "train"]
    paths = train.groupby("taxonomy_node")["image_path"].agg(list).to_dict()
    labels = list(train["taxonomy_node"])
    rows = drill_rows(labels, taxonomy, 40, seed=1, image_paths=paths)  # 20% status questions: 32 + 8
    assert list(rows.columns) == ["sample_id", "image_path", "prompt", "completion"] and len(rows) == 40
    items = drill_items(labels, taxonomy, 32, seed=1) + status_drill_items(labels, taxonomy, 8, seed=1)
    for row, item in zip(rows.itertuples(), items):
        assert row.image_path in paths[item.label] and row.prompt == item.prompt
        assert parse_completion(row.completion, list(item.options)).option_index == item.answer_index
    with pytest.raises(ValueError, match="no train image"):
        drill_rows(labels, taxonomy, 5, seed=1, image_paths={})
    with pytest.raises(ValueError, match="status_share"):
        drill_rows(labels, taxonomy, 5, seed=1, image_paths=paths, status_share=1.5)


def test_status_drill_answers_the_bucket_of_the_impression(warmup_world):
    taxonomy, samples, _ = warmup_world
    labels = list(samples.loc[samples["split"] == "train", "taxonomy_node"])
    items = status_drill_items(labels, taxonomy, 60, seed=2)
    assert {taxonomy[i.label].bucket for i in items} >= {"benign", "malignant"}
    for item in items:
        assert item.options == ("benign", "malignant", "precancerous in situ")
        parsed = parse_completion(item.opening + item.target, list(item.options))
        assert (
            parsed.ok
            and parsed.status
            == taxonomy[item.label].bucket
            == ("benign", "malignant", "precancerous_in_situ")[item.answer_index]
        )
        assert item.target.count(": fits") == 1  # exactly the label's bucket fits
    with pytest.raises(ValueError, match="malignancy bucket"):
        status_drill_items([taxonomy.root], taxonomy, 1, seed=0)


def test_mixed_sft_data_keeps_every_trajectory_and_refuses_held_out_samples(warmup_world, tmp_path):
    taxonomy, samples, _ = warmup_world
    train = samples[samples["split"] == "train"]
    trajectories = pd.DataFrame(
        {
            "sample_id": ["t1", "t2"],
            "image_path": ["images/a.png", "/abs/b.png"],
            "prompt": ["p1", "p2"],
            "completion": ["c1", "c2"],
            "extra": [1, 2],
        }
    )
    (tmp_path / "traj" / "images").mkdir(parents=True)
    (tmp_path / "traj" / "images" / "a.png").write_bytes(b"")  # exists beside the trajectories, not in the cwd
    trajectories.to_parquet(tmp_path / "traj" / "t.parquet", index=False)
    counts = mix_drill_rows(tmp_path / "traj" / "t.parquet", tmp_path / "mixed.parquet", train, taxonomy, 30, seed=0)
    mixed = pd.read_parquet(tmp_path / "mixed.parquet")
    assert counts == {"trajectories": 2, "drill_rows": 30} and len(mixed) == 32
    assert list(mixed.columns) == ["sample_id", "image_path", "prompt", "completion"]
    kept = mixed.set_index("sample_id").loc[["t1", "t2"], "image_path"].tolist()
    assert kept == [str(tmp_path / "traj" / "images" / "a.png"), "/abs/b.png"]  # relative to the source folder
    assert mixed["sample_id"].tolist()[:2] != ["t1", "t2"]  # shuffled in, not put first
    with pytest.raises(ValueError, match="train samples only"):
        mix_drill_rows(tmp_path / "traj" / "t.parquet", tmp_path / "m2.parquet", samples, taxonomy, 3, seed=0)
    assert mix_drill_rows(tmp_path / "traj" / "t.parquet", tmp_path / "m3.parquet", train, taxonomy, 0, seed=0) == {
        "trajectories": 2,
        "drill_rows": 0,
    }
