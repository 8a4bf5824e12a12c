"""Train/eval overlap: evaluation items whose image (by SHA-256 or, optionally, by perceptual hash) or sample id
also occurs in training data.

Why three keys: dedup upstream works on image hashes, but a re-encoded copy has a new hash while keeping its id,
and OmniMedVQA re-hosts ISIC / PAD-UFES images under new ids with identical bytes. A copy that was resized and
re-saved (new bytes *and* a new id) escapes both: measured on the demo, SHA-256 caught 0 of 60 such copies. The
optional dHash check (`image_dhash`, see `skinr1_pipeline.data.perceptual_hash`) catches them; its distance must
come from `calibrate_threshold` on the corpus, since distinct images can be a few bits apart. Flagged items are
reported per suite and removed before scoring (`ContaminationReport.clean`, or `score_predictions(exclude=...)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

FLAG_COLUMNS = (
    "item_id",
    "suite",
    "sample_id",
    "image_sha256",
    "image_dhash",
    "by_hash",
    "by_sample_id",
    "by_near_duplicate",
    "nearest_distance",
    "nearest_sample_id",
    "contaminated",
)
SUMMARY_COLUMNS = (
    "suite",
    "n_items",
    "contaminated",
    "by_hash",
    "by_sample_id",
    "by_near_duplicate",
    "without_dhash",
    "fraction",
)


@dataclass
class ContaminationReport:
    flags: pd.DataFrame  # one row per evaluation item
    summary: pd.DataFrame  # one row per suite
    near_duplicate_distance: int | None = None  # the dHash distance applied; None when that check did not run
    training_without_dhash: int = 0  # training rows in frames with an image_dhash column but no usable value

    @property
    def contaminated_ids(self) -> set[str]:
        return set(self.flags.loc[self.flags["contaminated"], "item_id"])

    def clean(self, items: pd.DataFrame) -> pd.DataFrame:
        """`items` without the contaminated ones."""
        return items[~items["item_id"].isin(self.contaminated_ids)].reset_index(drop=True)


def _keys(frames: Sequence[pd.DataFrame], column: str) -> set[str]:
    out: set[str] = set()
    for frame in frames:
        if column in frame:
            out.update(v for v in frame[column].dropna() if isinstance(v, str) and v.strip())
    return out


def _usable(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _training_dhashes(frames: Sequence[pd.DataFrame]) -> tuple[np.ndarray, list[str | None], int, bool]:
    """Unique training dHashes (uint64), the sample id first seen with each, rows skipped, any column present."""
    from skinr1_pipeline.data.perceptual_hash import parse_dhash

    values: list[int] = []
    ids: list[str | None] = []
    skipped, present = 0, False
    for frame in frames:
        if "image_dhash" not in frame:
            continue
        present = True
        sample_ids = frame["sample_id"] if "sample_id" in frame else pd.Series(None, index=frame.index, dtype=object)
        for value, sid in zip(frame["image_dhash"], sample_ids):
            if not _usable(value):
                skipped += 1
                continue
            values.append(parse_dhash(value))
            ids.append(sid if isinstance(sid, str) else None)
    hashes, first = np.unique(np.array(values, dtype=np.uint64), return_index=True)
    return hashes, [ids[i] for i in first], skipped, present


def check_contamination(
    items: pd.DataFrame, training: pd.DataFrame | Sequence[pd.DataFrame], *, near_duplicate_distance: int | None = None
) -> ContaminationReport:
    """Flag evaluation `items` (suite, item_id, sample_id, image_sha256[, image_dhash]) that overlap any `training`
    frame.

    Pass every frame a model learned from (RL train items, SFT records, unified samples of the train split).
    With `near_duplicate_distance` (a calibrated dHash threshold) and an `image_dhash` column on the items and at
    least one training frame, items within that Hamming distance of a training image are flagged
    `by_near_duplicate`, with the nearest training image's distance and sample id. An item whose bytes match
    (by_hash) is not also counted as a near duplicate. Missing dHash values are skipped, never matched: items
    without one are counted per suite (`without_dhash`), training rows in `training_without_dhash`.
    """
    frames = [training] if isinstance(training, pd.DataFrame) else list(training)
    hashes, ids = _keys(frames, "image_sha256"), _keys(frames, "sample_id")
    sha = items["image_sha256"] if "image_sha256" in items else pd.Series(None, index=items.index, dtype=object)
    dh = items["image_dhash"] if "image_dhash" in items else pd.Series(None, index=items.index, dtype=object)
    by_hash = sha.map(lambda h: isinstance(h, str) and h in hashes).astype(bool)
    by_id = items["sample_id"].isin(ids)
    has_dhash = dh.map(_usable).astype(bool)

    nearest = pd.Series(pd.NA, index=items.index, dtype="Int64")
    nearest_id = pd.Series(None, index=items.index, dtype=object)
    by_near = pd.Series(False, index=items.index)
    applied: int | None = None
    skipped = 0
    if near_duplicate_distance is not None:
        if near_duplicate_distance < 0:
            raise ValueError(f"near_duplicate_distance must be >= 0, got {near_duplicate_distance}")
        from skinr1_pipeline.data.perceptual_hash import hash_array, pairwise_min_distances

        ref, ref_ids, skipped, present = _training_dhashes(frames)
        if present and "image_dhash" in items:
            applied = int(near_duplicate_distance)
            if len(ref) and has_dhash.any():
                checked = items.index[has_dhash]
                dist, arg = pairwise_min_distances(hash_array(dh[has_dhash].tolist()), ref)
                nearest.loc[checked] = dist
                nearest_id.loc[checked] = [ref_ids[i] for i in arg]
                by_near.loc[checked] = dist <= applied
            by_near &= ~by_hash

    flags = pd.DataFrame(
        {
            "item_id": items["item_id"],
            "suite": items["suite"] if "suite" in items else "all",
            "sample_id": items["sample_id"],
            "image_sha256": sha,
            "image_dhash": dh,
            "by_hash": by_hash,
            "by_sample_id": by_id,
            "by_near_duplicate": by_near.astype(bool),
            "nearest_distance": nearest,
            "nearest_sample_id": nearest_id,
            "contaminated": by_hash | by_id | by_near,
            "_no_dhash": ~has_dhash,
        }
    ).reset_index(drop=True)
    summary = (
        flags.groupby("suite", sort=True)
        .agg(
            n_items=("item_id", "size"),
            contaminated=("contaminated", "sum"),
            by_hash=("by_hash", "sum"),
            by_sample_id=("by_sample_id", "sum"),
            by_near_duplicate=("by_near_duplicate", "sum"),
            without_dhash=("_no_dhash", "sum"),
        )
        .reset_index()
    )
    summary["fraction"] = summary["contaminated"] / summary["n_items"]
    return ContaminationReport(flags[list(FLAG_COLUMNS)], summary[list(SUMMARY_COLUMNS)], applied, skipped)


def attach_image_hashes(items: pd.DataFrame, samples: pd.DataFrame) -> pd.DataFrame:
    """Items with `image_dhash` taken from the unified samples of the image each item shows (by sample id)."""
    out = items.copy()
    if "image_dhash" not in samples:
        out["image_dhash"] = None
        return out
    by_id = samples.drop_duplicates("sample_id").set_index("sample_id")["image_dhash"]
    out["image_dhash"] = out["sample_id"].map(by_id).astype(object).where(lambda s: s.notna(), None)
    return out
