"""An image-only reference per suite: how often a small classifier of colour statistics, trained on the train split's
images and labels alone, picks the right option. It never reads the question or the option texts; its predicted
class probabilities are mapped onto the offered options through the taxonomy (`option_mass`).

Why: "the model does not read the image" means little on a suite where the image carries no signal that training
could have taught, such as clinical photos after training on dermoscopy only. Where this reference beats the best
image-blind guesser, there is signal to find and a model that fails there is failing to read it; where it does not,
a model's failure says nothing about its image reading. It is a reference, not a ceiling: a better image model may
find more. Deterministic (full-batch gradient descent from zeros), and it sees no evaluation label.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from skinr1_pipeline.data.image_open import model_image
from skinr1_pipeline.knowledge.taxonomy import Taxonomy

REFERENCE_NAME = "image_only"
REFERENCE_MAX_PIXELS = 224 * 224  # colour statistics need no detail; a fixed bound keeps 50,000 images cheap
_QUANTILES = (0.1, 0.5, 0.9)


def colour_features(image: Image.Image) -> np.ndarray:
    """Per channel of RGB and HSV: mean, standard deviation and the 10/50/90% quantiles, plus the centre-minus-border
    mean of each RGB channel (the lesion against the skin around it): 33 numbers in [-1, 1]."""
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64) / 255.0
    hsv = np.asarray(image.convert("RGB").convert("HSV"), dtype=np.float64) / 255.0
    out: list[float] = []
    for array in (rgb, hsv):
        flat = array.reshape(-1, 3)
        out += [*flat.mean(axis=0), *flat.std(axis=0)]
        out += list(np.quantile(flat, _QUANTILES, axis=0).ravel())
    h, w = rgb.shape[:2]
    centre = np.zeros((h, w), dtype=bool)
    centre[h // 4 : h - h // 4, w // 4 : w - w // 4] = True
    out += list(rgb[centre].mean(axis=0) - rgb[~centre].mean(axis=0)) if (~centre).any() else [0.0, 0.0, 0.0]
    return np.asarray(out)


def image_features(paths: Sequence[str], max_pixels: int | None) -> np.ndarray:
    """`colour_features` of each image as the model's processor sees it (`model_image`; each file read once)."""
    cache: dict[str, np.ndarray] = {}
    rows = []
    for path in paths:
        key = str(path)
        if key not in cache:
            cache[key] = colour_features(model_image(Path(key), max_pixels=max_pixels))
        rows.append(cache[key])
    return np.vstack(rows) if rows else np.zeros((0, 33))


@dataclass(frozen=True)
class ColourClassifier:
    """Multinomial logistic regression on standardised colour features."""

    classes: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: np.ndarray

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        return _row_softmax(((features - self.mean) / self.scale) @ self.weights + self.bias)


def _row_softmax(logits: np.ndarray) -> np.ndarray:
    odds = np.exp(logits - logits.max(axis=1, keepdims=True))
    return odds / odds.sum(axis=1, keepdims=True)


def fit_colour_classifier(
    features: np.ndarray, labels: Sequence[str], *, l2: float = 1e-2, steps: int = 2000, learning_rate: float = 0.5
) -> ColourClassifier:
    """Full-batch gradient descent on the mean cross-entropy plus `l2` times the squared weights (no bias penalty)."""
    if len(features) != len(labels) or not len(labels):
        raise ValueError(f"need one label per feature row and at least one row, got {len(features)} and {len(labels)}")
    classes = tuple(sorted(set(map(str, labels))))
    index = {c: i for i, c in enumerate(classes)}
    target = np.zeros((len(labels), len(classes)))
    target[np.arange(len(labels)), [index[str(v)] for v in labels]] = 1.0
    mean, scale = features.mean(axis=0), features.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    x = (features - mean) / scale
    weights, bias = np.zeros((x.shape[1], len(classes))), np.zeros(len(classes))
    for _ in range(steps):
        error = (_row_softmax(x @ weights + bias) - target) / len(x)
        weights -= learning_rate * (x.T @ error + 2 * l2 * weights)
        bias -= learning_rate * error.sum(axis=0)
    return ColourClassifier(classes, mean, scale, weights, bias)


def option_mass(
    probabilities: np.ndarray, classes: Sequence[str], options: Sequence[str], buckets: Sequence[str | None], taxonomy
) -> list[float]:
    """Per offered option, the predicted probability that it is the answer: each train label's probability goes to
    the deepest option that covers it (its node at or above the label; for an option that is no taxonomy node, a
    status, the label's bucket). Why the deepest: where options nest (the paper's construction) the answer is the
    deepest offered ancestor; where none nest (set-first) at most one option covers a label anyway."""
    mass = [0.0] * len(options)
    for c, p in zip(classes, probabilities):
        covering = [
            k
            for k, (node, bucket) in enumerate(zip(map(str, options), buckets))
            if (taxonomy.is_ancestor(node, c) if node in taxonomy.nodes else taxonomy[c].bucket == (bucket or node))
        ]
        if covering:
            deepest = max(
                covering, key=lambda k: taxonomy.depth(str(options[k])) if str(options[k]) in taxonomy.nodes else 0
            )
            mass[deepest] += float(p)
    return mass


def image_only_answers(
    items: pd.DataFrame, train: pd.DataFrame, taxonomy: Taxonomy, *, max_pixels: int | None
) -> pd.DataFrame:
    """The reference's answers to the multiple-choice `items` (open questions are left out), as a scored frame the
    paired comparisons read (`comparison.versus_blind`): item_id, suite, sample_id, condition and `correct`, the
    expected hit when ties among the options are broken at random. `train` needs image_path and taxonomy_node."""
    for frame, name, needed in (
        (items, "items", ("item_id", "suite", "sample_id", "image_path", "option_nodes", "answer_index")),
        (train, "train", ("image_path", "taxonomy_node")),
    ):
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise ValueError(f"{name} lack column(s) {missing}")
    unknown = sorted({str(n) for n in train["taxonomy_node"]} - set(taxonomy.nodes))
    if unknown:
        raise ValueError(f"train labels not in the taxonomy: {unknown}")
    mcq = items[items["option_nodes"].map(len) > 0].reset_index(drop=True)
    model = fit_colour_classifier(
        image_features(list(train["image_path"]), max_pixels), list(train["taxonomy_node"].astype(str))
    )
    probabilities = model.probabilities(image_features(list(mcq["image_path"]), max_pixels))
    correct = []
    for row, p in zip(mcq.itertuples(index=False), probabilities):
        nodes = [str(n) for n in row.option_nodes]
        buckets = list(row.option_buckets) if "option_buckets" in mcq.columns else [None] * len(nodes)
        mass = np.asarray(option_mass(p, model.classes, nodes, buckets, taxonomy))
        top = np.flatnonzero(np.isclose(mass, mass.max()))
        correct.append(1.0 / len(top) if int(row.answer_index) in top else 0.0)
    return pd.DataFrame(
        {
            "item_id": mcq["item_id"],
            "suite": mcq["suite"],
            "sample_id": mcq["sample_id"],
            "condition": "real",
            "correct": correct,
        }
    )
