"""Fitzpatrick17k: one CSV (`fitzpatrick17k.csv`) and images the user fetched from the atlases by URL.

The authors ship no images, so copies name them by `md5hash` (the usual choice) or by `url_alphanum`; both
are looked up anywhere below the root. The 504 expert-checked rows carry a `qc` verdict; the 17 marked
"3 Wrongly labelled" are set aside because the expert said the label is wrong, the rest are only counted.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from skinr1_pipeline.data.loaders.common import ImageLocator, find_file, parse_fitzpatrick, read_table
from skinr1_pipeline.data.schema import QUARANTINE_COLUMNS, RECORD_COLUMNS, LoadedDataset

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
    for optional in ("qc", "url_alphanum"):
        if optional not in table.columns:
            table[optional] = ""
    rows = pd.Series(range(1, len(table) + 1), index=table.index)
    notes: list[str] = [f"{len(table)} rows in {path.name}"]

    locator = ImageLocator(root)
    by_hash = table["md5hash"].map(lambda h: locator.find(h) if h else None)
    by_url = table["url_alphanum"].map(lambda u: locator.find(u) if u else None)
    found = by_hash.where(by_hash.notna(), by_url)
    via_url = int((by_hash.isna() & by_url.notna()).sum())
    if via_url:
        notes.append(f"{via_url} images found by url_alphanum instead of md5hash")
    if locator.ambiguous:
        notes.append(f"{len(locator.ambiguous)} ids match several files; the first in sorted order was used")

    native_id = table["md5hash"].where(table["md5hash"] != "", table["url_alphanum"])
    native_id = native_id.where(native_id != "", "row" + rows.astype(str))
    sample_id = DATASET + "/" + native_id
    qc = table["qc"]
    where = path.name + " row " + rows.astype(str)

    reason = pd.Series(None, index=table.index, dtype="object")
    detail = pd.Series(None, index=table.index, dtype="object")

    def flag(mask: pd.Series, why: str, text: pd.Series) -> None:
        mask = mask & reason.isna()
        reason[mask] = why
        detail[mask] = text[mask]

    flag(
        table["label"] == "",
        "missing_label",
        where + ": field 'label' is empty (expected one of the 114 condition names)",
    )
    flag(
        qc.str.startswith(WRONG_LABEL_QC),
        "bad_label",
        where + ": field 'qc' is '" + qc + "'; expert quality control says label '" + table["label"] + "' is wrong",
    )
    flag(
        sample_id.duplicated(),
        "duplicate_id",
        where + ": md5hash '" + table["md5hash"] + "' repeats an earlier row (each image must appear once)",
    )
    flag(
        found.isna(),
        "missing_file",
        where + ": no image named '" + table["md5hash"] + ".*' or by its url_alphanum below the dataset folder",
    )

    good = reason.isna()
    records = pd.DataFrame(
        {
            "sample_id": sample_id,
            "source_dataset": DATASET,
            "image_path": found.map(lambda p: str(p) if p is not None else None),
            "raw_label": table["label"],
            "modality": "clinical",
            "patient_id": None,
            "lesion_id": None,
            "official_split": None,
            "age": None,
            "sex": None,
            "site": None,
            "fitzpatrick": table["fitzpatrick_scale"].map(_fitzpatrick_of(table["fitzpatrick_scale"])),
            "metadata_file": str(path),
            "metadata_row": rows,
        }
    ).loc[good, list(RECORD_COLUMNS)]
    records["fitzpatrick"] = records["fitzpatrick"].astype("Int64")

    expected = root.as_posix() + "/**/" + table["md5hash"] + ".jpg"
    quarantine = pd.DataFrame(
        {
            "source_dataset": DATASET,
            "sample_id": sample_id,
            "image_path": found.map(lambda p: str(p) if p is not None else None).fillna(expected),
            "reason": reason,
            "detail": detail,
        }
    ).loc[~good, list(QUARANTINE_COLUMNS)]

    notes.extend(_summary(table, records, quarantine))
    return LoadedDataset(
        name=DATASET,
        root=root,
        records=records,
        quarantine=quarantine.reset_index(drop=True),
        metadata_files=[path],
        notes=notes,
    )


def _fitzpatrick_of(values: pd.Series) -> dict[str, int | None]:
    """Parse each distinct code once; -1 (unknown) and anything outside 1-6 become None."""
    return {v: parse_fitzpatrick(v) for v in values.unique()}


def _summary(table: pd.DataFrame, records: pd.DataFrame, quarantine: pd.DataFrame) -> list[str]:
    qc_counts = Counter(v for v in table["qc"] if v)
    unknown_fst = int(records["fitzpatrick"].isna().sum())
    lines = [
        f"{len(records)} samples, {len(quarantine)} quarantined",
        "expert qc verdicts: " + (", ".join(f"{k}: {v}" for k, v in sorted(qc_counts.items())) or "none"),
        f"{unknown_fst} samples without a usable Fitzpatrick type (-1 or blank)",
    ]
    if len(quarantine):
        lines.append(
            "quarantine reasons: "
            + ", ".join(f"{k}: {v}" for k, v in sorted(Counter(quarantine["reason"]).items()))
        )
    return lines
