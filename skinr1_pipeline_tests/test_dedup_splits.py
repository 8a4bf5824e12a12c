"""Cross-dataset dedup and leakage-safe splits on small hand-built sample tables."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skinr1_pipeline.data.dedup import NEAR_DUPLICATE_COLUMNS, deduplicate, near_duplicates
from skinr1_pipeline.data.images import inspect_image
from skinr1_pipeline.data.schema import SAMPLE_COLUMNS
from skinr1_pipeline.data.splits import SplitPolicy, assign_splits, group_ids, leakage_report
from skinr1_pipeline.knowledge.taxonomy import Taxonomy

TREE = {
    "version": 1,
    "root": {
        "id": "skin_condition",
        "kind": "category",
        "behaviour": "mixed",
        "lineage": "all",
        "children": [
            {
                "id": "neoplastic",
                "kind": "category",
                "children": [
                    {
                        "id": "melanoma",
                        "behaviour": "malignant",
                        "lineage": "melanocytic",
                        "children": [
                            {"id": "nodular_melanoma"},
                        ],
                    },
                    {"id": "melanocytic_nevus", "behaviour": "benign", "lineage": "melanocytic"},
                ],
            },
        ],
    },
}


@pytest.fixture(scope="module")
def taxonomy() -> Taxonomy:
    return Taxonomy.from_dict(TREE)


def make_samples(rows: list[dict]) -> pd.DataFrame:
    defaults = {c: None for c in SAMPLE_COLUMNS}
    out = []
    for i, row in enumerate(rows):
        record = {
            **defaults,
            "sample_id": f"s{i:03d}",
            "source_dataset": "ham10000",
            "taxonomy_node": "melanoma",
            "taxonomy_depth": 2,
            "image_sha256": f"h{i:03d}",
            **row,
        }
        out.append(record)
    return pd.DataFrame(out)


def test_dedup_keeps_most_specific_label_and_reports_every_drop(taxonomy):
    samples = make_samples(
        [
            {
                "sample_id": "isic2019/a",
                "source_dataset": "isic2019",
                "image_sha256": "same",
                "taxonomy_node": "melanoma",
                "taxonomy_depth": 2,
            },
            {
                "sample_id": "ham10000/a",
                "source_dataset": "ham10000",
                "image_sha256": "same",
                "taxonomy_node": "nodular_melanoma",
                "taxonomy_depth": 3,
            },
            {"sample_id": "ham10000/b", "image_sha256": "other"},
        ]
    )
    result = deduplicate(samples, taxonomy)
    assert sorted(result.samples["sample_id"]) == ["ham10000/a", "ham10000/b"]
    assert result.duplicates.to_dict("records") == [
        {
            "image_sha256": "same",
            "kept_sample_id": "ham10000/a",
            "dropped_sample_id": "isic2019/a",
            "kept_node": "nodular_melanoma",
            "dropped_node": "melanoma",
            "reason": "exact_duplicate",
        }
    ]


def test_dedup_flags_conflicting_labels_instead_of_merging_silently(taxonomy):
    samples = make_samples(
        [
            {
                "sample_id": "a/1",
                "source_dataset": "bcn20000",
                "image_sha256": "x",
                "taxonomy_node": "melanoma",
                "taxonomy_depth": 2,
            },
            {
                "sample_id": "b/1",
                "source_dataset": "isic2019",
                "image_sha256": "x",
                "taxonomy_node": "melanocytic_nevus",
                "taxonomy_depth": 2,
            },
        ]
    )
    result = deduplicate(samples, taxonomy, dataset_priority=["isic2019", "bcn20000"])
    assert result.samples["sample_id"].tolist() == ["b/1"]  # priority breaks the depth tie
    assert result.counts() == {"label_conflict": 1}


# ------------------------------------------------------------------------------------------ near-duplicates


def _photo(seed: int, width: int = 400, height: int = 300) -> Image.Image:
    """Colour blobs plus noise: textured like a photograph, different for every seed."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray((rng.random((4, 5, 3)) * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(base).astype(np.int16) + rng.integers(-12, 13, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _jpeg(im: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_hashes(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """name -> (sha256, dhash) as ingest stores them, for four photographs and a re-hosted copy of the first
    (resized to 0.8x and re-saved as JPEG quality 85, the way a mirror re-packages a dataset)."""
    root = tmp_path_factory.mktemp("near")
    files = {f"photo{i}": _jpeg(_photo(seed=i), 90) for i in range(4)}
    with Image.open(io.BytesIO(files["photo0"])) as im:
        rgb = im.convert("RGB")
    files["copy0"] = _jpeg(rgb.resize((320, 240), Image.Resampling.BICUBIC), 85)
    out = {}
    for name, data in files.items():
        path = root / f"{name}.jpg"
        path.write_bytes(data)
        check = inspect_image(path)
        assert check.ok, check.detail
        out[name] = (check.sha256, check.dhash)
    return out


def _hashed(image_hashes, name: str, **row) -> dict:
    sha, dh = image_hashes[name]
    return {"image_sha256": sha, "image_dhash": dh, **row}


def test_near_duplicates_find_a_reencoded_cross_dataset_copy(image_hashes):
    samples = make_samples(
        [
            _hashed(image_hashes, "photo0", sample_id="ham10000/ISIC_1", source_dataset="ham10000"),
            _hashed(image_hashes, "copy0", sample_id="isic2019/ISIC_1_resized", source_dataset="isic2019"),
            _hashed(image_hashes, "photo1", sample_id="ham10000/ISIC_2", source_dataset="ham10000"),
            _hashed(image_hashes, "photo2", sample_id="pad_ufes_20/PAT_1", source_dataset="pad_ufes_20"),
            {"sample_id": "derm7pt/no_hash", "source_dataset": "derm7pt", "image_sha256": "x", "image_dhash": None},
        ]
    )
    assert image_hashes["photo0"][0] != image_hashes["copy0"][0]  # the byte hash cannot see it
    report = near_duplicates(samples, max_distance=4)
    assert list(report.columns) == list(NEAR_DUPLICATE_COLUMNS)
    assert len(report) == 1
    pair = report.iloc[0]
    assert (pair["sample_id_a"], pair["sample_id_b"]) == ("ham10000/ISIC_1", "isic2019/ISIC_1_resized")
    assert (pair["source_a"], pair["source_b"]) == ("ham10000", "isic2019")
    assert pd.isna(pair["split_a"]) and pd.isna(pair["split_b"])  # before splits are assigned
    assert 0 <= pair["distance"] <= 4
    # Distinct photographs stay far apart: nothing else comes close.
    assert len(near_duplicates(samples, max_distance=10)) == 1


def test_near_duplicates_report_cross_split_pairs_but_not_same_split_or_identical_bytes(image_hashes):
    photo, copy = image_hashes["photo0"], image_hashes["copy0"]
    samples = make_samples(
        [
            {"sample_id": "a/train", "image_sha256": photo[0], "image_dhash": photo[1], "split": "train"},
            {"sample_id": "a/test_copy", "image_sha256": copy[0], "image_dhash": copy[1], "split": "test"},
            {"sample_id": "a/train_copy", "image_sha256": copy[0] + "x", "image_dhash": copy[1], "split": "train"},
            {
                "sample_id": "b/same_bytes",
                "source_dataset": "bcn20000",
                "image_sha256": photo[0],
                "image_dhash": photo[1],
                "split": "train",
            },
        ]
    )
    report = near_duplicates(samples, max_distance=4)
    pairs = set(zip(report["sample_id_a"], report["sample_id_b"]))
    # train vs test within one dataset: reported; train vs train within one dataset: not; same sha: not (exact).
    assert pairs == {
        ("a/test_copy", "a/train"),
        ("a/test_copy", "a/train_copy"),
        ("a/train_copy", "b/same_bytes"),
        ("a/test_copy", "b/same_bytes"),
    }
    row = report.set_index(["sample_id_a", "sample_id_b"]).loc[("a/test_copy", "a/train")]
    assert (row["split_a"], row["split_b"]) == ("test", "train")
    assert report["distance"].is_monotonic_increasing


def test_deduplicate_drops_a_near_duplicate_only_when_asked(taxonomy, image_hashes):
    samples = make_samples(
        [
            _hashed(
                image_hashes,
                "photo0",
                sample_id="isic2019/ISIC_1",
                source_dataset="isic2019",
                taxonomy_node="melanoma",
                taxonomy_depth=2,
            ),
            _hashed(
                image_hashes,
                "copy0",
                sample_id="ham10000/ISIC_1",
                source_dataset="ham10000",
                taxonomy_node="nodular_melanoma",
                taxonomy_depth=3,
            ),
            _hashed(image_hashes, "photo1", sample_id="ham10000/ISIC_2", source_dataset="ham10000"),
            _hashed(image_hashes, "photo1", sample_id="bcn20000/ISIC_2", source_dataset="bcn20000"),
        ]
    )
    # Default: exactly today's behaviour, identical bytes only; the re-encoded copy stays.
    default = deduplicate(samples, taxonomy)
    assert default.samples["sample_id"].tolist() == ["bcn20000/ISIC_2", "ham10000/ISIC_1", "isic2019/ISIC_1"]
    assert default.duplicates.to_dict("records") == [
        {
            "image_sha256": image_hashes["photo1"][0],
            "kept_sample_id": "bcn20000/ISIC_2",
            "dropped_sample_id": "ham10000/ISIC_2",
            "kept_node": "melanoma",
            "dropped_node": "melanoma",
            "reason": "exact_duplicate",
        }
    ]
    assert deduplicate(samples.drop(columns="image_dhash"), taxonomy).samples.equals(
        default.samples.drop(columns="image_dhash")
    )

    near = deduplicate(samples, taxonomy, near_duplicate_distance=4)
    # The deeper label wins, as for identical bytes.
    assert near.samples["sample_id"].tolist() == ["bcn20000/ISIC_2", "ham10000/ISIC_1"]
    assert near.counts() == {"exact_duplicate": 1, "near_duplicate": 1}
    row = near.duplicates.set_index("reason").loc["near_duplicate"]
    assert (row["kept_sample_id"], row["dropped_sample_id"]) == ("ham10000/ISIC_1", "isic2019/ISIC_1")
    assert (row["kept_node"], row["dropped_node"], row["image_sha256"]) == (
        "nodular_melanoma",
        "melanoma",
        image_hashes["photo0"][0],
    )
    assert 0 <= row["distance"] <= 4
    assert near.duplicates.set_index("reason").loc["exact_duplicate", "distance"] == 0


def test_near_duplicate_with_disagreeing_label_is_a_label_conflict(taxonomy, image_hashes):
    samples = make_samples(
        [
            _hashed(
                image_hashes,
                "photo0",
                sample_id="isic2019/a",
                source_dataset="isic2019",
                taxonomy_node="melanoma",
                taxonomy_depth=2,
            ),
            _hashed(
                image_hashes,
                "copy0",
                sample_id="bcn20000/a",
                source_dataset="bcn20000",
                taxonomy_node="melanocytic_nevus",
                taxonomy_depth=2,
            ),
        ]
    )
    result = deduplicate(samples, taxonomy, dataset_priority=["bcn20000", "isic2019"], near_duplicate_distance=4)
    assert result.samples["sample_id"].tolist() == ["bcn20000/a"]  # priority breaks the depth tie
    assert result.counts() == {"label_conflict": 1}


def test_near_duplicate_drops_do_not_chain(taxonomy):
    # b is 3 bits from a, c is 3 bits from b but 6 from a: with distance 3, b goes (a is kept first) and c,
    # whose only match was dropped, stays. Every drop names a keeper within the distance.
    samples = make_samples(
        [
            {"sample_id": "a/1", "source_dataset": "a", "image_dhash": f"{0:016x}"},
            {"sample_id": "b/1", "source_dataset": "b", "image_dhash": f"{0b111:016x}"},
            {"sample_id": "c/1", "source_dataset": "c", "image_dhash": f"{0b111111:016x}"},
        ]
    )
    result = deduplicate(samples, taxonomy, near_duplicate_distance=3)
    assert result.samples["sample_id"].tolist() == ["a/1", "c/1"]
    assert result.duplicates[["kept_sample_id", "dropped_sample_id", "distance"]].values.tolist() == [["a/1", "b/1", 3]]
    assert len(near_duplicates(samples, 3)) == 2 and len(near_duplicates(samples, 6)) == 3


def test_near_duplicate_matching_needs_hashes_that_parse(taxonomy):
    samples = make_samples([{"sample_id": "a/1"}, {"sample_id": "b/1", "source_dataset": "b"}])
    with pytest.raises(ValueError, match="image_dhash column"):
        near_duplicates(samples.drop(columns="image_dhash"), 4)
    with pytest.raises(ValueError, match="image_dhash column"):
        deduplicate(samples.drop(columns="image_dhash"), taxonomy, near_duplicate_distance=4)
    bad = samples.assign(image_dhash=["0" * 16, "zz"])
    with pytest.raises(ValueError, match="'b/1'.*malformed"):
        near_duplicates(bad, 4)
    with pytest.raises(ValueError, match="distance"):
        near_duplicates(samples, -1)
    assert near_duplicates(samples, 4).empty  # no hashes at all: nothing to report


def test_lesions_and_patients_never_straddle_splits():
    rows = []
    for lesion in range(40):
        for _image in range(3):
            rows.append(
                {
                    "lesion_id": f"L{lesion}",
                    "patient_id": f"P{lesion // 2}",
                    "taxonomy_node": "melanoma" if lesion % 2 else "melanocytic_nevus",
                }
            )
    samples = make_samples(rows)
    split = assign_splits(samples, SplitPolicy(seed=1))
    assert leakage_report(split) == {"image_sha256": [], "lesion_id": [], "patient_id": []}
    assert split.groupby("patient_id")["split"].nunique().max() == 1
    # Stratified: both classes reach every split.
    assert (split.groupby(["taxonomy_node", "split"]).size().unstack().fillna(0) > 0).all().all()
    assert set(split["split_rule"]) == {"seeded"}


def test_split_is_deterministic_and_seed_dependent():
    samples = make_samples([{"lesion_id": f"L{i}"} for i in range(60)])
    a = assign_splits(samples, SplitPolicy(seed=7))["split"].tolist()
    b = assign_splits(samples.sample(frac=1, random_state=3).sort_values("sample_id"), SplitPolicy(seed=7))[
        "split"
    ].tolist()
    c = assign_splits(samples, SplitPolicy(seed=8))["split"].tolist()
    assert a == b
    assert a != c
    counts = pd.Series(a).value_counts()
    assert counts["train"] == 36 and counts["valid"] == 12 and counts["test"] == 12


def test_official_splits_are_kept_and_valid_is_carved_from_train_only():
    rows = [{"lesion_id": f"L{i}", "official_split": "train"} for i in range(40)]
    rows += [{"lesion_id": f"T{i}", "official_split": "test"} for i in range(10)]
    split = assign_splits(make_samples(rows), SplitPolicy(valid_from_train=0.25))
    test_rows = split[split["lesion_id"].str.startswith("T")]
    assert set(test_rows["split"]) == {"test"} and set(test_rows["split_rule"]) == {"official"}
    train_rows = split[split["lesion_id"].str.startswith("L")]
    assert train_rows["split"].value_counts().to_dict() == {"train": 30, "valid": 10}
    assert set(train_rows["split_rule"]) == {"carved_valid"}


def test_official_split_conflict_inside_a_lesion_goes_to_the_held_out_side():
    samples = make_samples(
        [
            {"lesion_id": "L1", "official_split": "train"},
            {"lesion_id": "L1", "official_split": "test"},
        ]
    )
    split = assign_splits(samples)
    assert split["split"].tolist() == ["test", "test"]
    assert set(split["split_rule"]) == {"official_conflict"}


def test_isic_family_shares_lesion_ids_but_other_datasets_do_not():
    samples = make_samples(
        [
            {"source_dataset": "ham10000", "lesion_id": "HAM_1"},
            {"source_dataset": "isic2019", "lesion_id": "HAM_1"},
            {"source_dataset": "pad_ufes_20", "lesion_id": "HAM_1"},
        ]
    )
    groups = group_ids(samples).tolist()
    assert groups[0] == groups[1] != groups[2]


def test_leakage_report_finds_planted_leaks():
    samples = make_samples(
        [
            {"lesion_id": "L1", "split": "train"},
            {"lesion_id": "L1", "split": "test"},
            {"image_sha256": "dup", "split": "train"},
            {"image_sha256": "dup", "split": "valid"},
        ]
    )
    report = leakage_report(samples)
    assert report["lesion_id"] == ["isic:L1"]  # HAM lesion ids live in the shared ISIC namespace
    assert report["image_sha256"] == ["dup"]


@pytest.mark.parametrize("ratios", [(0.5, 0.5, 0.5), (1.2, -0.1, -0.1), (0.5, 0.5)])
def test_bad_ratios_are_rejected_with_the_values(ratios):
    with pytest.raises(ValueError, match="ratios"):
        SplitPolicy(ratios=ratios)
