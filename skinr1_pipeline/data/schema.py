"""The one sample schema every loader produces, and the report types loaders return.

Every public dataset arrives in its own layout; downstream stages (dedup, splits, synthesis, RL items,
evaluation) only ever see rows of `SAMPLE_COLUMNS`, so a new dataset is one loader away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from skinr1_pipeline.messages import capped_list

# Columns a loader fills. The label-mapping and image-integrity stages add MAPPED_COLUMNS and IMAGE_COLUMNS.
RECORD_COLUMNS: tuple[str, ...] = (
    "sample_id",  # unique across datasets: "<source>/<dataset-native id>"
    "source_dataset",
    "image_path",  # absolute path
    "raw_label",  # the label exactly as the dataset spells it (after trimming whitespace)
    "modality",  # "dermoscopic" | "clinical"
    "patient_id",  # None where the dataset has none
    "lesion_id",  # None where the dataset has none
    "official_split",  # "train" | "valid" | "test" | None
    "age",  # float or None
    "sex",  # "male" | "female" | None
    "site",  # anatomical site as the dataset spells it, or None
    "fitzpatrick",  # Int 1-6 or None
    "metadata_file",  # file the row came from (for error messages and lineage)
    "metadata_row",  # 1-based data row number in that file (header excluded), or None
)
MAPPED_COLUMNS: tuple[str, ...] = ("taxonomy_node", "taxonomy_path", "taxonomy_depth", "bucket")
# image_dhash: 64-bit perceptual hash, 16 hex chars (data.perceptual_hash), for near-duplicate and contamination checks.
IMAGE_COLUMNS: tuple[str, ...] = ("image_sha256", "image_width", "image_height", "image_dhash")
SPLIT_COLUMNS: tuple[str, ...] = ("split", "split_rule")
SAMPLE_COLUMNS: tuple[str, ...] = RECORD_COLUMNS + MAPPED_COLUMNS + IMAGE_COLUMNS + SPLIT_COLUMNS

MODALITIES = ("dermoscopic", "clinical")
SPLITS = ("train", "valid", "test")
QUARANTINE_COLUMNS: tuple[str, ...] = ("source_dataset", "sample_id", "image_path", "reason", "detail")


class DatasetFormatError(ValueError):
    """A dataset's files do not have the layout or columns its loader expects."""


def empty_quarantine() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in QUARANTINE_COLUMNS})


@dataclass
class LoadedDataset:
    """What a loader returns: the rows it could read plus everything it had to set aside, with reasons."""

    name: str
    root: Path
    records: pd.DataFrame
    quarantine: pd.DataFrame = field(default_factory=empty_quarantine)
    metadata_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        missing = [c for c in RECORD_COLUMNS if c not in self.records.columns]
        if missing:
            raise DatasetFormatError(f"loader for {self.name} produced records without columns {missing}")
        self.records = self.records.loc[:, list(RECORD_COLUMNS)].reset_index(drop=True)
        dupes = self.records["sample_id"][self.records["sample_id"].duplicated()]
        if len(dupes):
            raise DatasetFormatError(
                f"{self.name}: {dupes.nunique()} duplicate sample ids, e.g. "
                f"{capped_list(sorted(set(dupes)), items=10)} (each image must appear once)"
            )

    def class_counts(self) -> dict[str, int]:
        return {str(k): int(v) for k, v in self.records["raw_label"].value_counts().sort_index().items()}
