"""DERM12345: two metadata tables (official train and test) and images foldered by label code.

The Skin-R1 layout is `derm12345_metadata_{train,test}.csv` beside `derm12345_train_part_1/<label>/`,
`derm12345_train_part_2/<label>/` and `derm12345_test/<label>/`; Harvard Dataverse serves the same tables as
tab-separated `.tab`. Images are found by id anywhere below the root because mirrors flatten or rename the
part folders. The `label` code (e.g. `bcc`, `alm`) is the raw label; the hierarchy columns are required so a
truncated export fails here rather than in label mapping.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skinr1_pipeline.data.loaders.common import (
    SPLIT_SYNONYMS,
    ImageLocator,
    RowChecks,
    add_blank_columns,
    find_file,
    outcome_notes,
    path_strings,
    read_table,
    stamp_origin,
)
from skinr1_pipeline.data.schema import LoadedDataset
from skinr1_pipeline.messages import capped_each

DATASET = "derm12345"
WHAT = "DERM12345"
TABLES = {"train": "derm12345_metadata_train", "test": "derm12345_metadata_test"}
REQUIRED = ("image_id", "split", "super_class", "malignancy", "main_class_1", "main_class_2", "sub_class", "label")


def load(root: Path) -> LoadedDataset:
    root = Path(root).resolve()
    paths = {split: find_file(root, [name], what=WHAT) for split, name in TABLES.items()}
    tables = [_read(path, split) for split, path in paths.items()]
    table = pd.concat(tables, ignore_index=True)
    notes = [f"{len(t)} rows in {p.name}" for t, p in zip(tables, paths.values())]

    locator = ImageLocator(root)
    found = locator.find_each(table["image_id"])
    notes += locator.ambiguity_notes("image ids") + locator.outside_notes()

    image_id, label = table["image_id"], table["label"]
    checks = RowChecks.for_rows(DATASET, image_id, table["_file"], table["_row"])
    checks.empty_label(label, "label", "expected a DERM12345 code such as 'bcc'")
    expected = label + "/" + image_id + ".jpg"
    shown_id = capped_each(image_id)
    not_found = (
        ": no image named '"
        + shown_id
        + ".*' below the dataset folder (expected <part>/"
        + capped_each(label)
        + "/"
        + shown_id
        + ".jpg)"
    )
    checks.image_ids(image_id, "image_id", found, not_found, locator=locator)

    split, split_notes = _official_split(table)
    notes.extend(split_notes)
    image_path = path_strings(found)
    good = checks.good
    misfiled = int((found[good].map(lambda p: p.parent.name) != table.loc[good, "label"]).sum())
    if misfiled:
        notes.append(f"{misfiled} images lie in a folder not named after their label code (metadata label used)")

    records = checks.records(
        image_path,
        {
            "raw_label": label,
            "modality": "dermoscopic",
            "patient_id": table["patient_id"].where(table["patient_id"] != "", None),
            "official_split": split,
            "metadata_file": table["_path"],
            "metadata_row": table["_row"],
        },
    )
    quarantine = checks.quarantine(image_path.fillna(expected))
    notes += outcome_notes(records, quarantine)
    return LoadedDataset(DATASET, root, records, quarantine, list(paths.values()), notes)


def _read(path: Path, split: str) -> pd.DataFrame:
    table = read_table(path, REQUIRED, what=WHAT)
    add_blank_columns(table, ["patient_id"])  # the Dataverse export carries it; the Skin-R1 CSVs may not
    stamp_origin(table, path)
    table["_file_split"] = split
    return table


def _official_split(table: pd.DataFrame) -> tuple[pd.Series, list[str]]:
    """The `split` column wins; the file the row came from fills blanks and is checked against it."""
    column = table["split"].str.lower().map(SPLIT_SYNONYMS)
    notes = []
    unreadable = int(column.isna().sum())
    if unreadable:
        notes.append(f"{unreadable} rows with a blank or unknown 'split' value took the split of their file")
    disagree = int((column.notna() & (column != table["_file_split"])).sum())
    if disagree:
        notes.append(f"{disagree} rows whose 'split' value disagrees with their file; the column was used")
    return column.fillna(table["_file_split"]), notes
