"""Helpers every dataset loader shares: tolerant metadata reading, header checks, image lookup by id, row checks.

Public datasets ship the same table as `.csv`, as Dataverse `.tab`, or with no extension, and mirrors nest
image folders differently; loaders therefore find files by id and fail early with a message that names the
file, the columns it has and the columns it needs. Rows that cannot become samples are quarantined through
`RowChecks`, so every loader words and orders its reasons alike and each detail names the file and row.
"""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from skinr1_pipeline.data.images import index_image_files
from skinr1_pipeline.data.schema import QUARANTINE_COLUMNS, RECORD_COLUMNS, DatasetFormatError
from skinr1_pipeline.messages import capped, capped_each, capped_list

METADATA_SUFFIXES = ("", ".csv", ".tab", ".tsv", ".txt")
SPLIT_SYNONYMS = {
    "train": "train",
    "training": "train",
    "val": "valid",
    "valid": "valid",
    "validation": "valid",
    "test": "test",
    "testing": "test",
}


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


def find_optional_file(root: Path, names: Sequence[str], *, what: str) -> Path | None:
    """`find_file` for tables a dataset may lack (held-out ground truth, split lists): None when absent."""
    try:
        return find_file(root, names, what=what)
    except DatasetFormatError:
        return None


def read_table(
    path: Path,
    required: Iterable[str],
    *,
    aliases: Mapping[str, Sequence[str]] | None = None,
    what: str,
    require_rows: bool = False,
) -> pd.DataFrame:
    """Read a metadata table as strings (nothing coerced), normalise known column-name variants, check headers.

    The delimiter is sniffed (comma for CSV, tab for Dataverse `.tab`). `aliases` maps a canonical column name
    to the variants real copies use; the frame comes back with canonical names. `require_rows` refuses a
    header-only table, which for a dataset's main table means a truncated download rather than an empty dataset.
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
    _check_row_lengths(path, sep, what)
    try:
        frame = pd.read_csv(
            path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig", quoting=csv.QUOTE_MINIMAL
        )
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{what}: {path} is not a readable table: {capped(exc, 200)}") from exc
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
            f"{what}: {path} lacks required column(s) {missing}; found columns {capped_list(frame.columns)}"
        )
    if require_rows and frame.empty:
        raise DatasetFormatError(f"{what}: {path} has a header but no data rows")
    return frame.apply(lambda col: col.str.strip())


def _check_row_lengths(path: Path, sep: str, what: str) -> None:
    """Every data row must have as many fields as the header. Why: pandas silently takes the first column as the
    index when the first data row has one field too many, shifting every column by one (all images then go
    missing, with no error); a short row would be padded with empty fields."""
    with path.open("r", encoding="utf-8-sig", newline="") as fh:
        rows = csv.reader(fh, delimiter=sep)
        try:
            header = next(rows, [])
            for row in rows:
                if row and len(row) != len(header):
                    raise DatasetFormatError(
                        f"{what}: {path} line {rows.line_num} has {len(row)} fields, the header has {len(header)} "
                        f"(a stray or missing delimiter?): {capped(sep.join(row), 120)!r}"
                    )
        except csv.Error as exc:
            cell = _oversized_cell(path, sep) if "field limit" in str(exc) else ""
            raise DatasetFormatError(
                f"{what}: {path} line {rows.line_num} is not a readable table row: {capped(exc, 200)}{cell}"
            ) from exc


def _oversized_cell(path: Path, sep: str) -> str:
    """'; data row N, field F holds '<start>... (N chars)'' for the first cell over the csv module's field limit.

    Why: csv.Error names only the line, and a user looking for one bad cell in a wide table needs its column too;
    pandas' parser has no field limit, so it can find the cell (only on this error path, so the cost is paid once).
    """
    limit = csv.field_size_limit()
    try:
        frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError):
        return ""
    long_names = [c for c in frame.columns if len(str(c)) > limit]
    if long_names:
        return f"; the header has a column name {capped(long_names[0])!r}"
    over = frame.apply(lambda column: column.str.len() > limit)
    if over.empty or not over.to_numpy().any():
        return ""
    row = int(over.any(axis=1).to_numpy().argmax())
    column = int(over.iloc[row].to_numpy().argmax())
    return f"; data row {row + 1}, field {capped(frame.columns[column])!r} holds {capped(frame.iat[row, column])!r}"


class ImageLocator:
    """Finds an image file by its id anywhere below a root, whatever folder nesting a mirror uses.

    Only files whose resolved location lies under the root are found: a symlink leading out of it is never
    indexed (see `index_image_files`). Such links are kept in `outside` (link, resolved target): `find` returns
    None for an id whose only files are such links, `escaped` names the link, so the row can be quarantined as
    outside_root (`RowChecks.image_ids(..., locator=)`), and `outside_notes` counts them all. A directory link
    out is not entered (it may lead anywhere, / included), so ids behind it stay missing_file; the note names it.
    """

    def __init__(self, root: Path, extensions: Sequence[str] | None = None) -> None:
        self.root = Path(root)
        self.outside: list[tuple[Path, Path]] = []
        kwargs = {} if extensions is None else {"extensions": extensions}
        self._index = index_image_files(self.root, outside=self.outside, **kwargs)
        self._outside_by_stem: dict[str, list[tuple[Path, Path]]] = {}
        for link, target in self.outside:
            self._outside_by_stem.setdefault(link.stem.lower(), []).append((link, target))
        self.ambiguous: dict[str, list[Path]] = {}

    def find(self, image_id: str) -> Path | None:
        """Path for an id given with or without its extension; None if absent (or only linked from outside).

        Several files with one stem (mirrors that ship a folder twice) resolve to the first in sorted order and
        are remembered in `ambiguous` so the loader can report them.
        """
        stem = _stem(image_id)
        paths = self._index.get(stem.lower())
        if not paths:
            return None
        ordered = sorted(paths)
        if len(ordered) > 1:
            self.ambiguous[stem] = ordered
        return ordered[0]

    def find_each(self, image_ids: pd.Series) -> pd.Series:
        """`find` per row; a blank id finds nothing rather than matching a file with an empty stem."""
        return image_ids.map(lambda i: self.find(i) if i else None)

    def escaped(self, image_ids: pd.Series) -> pd.Series:
        """Per row, "<link> -> <target>" when the id's only files are symlinks leading out of the root, else None."""

        def link(image_id: Any) -> str | None:
            key = _stem(image_id).lower() if image_id else ""
            links = self._outside_by_stem.get(key) if key and key not in self._index else None
            return _link_text(*min(links)) if links else None

        return image_ids.map(link)

    def ambiguity_notes(self, noun: str, *, example: bool = False) -> list[str]:
        """A note when some ids matched several files, so a user can see that a mirror doubled a folder."""
        if not self.ambiguous:
            return []
        shown = f" (e.g. {[str(p) for p in next(iter(self.ambiguous.values()))]})" if example else ""
        return [f"{len(self.ambiguous)} {noun} match several files{shown}; the first in sorted order was used"]

    def outside_notes(self) -> list[str]:
        """A note counting the symlinks below the root that lead out of it (none of them indexed)."""
        if not self.outside:
            return []
        return [
            f"{len(self.outside)} symlinks below {self.root} lead outside it and were not indexed "
            f"(outside_root), e.g. {_link_text(*self.outside[0])}"
        ]

    def __len__(self) -> int:
        return sum(len(v) for v in self._index.values())


def _stem(image_id: Any) -> str:
    """The index key of an id given with or without its extension (also a relative path: its file's stem)."""
    return Path(str(image_id)).stem if Path(str(image_id)).suffix else str(image_id)


def _link_text(link: Path, target: Path) -> str:
    """A link below the root (a location: kept whole) and where it leads (its target is the link's content: capped)."""
    return f"{link} -> {capped(target, 200)}"


def escapes_root(paths: pd.Series, root: Path) -> pd.Series:
    """Which paths (None/'' = no) resolve, symlinks followed, to a location outside `root`'s real location.

    For loaders that list files themselves instead of through `ImageLocator`.
    """
    real_root = os.path.realpath(root)
    prefix = real_root.rstrip(os.sep) + os.sep

    def outside(path: Any) -> bool:
        if not isinstance(path, (str, Path)) or not str(path):
            return False
        target = os.path.realpath(path)
        return target != real_root and not target.startswith(prefix)

    return paths.map(outside).astype(bool)


def path_strings(found: pd.Series) -> pd.Series:
    """Located paths as strings for the records; None stays None."""
    return found.map(lambda p: str(p) if p is not None else None)


def strip_extension(names: pd.Series) -> pd.Series:
    """File names without a 2-5 character extension, for ids that some copies write with one and some without."""
    return names.str.replace(r"\.[A-Za-z0-9]{2,5}$", "", regex=True)


def add_blank_columns(table: pd.DataFrame, columns: Iterable[str]) -> list[str]:
    """Add each absent optional column as empty strings, so later code need not ask; returns the ones added."""
    absent = [c for c in columns if c not in table.columns]
    for column in absent:
        table[column] = ""
    return absent


def stamp_origin(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Tag rows with their file (`_file` name, `_path`) and 1-based `_row`, which messages and lineage cite."""
    table["_file"] = path.name
    table["_path"] = str(path)
    table["_row"] = range(1, len(table) + 1)
    return table


def row_numbers(table: pd.DataFrame) -> pd.Series:
    """1-based data row numbers (header excluded), aligned with the table's index."""
    return pd.Series(range(1, len(table) + 1), index=table.index)


def locations(files: str | pd.Series, rows: pd.Series, unit: str = "row") -> pd.Series:
    """'<file> row <n>' per row: how every quarantine detail points the user at the offending line."""
    return files + f" {unit} " + rows.astype(str)


class RowChecks:
    """Quarantine reason and detail per row, where the first failed check wins so each row names its root problem.

    Details start with the row's location (`where`); reasons already set (e.g. by one-hot decoding) are kept.
    Rows that pass become records and the rest quarantine rows, both under the same `sample_id`.
    """

    def __init__(
        self,
        dataset: str,
        sample_id: pd.Series,
        where: pd.Series,
        reason: pd.Series | None = None,
        detail: pd.Series | None = None,
    ) -> None:
        self.dataset = dataset
        self.sample_id = sample_id
        self.where = where
        self.reason = pd.Series(None, index=where.index, dtype="object") if reason is None else reason.copy()
        self.detail = pd.Series(None, index=where.index, dtype="object") if detail is None else detail.copy()

    @classmethod
    def for_rows(
        cls,
        dataset: str,
        native_id: pd.Series,
        files: str | pd.Series,
        rows: pd.Series,
        *,
        unit: str = "row",
        reason: pd.Series | None = None,
        detail: pd.Series | None = None,
    ) -> RowChecks:
        """Rows keyed '<dataset>/<native id>'; a blank id becomes '<file>#<unit><n>' so the row stays traceable."""
        sample_id = dataset + "/" + native_id.where(native_id != "", files + f"#{unit}" + rows.astype(str))
        return cls(dataset, sample_id, locations(files, rows, unit), reason, detail)

    @property
    def good(self) -> pd.Series:
        return self.reason.isna()

    def flag(self, mask: pd.Series, why: str, text: str | pd.Series) -> None:
        """Give reason `why` to rows in `mask` not flagged before; `text` is appended to the row's location."""
        mask = mask & self.reason.isna()
        self.reason[mask] = why
        self.detail[mask] = (self.where + text)[mask]

    def empty_label(self, values: pd.Series, field: str, expected: str) -> None:
        self.flag(values == "", "missing_label", f": field '{field}' is empty ({expected})")

    def empty_image_id(self, values: pd.Series, field: str | pd.Series) -> None:
        self.flag(values == "", "missing_file", ": field '" + field + "' is empty, so no image can be matched")

    def repeated_id(self, field: str, values: pd.Series, unit: str = "row") -> None:
        repeated = self.sample_id.duplicated()
        self.flag(repeated, "duplicate_id", f": {field} '" + capped_each(values) + f"' repeats an earlier {unit}")

    def image_ids(
        self,
        ids: pd.Series,
        field: str,
        found: pd.Series,
        not_found: str | pd.Series,
        *,
        locator: ImageLocator | None = None,
    ) -> None:
        """The checks of every image-keyed table, in precedence order: blank id, repeated id, a file only linked
        from outside the dataset folder (with the `locator` that found them), no such file."""
        self.empty_image_id(ids, field)
        self.repeated_id(field, ids)
        if locator is not None:
            self.outside_links(found.isna(), locator.escaped(ids), field, ids)
        self.flag(found.isna(), "missing_file", not_found)

    def outside_links(self, mask: pd.Series, links: pd.Series, field: str | pd.Series, ids: pd.Series) -> None:
        """outside_root for rows in `mask` whose `links` text ("<link> -> <target>") is set: the only file for the
        id is a symlink that leaves the dataset folder, which is never read."""
        text = (
            ": " + field + " '" + capped_each(ids.astype(str)) + "' matches only a symlink leading outside "
            "the dataset folder (" + links.fillna("") + "); not read"
        )
        self.flag(mask & links.notna(), "outside_root", text)

    def contained(self, paths: pd.Series, root: Path, what: str = "image") -> None:
        """outside_root for rows whose path resolves (symlinks followed) outside `root`: for loaders that list
        files themselves, so a link out of the dataset folder is quarantined, never read."""
        outside = escapes_root(paths, root)
        if outside.any():
            targets = paths.where(outside, "").map(lambda p: capped(os.path.realpath(p), 200) if p else "")
            self.flag(
                outside,
                "outside_root",
                f": {what} is a symlink leading to '" + targets + f"', outside {root} (expected a file below it)",
            )

    def records(self, image_path: pd.Series, fields: Mapping[str, Any]) -> pd.DataFrame:
        """RECORD_COLUMNS of the rows that passed every check; a field the dataset lacks is None."""
        fields = {"sample_id": self.sample_id, "source_dataset": self.dataset, "image_path": image_path, **fields}
        return pd.DataFrame({c: fields.get(c) for c in RECORD_COLUMNS}).loc[self.good, list(RECORD_COLUMNS)]

    def quarantine(self, image_path: pd.Series) -> pd.DataFrame:
        """QUARANTINE_COLUMNS of the rows that failed a check, renumbered from 0."""
        frame = pd.DataFrame(
            {
                "source_dataset": self.dataset,
                "sample_id": self.sample_id,
                "image_path": image_path,
                "reason": self.reason,
                "detail": self.detail,
            }
        )
        return frame.loc[~self.good, list(QUARANTINE_COLUMNS)].reset_index(drop=True)


def reason_notes(quarantine: pd.DataFrame) -> list[str]:
    """'quarantine reasons: <reason>: <n>, ...' when anything was quarantined."""
    if not len(quarantine):
        return []
    counts = Counter(quarantine["reason"])
    return ["quarantine reasons: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))]


def outcome_notes(records: pd.DataFrame, quarantine: pd.DataFrame, suffix: str = "") -> list[str]:
    """The closing notes of a load: how many samples were kept and why the rest were quarantined."""
    return [f"{len(records)} samples, {len(quarantine)} quarantined{suffix}", *reason_notes(quarantine)]


def undocumented_label_notes(labels: pd.Series, documented: Sequence[str], field: str) -> list[str]:
    """A note listing label values outside a dataset's documented codes; they are kept for label mapping to judge."""
    unusual = sorted(set(labels) - set(documented))
    if not unusual:
        return []
    return [f"{field} values outside the documented codes kept for label mapping to judge: {capped_list(unusual)}"]


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


def demographics(age: pd.Series, sex: pd.Series, site: pd.Series) -> dict[str, pd.Series]:
    """Record fields age, sex and site, parsed alike for every dataset so they compare across sources."""
    return {"age": age.map(parse_age), "sex": sex.map(parse_sex), "site": site.map(blank_to_none)}
