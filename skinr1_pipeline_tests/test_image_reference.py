"""The image-only reference: a colour classifier of the train images, mapped onto each item's options through the
taxonomy, answers where the image carries the label and only guesses where it does not."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinr1_pipeline.evaluation.image_reference import (
    colour_features,
    fit_colour_classifier,
    image_only_answers,
    option_mass,
)
from skinr1_pipeline.knowledge.taxonomy import Taxonomy

COLOURS = {"melanoma": (90, 40, 30), "benign_vascular": (200, 30, 60), "dermatofibroma": (160, 120, 90)}


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return Taxonomy.load()


def _image(path: Path, colour: tuple[int, int, int], seed: int) -> str:
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(colour) + rng.normal(0, 12, (56, 56, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return str(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("reference")
    train = pd.DataFrame(
        [
            {"image_path": _image(root / f"train_{label}_{k}.png", colour, k), "taxonomy_node": label}
            for label, colour in COLOURS.items()
            for k in range(6)
        ]
    )
    gray = _image(root / "gray.png", (128, 128, 128), 99)
    return root, train, gray


def test_colour_features_tell_colours_apart_and_stay_bounded(world) -> None:
    _, train, _ = world
    red, dark = (colour_features(Image.open(p)) for p in train["image_path"].iloc[[6, 0]])
    assert red.shape == (33,) and np.all(np.abs(red) <= 1.0)
    assert red[0] > dark[0] + 0.3  # mean red channel


def test_the_classifier_learns_the_train_colours_and_refuses_mismatched_input(world) -> None:
    _, train, _ = world
    features = np.vstack([colour_features(Image.open(p)) for p in train["image_path"]])
    model = fit_colour_classifier(features, list(train["taxonomy_node"]))
    p = model.probabilities(features)
    assert np.allclose(p.sum(axis=1), 1.0)
    assert [model.classes[i] for i in p.argmax(axis=1)] == list(train["taxonomy_node"])
    with pytest.raises(ValueError, match="one label per feature row"):
        fit_colour_classifier(features, ["melanoma"])


def test_each_label_counts_for_the_deepest_option_covering_it(taxonomy) -> None:
    classes = ["melanoma", "benign_vascular", "dermatofibroma"]
    p = np.array([0.5, 0.3, 0.2])
    # set-first (no option nests): an option collects the labels at or below it; a label under none counts nowhere
    assert option_mass(p, classes, ["melanoma", "benign_vascular", "actinic_keratosis"], [None] * 3, taxonomy) == [
        0.5,
        0.3,
        0.0,
    ]
    # nested (the paper's construction): the deepest covering option, not the root that covers everything
    nested = option_mass(p, classes, ["neoplastic", "malignant_neoplasm", "benign_neoplasm"], [None] * 3, taxonomy)
    assert nested == pytest.approx([0.0, 0.5, 0.5])
    # status options are buckets, not taxonomy nodes
    buckets = ["benign", "malignant", "precancerous_in_situ"]
    assert option_mass(p, classes, buckets, buckets, taxonomy) == pytest.approx([0.5, 0.5, 0.0])


def test_the_reference_answers_from_the_image_and_only_guesses_without_signal(world, taxonomy) -> None:
    root, train, gray = world
    options = ["melanoma", "benign_vascular", "dermatofibroma", "actinic_keratosis"]
    rows = []
    for k, (label, colour) in enumerate(COLOURS.items()):
        rows.append({"image_path": _image(root / f"test_{label}.png", colour, 50 + k), "answer_index": k})
    rows.append({"image_path": gray, "answer_index": 3})  # no train label under the answer: never picked
    items = pd.DataFrame(
        [
            {
                **row,
                "item_id": f"i{k}",
                "suite": "in_domain",
                "sample_id": f"s{k}",
                "options": options,
                "option_nodes": options,
            }
            for k, row in enumerate(rows)
        ]
        + [{"item_id": "open", "suite": "open_ended", "sample_id": "s9", "image_path": gray, "options": [],
            "option_nodes": [], "answer_index": -1}]
    )  # fmt: skip
    answers = image_only_answers(items, train, taxonomy, max_pixels=None)
    assert list(answers["item_id"]) == ["i0", "i1", "i2", "i3"]  # the open question is left out
    assert list(answers["correct"]) == [1.0, 1.0, 1.0, 0.0]
    assert set(answers["condition"]) == {"real"}
    with pytest.raises(ValueError, match=r"items lack column\(s\) \['answer_index'\]"):
        image_only_answers(items.drop(columns="answer_index"), train, taxonomy, max_pixels=None)
    with pytest.raises(ValueError, match=r"train labels not in the taxonomy: \['mystery'\]"):
        image_only_answers(items, train.assign(taxonomy_node="mystery"), taxonomy, max_pixels=None)
