"""PAD-UFES-20: smartphone clinical photos with one `metadata.csv` of 26 columns and no official split.

The zip holds `images/imgs_part_{1,2,3}/` and Kaggle mirrors nest each part inside itself, so images are found
by id anywhere below the root. Patient and lesion ids matter because papers split by patient; the lesion id
is prefixed with the patient id so it stays unique even in copies that number lesions per patient.
The authors spell Fitzpatrick `fitspatrick`; the corrected spelling is accepted too.
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
    parse_fitzpatrick,
    parse_sex,
    read_table,
)
from skinr1_pipeline.data.schema import QUARANTINE_COLUMNS, RECORD_COLUMNS, DatasetFormatError, LoadedDataset

DATASET = "pad_ufes_20"
WHAT = "PAD-UFES-20"
METADATA = "metadata"
LABELS = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
REQUIRED = ("patient_id", "lesion_id", "img_id", "diagnostic", "age", "gender", "region", "fitspatrick")
ALIASES = {"fitspatrick": ("fitzpatrick",), "gender": ("sex",)}


def load(root: Path) -> LoadedDataset:
    root = Path(root).resolve()
    path = find_file(root, [METADATA], what=WHAT)
    table = read_table(path, REQUIRED, aliases=ALIASES, what=WHAT)
    if table.empty:
        raise DatasetFormatError(f"{WHAT}: {path} has a header but no data rows")
    rows = pd.Series(range(1, len(table) + 1), index=table.index)
    notes = [f"{len(table)} rows in {path.name}"]

    locator = ImageLocator(root)
    name = table["img_id"]
    found = name.map(lambda i: locator.find(i) if i else None)
    if locator.ambiguous:
        notes.append(f"{len(locator.ambiguous)} img_ids match several files; the first in sorted order was used")

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
    flag(table["diagnostic"] == "", "missing_label", where + f": field 'diagnostic' is empty ({expected})")
    flag(name == "", "missing_file", where + ": field 'img_id' is empty, so no image can be matched")
    flag(sample_id.duplicated(), "duplicate_id", where + ": img_id '" + name + "' repeats an earlier row")
    flag(found.isna(), "missing_file", where + ": no image named '" + name + "' below the dataset folder")

    good = reason.isna()
    unusual = sorted(set(table.loc[good, "diagnostic"]) - set(LABELS))
    if unusual:
        notes.append(f"diagnostic values outside the documented codes kept for label mapping to judge: {unusual}")
    patient, lesion = table["patient_id"], table["lesion_id"]
    has_prefix = pd.Series([l.startswith(p + "_") for p, l in zip(patient, lesion)], index=lesion.index, dtype=bool)
    prefixed = lesion.where((patient == "") | has_prefix, patient + "_" + lesion)
    lesion = prefixed.where(lesion != "", None)
    image_path = found.map(lambda p: str(p) if p is not None else None)
    records = pd.DataFrame(
        {
            "sample_id": sample_id,
            "source_dataset": DATASET,
            "image_path": image_path,
            "raw_label": table["diagnostic"],
            "modality": "clinical",
            "patient_id": patient.map(blank_to_none),
            "lesion_id": lesion,
            "official_split": None,
            "age": table["age"].map(parse_age),
            "sex": table["gender"].map(parse_sex),
            "site": table["region"].map(blank_to_none),
            "fitzpatrick": table["fitspatrick"].map(parse_fitzpatrick),
            "metadata_file": str(path),
            "metadata_row": rows,
        }
    ).loc[good, list(RECORD_COLUMNS)]
    records["fitzpatrick"] = records["fitzpatrick"].astype("Int64")
    quarantine = pd.DataFrame(
        {
            "source_dataset": DATASET,
            "sample_id": sample_id,
            "image_path": image_path.fillna(name),
            "reason": reason,
            "detail": detail,
        }
    ).loc[~good, list(QUARANTINE_COLUMNS)]
    notes.append(f"{len(records)} samples, {len(quarantine)} quarantined; no official split (PAD-UFES-20 has none)")
    if len(quarantine):
        counts = Counter(quarantine["reason"])
        notes.append("quarantine reasons: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return LoadedDataset(DATASET, root, records, quarantine.reset_index(drop=True), [path], notes)
