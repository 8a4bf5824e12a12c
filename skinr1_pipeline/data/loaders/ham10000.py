"""HAM10000 (all 10,015 images as official train) plus the ISIC 2018 Task 3 held-out sets when present.

Dataverse serves `HAM10000_metadata` as `.tab`, `.csv` or with no extension and Kaggle re-nests (and sometimes
duplicates) the two image folders, so the table is found by name and images by id anywhere below the root.
Skin-R1 evaluates on the ISIC 2018 Task 3 test set kept in the same folder; its ground truth exists in the
metadata layout (`image_id,dx,...`) and in the challenge's one-hot layout (`image,MEL,...,VASC`), and one-hot
rows are turned into the same lower-case `dx` codes so both layouts give identical raw labels.
"""

from __future__ import annotations

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
    undocumented_label_notes,
)
from skinr1_pipeline.data.loaders.isic2019 import decode_one_hot
from skinr1_pipeline.data.schema import DatasetFormatError, LoadedDataset
from skinr1_pipeline.messages import capped_each, capped_list

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
KEEP = ("image_id", "dx", *META_COLUMNS, "_file", "_path", "_row", "_split", "_reason", "_detail")


def load(root: Path) -> LoadedDataset:
    root = Path(root).resolve()
    main = find_file(root, [METADATA], what=WHAT)
    tables = [_read_metadata_style(main, REQUIRED, "train")]
    files, notes = [main], [f"{len(tables[0])} rows in {main.name} (official split train)"]
    for name, split in HELD_OUT:
        path = find_optional_file(root, [name], what=WHAT)
        if path is not None:
            table, layout = _read_ground_truth(path, split)
            tables.append(table)
            files.append(path)
            notes.append(f"{len(table)} rows in {path.name} ({layout} layout, official split {split})")
    table = pd.concat(tables, ignore_index=True)

    locator = ImageLocator(root)
    found = locator.find_each(table["image_id"])
    notes += locator.ambiguity_notes("image ids", example=True) + locator.outside_notes()

    image_id = table["image_id"]
    checks = RowChecks.for_rows(
        DATASET, image_id, table["_file"], table["_row"], reason=table["_reason"], detail=table["_detail"]
    )
    checks.empty_label(table["dx"], "dx", f"expected one of {', '.join(DX_CODES)}")
    not_found = ": no image named '" + capped_each(image_id) + "'.* below the dataset folder"
    checks.image_ids(image_id, "image_id", found, not_found, locator=locator)

    notes += undocumented_label_notes(table.loc[checks.good, "dx"], DX_CODES, "dx")
    image_path = path_strings(found)
    records = checks.records(
        image_path,
        {
            "raw_label": table["dx"],
            "modality": "dermoscopic",
            "lesion_id": table["lesion_id"].map(blank_to_none),
            "official_split": table["_split"],
            **demographics(table["age"], table["sex"], table["localization"]),
            "metadata_file": table["_path"],
            "metadata_row": table["_row"],
        },
    )
    quarantine = checks.quarantine(image_path.fillna(image_id))
    notes += outcome_notes(records, quarantine)
    return LoadedDataset(DATASET, root, records, quarantine, files, notes)


def _stamp(table: pd.DataFrame, path: Path, split: str) -> pd.DataFrame:
    stamp_origin(table, path)
    table["_split"] = split
    add_blank_columns(table, META_COLUMNS)
    return table


def _read_metadata_style(path: Path, required: tuple[str, ...], split: str) -> pd.DataFrame:
    return _metadata_columns(_read(path, required), path, split)


def _read(path: Path, required: tuple[str, ...]) -> pd.DataFrame:
    return read_table(path, required, aliases=ALIASES, what=WHAT, require_rows=True)


def _metadata_columns(table: pd.DataFrame, path: Path, split: str) -> pd.DataFrame:
    table = _stamp(table, path, split)
    table["_reason"] = None
    table["_detail"] = None
    return table.loc[:, list(KEEP)]


def _read_ground_truth(path: Path, split: str) -> tuple[pd.DataFrame, str]:
    """An ISIC 2018 Task 3 ground truth in whichever of its two published layouts it comes."""
    table = _read(path, ())
    header = list(table.columns)
    if "dx" in header and "image_id" in header:
        return _metadata_columns(table, path, split), "metadata"
    if "image_id" in header and all(c in header for c in ONE_HOT):
        table = _stamp(table, path, split)
        where = locations(table["_file"], table["_row"])
        label, table["_reason"], table["_detail"] = decode_one_hot(table, ONE_HOT, where)
        table["dx"] = label.map(lambda c: c.lower() if c else "")
        return table.loc[:, list(KEEP)], "one-hot"
    raise DatasetFormatError(
        f"{WHAT}: {path} lacks the columns of both ground-truth layouts: metadata-style needs image_id, dx; "
        f"one-hot needs image, {', '.join(ONE_HOT)}; found columns {capped_list(header)}"
    )
