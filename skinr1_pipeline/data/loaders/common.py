"""Helpers every dataset loader shares: tolerant metadata reading, header checks, image lookup by id.

Public datasets ship the same table as `.csv`, as Dataverse `.tab`, or with no extension, and mirrors nest
image folders differently; loaders therefore find files by id and fail early with a message that names the
file, the columns it has and the columns it needs.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from skinr1_pipeline.data.images import index_image_files
from skinr1_pipeline.data.schema import QUARANTINE_COLUMNS, RECORD_COLUMNS, DatasetFormatError

METADATA_SUFFIXES = ("", ".csv", ".tab", ".tsv", ".txt")


def find_file(root: Path, names: Sequence[str], *, what: str) -> Path:
    """First existing file among `names` (each tried with the usual table suffixes, case-insensitively).

    Looks in `root` and, failing that, anywhere below it (mirrors add a wrapper folder).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetFormatError(f"{what}: dataset folder {root} does not exist or is not a folder")
    wanted = {f"{n}{s}".lower() for n in names for s in METADATA_SUFFIXES}
    direct = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower() in wanted)
    if direct:
        return direct[0]
    # os.walk, not rglob + is_file: a stat per file made each lookup cost ~0.2 s on a 10k-image tree, and
    # loaders probe for optional files that are usually absent. Symlinked folders are not entered (as rglob).
    nested = sorted(
        p
        for folder, _, files in os.walk(root)
        for p in (Path(folder) / f for f in files if f.lower() in wanted)
        if p.is_file()
    )
    if nested:
        return nested[0]
    raise DatasetFormatError(
        f"{what}: none of {sorted(names)} (with suffixes {[s or '<none>' for s in METADATA_SUFFIXES]}) found in {root}"
    )


def read_table(
    path: Path,
    required: Iterable[str],
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
    what: str,
) -> pd.DataFrame:
    """Read a metadata table as strings (nothing coerced), normalise known column-name variants, check headers.

    The delimiter is sniffed (comma for CSV, tab for Dataverse `.tab`). `aliases` maps a canonical column name
    to the variants real copies use; the frame comes back with canonical names.
    """
    path = Path(path)
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as fh:
            head = fh.readline()
    except OSError as exc:
        raise DatasetFormatError(f"{what}: cannot read {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise DatasetFormatError(f"{what}: {path} is not UTF-8 text ({exc})") from exc
    if not head.strip():
        raise DatasetFormatError(f"{what}: {path} is empty (expected a header row)")
    sep = "\t" if head.count("\t") > head.count(",") else ","
    try:
        frame = pd.read_csv(
            path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig", quoting=csv.QUOTE_MINIMAL
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{what}: {path} is not a readable table: {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    if aliases:
        lower = {c.lower(): c for c in frame.columns}
        renames = {}
        for canonical, variants in aliases.items():
            if canonical in frame.columns:
                continue
            for variant in variants:
                if variant.lower() in lower:
                    renames[lower[variant.lower()]] = canonical
                    break
        frame = frame.rename(columns=renames)
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DatasetFormatError(
            f"{what}: {path} lacks required column(s) {missing}; found columns {list(frame.columns)}"
        )
    return frame.apply(lambda col: col.str.strip())


class ImageLocator:
    """Finds an image file by its id anywhere below a root, whatever folder nesting a mirror uses."""

    def __init__(self, root: Path, extensions: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        self._index = index_image_files(self.root) if extensions is None else index_image_files(self.root, extensions)
        self.ambiguous: dict[str, list[Path]] = {}

    def find(self, image_id: str) -> Path | None:
        """Path for an id given with or without its extension; None if absent.

        Several files with one stem (mirrors that ship a folder twice) resolve to the first in sorted order and
        are remembered in `ambiguous` so the loader can report them.
        """
        stem = Path(str(image_id)).stem if Path(str(image_id)).suffix else str(image_id)
        paths = self._index.get(stem.lower())
        if not paths:
            return None
        ordered = sorted(paths)
        if len(ordered) > 1:
            self.ambiguous[stem] = ordered
        return ordered[0]

    def __len__(self) -> int:
        return sum(len(v) for v in self._index.values())


def records_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """A records frame with exactly RECORD_COLUMNS; absent fields become None."""
    return pd.DataFrame([{c: row.get(c) for c in RECORD_COLUMNS} for row in rows], columns=list(RECORD_COLUMNS))


def quarantine_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    return pd.DataFrame([{c: row.get(c) for c in QUARANTINE_COLUMNS} for row in rows], columns=list(QUARANTINE_COLUMNS))


def missing_file_entry(source: str, sample_id: str, expected: str, metadata_file: Path, row: int) -> dict[str, Any]:
    return {
        "source_dataset": source,
        "sample_id": sample_id,
        "image_path": expected,
        "reason": "missing_file",
        "detail": f"{metadata_file.name} row {row} names an image that is not below the dataset folder",
    }


def parse_age(value: Any) -> float | None:
    """Ages arrive as '45', '45.0', '' or 'unknown'; anything not a finite number in 0..120 becomes None."""
    try:
        age = float(value)
    except (TypeError, ValueError):
        return None
    return age if math.isfinite(age) and 0 <= age <= 120 else None


def parse_sex(value: Any) -> str | None:
    text = str(value or "").strip().lower()
    if text in {"male", "m", "masculino"}:
        return "male"
    if text in {"female", "f", "feminino"}:
        return "female"
    return None


def parse_fitzpatrick(value: Any) -> int | None:
    """Fitzpatrick type 1-6 from '3', '3.0', 'III' or 'FST3'; unknown codes (-1, '', 'NONE_SELECTED') -> None."""
    text = str(value or "").strip().upper().replace("FST", "")
    roman = {"I": 1, "II": 2, "III": 3, "IV": 4, "V": 5, "VI": 6}
    if text in roman:
        return roman[text]
    try:
        number = int(float(text))
    except ValueError:
        return None
    return number if 1 <= number <= 6 else None


def blank_to_none(value: Any) -> str | None:
    text = str(value).strip() if value is not None else ""
    return text or None
