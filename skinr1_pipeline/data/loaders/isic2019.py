"""ISIC 2019 challenge: one-hot ground truth plus an optional metadata table, images by id.

The challenge ships labels as one float column per class (`image,MEL,NV,...,UNK`), so the raw label is the
name of the single column holding 1; a row with no 1, several 1s or a non-0/1 cell cannot be trusted and is
quarantined rather than guessed. Ids of the MSK subset end in `_downsampled` and that suffix is part of the
file stem, so ids are kept exactly as written. The later-released test ground truth is loaded as the official
test split when present. `decode_one_hot` is shared with the ISIC 2018 Task 3 files read by the HAM10000 loader.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from skinr1_pipeline.data.loaders.common import (
    ImageLocator,
    RowChecks,
    add_blank_columns,
    blank_to_none,
    demographics,
    find_file,
    find_optional_file,
    locations,
    outcome_notes,
    path_strings,
    read_table,
    stamp_origin,
)
from skinr1_pipeline.data.schema import LoadedDataset
from skinr1_pipeline.messages import capped, capped_each

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
        shown = [f"{where[i]}: column {c} holds {capped(cells.at[i, c])!r} ({expected})" for i, c in column.items()]
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
        find = find_file if split == "train" else find_optional_file
        gt = find(root, [gt_name], what=WHAT)
        if gt is None:
            if find_optional_file(root, [meta_name], what=WHAT) is not None:
                notes.append(f"{meta_name} present without {gt_name}: those images have no labels and were skipped")
            continue
        part, part_files, part_notes = _read_part(root, gt, meta_name, split)
        parts.append(part)
        files.extend(part_files)
        notes.extend(part_notes)
    table = pd.concat(parts, ignore_index=True)

    locator = ImageLocator(root)
    found = locator.find_each(table["image"])
    notes += locator.ambiguity_notes("image ids") + locator.outside_notes()

    image = table["image"]
    checks = RowChecks.for_rows(
        DATASET, image, table["_file"], table["_row"], reason=table["_reason"], detail=table["_detail"]
    )
    checks.image_ids(
        image,
        "image",
        found,
        ": no image named '" + capped_each(image) + ".*' below the dataset folder",
        locator=locator,
    )

    image_path = path_strings(found)
    records = checks.records(
        image_path,
        {
            "raw_label": table["_label"],
            "modality": "dermoscopic",
            "lesion_id": table["lesion_id"].map(blank_to_none),
            "official_split": table["_split"],
            **demographics(table["age_approx"], table["sex"], table["anatom_site_general"]),
            "metadata_file": table["_path"],
            "metadata_row": table["_row"],
        },
    )
    quarantine = checks.quarantine(image_path.fillna(image))
    notes += outcome_notes(records, quarantine)
    return LoadedDataset(DATASET, root, records, quarantine, files, notes)


def _read_part(root: Path, gt_path: Path, meta_name: str, split: str) -> tuple[pd.DataFrame, list[Path], list[str]]:
    """Ground truth rows (in file order) with their metadata columns joined on by image id."""
    table = read_table(gt_path, ("image", *CLASSES), aliases=ID_ALIASES, what=WHAT, require_rows=True)
    classes = [*CLASSES, "UNK"] if "UNK" in table.columns else list(CLASSES)
    stamp_origin(table, gt_path)
    table["_split"] = split
    where = locations(table["_file"], table["_row"])
    table["_label"], table["_reason"], table["_detail"] = decode_one_hot(table, classes, where)
    table = table.loc[:, ["image", "_file", "_path", "_row", "_split", "_label", "_reason", "_detail"]]
    notes = [f"{len(table)} rows in {gt_path.name} (official split {split})"]
    files = [gt_path]

    meta_path = find_optional_file(root, [meta_name], what=WHAT)
    meta_columns = ["lesion_id", "age_approx", "anatom_site_general", "sex"]
    if meta_path is None:
        notes.append(f"no {meta_name}: age, sex, site and lesion id are unknown for {gt_path.name}")
        add_blank_columns(table, meta_columns)
        return table, files, notes
    meta = read_table(meta_path, ("image",), aliases=META_ALIASES, what=WHAT)
    files.append(meta_path)
    add_blank_columns(meta, meta_columns)
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
