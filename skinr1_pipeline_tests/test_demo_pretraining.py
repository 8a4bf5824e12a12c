"""The demo model's vision-language warm-up: only train images, merged into the base weights in place."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from safetensors.torch import load_file

from skinr1_pipeline.data.demo import generate_demo_data
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.modeling.demo_pretraining import CAPTION_PROMPT, augmented, caption_frame, warm_up
from skinr1_pipeline.modeling.model_factory import load_model
from skinr1_pipeline.modeling.tiny_model import build_tiny_model, default_corpus
from skinr1_pipeline.synthesis.pipeline import demo_samples


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("warmup")
    taxonomy = Taxonomy.load()
    generate_demo_data(root / "demo", seed=0, n_per_class=2, include_broken=False)
    samples, _ = demo_samples(root / "demo", taxonomy)
    model_dir = build_tiny_model(root / "model", default_corpus(), seed=0)
    return taxonomy, samples, model_dir


def test_captions_come_from_train_images_only(world):
    taxonomy, samples, _ = world
    captions = caption_frame(samples, taxonomy)
    train = samples[samples["split"] == "train"]
    assert list(captions["sample_id"]) == list(train["sample_id"])
    assert set(captions["prompt"]) == {CAPTION_PROMPT}
    assert captions["completion"].tolist() == [taxonomy[n].name for n in train["taxonomy_node"]]
    with pytest.raises(ValueError, match="needs train samples"):
        caption_frame(samples[samples["split"] != "train"], taxonomy)


def test_warm_up_merges_into_the_base_weights_in_place(world):
    taxonomy, samples, model_dir = world
    before = load_file(next(model_dir.glob("*.safetensors")))
    report = warm_up(model_dir, samples, taxonomy, steps=2, views=2)
    after = load_file(next(model_dir.glob("*.safetensors")))
    assert report["steps"] == 2 and report["images"] == int((samples["split"] == "train").sum())
    assert set(after) == set(before)  # a plain model again: no LoRA or modules_to_save wrappers left
    changed = [k for k in before if not before[k].equal(after[k])]
    assert any("visual" in k for k in changed) and any("embed_tokens" in k for k in changed)
    assert load_model(model_dir, device="cpu").config.model_type == "qwen2_5_vl"  # loads as a plain base model


def test_augmented_views_keep_labels_and_transform_the_image(world, tmp_path):
    taxonomy, samples, _ = world
    captions = caption_frame(samples, taxonomy).head(2)
    views = augmented(captions, tmp_path, 4, 112 * 112)
    assert len(views) == 8 and list(views["sample_id"]) == [s for s in captions["sample_id"] for _ in range(4)]
    assert list(views["completion"]) == [c for c in captions["completion"] for _ in range(4)]
    first = [Image.open(p).convert("RGB") for p in views["image_path"][:4]]
    assert np.asarray(first[1]).tolist() == np.asarray(first[0].transpose(Image.Transpose.FLIP_LEFT_RIGHT)).tolist()
    assert len({np.asarray(im).tobytes() for im in first}) == 4  # four distinct views of one image
    with pytest.raises(ValueError, match="views"):
        augmented(captions, tmp_path, 0, 112 * 112)
