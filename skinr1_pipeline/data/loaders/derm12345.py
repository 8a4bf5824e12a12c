"""DERM12345: two metadata tables (official train and test) and images foldered by label code.

The Skin-R1 layout is `derm12345_metadata_{train,test}.csv` beside `derm12345_train_part_1/<label>/`,
`derm12345_train_part_2/<label>/` and `derm12345_test/<label>/`; Harvard Dataverse serves the same tables as
tab-separated `.tab`. Images are found by id anywhere below the root because mirrors flatten or rename the
part folders. The `label` code (e.g. `bcc`, `alm`) is the raw label; the hierarchy columns are required so a
truncated export fails here rather than in label mapping.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from skinr1_pipeline.data.loaders.common import ImageLocator, find_file, read_table
from skinr1_pipeline.data.schema import QUARANTINE_COLUMNS, RECORD_COLUMNS, LoadedDataset

DATASET = "derm12345"
WHAT = "DERM12345"
TABLES = {"train": "derm12345_metadata_train", "test": "derm12345_metadata_test"}
REQUIRED = ("image_id", "split", "super_class", "malignancy", "main_class_1", "main_class_2", "sub_class", "label")
SPLIT_NAMES = {"train": "train", "training": "train", "test": "test", "testing": "test",
               "valid": "valid", "val": "valid", "validation": "valid"}  # fmt: skip


def load(root: Path) -> LoadedDataset:
    root = Path(root).resolve()
    paths = {split: find_file(root, [name], what=WHAT) for split, name in TABLES.items()}
    tables = [_read(path, split) for split, path in paths.items()]
    table = pd.concat(tables, ignore_index=True)
    notes = [f"{len(t)} rows in {p.name}" for t, p in zip(tables, paths.values())]

    locator = ImageLocator(root)
    found = table["image_id"].map(lambda i: locator.find(i) if i else None)
    if locator.ambiguous:
        notes.append(f"{len(locator.ambiguous)} image ids match several files; the first in sorted order was used")

    where = table["_file"] + " row " + table["_row"].astype(str)
    native_id = table["image_id"].where(table["image_id"] != "", table["_file"] + "#row" + table["_row"].astype(str))
    sample_id = DATASET + "/" + native_id
    reason = pd.Series(None, index=table.index, dtype="object")
    detail = pd.Series(None, index=table.index, dtype="object")

    def flag(mask: pd.Series, why: str, text: pd.Series) -> None:
        mask = mask & reason.isna()
        reason[mask] = why
        detail[mask] = text[mask]

    image_id, label = table["image_id"], table["label"]
    flag(label == "", "missing_label", where + ": field 'label' is empty (expected a DERM12345 code such as 'bcc')")
    flag(image_id == "", "missing_file", where + ": field 'image_id' is empty, so no image can be matched")
    flag(sample_id.duplicated(), "duplicate_id", where + ": image_id '" + image_id + "' repeats an earlier row")
    flag(
        found.isna(),
        "missing_file",
        where + ": no image named '" + image_id + ".*' below the dataset folder (expected <part>/"
        + label + "/" + image_id + ".jpg)",
    )

    split, split_notes = _official_split(table)
    notes.extend(split_notes)
    image_path = found.map(lambda p: str(p) if p is not None else None)
    good = reason.isna()
    misfiled = int((found[good].map(lambda p: p.parent.name) != table.loc[good, "label"]).sum())
    if misfiled:
        notes.append(f"{misfiled} images lie in a folder not named after their label code (metadata label used)")

    records = pd.DataFrame(
        {
            "sample_id": sample_id,
            "source_dataset": DATASET,
            "image_path": image_path,
            "raw_label": table["label"],
            "modality": "dermoscopic",
            "patient_id": table["patient_id"].where(table["patient_id"] != "", None),
            "lesion_id": None,
            "official_split": split,
            "age": None,
            "sex": None,
            "site": None,
            "fitzpatrick": None,
            "metadata_file": table["_path"],
            "metadata_row": table["_row"],
        }
    ).loc[good, list(RECORD_COLUMNS)]
    quarantine = pd.DataFrame(
        {
            "source_dataset": DATASET,
            "sample_id": sample_id,
            "image_path": image_path.fillna(table["label"] + "/" + table["image_id"] + ".jpg"),
            "reason": reason,
            "detail": detail,
        }
    ).loc[~good, list(QUARANTINE_COLUMNS)]

    notes.append(f"{len(records)} samples, {len(quarantine)} quarantined")
    if len(quarantine):
        counts = Counter(quarantine["reason"])
        notes.append("quarantine reasons: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return LoadedDataset(
        name=DATASET,
        root=root,
        records=records,
        quarantine=quarantine.reset_index(drop=True),
        metadata_files=list(paths.values()),
        notes=notes,
    )


def _read(path: Path, split: str) -> pd.DataFrame:
    table = read_table(path, REQUIRED, what=WHAT)
    if "patient_id" not in table.columns:  # the Dataverse export carries it; the Skin-R1 CSVs may not
        table["patient_id"] = ""
    table["_file"] = path.name
    table["_path"] = str(path)
    table["_row"] = range(1, len(table) + 1)
    table["_file_split"] = split
    return table


def _official_split(table: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """The `split` column wins; the file the row came from fills blanks and is checked against it."""
    column = table["split"].str.lower().map(SPLIT_NAMES)
    notes = []
    unreadable = int(column.isna().sum())
    if unreadable:
        notes.append(f"{unreadable} rows with a blank or unknown 'split' value took the split of their file")
    disagree = int((column.notna() & (column != table["_file_split"])).sum())
    if disagree:
        notes.append(f"{disagree} rows whose 'split' value disagrees with their file; the column was used")
    return column.fillna(table["_file_split"]), notes
