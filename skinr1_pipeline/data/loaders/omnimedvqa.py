"""OmniMedVQA dermatology subsets: the out-of-domain multiple-choice benchmark Skin-R1 reports on.

The Hugging Face download is `OmniMedVQA/QA_information/{Open-access,Restricted-access}/<Dataset>.json` with
each item's `image_path` relative to the folder that holds `QA_information`. Only the seven dermatology
files Skin-R1 evaluates on are read, and only their "Disease Diagnosis" items. The answer is option text, so an
item whose `gt_answer` matches no option (or several) cannot be scored and is quarantined; a match that needs
case/spacing/final-full-stop leniency is accepted and counted. Besides the usual records, `load_questions`
returns the options and gold letter the evaluation stage needs.
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skinr1_pipeline.data.loaders.common import RowChecks, outcome_notes, stamp_origin
from skinr1_pipeline.data.schema import DatasetFormatError, LoadedDataset
from skinr1_pipeline.messages import capped, capped_each, capped_list

DATASET = "omnimedvqa"
WHAT = "OmniMedVQA"
QA_DIR = "QA_information"
ACCESS_DIRS = ("Open-access", "Restricted-access")
DIAGNOSIS = "Disease Diagnosis"
LETTERS = ("A", "B", "C", "D")
# Normalised file stems (lower case, letters and digits only) of the dermatology files Skin-R1 evaluates on.
DERM_FILES = {
    "fitzpatrick17k": "clinical",
    "isbi2016": "dermoscopic",
    "isic2018": "dermoscopic",
    "isic2019": "dermoscopic",
    "isic2020": "dermoscopic",
    "monkeypoxskinimage2022": "clinical",
    "padufes20": "clinical",
}
REQUIRED_FIELDS = ("question_id", "question_type", "image_path")
QUESTION_COLUMNS = (
    "sample_id",
    "question_id",
    "dataset",
    "question",
    "options",
    "option_letters",
    "answer_letter",
    "answer_text",
    "image_path",
    "modality",
)


def load(root: Path) -> LoadedDataset:
    return _read(Path(root))[0]


def load_questions(root: Path) -> pd.DataFrame:
    """Scorable diagnosis questions: one row per record, options in A-D order and the gold letter."""
    return _read(Path(root))[1]


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _find_base(root: Path) -> Path:
    """The folder holding QA_information: the root itself, or the inner OmniMedVQA/ (one or two levels down)."""
    if not root.is_dir():
        raise DatasetFormatError(f"{WHAT}: dataset folder {root} does not exist or is not a folder")
    candidates = [root, root / "OmniMedVQA", root / "OmniMedVQA" / "OmniMedVQA"]
    candidates += sorted(p for p in root.iterdir() if p.is_dir())
    for base in candidates:
        if (base / QA_DIR).is_dir():
            return base
    found = sorted(p.name for p in root.iterdir())
    raise DatasetFormatError(f"{WHAT}: no {QA_DIR}/ folder in {root} or its OmniMedVQA/ subfolder; found {found}")


def _derm_json_files(base: Path) -> list[tuple[Path, str]]:
    files = []
    for access in ACCESS_DIRS:
        folder = base / QA_DIR / access
        if folder.is_dir():
            files += [
                (p, DERM_FILES[_norm(p.stem)])
                for p in sorted(folder.iterdir())
                if p.suffix.lower() == ".json" and _norm(p.stem) in DERM_FILES
            ]
    if not files:
        present = sorted(str(p.relative_to(base)) for p in (base / QA_DIR).rglob("*.json"))[:20]
        raise DatasetFormatError(
            f"{WHAT}: none of the dermatology files (Fitzpatrick 17k, ISBI2016, ISIC2018-2020, Monkeypox Skin Image"
            f" 2022, PAD-UFES-20 .json) in {base / QA_DIR}/{{{','.join(ACCESS_DIRS)}}}; found {present}"
        )
    return files


def _items(path: Path) -> list[dict[str, Any]]:
    try:
        with path.open("r", encoding="utf-8-sig") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DatasetFormatError(f"{WHAT}: {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, list):
        raise DatasetFormatError(f"{WHAT}: {path} must hold a JSON list of question items, found {type(data).__name__}")
    for n, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise DatasetFormatError(f"{WHAT}: {path} item {n} is a {type(item).__name__}, expected an object")
        missing = [f for f in REQUIRED_FIELDS if f not in item]
        if missing:
            raise DatasetFormatError(
                f"{WHAT}: {path} item {n} lacks required field(s) {missing}; found fields {capped_list(sorted(item))}"
            )
    return data


def _read(root: Path) -> tuple[LoadedDataset, pd.DataFrame]:
    root = root.resolve()
    base = _find_base(root)
    files = _derm_json_files(base)
    frames, notes, skipped = [], [], Counter()
    for path, modality in files:
        items = _items(path)
        frame = pd.DataFrame(items, columns=sorted({k for it in items for k in it} | set(REQUIRED_FIELDS)))
        stamp_origin(frame, path)
        frame["_modality"] = modality
        qtype = frame["question_type"].astype(str).str.strip()
        skipped.update(qtype[qtype != DIAGNOSIS])
        notes.append(f"{path.name}: {len(frame)} items, {int((qtype == DIAGNOSIS).sum())} disease-diagnosis")
        frames.append(frame.loc[qtype == DIAGNOSIS])
    if skipped:
        notes.append(
            f"{sum(skipped.values())} non-diagnosis items skipped: "
            + ", ".join(f"{capped(k)}: {v}" for k, v in sorted(skipped.items())[:30])
            + (f", and {len(skipped) - 30} more question types" if len(skipped) > 30 else "")
        )
    table = pd.concat(frames, ignore_index=True)
    return _build(root, base, table, files, notes)


def _text(column: pd.Series) -> pd.Series:
    return column.map(lambda v: "" if v is None or (isinstance(v, float) and pd.isna(v)) else str(v).strip())


def _build(
    root: Path, base: Path, table: pd.DataFrame, files: list[tuple[Path, str]], notes: list[str]
) -> tuple[LoadedDataset, pd.DataFrame]:
    for field in ("question", "gt_answer", "dataset", *(f"option_{x}" for x in LETTERS)):
        table[field] = _text(table[field]) if field in table.columns else ""
    options = table[[f"option_{x}" for x in LETTERS]]
    gt = table["gt_answer"]
    letter, n_match, loosened = _gold_letters(options, gt)
    if loosened:
        notes.append(f"{loosened} answers matched an option only after ignoring case, spacing and a final full stop")

    qid = _text(table["question_id"])
    rel = _text(table["image_path"]).str.replace("\\", "/", regex=False).str.replace(r"^(?:\./)+", "", regex=True)
    inside = _contained(base, rel)
    image_path = rel.map(lambda r: str(base / r) if r else None).where(inside, None)
    exists = _existing(base, rel.where(inside, ""))

    checks = RowChecks.for_rows(DATASET, qid, table["_file"], table["_row"], unit="item")
    sample_id = checks.sample_id
    checks.empty_label(gt, "gt_answer", "expected the text of one option")
    listed = pd.Series(
        [" | ".join(f"{x}: {capped(v)}" for x, v in zip(LETTERS, row) if v) for row in options.to_numpy()],
        index=table.index,
    )
    checks.flag(
        n_match != 1,
        "bad_label",
        ": field 'gt_answer' '"
        + capped_each(gt)
        + "' matches "
        + n_match.astype(str)
        + " of the options (expected exactly one of "
        + listed
        + ")",
    )
    checks.flag(qid == "", "missing_id", ": field 'question_id' is empty (expected a unique id)")
    checks.repeated_id("question_id", qid, unit="item")
    checks.flag(
        (rel != "") & ~inside,
        "outside_root",
        ": image_path '" + rel.str.slice(0, 200) + "' leads outside " + str(base) + " (expected a path below it)",
    )
    checks.flag(~exists, "missing_file", ": image_path '" + rel.str.slice(0, 200) + "' not found below " + str(base))

    good = checks.good
    modality = table["_modality"]
    records = checks.records(
        image_path,
        {
            "raw_label": gt,
            "modality": modality,
            "official_split": "test",
            "metadata_file": table["_path"],
            "metadata_row": table["_row"],
        },
    )
    quarantine = checks.quarantine(image_path.fillna(""))

    present = options.ne("")
    questions = pd.DataFrame(
        {
            "sample_id": sample_id,
            "question_id": qid,
            "dataset": table["dataset"].where(table["dataset"] != "", table["_file"].str[:-5]),
            "question": table["question"],
            "options": [list(row[m]) for row, m in zip(options.to_numpy(), present.to_numpy())],
            "option_letters": [[x for x, keep in zip(LETTERS, m) if keep] for m in present.to_numpy()],
            "answer_letter": letter,
            "answer_text": gt,
            "image_path": image_path,
            "modality": modality,
        }
    ).loc[good, list(QUESTION_COLUMNS)]

    notes += outcome_notes(records, quarantine)
    loaded = LoadedDataset(DATASET, root, records, quarantine, [p for p, _ in files], notes)
    return loaded, questions.reset_index(drop=True)


def _gold_letters(options: pd.DataFrame, gt: pd.Series) -> tuple[pd.Series, pd.Series, int]:
    """Letter of the one option equal to the answer; a case/spacing-insensitive match is the fallback.

    Returns the letters (None unless exactly one option matches), the match counts and how many items needed
    the fallback.
    """
    opts = options.to_numpy(dtype=object)
    answers = gt.to_numpy(dtype=object)[:, None]
    filled = opts != ""
    exact = (opts == answers) & filled
    loose_opts = np.vectorize(_loose, otypes=[object])(opts) if opts.size else opts
    loose_answers = np.vectorize(_loose, otypes=[object])(answers) if answers.size else answers
    loose = (loose_opts == loose_answers) & filled
    use_exact = exact.any(axis=1)[:, None]
    matches = np.where(use_exact, exact, loose)
    counts = matches.sum(axis=1)
    letters = np.array(LETTERS, dtype=object)[matches.argmax(axis=1)] if len(matches) else np.array([], dtype=object)
    letter = pd.Series(np.where(counts == 1, letters, None), index=gt.index, dtype="object")
    loosened = int(((~use_exact[:, 0]) & (counts == 1)).sum())
    return letter, pd.Series(counts, index=gt.index), loosened


def _loose(text: str) -> str:
    return " ".join(text.casefold().split()).rstrip(".")


def _contained(base: Path, rel: pd.Series) -> pd.Series:
    """Which relative paths stay below `base`: no absolute path, no '..' step, and no symlink on the way that leaves
    it (resolved, then checked). A question file is data from elsewhere; it must not make ingest read any file."""
    root = base.resolve()

    def inside(r: str) -> bool:
        if not r or r.startswith("/") or ".." in r.split("/"):
            return False
        target = Path(os.path.realpath(base / r))
        return target == root or root in target.parents

    return rel.map(inside).astype(bool)


def _existing(base: Path, rel: pd.Series) -> pd.Series:
    """Which relative paths exist, listing each referenced folder once instead of stat-ing every item."""
    present: set[str] = set()
    for folder in {r.rpartition("/")[0] for r in rel if r}:
        try:
            names = os.listdir(base / folder)
        except OSError:
            continue
        prefix = f"{folder}/" if folder else ""
        present.update(prefix + n for n in names)
    return rel.isin(present) & (rel != "")
