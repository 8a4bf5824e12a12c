"""Perceptual hashes: hand-derived dHash bits, distance kernels against brute force, calibration on synthetic
re-encoded copies, and near-duplicate contamination flags."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinr1_pipeline.data import perceptual_hash as ph
from skinr1_pipeline.data.perceptual_hash import (
    ImageHashError,
    calibrate_threshold,
    dhash,
    dhash_bytes,
    dhash_hex,
    hamming,
    near_duplicate_pairs,
    pairwise_min_distances,
    parse_dhash,
)
from skinr1_pipeline.evaluation.contamination import check_contamination

ALL_ONES = (1 << 64) - 1


def _textured(seed: int, size: int = 128) -> Image.Image:
    """A random low-frequency colour field plus a few blobs and noise: distinct images with strong gradients."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
    img = np.asarray(base, dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    for _ in range(rng.integers(2, 5)):
        cy, cx = rng.uniform(0, size, 2)
        weight = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(8, 24) ** 2))[..., None]
        img = img * (1 - weight) + rng.uniform(0, 255, 3) * weight
    img += rng.normal(0, 5, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _reencode(path: Path, out: Path, scale: float = 0.8, quality: int = 85) -> Path:
    with Image.open(path) as im:
        size = (round(im.width * scale), round(im.height * scale))
        im.convert("RGB").resize(size, Image.BICUBIC).save(out, format="JPEG", quality=quality)
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], list[Path]]:
    """40 distinct PNG originals and their 0.8x JPEG q85 copies."""
    root = tmp_path_factory.mktemp("corpus")
    originals, copies = [], []
    for i in range(40):
        path = root / f"img_{i:02d}.png"
        _textured(i).save(path)
        originals.append(path)
        copies.append(_reencode(path, root / f"copy_{i:02d}.jpg"))
    return originals, copies


# --------------------------------------------------------------------------------------------------
# dHash and distances
# --------------------------------------------------------------------------------------------------


def test_dhash_of_horizontal_gradients_is_derivable(tmp_path: Path) -> None:
    ramp = np.tile(np.linspace(0, 255, 90).astype(np.uint8), (80, 1))  # brightness rises to the right
    assert dhash(Image.fromarray(ramp)) == 0  # no cell is brighter than its right neighbour
    assert dhash(Image.fromarray(ramp[:, ::-1].copy())) == ALL_ONES
    # Left half falling, right half rising (in thumbnail cells): the first 4 comparisons of each row are set.
    cells = np.array([80, 60, 40, 20, 0, 20, 40, 60, 80], dtype=np.uint8)
    image = Image.fromarray(np.tile(cells, (8, 1))).resize((9 * 16, 8 * 16), Image.NEAREST)
    assert dhash(image) == int("f0" * 8, 16)
    # Same from a file, and colour goes through grey.
    path = tmp_path / "ramp.png"
    Image.fromarray(np.stack([ramp[:, ::-1]] * 3, axis=-1)).save(path)
    assert dhash(path) == dhash(str(path)) == dhash_bytes(path.read_bytes(), str(path)) == ALL_ONES


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    rising = np.tile(np.linspace(0, 255, 90).astype(np.uint8), (80, 1))
    exif = Image.Exif()
    exif[0x0112] = 3  # stored upright-rising, displayed rotated 180 degrees: falling to the right
    path = tmp_path / "rotated.jpg"
    Image.fromarray(rising).save(path, format="JPEG", quality=95, exif=exif)
    assert dhash(path) == ALL_ONES


def test_hex_round_trip_and_hamming() -> None:
    assert dhash_hex(0) == "0" * 16 and dhash_hex(ALL_ONES) == "f" * 16
    assert parse_dhash(dhash_hex(0x0123456789ABCDEF)) == 0x0123456789ABCDEF
    for bad in ("abc", "g" * 16, "0" * 17, None):
        with pytest.raises(ValueError):
            parse_dhash(bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        dhash_hex(1 << 64)
    assert hamming(0, 0) == 0
    assert hamming(0, ALL_ONES) == 64
    assert hamming(0b1011, 0b0110) == 3
    assert hamming("f" * 16, "0" * 15 + "1") == 63
    assert hamming(1 << 63, 0) == 1


def test_pairwise_min_distances_matches_brute_force() -> None:
    rng = np.random.default_rng(7)
    query = rng.integers(0, 2**64, 37, dtype=np.uint64, endpoint=False)
    reference = rng.integers(0, 2**64, 53, dtype=np.uint64, endpoint=False)
    reference[11] = query[3] ^ np.uint64(0b101)  # a planted near copy at distance 2
    brute = np.array([[hamming(int(q), int(r)) for r in reference] for q in query])
    for chunk in (1, 7, 53, 100, 1 << 20):  # tiles smaller than a row, uneven, exact, whole
        dist, arg = pairwise_min_distances(query, reference, chunk=chunk)
        assert (dist == brute.min(axis=1)).all()
        assert (arg == brute.argmin(axis=1)).all()  # ties: lowest reference index
    assert dist[3] == 2 and arg[3] == 11
    # Hex strings and ints are accepted; an empty reference never matches.
    dist_hex, _ = pairwise_min_distances([dhash_hex(int(q)) for q in query], [int(r) for r in reference])
    assert (dist_hex == brute.min(axis=1)).all()
    none_dist, none_arg = pairwise_min_distances(query, np.empty(0, dtype=np.uint64))
    assert (none_dist == ph.NO_MATCH).all() and (none_arg == -1).all()

    pairs = near_duplicate_pairs(query, reference, max_distance=20, chunk=13)
    want = [(i, j, brute[i, j]) for i in range(len(query)) for j in range(len(reference)) if brute[i, j] <= 20]
    assert list(pairs.itertuples(index=False, name=None)) == want
    assert list(pairs.columns) == ["query_index", "reference_index", "distance"]


def test_popcount_fallback_matches_bitwise_count(monkeypatch: pytest.MonkeyPatch) -> None:
    values = np.random.default_rng(1).integers(0, 2**64, (5, 9), dtype=np.uint64)
    expected = np.vectorize(lambda v: int(v).bit_count())(values)
    monkeypatch.setattr(ph, "_HAS_BITWISE_COUNT", False)
    assert (ph._popcount(values) == expected).all()


# --------------------------------------------------------------------------------------------------
# Re-encoded copies and calibration
# --------------------------------------------------------------------------------------------------


def test_reencoded_copies_are_within_the_calibrated_threshold(corpus: tuple[list[Path], list[Path]]) -> None:
    originals, copies = corpus
    calibration = calibrate_threshold(originals, n_copies=40)
    assert calibration.n_copies == 40 and calibration.copies_caught == 40
    assert calibration.meets_false_positive_target and calibration.false_positive_rate == 0.0
    assert calibration.threshold == calibration.copy_distance_max < calibration.distinct_distance_min
    assert calibration.n_distinct_pairs == 40 * 39 // 2
    assert "threshold" in calibration.describe() and str(calibration.threshold) in calibration.describe()

    # The copies on disk (made independently of the calibration) are all caught; exact sha catches none.
    orig_hashes = [dhash(p) for p in originals]
    copy_hashes = [dhash(p) for p in copies]
    assert copy_hashes == [dhash_bytes(p.read_bytes()) for p in copies]  # JPEG drafted the same way from memory
    distances = [hamming(a, b) for a, b in zip(orig_hashes, copy_hashes)]
    assert max(distances) <= calibration.threshold
    assert not {_sha(p) for p in copies} & {_sha(p) for p in originals}
    nearest, arg = pairwise_min_distances(copy_hashes, orig_hashes)
    assert (arg == np.arange(40)).all() and (nearest <= calibration.threshold).all()


def test_calibration_is_deterministic_and_seeded(corpus: tuple[list[Path], list[Path]]) -> None:
    originals, _ = corpus
    first = calibrate_threshold(originals, n_copies=10, seed=3)
    assert first == calibrate_threshold(originals, n_copies=10, seed=3)
    assert first.n_copies == 10 and first.describe() == calibrate_threshold(originals, n_copies=10, seed=3).describe()
    # 10 sampled x 40 images, minus self pairs, minus the 45 sampled-sampled pairs seen from both sides.
    assert first.n_distinct_pairs == 10 * 40 - 10 - 45
    assert len(set(first.sampled)) == 10
    assert first.sampled != calibrate_threshold(originals, n_copies=10, seed=4).sampled


def test_calibration_records_missed_copies_when_the_rate_binds(corpus: tuple[list[Path], list[Path]]) -> None:
    originals, _ = corpus
    root = originals[0].parent
    twin = root / "twin.png"  # identical bytes: not a distinct pair, must not count as a false positive
    twin.write_bytes(originals[0].read_bytes())
    with Image.open(originals[1]) as im:
        pixels = np.asarray(im).astype(np.int16)
    brighter, faint = root / "brighter.png", root / "faint.png"  # distinct files, (nearly) the same gradients
    Image.fromarray(np.clip(pixels + 30, 0, 255).astype(np.uint8)).save(brighter)
    Image.fromarray(np.clip(pixels + 10, 0, 255).astype(np.uint8)).save(faint)
    assert hamming(dhash(brighter), dhash(originals[1])) == 1 and hamming(dhash(faint), dhash(originals[1])) == 0

    binds = calibrate_threshold([*originals, twin, brighter], n_copies=42, max_false_positive_rate=0.0)
    assert binds.distinct_distance_min == 1  # the twin's distance 0 was left out
    assert binds.threshold == 0 < binds.copy_distance_max
    assert binds.meets_false_positive_target and binds.false_positive_rate == 0.0
    assert binds.copies_missed == sum(d > 0 for d in binds.copy_distances) > 0
    assert f"{binds.copies_missed} of 42 copies would be missed" in binds.describe()

    impossible = calibrate_threshold([*originals, faint], n_copies=41, max_false_positive_rate=0.0)
    assert impossible.threshold == 0 and not impossible.meets_false_positive_target
    assert impossible.false_positive_rate > 0 and "Even distance 0" in impossible.describe()


def test_unreadable_and_oversized_files_raise_naming_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad = tmp_path / "not_an_image.jpg"
    bad.write_bytes(b"this is text, not a JPEG")
    with pytest.raises(ImageHashError, match="not_an_image.jpg"):
        dhash(bad)
    with pytest.raises(ValueError, match="missing.png"):
        dhash(tmp_path / "missing.png")
    truncated = tmp_path / "cut.png"
    buf = io.BytesIO()
    _textured(0).save(buf, format="PNG")
    truncated.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageHashError, match="cut.png"):
        dhash(truncated)
    with pytest.raises(ImageHashError, match="from_memory"):
        dhash_bytes(truncated.read_bytes(), "from_memory")
    with pytest.raises(ImageHashError, match="not_an_image.jpg"):
        calibrate_threshold([bad, truncated], n_copies=1)
    big = tmp_path / "big.png"
    _textured(1).save(big)
    for limit in (10_000, 1_000):  # 128x128: within Pillow's 2x warning band (our check), then past its hard limit
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(ValueError, match="big.png.*MAX_IMAGE_PIXELS"):
            dhash(big)


# --------------------------------------------------------------------------------------------------
# Contamination
# --------------------------------------------------------------------------------------------------


def test_contamination_flags_reencoded_copies_by_near_duplicate(corpus: tuple[list[Path], list[Path]]) -> None:
    originals, copies = corpus
    threshold = calibrate_threshold(originals, n_copies=40).threshold
    train = pd.DataFrame(
        {
            "sample_id": [f"train/{i}" for i in range(20)],
            "image_sha256": [_sha(p) for p in originals[:20]],
            "image_dhash": [dhash_hex(dhash(p)) for p in originals[:20]],
        }
    )
    train = pd.concat([train, pd.DataFrame([{"sample_id": "train/no_hash", "image_dhash": None}])], ignore_index=True)
    items = pd.DataFrame(
        {
            "item_id": ["copy", "distinct", "no_dhash", "same_bytes"],
            "suite": ["in_domain", "in_domain", "ood", "ood"],
            "sample_id": ["eval/copy", "eval/distinct", "eval/none", "eval/same"],
            "image_sha256": [_sha(copies[5]), _sha(originals[30]), "x", _sha(originals[7])],
            "image_dhash": [
                dhash_hex(dhash(copies[5])),
                dhash_hex(dhash(originals[30])),
                None,
                dhash_hex(dhash(originals[7])),
            ],
        }
    )

    report = check_contamination(items, train, near_duplicate_distance=threshold)
    flags = report.flags.set_index("item_id")
    assert report.near_duplicate_distance == threshold and report.training_without_dhash == 1
    assert flags.loc["copy", "by_near_duplicate"] and not flags.loc["copy", "by_hash"]
    assert flags.loc["copy", "nearest_sample_id"] == "train/5"
    assert flags.loc["copy", "nearest_distance"] <= threshold
    assert not flags.loc["distinct", "contaminated"] and flags.loc["distinct", "nearest_distance"] > threshold
    assert not flags.loc["no_dhash", "contaminated"] and pd.isna(flags.loc["no_dhash", "nearest_distance"])
    assert flags.loc["same_bytes", "by_hash"] and not flags.loc["same_bytes", "by_near_duplicate"]
    assert flags.loc["same_bytes", "nearest_distance"] == 0
    assert report.contaminated_ids == {"copy", "same_bytes"}
    assert set(report.clean(items)["item_id"]) == {"distinct", "no_dhash"}
    summary = report.summary.set_index("suite")
    assert summary.loc["in_domain", "by_near_duplicate"] == 1 and summary.loc["ood", "by_near_duplicate"] == 0
    assert summary.loc["ood", "without_dhash"] == 1 and summary.loc["in_domain", "without_dhash"] == 0
    assert summary.loc["ood", "by_hash"] == 1

    # Without the keyword the old behaviour holds: the copy is missed (new sha, new id).
    exact = check_contamination(items, train)
    assert exact.contaminated_ids == {"same_bytes"} and exact.near_duplicate_distance is None
    assert not exact.flags["by_near_duplicate"].any() and exact.summary["by_near_duplicate"].sum() == 0
    # A training side without any image_dhash column cannot run the check, and says so.
    no_column = check_contamination(items, train.drop(columns="image_dhash"), near_duplicate_distance=threshold)
    assert no_column.near_duplicate_distance is None and no_column.contaminated_ids == {"same_bytes"}
    with pytest.raises(ValueError, match="zz"):
        check_contamination(items.assign(image_dhash="zz"), train, near_duplicate_distance=threshold)
