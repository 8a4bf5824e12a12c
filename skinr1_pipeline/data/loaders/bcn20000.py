"""BCN20000 labelled training release: `bcn_20k_train.csv` plus its images (Skin-R1 keeps them in `bcn_20k_train/`).

Only the file name and diagnosis are certain across copies; age, sex, site, lesion id and split are read when
present under any of their known spellings. The `split` column is only trusted when its value is recognisable:
an unfamiliar value (a fold number, say) leaves the official split empty, with a note, rather than guessing.
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
from skinr1_pipeline.data.schema import QUARANTINE_COLUMNS, RECORD_COLUMNS, DatasetFormatError, LoadedDataset

DATASET = "bcn20000"
WHAT = "BCN20000"
METADATA = "bcn_20k_train"
LABELS = ("NV", "MEL", "SCC", "BKL", "BCC", "AK", "DF", "VASC")
OPTIONAL = ("lesion_id", "split", "age_approx", "sex", "anatom_site_general")
ALIASES = {
    "bcn_filename": ("filename", "image", "image_name", "isic_id"),
    "diagnosis": ("dx", "label"),
    "age_approx": ("age",),
    "sex": ("gender",),
    "anatom_site_general": ("anatom_site_general_challenge", "anatom_site", "localization", "site"),
    "split": ("split_type", "subset"),
}
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "valid", "valid": "valid", "validation": "valid",
    "test": "test", "testing": "test",
}  # fmt: skip


def load(root: Path) -> LoadedDataset:
    root = Path(root).resolve()
    path = find_file(root, [METADATA], what=WHAT)
    table = read_table(path, ("bcn_filename", "diagnosis"), aliases=ALIASES, what=WHAT)
    if table.empty:
        raise DatasetFormatError(f"{WHAT}: {path} has a header but no data rows")
    absent = [c for c in OPTIONAL if c not in table.columns]
    for column in absent:
        table[column] = ""
    notes = [f"{len(table)} rows in {path.name}"]
    if absent:
        notes.append(f"{path.name} has no column(s) {absent}; those fields are empty")
    rows = pd.Series(range(1, len(table) + 1), index=table.index)

    locator = ImageLocator(root)
    name = table["bcn_filename"]
    found = name.map(lambda i: locator.find(i) if i else None)
    if locator.ambiguous:
        notes.append(f"{len(locator.ambiguous)} file names match several files; the first in sorted order was used")

    where = path.name + " row " + rows.astype(str)
    stem = name.str.replace(r"\.[A-Za-z0-9]{2,5}$", "", regex=True)
    sample_id = DATASET + "/" + stem.where(stem != "", path.name + "#row" + rows.astype(str))
    reason = pd.Series(None, index=table.index, dtype="object")
    detail = pd.Series(None, index=table.index, dtype="object")

    def flag(mask: pd.Series, why: str, text: pd.Series) -> None:
        mask = mask & reason.isna()
        reason[mask] = why
        detail[mask] = text[mask]

    expected = f"expected one of {', '.join(LABELS)}"
    flag(table["diagnosis"] == "", "missing_label", where + f": field 'diagnosis' is empty ({expected})")
    flag(name == "", "missing_file", where + ": field 'bcn_filename' is empty, so no image can be matched")
    flag(sample_id.duplicated(), "duplicate_id", where + ": bcn_filename '" + name + "' repeats an earlier row")
    flag(found.isna(), "missing_file", where + ": no image named '" + name + "' below the dataset folder")

    good = reason.isna()
    split, split_notes = _official_split(table["split"][good])
    notes.extend(split_notes)
    unusual = sorted(set(table.loc[good, "diagnosis"]) - set(LABELS))
    if unusual:
        notes.append(f"diagnosis values outside the documented codes kept for label mapping to judge: {unusual}")
    image_path = found.map(lambda p: str(p) if p is not None else None)
    records = pd.DataFrame(
        {
            "sample_id": sample_id,
            "source_dataset": DATASET,
            "image_path": image_path,
            "raw_label": table["diagnosis"],
            "modality": "dermoscopic",
            "patient_id": None,
            "lesion_id": table["lesion_id"].map(blank_to_none),
            "official_split": split,
            "age": table["age_approx"].map(parse_age),
            "sex": table["sex"].map(parse_sex),
            "site": table["anatom_site_general"].map(blank_to_none),
            "fitzpatrick": None,
            "metadata_file": str(path),
            "metadata_row": rows,
        }
    ).loc[good, list(RECORD_COLUMNS)]
    quarantine = pd.DataFrame(
        {
            "source_dataset": DATASET,
            "sample_id": sample_id,
            "image_path": image_path.fillna(name),
            "reason": reason,
            "detail": detail,
        }
    ).loc[~good, list(QUARANTINE_COLUMNS)]
    notes.append(f"{len(records)} samples, {len(quarantine)} quarantined")
    if len(quarantine):
        counts = Counter(quarantine["reason"])
        notes.append("quarantine reasons: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return LoadedDataset(DATASET, root, records, quarantine.reset_index(drop=True), [path], notes)


def _official_split(values: pd.Series) -> tuple[pd.Series, list[str]]:
    """Recognised split names mapped to train/valid/test; blank or unfamiliar values become None, with a note."""
    split = values.str.lower().map(SPLIT_NAMES)
    split = split.astype("object").where(split.notna(), None)
    notes = []
    blank = int((values == "").sum())
    if blank and blank < len(values):
        notes.append(f"{blank} rows with an empty 'split' value have no official split")
    unknown = values[(values != "") & split.isna()]
    if len(unknown):
        shown = ", ".join(f"{v!r}: {n}" for v, n in sorted(Counter(unknown).items())[:10])
        notes.append(
            f"{len(unknown)} rows have a 'split' value that is not train/val/validation/test ({shown}); "
            "their official split is left empty"
        )
    return split, notes
