"""Cross-dataset de-duplication by image content hash, and near-duplicate reporting by perceptual hash.

ISIC 2019 re-distributes HAM10000 and BCN20000 images; OmniMedVQA re-packages ISIC and PAD-UFES-20. Loading
several of them without this step puts one photograph in train and test at once. Identical bytes (sha256) are
always de-duplicated.

Identical bytes miss re-encoded copies: a mirror that resized the photograph or re-saved it as JPEG ships new
bytes under a new id. Ingest therefore stores a 64-bit dHash (`image_dhash`, see
`skinr1_pipeline.data.perceptual_hash`), and `near_duplicates` lists pairs of different files within a Hamming
distance that sit in different source datasets or different splits: the pairs that would leak a photograph
across datasets or from train into test. Pairs inside one dataset and one split are left out; two photographs
of one lesion are not copies, and the split keeps lesions together by id anyway.

Near-duplicates are reported, not dropped, unless `deduplicate(near_duplicate_distance=...)` asks for it: a
dHash match is a strong hint, not proof. Distinct images can sit a few bits apart (crops of one slide do, and
so do the procedural demo images: of the 643 distinct demo images 11 share their exact dHash with another and
139 pairs are within 2 bits, while re-encoded copies land 0-4 bits away), and how close counts as "the same
image" depends on the corpus, so the distance must come from `perceptual_hash.calibrate_threshold` on the
corpus at hand, never from a default.
When asked, a near-duplicate is dropped against the best kept image it matches, by the same keep rule as exact
duplicates; each dropped row names its keeper, which is itself within the distance (no chaining through a
string of slightly different images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from skinr1_pipeline.data.perceptual_hash import calibrate_threshold, hash_array, near_duplicate_pairs
from skinr1_pipeline.knowledge.taxonomy import Taxonomy

DUPLICATE_COLUMNS = ("image_sha256", "kept_sample_id", "dropped_sample_id", "kept_node", "dropped_node", "reason")
# With near_duplicate_distance, duplicates also carry the dHash distance to the keeper (0 for identical bytes).
NEAR_DEDUP_COLUMNS = (*DUPLICATE_COLUMNS, "distance")
NEAR_DUPLICATE_COLUMNS = ("sample_id_a", "sample_id_b", "source_a", "source_b", "split_a", "split_b", "distance")


@dataclass
class DedupResult:
    samples: pd.DataFrame
    duplicates: pd.DataFrame  # one row per dropped sample, with why

    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.duplicates["reason"].value_counts().sort_index().items()}


def deduplicate(
    samples: pd.DataFrame,
    taxonomy: Taxonomy,
    dataset_priority: list[str] | None = None,
    *,
    near_duplicate_distance: int | None = None,
) -> DedupResult:
    """Keep one sample per image hash, preferring the most specific label.

    Within a group of identical images the kept row is the one whose taxonomy node is deepest, ties broken by
    `dataset_priority` (earlier wins) and then sample id, so the result does not depend on load order. A group
    whose labels are not on one root-to-leaf path (two datasets disagree) is kept all the same but every
    dropped row is reported as `label_conflict`, never silently merged.

    With `near_duplicate_distance` (a calibrated dHash distance; needs an `image_dhash` column), the rows left
    after exact de-duplication are also matched as `near_duplicates` pairs them. In keep-rule order, a row
    that matches an already kept row is dropped against the best such keeper, as `near_duplicate` when its
    label lies on the keeper's root-to-leaf path and `label_conflict` otherwise; `duplicates` then has a
    `distance` column. Rows without a hash are never matched. None (the default) changes nothing.
    """
    near = near_duplicate_distance is not None
    if near:
        _check_distance(near_duplicate_distance)
        _require_dhash(samples)
    columns = list(NEAR_DEDUP_COLUMNS if near else DUPLICATE_COLUMNS)
    if samples.empty:
        return DedupResult(samples.copy(), pd.DataFrame(columns=columns))
    priority = {name: i for i, name in enumerate(dataset_priority or [])}
    frame = samples.copy()
    frame["_prio"] = frame["source_dataset"].map(lambda d: priority.get(d, len(priority)))
    frame = frame.sort_values(
        ["image_sha256", "taxonomy_depth", "_prio", "sample_id"], ascending=[True, False, True, True], kind="mergesort"
    )
    first = ~frame["image_sha256"].duplicated(keep="first")
    kept = frame.loc[first]
    dropped = frame.loc[~first]
    kept_by_hash = kept.set_index("image_sha256")
    rows = []
    for row in dropped.itertuples(index=False):
        keeper = kept_by_hash.loc[row.image_sha256]
        consistent = taxonomy.is_ancestor(row.taxonomy_node, keeper["taxonomy_node"])
        rows.append(
            {
                "image_sha256": row.image_sha256,
                "kept_sample_id": keeper["sample_id"],
                "dropped_sample_id": row.sample_id,
                "kept_node": keeper["taxonomy_node"],
                "dropped_node": row.taxonomy_node,
                "reason": "exact_duplicate" if consistent else "label_conflict",
            }
            | ({"distance": 0} if near else {})
        )
    if near:
        kept, near_rows = _drop_near_duplicates(kept, taxonomy, int(near_duplicate_distance))
        rows += near_rows
    duplicates = pd.DataFrame(rows, columns=columns)
    if near:
        duplicates["distance"] = duplicates["distance"].astype("int64")
    result = kept.drop(columns="_prio").sort_values("sample_id", kind="mergesort").reset_index(drop=True)
    return DedupResult(result, duplicates)


def _drop_near_duplicates(kept: pd.DataFrame, taxonomy: Taxonomy, max_distance: int) -> tuple[pd.DataFrame, list[dict]]:
    """Greedy in keep-rule order: a row matching an already kept row goes, reported against the best one."""
    order = kept.sort_values(["taxonomy_depth", "_prio", "sample_id"], ascending=[False, True, True], kind="mergesort")
    order = order.reset_index(drop=True)
    a, b, dist = _near_pair_positions(order, max_distance)
    neighbours: dict[int, list[tuple[int, int]]] = {}
    for i, j, d in zip(a.tolist(), b.tolist(), dist.tolist()):
        first, later = min(i, j), max(i, j)  # position = keep rank
        neighbours.setdefault(later, []).append((first, d))
    keep = np.ones(len(order), dtype=bool)
    rows = []
    for pos in sorted(neighbours):
        keepers = sorted((rank, d) for rank, d in neighbours[pos] if keep[rank])
        if not keepers:
            continue
        rank, d = keepers[0]
        keep[pos] = False
        row, keeper = order.iloc[pos], order.iloc[rank]
        consistent = taxonomy.is_ancestor(row["taxonomy_node"], keeper["taxonomy_node"])
        rows.append(
            {
                "image_sha256": row["image_sha256"],
                "kept_sample_id": keeper["sample_id"],
                "dropped_sample_id": row["sample_id"],
                "kept_node": keeper["taxonomy_node"],
                "dropped_node": row["taxonomy_node"],
                "reason": "near_duplicate" if consistent else "label_conflict",
                "distance": int(d),
            }
        )
    return order.loc[keep], rows


def near_duplicates(samples: pd.DataFrame, max_distance: int) -> pd.DataFrame:
    """Pairs of different image files (different sha256) whose dHashes are at most `max_distance` bits apart
    and whose source datasets differ or whose splits differ: the copies that leak across datasets or splits.

    Needs `sample_id`, `source_dataset`, `image_sha256` and `image_dhash` columns; `split` is optional (before
    splits are assigned only cross-dataset pairs qualify, and a pair counts as cross-split only when both
    splits are known). Rows without a hash are skipped; a malformed hash raises ValueError naming the sample.
    Columns NEAR_DUPLICATE_COLUMNS, one row per unordered pair with sample_id_a < sample_id_b, nearest first.
    Cost: every pair of distinct hashes is compared, in fixed-size tiles (memory stays flat); quadratic,
    ~3 s for 30,000 images on a 2-core machine, so ~10 s at 50,000.
    """
    _check_distance(max_distance)
    _require_dhash(samples)
    frame = samples.reset_index(drop=True)
    a, b, dist = _near_pair_positions(frame, int(max_distance))
    split = frame["split"] if "split" in frame else pd.Series(None, index=frame.index, dtype=object)
    ids, sources = frame["sample_id"].to_numpy(), frame["source_dataset"].to_numpy()
    splits = split.astype(object).where(split.notna(), None).to_numpy()
    swap = ids[a].astype(str) > ids[b].astype(str)
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    out = pd.DataFrame(
        {
            "sample_id_a": ids[a],
            "sample_id_b": ids[b],
            "source_a": sources[a],
            "source_b": sources[b],
            "split_a": splits[a],
            "split_b": splits[b],
            "distance": dist.astype("int64"),
        },
        columns=list(NEAR_DUPLICATE_COLUMNS),
    )
    return out.sort_values(["distance", "sample_id_a", "sample_id_b"], kind="mergesort").reset_index(drop=True)


def _near_pair_positions(frame: pd.DataFrame, max_distance: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row positions (a, b, distance) of each qualifying pair once: different sha256, dHash within
    `max_distance`, and different source dataset or different (known) split.

    Distinct hash values are compared once each (re-hosted exact copies share one), then expanded to rows.
    """
    empty = np.empty(0, dtype=np.int64)
    present = frame["image_dhash"].notna().to_numpy()
    positions = np.flatnonzero(present)
    if len(positions) < 2:
        return empty, empty, empty
    texts = frame["image_dhash"].to_numpy()[positions]
    try:
        values = hash_array([str(t) for t in texts])
    except ValueError:
        bad = next(i for i, t in enumerate(texts) if not _parses(str(t)))
        raise ValueError(
            f"sample {frame['sample_id'].iloc[positions[bad]]!r} has a malformed image_dhash {texts[bad]!r} "
            "(expected 16 hex chars)"
        ) from None
    unique, code = np.unique(values, return_inverse=True)
    pairs = near_duplicate_pairs(unique, unique, max_distance)
    pairs = pairs[pairs["query_index"] <= pairs["reference_index"]]
    if pairs.empty:
        return empty, empty, empty
    rows = pd.DataFrame({"code": code.reshape(-1), "pos": positions})
    joined = pairs.merge(rows.rename(columns={"code": "query_index", "pos": "a"}), on="query_index")
    joined = joined.merge(rows.rename(columns={"code": "reference_index", "pos": "b"}), on="reference_index")
    # Rows sharing one hash value meet twice and each meets itself: keep those pairs once, a < b.
    joined = joined[(joined["query_index"] < joined["reference_index"]) | (joined["a"] < joined["b"])]
    first, second = joined["a"].to_numpy(np.int64), joined["b"].to_numpy(np.int64)
    a, b = np.minimum(first, second), np.maximum(first, second)
    sha = frame["image_sha256"].astype(str).to_numpy()
    source = frame["source_dataset"].astype(str).to_numpy()
    if "split" in frame:
        split = frame["split"].to_numpy(dtype=object)
        known = frame["split"].notna().to_numpy()
        split_differs = known[a] & known[b] & (split[a] != split[b])
    else:
        split_differs = np.zeros(len(a), dtype=bool)
    wanted = (sha[a] != sha[b]) & ((source[a] != source[b]) | split_differs)
    order = np.lexsort((b[wanted], a[wanted]))
    return a[wanted][order], b[wanted][order], joined["distance"].to_numpy(np.int64)[wanted][order]


def _parses(text: str) -> bool:
    try:
        hash_array([text])
    except ValueError:
        return False
    return True


def _check_distance(value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 0 <= int(value) <= 64:
        raise ValueError(f"near-duplicate distance must be an integer number of bits in [0, 64], got {value!r}")


def _require_dhash(samples: pd.DataFrame) -> None:
    if "image_dhash" not in samples.columns:
        raise ValueError(
            "near-duplicate matching needs an image_dhash column; samples ingested before dHashes were stored "
            "must be re-ingested"
        )


def calibrated_distance(
    setting: int, samples: pd.DataFrame, *, seed: int = 0, max_images: int = 2000
) -> tuple[int | None, str]:
    """The dHash distance to flag copies with, and how it was set.

    `setting` >= 0 is used as given; -1 calibrates on re-encoded copies of the samples' images
    (`perceptual_hash.calibrate_threshold`), because procedural or similar-looking images can be a few bits apart
    and a fixed number would either miss copies or flag distinct images. At most `max_images` images (a
    seeded sample) are read, which bounds the cost on large datasets. None when the samples have no dHash column.
    """
    if "image_dhash" not in samples or samples["image_dhash"].isna().all():
        return None, "not checked: the samples carry no image_dhash (ingested before perceptual hashing)"
    if setting >= 0:
        return setting, f"{setting} bits, as configured"
    paths = sorted(set(samples["image_path"].dropna().astype(str)))
    if len(paths) > max_images:
        keep = np.random.default_rng(seed).choice(len(paths), size=max_images, replace=False)
        paths = [paths[i] for i in sorted(keep)]
    calibration = calibrate_threshold(paths, seed=seed)
    return calibration.threshold, calibration.describe()
