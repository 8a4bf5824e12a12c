"""The demo model's vision tower trained as a classifier: it learns to tell labels apart, only the tower changes, and
the caption warm-up after it can leave the tower alone."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from safetensors.torch import load_file

from skinr1_pipeline.modeling.model_factory import load_model
from skinr1_pipeline.modeling.tiny_model import build_tiny_model, default_corpus
from skinr1_pipeline.training.demo_pretraining import warm_up
from skinr1_pipeline.training.vision_classifier import train_vision_classifier

pytestmark = pytest.mark.slow

COLOURS = {"melanoma": (150, 40, 30), "seborrheic_keratosis": (60, 90, 170)}


def _images(folder, per_label: int, seed: int) -> tuple[list[str], list[str]]:
    """`per_label` noisy 112 x 112 images per label, each label its own colour: a tower that learns anything gets
    them right."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for label, colour in COLOURS.items():
        for i in range(per_label):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (112, 112, 3)), 0, 255).astype(np.uint8)
            path = folder / f"{label}_{i}.png"
            Image.fromarray(pixels).save(path)
            paths.append(str(path))
            labels.append(label)
    return paths, labels


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("vision")
    return root, _images(root / "train", 6, 0), _images(root / "valid", 4, 1)


def test_the_tower_learns_to_separate_labels_and_nothing_else_changes(world):
    root, train, valid = world
    model_dir = build_tiny_model(root / "model", default_corpus(), seed=0)
    before = load_file(next(model_dir.glob("*.safetensors")))
    report = train_vision_classifier(model_dir, train, valid, steps=40, batch_size=8, seed=0)
    after = load_file(next(model_dir.glob("*.safetensors")))
    assert set(after) == set(before)  # the linear head is not saved
    changed = {k for k in before if not before[k].equal(after[k])}
    assert changed and all("visual." in k for k in changed)
    assert any("merger" in k for k in changed) and any("blocks." in k for k in changed)
    assert report["classes"] == 2 and report["images"] == 12 and report["valid_images"] == 8
    assert report["valid_majority_rate"] == 0.5
    assert report["valid_accuracy"] == 1.0 and report["train_accuracy"] == 1.0
    assert load_model(model_dir, device="cpu").config.model_type == "qwen2_5_vl"


def test_valid_labels_it_never_saw_count_as_misses(world):
    root, train, valid = world
    model_dir = build_tiny_model(root / "model_unseen", default_corpus(), seed=0)
    paths, labels = valid
    renamed = ["dermatofibroma" if x == "melanoma" else x for x in labels]
    report = train_vision_classifier(model_dir, train, (paths, renamed), steps=40, batch_size=8, seed=0)
    assert report["valid_accuracy"] == 0.5  # the melanoma-coloured half can only be called melanoma


def test_bad_input_is_refused_before_training(world):
    root, (paths, labels), _ = world
    model_dir = root / "not_built"  # never loaded: every check runs first
    with pytest.raises(ValueError, match="steps and batch_size must be >= 1"):
        train_vision_classifier(model_dir, (paths, labels), steps=0)
    with pytest.raises(ValueError, match="12 image.*11 label"):
        train_vision_classifier(model_dir, (paths, labels[:-1]), steps=1)
    with pytest.raises(ValueError, match="at least 2 train labels"):
        train_vision_classifier(model_dir, (paths[:6], labels[:6]), steps=1)


def test_the_warm_up_leaves_a_pretrained_tower_alone(world, tax):
    root, (paths, labels), _ = world
    model_dir = build_tiny_model(root / "model_warm", default_corpus(), seed=0)
    samples = pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(len(paths))],
            "image_path": paths,
            "split": "train",
            "taxonomy_node": labels,
        }
    )
    before = load_file(next(model_dir.glob("*.safetensors")))
    report = warm_up(model_dir, samples, tax, steps=2, views=1, train_vision=False)
    after = load_file(next(model_dir.glob("*.safetensors")))
    changed = {k for k in before if not before[k].equal(after[k])}
    assert report["vision_trained"] is False
    assert changed and not any("visual." in k for k in changed)
