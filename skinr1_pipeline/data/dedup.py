"""Cross-dataset de-duplication by image content hash.

ISIC 2019 re-distributes HAM10000 and BCN20000 images; OmniMedVQA re-packages ISIC and PAD-UFES-20. Loading
several of them without this step puts one photograph in train and test at once. Identical bytes are the
test (sha256), so re-encoded copies are not caught; that residual risk is reported by the split check on
lesion and patient ids.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from skinr1_pipeline.knowledge.taxonomy import Taxonomy

DUPLICATE_COLUMNS = ("image_sha256", "kept_sample_id", "dropped_sample_id", "kept_node", "dropped_node", "reason")


@dataclass
class DedupResult:
    samples: pd.DataFrame
    duplicates: pd.DataFrame  # one row per dropped sample, with why

    def counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.duplicates["reason"].value_counts().sort_index().items()}


def deduplicate(samples: pd.DataFrame, taxonomy: Taxonomy, dataset_priority: list[str] | None = None) -> DedupResult:
    """Keep one sample per image hash, preferring the most specific label.

    Within a group of identical images the kept row is the one whose taxonomy node is deepest, ties broken by
    `dataset_priority` (earlier wins) and then sample id, so the result does not depend on load order. A group
    whose labels are not on one root-to-leaf path (two datasets disagree) is kept all the same but every
    dropped row is reported as `label_conflict`, never silently merged.
    """
    if samples.empty:
        return DedupResult(samples.copy(), pd.DataFrame(columns=list(DUPLICATE_COLUMNS)))
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
        )
    duplicates = pd.DataFrame(rows, columns=list(DUPLICATE_COLUMNS))
    result = kept.drop(columns="_prio").sort_values("sample_id", kind="mergesort").reset_index(drop=True)
    return DedupResult(result, duplicates)
