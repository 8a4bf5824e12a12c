"""HAM10000 (all 10,015 images as official train) plus the ISIC 2018 Task 3 held-out sets when present.

Dataverse serves `HAM10000_metadata` as `.tab`, `.csv` or with no extension and Kaggle re-nests (and sometimes
duplicates) the two image folders, so the table is found by name and images by id anywhere below the root.
Skin-R1 evaluates on the ISIC 2018 Task 3 test set kept in the same folder; its ground truth exists in the
metadata layout (`image_id,dx,...`) and in the challenge's one-hot layout (`image,MEL,...,VASC`), and one-hot
rows are turned into the same lower-case `dx` codes so both layouts give identical raw labels.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from skinr1_pipeline.data.loaders.common import (
    ImageLocator,
    blank_to_none,
    find_file,
    parse_age,
    parse_sex,
    read_table,
)
from skinr1_pipeline.data.loaders.isic2019 import decode_one_hot
from skinr1_pipeline.data.schema import QUARANTINE_COLUMNS, RECORD_COLUMNS, DatasetFormatError, LoadedDataset

DATASET = "ham10000"
WHAT = "HAM10000"
METADATA = "HAM10000_metadata"
REQUIRED = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
DX_CODES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
ONE_HOT = ("MEL", "NV", "BCC", "AKIEC", "BKL", "DF", "VASC")  # ISIC 2018 column names; lower-cased they are dx codes
HELD_OUT = (("ISIC2018_Task3_Test_GroundTruth", "test"), ("ISIC2018_Task3_Validation_GroundTruth", "valid"))
ALIASES = {
    "image_id": ("image", "isic_id", "image_name"),
    "age": ("age_approx",),
    "localization": ("anatom_site_general", "site"),
    "sex": ("gender",),
}
META_COLUMNS = ("lesion_id", "age", "sex", "localization")


def load(root: Path) -> LoadedDataset:
    root = Path(root).resolve()
    main = find_file(root, [METADATA], what=WHAT)
    tables = [_read_metadata_style(main, REQUIRED, "train")]
    files, notes = [main], [f"{len(tables[0])} rows in {main.name} (official split train)"]
    for name, split in HELD_OUT:
        path = _optional_file(root, name)
        if path is not None:
            table, layout = _read_ground_truth(path, split)
            tables.append(table)
            files.append(path)
            notes.append(f"{len(table)} rows in {path.name} ({layout} layout, official split {split})")
    table = pd.concat(tables, ignore_index=True)

    locator = ImageLocator(root)
    found = table["image_id"].map(lambda i: locator.find(i) if i else None)
    if locator.ambiguous:
        example = next(iter(locator.ambiguous.values()))
        notes.append(
            f"{len(locator.ambiguous)} image ids match several files (e.g. {[str(p) for p in example]}); "
            "the first in sorted order was used"
        )

    where = table["_file"] + " row " + table["_row"].astype(str)
    sample_id = DATASET + "/" + table["image_id"].where(
        table["image_id"] != "", table["_file"] + "#row" + table["_row"].astype(str)
    )
    reason, detail = table["_reason"].copy(), table["_detail"].copy()

    def flag(mask: pd.Series, why: str, text: pd.Series) -> None:
        mask = mask & reason.isna()
        reason[mask] = why
        detail[mask] = text[mask]

    flag(table["dx"] == "", "missing_label", where + f": field 'dx' is empty (expected one of {', '.join(DX_CODES)})")
    flag(table["image_id"] == "", "missing_file", where + ": field 'image_id' is empty, so no image can be matched")
    image_id = "'" + table["image_id"] + "'"
    flag(sample_id.duplicated(), "duplicate_id", where + ": image_id " + image_id + " repeats an earlier row")
    flag(found.isna(), "missing_file", where + ": no image named " + image_id + ".* below the dataset folder")

    good = reason.isna()
    unusual = sorted(set(table.loc[good, "dx"]) - set(DX_CODES))
    if unusual:
        notes.append(f"dx values outside the documented codes kept for label mapping to judge: {unusual}")
    image_path = found.map(lambda p: str(p) if p is not None else None)
    records = pd.DataFrame(
        {
            "sample_id": sample_id,
            "source_dataset": DATASET,
            "image_path": image_path,
            "raw_label": table["dx"],
            "modality": "dermoscopic",
            "patient_id": None,
            "lesion_id": table["lesion_id"].map(blank_to_none),
            "official_split": table["_split"],
            "age": table["age"].map(parse_age),
            "sex": table["sex"].map(parse_sex),
            "site": table["localization"].map(blank_to_none),
            "fitzpatrick": None,
            "metadata_file": table["_path"],
            "metadata_row": table["_row"],
        }
    ).loc[good, list(RECORD_COLUMNS)]
    quarantine = pd.DataFrame(
        {
            "source_dataset": DATASET,
            "sample_id": sample_id,
            "image_path": image_path.fillna(table["image_id"]),
            "reason": reason,
            "detail": detail,
        }
    ).loc[~good, list(QUARANTINE_COLUMNS)]
    notes.append(f"{len(records)} samples, {len(quarantine)} quarantined")
    if len(quarantine):
        counts = Counter(quarantine["reason"])
        notes.append("quarantine reasons: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return LoadedDataset(DATASET, root, records, quarantine.reset_index(drop=True), files, notes)


def _optional_file(root: Path, name: str) -> Path | None:
    try:
        return find_file(root, [name], what=WHAT)
    except DatasetFormatError:
        return None


def _stamp(table: pd.DataFrame, path: Path, split: str) -> pd.DataFrame:
    table["_file"] = path.name
    table["_path"] = str(path)
    table["_row"] = range(1, len(table) + 1)
    table["_split"] = split
    for column in META_COLUMNS:
        if column not in table.columns:
            table[column] = ""
    return table


def _read_metadata_style(path: Path, required: tuple[str, ...], split: str) -> pd.DataFrame:
    return _metadata_columns(_read(path, required), path, split)


def _read(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    table = read_table(path, required, aliases=ALIASES, what=WHAT)
    if table.empty:
        raise DatasetFormatError(f"{WHAT}: {path} has a header but no data rows")
    return table


def _metadata_columns(table: pd.DataFrame, path: Path, split: str) -> pd.DataFrame:
    table = _stamp(table, path, split)
    table["_reason"] = None
    table["_detail"] = None
    return table.loc[:, ["image_id", "dx", *META_COLUMNS, "_file", "_path", "_row", "_split", "_reason", "_detail"]]


def _read_ground_truth(path: Path, split: str) -> tuple[pd.DataFrame, str]:
    """An ISIC 2018 Task 3 ground truth in whichever of its two published layouts it comes."""
    table = _read(path, ())
    header = list(table.columns)
    if "dx" in header and "image_id" in header:
        return _metadata_columns(table, path, split), "metadata"
    if "image_id" in header and all(c in header for c in ONE_HOT):
        table = _stamp(table, path, split)
        where = table["_file"] + " row " + table["_row"].astype(str)
        label, table["_reason"], table["_detail"] = decode_one_hot(table, ONE_HOT, where)
        table["dx"] = label.map(lambda c: c.lower() if c else "")
        keep = ["image_id", "dx", *META_COLUMNS, "_file", "_path", "_row", "_split", "_reason", "_detail"]
        return table.loc[:, keep], "one-hot"
    raise DatasetFormatError(
        f"{WHAT}: {path} lacks the columns of both ground-truth layouts: metadata-style needs image_id, dx; "
        f"one-hot needs image, {', '.join(ONE_HOT)}; found columns {header}"
    )
