"""Train/eval overlap: evaluation items whose image (by SHA-256) or sample id also occurs in training data.

Why both keys: dedup upstream works on image hashes, but a re-encoded copy has a new hash while keeping its id,
and OmniMedVQA re-hosts ISIC / PAD-UFES images under new ids with identical bytes. Flagged items are reported
per suite and removed before scoring (`ContaminationReport.clean`, or `score_predictions(exclude=...)`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

FLAG_COLUMNS = ("item_id", "suite", "sample_id", "image_sha256", "by_hash", "by_sample_id", "contaminated")
SUMMARY_COLUMNS = ("suite", "n_items", "contaminated", "by_hash", "by_sample_id", "fraction")


@dataclass
class ContaminationReport:
    flags: pd.DataFrame  # one row per evaluation item
    summary: pd.DataFrame  # one row per suite

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


def check_contamination(items: pd.DataFrame, training: pd.DataFrame | Sequence[pd.DataFrame]) -> ContaminationReport:
    """Flag evaluation `items` (suite, item_id, sample_id, image_sha256) that overlap any `training` frame.

    Pass every frame a model learned from (RL train items, SFT records, unified samples of the train split).
    """
    frames = [training] if isinstance(training, pd.DataFrame) else list(training)
    hashes, ids = _keys(frames, "image_sha256"), _keys(frames, "sample_id")
    sha = items["image_sha256"] if "image_sha256" in items else pd.Series(None, index=items.index, dtype=object)
    by_hash = sha.map(lambda h: isinstance(h, str) and h in hashes).astype(bool)
    by_id = items["sample_id"].isin(ids)
    flags = pd.DataFrame({
        "item_id": items["item_id"], "suite": items["suite"] if "suite" in items else "all",
        "sample_id": items["sample_id"], "image_sha256": sha, "by_hash": by_hash, "by_sample_id": by_id,
        "contaminated": by_hash | by_id,
    })[list(FLAG_COLUMNS)].reset_index(drop=True)  # fmt: skip
    summary = (
        flags.groupby("suite", sort=True)
        .agg(n_items=("item_id", "size"), contaminated=("contaminated", "sum"), by_hash=("by_hash", "sum"),
             by_sample_id=("by_sample_id", "sum"))
        .reset_index()
    )
    summary["fraction"] = summary["contaminated"] / summary["n_items"]
    return ContaminationReport(flags, summary[list(SUMMARY_COLUMNS)])
