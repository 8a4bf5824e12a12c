"""PAD-UFES-20: smartphone clinical photos with one `metadata.csv` of 26 columns and no official split.

The zip holds `images/imgs_part_{1,2,3}/` and Kaggle mirrors nest each part inside itself, so images are found
by id anywhere below the root. Patient and lesion ids matter because papers split by patient; the lesion id
is prefixed with the patient id so it stays unique even in copies that number lesions per patient.
The authors spell Fitzpatrick `fitspatrick`; the corrected spelling is accepted too.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from skinr1_pipeline.data.loaders.common import (
    ImageLocator,
    RowChecks,
    blank_to_none,
    demographics,
    find_file,
    outcome_notes,
    parse_fitzpatrick,
    path_strings,
    read_table,
    row_numbers,
    strip_extension,
    undocumented_label_notes,
)
from skinr1_pipeline.data.schema import LoadedDataset
from skinr1_pipeline.messages import capped_each

DATASET = "pad_ufes_20"
WHAT = "PAD-UFES-20"
METADATA = "metadata"
LABELS = ("ACK", "BCC", "MEL", "NEV", "SCC", "SEK")
REQUIRED = ("patient_id", "lesion_id", "img_id", "diagnostic", "age", "gender", "region", "fitspatrick")
ALIASES = {"fitspatrick": ("fitzpatrick",), "gender": ("sex",)}


def load(root: Path) -> LoadedDataset:
    root = Path(root).resolve()
    path = find_file(root, [METADATA], what=WHAT)
    table = read_table(path, REQUIRED, aliases=ALIASES, what=WHAT, require_rows=True)
    rows = row_numbers(table)
    notes = [f"{len(table)} rows in {path.name}"]

    locator = ImageLocator(root)
    name = table["img_id"]
    found = locator.find_each(name)
    notes += locator.ambiguity_notes("img_ids") + locator.outside_notes()

    checks = RowChecks.for_rows(DATASET, strip_extension(name), path.name, rows)
    checks.empty_label(table["diagnostic"], "diagnostic", f"expected one of {', '.join(LABELS)}")
    checks.image_ids(
        name, "img_id", found, ": no image named '" + capped_each(name) + "' below the dataset folder", locator=locator
    )

    notes += undocumented_label_notes(table.loc[checks.good, "diagnostic"], LABELS, "diagnostic")
    image_path = path_strings(found)
    records = checks.records(
        image_path,
        {
            "raw_label": table["diagnostic"],
            "modality": "clinical",
            "patient_id": table["patient_id"].map(blank_to_none),
            "lesion_id": _unique_lesion_ids(table["patient_id"], table["lesion_id"]),
            **demographics(table["age"], table["gender"], table["region"]),
            "fitzpatrick": table["fitspatrick"].map(parse_fitzpatrick),
            "metadata_file": str(path),
            "metadata_row": rows,
        },
    )
    records["fitzpatrick"] = records["fitzpatrick"].astype("Int64")
    quarantine = checks.quarantine(image_path.fillna(name))
    notes += outcome_notes(records, quarantine, "; no official split (PAD-UFES-20 has none)")
    return LoadedDataset(DATASET, root, records, quarantine, [path], notes)


def _unique_lesion_ids(patient: pd.Series, lesion: pd.Series) -> pd.Series:
    """Lesion ids prefixed with their patient id (unless already), None where blank."""
    has_prefix = pd.Series([les.startswith(p + "_") for p, les in zip(patient, lesion)], index=lesion.index, dtype=bool)
    prefixed = lesion.where((patient == "") | has_prefix, patient + "_" + lesion)
    return prefixed.where(lesion != "", None)
