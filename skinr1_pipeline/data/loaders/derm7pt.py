"""Derm7pt: one `meta.csv` row per case, each case photographed twice (clinical `clinic`, dermoscopic `derm`).

Both images of a case become samples that share the case as lesion and patient, so no split can separate
them. The official split files hold 0-based ROW POSITIONS into meta.csv (the authors' helper indexes with
`iloc`); matching them against `case_num`, as Skin-R1's loader does, shifts every case by one, so positions
are used here and validated strictly: a position outside the table or claimed by two split files is an error.
Copies with fewer columns exist (e.g. no `case_num`, no `clinic`): the 1-based row number then stands in for
the case number, and whichever image columns are present are loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from skinr1_pipeline.data.loaders.common import (
    ImageLocator,
    RowChecks,
    blank_to_none,
    find_file,
    find_optional_file,
    locations,
    outcome_notes,
    parse_sex,
    path_strings,
    read_table,
    row_numbers,
)
from skinr1_pipeline.data.schema import DatasetFormatError, LoadedDataset
from skinr1_pipeline.messages import capped, capped_each, capped_list

DATASET = "derm7pt"
WHAT = "Derm7pt"
VIEWS = {"clinic": "clinical", "derm": "dermoscopic"}  # image column -> modality
SPLIT_FILES = {"train": "train_indexes", "valid": "valid_indexes", "test": "test_indexes"}
INDEX_ALIASES = {"indexes": ("index", "indices", "idx")}


def load(root: Path) -> LoadedDataset:
    root = Path(root).resolve()
    meta_path = find_file(root, ["meta"], what=WHAT)
    table = read_table(meta_path, ("diagnosis",), what=WHAT, require_rows=True)
    views = [v for v in VIEWS if v in table.columns]
    if not views:
        raise DatasetFormatError(
            f"{WHAT}: {meta_path} lacks both image columns ['clinic', 'derm'] (at least one is required); "
            f"found columns {capped_list(table.columns)}"
        )
    rows = row_numbers(table)
    notes = [f"{len(table)} cases in {meta_path.name} with image column(s) {views}"]
    case = _case_ids(table, rows, notes)
    split, split_files = _official_split(meta_path.parent, len(table), notes)
    images_dir = _images_dir(root, meta_path)

    cases = pd.DataFrame(
        {
            "_row": rows,
            "_case": case,
            "diagnosis": table["diagnosis"],
            "official_split": split,
            "site": table["location"].map(blank_to_none) if "location" in table.columns else None,
            "sex": table["sex"].map(parse_sex) if "sex" in table.columns else None,
        }
    )
    samples = pd.concat(
        [cases.assign(_view=view, _order=i, _image=table[view]) for i, view in enumerate(views)], ignore_index=True
    ).sort_values(["_row", "_order"], kind="stable", ignore_index=True)

    locator = ImageLocator(images_dir)
    found, unresolved = _resolve(samples["_image"], images_dir, locator)
    if unresolved:
        notes.append(f"{unresolved} image paths match several files by name but none by folder; the first was used")
    notes += locator.outside_notes()

    case_key = DATASET + "/case" + samples["_case"]
    sample_id = case_key + "/" + samples["_view"]
    checks = RowChecks(DATASET, sample_id, locations(meta_path.name, samples["_row"]))
    checks.empty_label(samples["diagnosis"], "diagnosis", "expected a Derm7pt diagnosis such as 'clark nevus'")
    checks.empty_image_id(samples["_image"], samples["_view"])
    checks.repeated_id("case", samples["_case"])
    escaped = locator.escaped(samples["_image"].str.replace("\\", "/", regex=False))
    checks.outside_links(found.isna(), escaped, samples["_view"], samples["_image"])
    checks.flag(found.isna(), "missing_file", ": no image '" + capped_each(samples["_image"]) + f"' below {images_dir}")

    image_path = path_strings(found)
    records = checks.records(
        image_path,
        {
            "raw_label": samples["diagnosis"],
            "modality": samples["_view"].map(VIEWS),
            "patient_id": case_key,
            "lesion_id": case_key,
            "official_split": samples["official_split"],
            "sex": samples["sex"],
            "site": samples["site"],
            "metadata_file": str(meta_path),
            "metadata_row": samples["_row"],
        },
    )
    quarantine = checks.quarantine(image_path.fillna(samples["_image"]))
    notes += outcome_notes(records, quarantine)
    return LoadedDataset(DATASET, root, records, quarantine, [meta_path, *split_files], notes)


def _case_ids(table: pd.DataFrame, rows: pd.Series, notes: list[str]) -> pd.Series:
    """`case_num` where given, else the 1-based row number (which is what `case_num` holds in full copies)."""
    if "case_num" not in table.columns:
        notes.append("no case_num column: the 1-based row number is used as case id")
        return rows.astype(str)
    blank = table["case_num"] == ""
    if blank.any():
        notes.append(f"{int(blank.sum())} rows with an empty case_num use their 1-based row number as case id")
    return table["case_num"].where(~blank, rows.astype(str))


def _official_split(meta_dir: Path, n_rows: int, notes: list[str]) -> tuple[pd.Series, list[Path]]:
    """Split per meta.csv row from the index files beside it (0-based positions; iloc semantics)."""
    split = np.full(n_rows, None, dtype=object)
    owner: dict[int, Path] = {}
    files = []
    for name, stem in SPLIT_FILES.items():
        path = find_optional_file(meta_dir, [stem], what=WHAT)
        if path is None:
            continue
        files.append(path)
        positions = _read_positions(path, n_rows)
        clash = sorted({p for p in positions if p in owner and owner[p] != path})
        if clash:
            others = sorted({owner[p].name for p in clash})
            raise DatasetFormatError(
                f"{WHAT}: {path} and {others} both list meta.csv row position(s) {clash[:10]}"
                f"{' ...' if len(clash) > 10 else ''} (each case must be in exactly one official split)"
            )
        repeated = len(positions) - len(set(positions))
        if repeated:
            notes.append(f"{path.name}: {repeated} positions listed more than once")
        for position in positions:
            owner[position] = path
        split[positions] = name
        notes.append(f"{path.name}: {len(set(positions))} cases in official split {name}")
    if not files:
        notes.append(f"no split index files ({', '.join(SPLIT_FILES.values())}) in {meta_dir}: official split empty")
    else:
        unassigned = int(sum(s is None for s in split))
        if unassigned:
            notes.append(f"{unassigned} cases are in no split index file; their official split is empty")
    return pd.Series(split, dtype="object"), files


def _read_positions(path: Path, n_rows: int) -> list[int]:
    column = read_table(path, ("indexes",), aliases=INDEX_ALIASES, what=WHAT)["indexes"]
    numbers = pd.to_numeric(column, errors="coerce")
    bad = column[numbers.isna() | (numbers != numbers.round())]
    if len(bad):
        row = int(bad.index[0]) + 1
        raise DatasetFormatError(
            f"{WHAT}: {path} row {row} column 'indexes' holds {capped(bad.iloc[0])!r}; "
            "expected a whole-number row position"
        )
    positions = numbers.astype(int)
    outside = positions[(positions < 0) | (positions >= n_rows)]
    if len(outside):
        row = int(outside.index[0]) + 1
        raise DatasetFormatError(
            f"{WHAT}: {path} row {row} holds index {int(outside.iloc[0])} but meta.csv has {n_rows} data rows "
            f"(expected 0..{n_rows - 1}: indexes are 0-based row positions); {len(outside)} such value(s)"
        )
    return positions.tolist()


def _images_dir(root: Path, meta_path: Path) -> Path:
    """`images/` beside the `meta/` folder (the official layout) or beside meta.csv, else the root itself.

    Resolved before the check: an `images` link out of the dataset folder is not taken as the image folder (the
    locator over the root then reports the link as outside_root)."""
    for candidate in (meta_path.parent.parent / "images", meta_path.parent / "images", root / "images"):
        if candidate.resolve().is_relative_to(root) and candidate.is_dir():
            return candidate
    return root


def _resolve(relative: pd.Series, images_dir: Path, locator: ImageLocator) -> tuple[pd.Series, int]:
    """Image per `clinic`/`derm` path: found by file name, and by folder too when several files share a name.

    Folder names differ only by case in the real release (e.g. `FCL` and `FCl`), so the exact path wins,
    then a case-insensitive match; a mirror that flattened the folders still resolves by name.
    """
    unresolved = 0

    def pick(rel: str) -> Path | None:
        nonlocal unresolved
        if not rel:
            return None
        wanted = rel.replace("\\", "/")
        name = Path(wanted).name
        first = locator.find(name)
        stem = Path(name).stem if Path(name).suffix else name  # the key ImageLocator files ambiguities under
        if first is None or stem not in locator.ambiguous:
            return first
        candidates = {p.relative_to(images_dir).as_posix(): p for p in locator.ambiguous[stem]}
        if wanted in candidates:
            return candidates[wanted]
        folded = [p for r, p in candidates.items() if r.lower() == wanted.lower()]
        if len(folded) == 1:
            return folded[0]
        unresolved += 1
        return first

    found = relative.map(pick)
    return found, unresolved
