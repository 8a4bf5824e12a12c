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
    SPLIT_SYNONYMS,
    ImageLocator,
    RowChecks,
    add_blank_columns,
    blank_to_none,
    demographics,
    find_file,
    outcome_notes,
    path_strings,
    read_table,
    row_numbers,
    strip_extension,
    undocumented_label_notes,
)
from skinr1_pipeline.data.schema import LoadedDataset
from skinr1_pipeline.messages import capped, capped_each

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


def load(root: Path) -> LoadedDataset:
    root = Path(root).resolve()
    path = find_file(root, [METADATA], what=WHAT)
    table = read_table(path, ("bcn_filename", "diagnosis"), aliases=ALIASES, what=WHAT, require_rows=True)
    absent = add_blank_columns(table, OPTIONAL)
    notes = [f"{len(table)} rows in {path.name}"]
    if absent:
        notes.append(f"{path.name} has no column(s) {absent}; those fields are empty")
    rows = row_numbers(table)

    locator = ImageLocator(root)
    name = table["bcn_filename"]
    found = locator.find_each(name)
    notes += locator.ambiguity_notes("file names") + locator.outside_notes()

    checks = RowChecks.for_rows(DATASET, strip_extension(name), path.name, rows)
    checks.empty_label(table["diagnosis"], "diagnosis", f"expected one of {', '.join(LABELS)}")
    not_found = ": no image named '" + capped_each(name) + "' below the dataset folder"
    checks.image_ids(name, "bcn_filename", found, not_found, locator=locator)

    good = checks.good
    split, split_notes = _official_split(table["split"][good])
    notes.extend(split_notes)
    notes += undocumented_label_notes(table.loc[good, "diagnosis"], LABELS, "diagnosis")
    image_path = path_strings(found)
    records = checks.records(
        image_path,
        {
            "raw_label": table["diagnosis"],
            "modality": "dermoscopic",
            "lesion_id": table["lesion_id"].map(blank_to_none),
            "official_split": split,
            **demographics(table["age_approx"], table["sex"], table["anatom_site_general"]),
            "metadata_file": str(path),
            "metadata_row": rows,
        },
    )
    quarantine = checks.quarantine(image_path.fillna(name))
    notes += outcome_notes(records, quarantine)
    return LoadedDataset(DATASET, root, records, quarantine, [path], notes)


def _official_split(values: pd.Series) -> tuple[pd.Series, list[str]]:
    """Recognised split names mapped to train/valid/test; blank or unfamiliar values become None, with a note."""
    split = values.str.lower().map(SPLIT_SYNONYMS)
    split = split.astype("object").where(split.notna(), None)
    notes = []
    blank = int((values == "").sum())
    if blank and blank < len(values):
        notes.append(f"{blank} rows with an empty 'split' value have no official split")
    unknown = values[(values != "") & split.isna()]
    if len(unknown):
        shown = ", ".join(f"{capped(v)!r}: {n}" for v, n in sorted(Counter(unknown).items())[:10])
        notes.append(
            f"{len(unknown)} rows have a 'split' value that is not train/val/validation/test ({shown}); "
            "their official split is left empty"
        )
    return split, notes
