"""Fitzpatrick17k: one CSV (`fitzpatrick17k.csv`) and images the user fetched from the atlases by URL.

The authors ship no images, so copies name them by `md5hash` (the usual choice) or by `url_alphanum`; both
are looked up anywhere below the root. The 504 expert-checked rows carry a `qc` verdict; the 17 marked
"3 Wrongly labelled" are set aside because the expert said the label is wrong, the rest are only counted.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from skinr1_pipeline.data.loaders.common import (
    ImageLocator,
    RowChecks,
    add_blank_columns,
    find_file,
    locations,
    outcome_notes,
    parse_fitzpatrick,
    path_strings,
    read_table,
    row_numbers,
)
from skinr1_pipeline.data.schema import LoadedDataset
from skinr1_pipeline.messages import capped_each

DATASET = "fitzpatrick17k"
WHAT = "Fitzpatrick17k"
METADATA_NAMES = ("fitzpatrick17k", "fitzpatrick17k_annotations", "fitzpatrick")
REQUIRED = ("md5hash", "fitzpatrick_scale", "label")
# train.py in the authors' repo still reads the pre-2021 name `fitzpatrick`.
ALIASES = {"fitzpatrick_scale": ("fitzpatrick",)}
WRONG_LABEL_QC = "3"  # "3 Wrongly labelled": the expert judged the label wrong


def load(root: Path) -> LoadedDataset:
    root = Path(root).resolve()
    path = find_file(root, METADATA_NAMES, what=WHAT)
    table = read_table(path, REQUIRED, aliases=ALIASES, what=WHAT)
    add_blank_columns(table, ("qc", "url_alphanum"))
    rows = row_numbers(table)
    notes: list[str] = [f"{len(table)} rows in {path.name}"]

    locator = ImageLocator(root)
    by_hash = locator.find_each(table["md5hash"])
    by_url = locator.find_each(table["url_alphanum"])
    found = by_hash.where(by_hash.notna(), by_url)
    via_url = int((by_hash.isna() & by_url.notna()).sum())
    if via_url:
        notes.append(f"{via_url} images found by url_alphanum instead of md5hash")
    notes += locator.ambiguity_notes("ids") + locator.outside_notes()

    md5, qc, label = table["md5hash"], table["qc"], table["label"]
    native_id = md5.where(md5 != "", table["url_alphanum"])
    sample_id = DATASET + "/" + native_id.where(native_id != "", "row" + rows.astype(str))
    checks = RowChecks(DATASET, sample_id, locations(path.name, rows))
    checks.empty_label(label, "label", "expected one of the 114 condition names")
    checks.flag(
        qc.str.startswith(WRONG_LABEL_QC),
        "bad_label",
        ": field 'qc' is '"
        + capped_each(qc)
        + "'; expert quality control says label '"
        + capped_each(label)
        + "' is wrong",
    )
    repeated = ": md5hash '" + capped_each(md5) + "' repeats an earlier row (each image must appear once)"
    checks.flag(sample_id.duplicated(), "duplicate_id", repeated)
    missing = ": no image named '" + capped_each(md5) + ".*' or by its url_alphanum below the dataset folder"
    escaped = locator.escaped(table["md5hash"]).fillna(locator.escaped(table["url_alphanum"]))
    checks.outside_links(found.isna(), escaped, "md5hash", md5)
    checks.flag(found.isna(), "missing_file", missing)

    image_path = path_strings(found)
    records = checks.records(
        image_path,
        {
            "raw_label": label,
            "modality": "clinical",
            "fitzpatrick": table["fitzpatrick_scale"].map(_fitzpatrick_of(table["fitzpatrick_scale"])),
            "metadata_file": str(path),
            "metadata_row": rows,
        },
    )
    records["fitzpatrick"] = records["fitzpatrick"].astype("Int64")
    quarantine = checks.quarantine(image_path.fillna(root.as_posix() + "/**/" + md5 + ".jpg"))
    notes += _summary(table, records, quarantine)
    return LoadedDataset(DATASET, root, records, quarantine, [path], notes)


def _fitzpatrick_of(values: pd.Series) -> dict[str, int | None]:
    """Parse each distinct code once; -1 (unknown) and anything outside 1-6 become None."""
    return {v: parse_fitzpatrick(v) for v in values.unique()}


def _summary(table: pd.DataFrame, records: pd.DataFrame, quarantine: pd.DataFrame) -> list[str]:
    qc_counts = Counter(v for v in table["qc"] if v)
    unknown_fst = int(records["fitzpatrick"].isna().sum())
    kept, *reasons = outcome_notes(records, quarantine)
    return [
        kept,
        "expert qc verdicts: " + (", ".join(f"{k}: {v}" for k, v in sorted(qc_counts.items())) or "none"),
        f"{unknown_fst} samples without a usable Fitzpatrick type (-1 or blank)",
        *reasons,
    ]
