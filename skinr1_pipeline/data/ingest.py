"""One dataset from its folder to clean, mapped, hashed samples plus a quarantine of everything set aside.

Order matters: label mapping runs before any image is opened, so an unmapped label fails in a second
instead of after hashing ten thousand files; image checks then quarantine bad files one by one, so a single
corrupt JPEG never fails the dataset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from skinr1_pipeline.data.images import inspect_images
from skinr1_pipeline.data.loaders import load_dataset
from skinr1_pipeline.data.schema import IMAGE_COLUMNS, MAPPED_COLUMNS, QUARANTINE_COLUMNS, RECORD_COLUMNS
from skinr1_pipeline.knowledge.label_maps import LabelMap
from skinr1_pipeline.knowledge.taxonomy import Taxonomy


@dataclass
class IngestResult:
    dataset: str
    root: str
    samples: pd.DataFrame  # RECORD_COLUMNS + MAPPED_COLUMNS + IMAGE_COLUMNS
    quarantine: pd.DataFrame  # QUARANTINE_COLUMNS
    mapping_report: dict[str, Any]
    notes: list[str] = field(default_factory=list)

    @property
    def rows_seen(self) -> int:
        return len(self.samples) + len(self.quarantine)

    def quarantine_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.quarantine["reason"].value_counts().sort_index().items()}

    def class_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.samples["taxonomy_node"].value_counts().sort_index().items()}


def ingest_dataset(
    dataset: str,
    root: Path,
    taxonomy: Taxonomy,
    label_map: LabelMap,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> IngestResult:
    loaded = load_dataset(dataset, Path(root))
    mapped, report = label_map.map_frame(loaded.records, taxonomy)
    checks = inspect_images(mapped["image_path"].tolist(), workers=workers, progress=progress)
    checks = checks.reset_index(drop=True)
    mapped = mapped.reset_index(drop=True)
    good = checks["ok"].astype(bool)

    samples = mapped.loc[good].copy()
    for column in IMAGE_COLUMNS:
        samples[column] = checks.loc[good, column].to_numpy()
    samples["image_width"] = samples["image_width"].astype("int64")
    samples["image_height"] = samples["image_height"].astype("int64")

    bad = mapped.loc[~good, ["source_dataset", "sample_id", "image_path"]].copy()
    bad["reason"] = checks.loc[~good, "reason"].to_numpy()
    bad["detail"] = checks.loc[~good, "detail"].to_numpy()
    quarantine = pd.concat([loaded.quarantine, bad], ignore_index=True).loc[:, list(QUARANTINE_COLUMNS)]

    columns = list(RECORD_COLUMNS + MAPPED_COLUMNS + IMAGE_COLUMNS)
    notes = list(loaded.notes)
    if len(quarantine):
        notes.append(f"{len(quarantine)} of {len(loaded.records) + len(loaded.quarantine)} rows quarantined")
    return IngestResult(
        dataset=dataset,
        root=str(root),
        samples=samples.loc[:, columns].reset_index(drop=True),
        quarantine=quarantine.reset_index(drop=True),
        mapping_report=report,
        notes=notes,
    )
