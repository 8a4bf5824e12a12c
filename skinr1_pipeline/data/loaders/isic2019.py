"""ISIC 2019 challenge: one-hot ground truth plus an optional metadata table, images by id.

The challenge ships labels as one float column per class (`image,MEL,NV,...,UNK`), so the raw label is the
name of the single column holding 1; a row with no 1, several 1s or a non-0/1 cell cannot be trusted and is
quarantined rather than guessed. Ids of the MSK subset end in `_downsampled` and that suffix is part of the
file stem, so ids are kept exactly as written. The later-released test ground truth is loaded as the official
test split when present. `decode_one_hot` is shared with the ISIC 2018 Task 3 files read by the HAM10000 loader.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import pandas as pd

from skinr1_pipeline.data.loaders.common import (
    ImageLocator,
    blank_to_none,
    find_file,
    parse_age,
    parse_sex,
    read_table,
)
from skinr1_pipeline.data.schema import QUARANTINE_COLUMNS, RECORD_COLUMNS, DatasetFormatError, LoadedDataset

DATASET = "isic2019"
WHAT = "ISIC 2019"
CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")  # UNK is read too when the file has it
PARTS = (  # (ground truth, metadata, official split)
    ("ISIC_2019_Training_GroundTruth", "ISIC_2019_Training_Metadata", "train"),
    ("ISIC_2019_Test_GroundTruth", "ISIC_2019_Test_Metadata", "test"),
)
ID_ALIASES = {"image": ("image_name", "isic_id", "image_id")}
META_ALIASES = {
    **ID_ALIASES,
    "age_approx": ("age",),
    "anatom_site_general": ("anatom_site_general_challenge", "anatom_site", "localization"),
    "sex": ("gender",),
}


def decode_one_hot(
    table: pd.DataFrame, classes: Sequence[str], where: pd.Series
) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(label, reason, detail) per row: the one class column equal to 1, else a quarantine reason.

    Floats such as '1.0' count as 1; anything other than a single 1 among 0s is refused, because picking the
    first or the largest would invent a diagnosis the challenge never gave.
    """
    classes = list(classes)
    cells = table[classes]
    values = cells.apply(pd.to_numeric, errors="coerce")
    ones = values.eq(1)
    n_ones = ones.sum(axis=1)
    blank = cells.eq("").all(axis=1)
    invalid = ~values.isin([0, 1])
    expected = f"expected 0 or 1 in each of {', '.join(classes)} with exactly one 1"

    reason = pd.Series(None, index=table.index, dtype="object")
    detail = pd.Series(None, index=table.index, dtype="object")
    reason[blank] = "missing_label"
    detail[blank] = where[blank] + f": all class columns are empty ({expected})"
    bad_cell = invalid.any(axis=1) & reason.isna()
    if bad_cell.any():
        column = invalid[bad_cell].idxmax(axis=1)
        shown = [f"{where[i]}: column {c} holds {cells.at[i, c]!r} ({expected})" for i, c in column.items()]
        reason[bad_cell] = "bad_label"
        detail[bad_cell] = shown
    for mask, text in ((n_ones == 0, "no class column is 1"), (n_ones > 1, "several class columns are 1")):
        mask = mask & reason.isna()
        if mask.any():
            named = ones[mask].apply(lambda row: ", ".join(row.index[row.to_numpy()]), axis=1)
            suffix = named.map(lambda n: f" ({n})" if n else "")
            reason[mask] = "bad_label"
            detail[mask] = where[mask] + f": {text}" + suffix + f"; {expected}"
    label = ones.idxmax(axis=1).where(reason.isna() & (n_ones == 1))
    return label.astype("object").where(label.notna(), None), reason, detail


def load(root: Path) -> LoadedDataset:
    root = Path(root).resolve()
    notes: list[str] = []
    parts, files = [], []
    for gt_name, meta_name, split in PARTS:
        gt = _optional_file(root, gt_name) if split != "train" else find_file(root, [gt_name], what=WHAT)
        if gt is None:
            if _optional_file(root, meta_name) is not None:
                notes.append(f"{meta_name} present without {gt_name}: those images have no labels and were skipped")
            continue
        part, part_files, part_notes = _read_part(root, gt, meta_name, split)
        parts.append(part)
        files.extend(part_files)
        notes.extend(part_notes)
    table = pd.concat(parts, ignore_index=True)

    locator = ImageLocator(root)
    found = table["image"].map(lambda i: locator.find(i) if i else None)
    if locator.ambiguous:
        notes.append(f"{len(locator.ambiguous)} image ids match several files; the first in sorted order was used")

    where = table["_file"] + " row " + table["_row"].astype(str)
    fallback_id = table["_file"] + "#row" + table["_row"].astype(str)
    sample_id = DATASET + "/" + table["image"].where(table["image"] != "", fallback_id)
    reason, detail = table["_reason"].copy(), table["_detail"].copy()

    def flag(mask: pd.Series, why: str, text: pd.Series) -> None:
        mask = mask & reason.isna()
        reason[mask] = why
        detail[mask] = text[mask]

    flag(table["image"] == "", "missing_file", where + ": field 'image' is empty, so no image can be matched")
    flag(sample_id.duplicated(), "duplicate_id", where + ": image '" + table["image"] + "' repeats an earlier row")
    flag(found.isna(), "missing_file", where + ": no image named '" + table["image"] + ".*' below the dataset folder")

    image_path = found.map(lambda p: str(p) if p is not None else None)
    good = reason.isna()
    records = pd.DataFrame(
        {
            "sample_id": sample_id,
            "source_dataset": DATASET,
            "image_path": image_path,
            "raw_label": table["_label"],
            "modality": "dermoscopic",
            "patient_id": None,
            "lesion_id": table["lesion_id"].map(blank_to_none),
            "official_split": table["_split"],
            "age": table["age_approx"].map(parse_age),
            "sex": table["sex"].map(parse_sex),
            "site": table["anatom_site_general"].map(blank_to_none),
            "fitzpatrick": None,
            "metadata_file": table["_path"],
            "metadata_row": table["_row"],
        }
    ).loc[good, list(RECORD_COLUMNS)]
    quarantine = pd.DataFrame(
        {
            "source_dataset": DATASET,
            "sample_id": sample_id,
            "image_path": image_path.fillna(table["image"]),
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


def _read_part(root: Path, gt_path: Path, meta_name: str, split: str) -> tuple[pd.DataFrame, list[Path], list[str]]:
    """Ground truth rows (in file order) with their metadata columns joined on by image id."""
    table = read_table(gt_path, ("image", *CLASSES), aliases=ID_ALIASES, what=WHAT)
    if table.empty:
        raise DatasetFormatError(f"{WHAT}: {gt_path} has a header but no data rows")
    classes = [*CLASSES, "UNK"] if "UNK" in table.columns else list(CLASSES)
    table["_file"] = gt_path.name
    table["_path"] = str(gt_path)
    table["_row"] = range(1, len(table) + 1)
    table["_split"] = split
    where = table["_file"] + " row " + table["_row"].astype(str)
    table["_label"], table["_reason"], table["_detail"] = decode_one_hot(table, classes, where)
    table = table.loc[:, ["image", "_file", "_path", "_row", "_split", "_label", "_reason", "_detail"]]
    notes = [f"{len(table)} rows in {gt_path.name} (official split {split})"]
    files = [gt_path]

    meta_path = _optional_file(root, meta_name)
    meta_columns = ["lesion_id", "age_approx", "anatom_site_general", "sex"]
    if meta_path is None:
        notes.append(f"no {meta_name}: age, sex, site and lesion id are unknown for {gt_path.name}")
        for column in meta_columns:
            table[column] = ""
        return table, files, notes
    meta = read_table(meta_path, ("image",), aliases=META_ALIASES, what=WHAT)
    files.append(meta_path)
    for column in meta_columns:
        if column not in meta.columns:
            meta[column] = ""
    repeated = int(meta["image"].duplicated().sum())
    if repeated:
        notes.append(f"{meta_path.name}: {repeated} repeated image ids; the first row of each was used")
    meta = meta.drop_duplicates("image").loc[:, ["image", *meta_columns]]
    unmatched = int((~table["image"].isin(meta["image"])).sum())
    orphans = int((~meta["image"].isin(table["image"])).sum())
    if unmatched:
        notes.append(f"{unmatched} rows of {gt_path.name} have no row in {meta_path.name} (metadata left empty)")
    if orphans:
        notes.append(f"{orphans} rows of {meta_path.name} have no ground truth and were ignored")
    table = table.merge(meta, on="image", how="left", validate="many_to_one")
    table[meta_columns] = table[meta_columns].fillna("")
    return table, files, notes
