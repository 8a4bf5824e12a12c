"""DermNet (Kaggle 23-class copy): no metadata table, the folder tree is the annotation.

Layout: `train/<category>/<disease-name>-<N>.jpg` and `test/...`, often inside a wrapper folder from the zip.
The category folder is coarse and mixes behaviours, so the raw label keeps both parts, "<folder>|<fine>",
where the fine name comes from the file stem (`seborrheic-keratosis-irritated-28` -> "seborrheic keratosis
irritated"). Stems without the `-<digits>` pattern keep an empty fine part instead of being skipped (Skin-R1
skips them); label mapping then falls back to the folder.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pandas as pd

from skinr1_pipeline.data.images import IMAGE_EXTENSIONS
from skinr1_pipeline.data.loaders.common import RowChecks
from skinr1_pipeline.data.schema import DatasetFormatError, LoadedDataset

DATASET = "dermnet"
WHAT = "DermNet"
SPLITS = {"train": "train", "test": "test", "valid": "valid", "val": "valid", "validation": "valid"}
IMAGE_SUFFIXES = frozenset(e.lower() for e in IMAGE_EXTENSIONS)  # the same set the ImageLocator indexes
LINKED_FOLDERS = "<folder symlink>"  # _walk counts these apart from non-image files
STEM_PATTERN = r"^(?P<fine>.*[^-\s].*?)-(?P<index>\d+)$"


def load(root: Path) -> LoadedDataset:
    root = Path(root).resolve()
    base = _find_base(root)
    files, other = _walk(base)
    notes = [f"{len(files)} image files below {base}"]
    linked = other.pop(LINKED_FOLDERS, 0)
    if linked:
        notes.append(f"{linked} folder symlink(s) not followed (images behind them are not read)")
    if other.pop("__MACOSX/", 0):
        notes.append("__MACOSX/ folders (zip debris) skipped")
    if other:
        kinds = ", ".join(f"{k or '<no suffix>'}: {v}" for k, v in sorted(other.items()))
        notes.append(f"{sum(other.values())} non-image files ignored ({kinds})")
    table = pd.DataFrame(files, columns=["rel"], dtype="object")
    parts = table["rel"].str.split("/")
    top = parts.str[0]
    table["split"] = top.str.lower().map(SPLITS)
    if table["split"].isna().all():
        raise DatasetFormatError(f"{WHAT}: no image files under {base}/{{train,test}}/<category>/")
    table["category"] = parts.map(lambda p: p[1] if len(p) > 2 else "")
    table["name"] = parts.str[-1]
    stem = table["name"].str.rsplit(".", n=1).str[0]
    fine = stem.str.extract(STEM_PATTERN)["fine"]
    fine = fine.str.replace("-", " ", regex=False).str.split().str.join(" ")
    table["raw_label"] = table["category"].str.strip() + "|" + fine.fillna("")
    table["path"] = [str(base / r) for r in table["rel"]]
    sample_id = DATASET + "/" + table["rel"]

    checks = RowChecks(DATASET, sample_id, table["rel"])
    checks.contained(table["path"], root, "file")  # a symlink out of the dataset folder is never read
    outside = ": not inside train/ or test/, so neither split nor category is known"
    checks.flag(table["split"].isna(), "bad_label", outside)
    checks.flag(
        table["category"] == "",
        "bad_label",
        ": lies directly in " + top + "/ with no category folder (expected " + top + "/<category>/<file>)",
    )

    unparsed = int((fine.isna() & checks.good).sum())
    if unparsed:
        notes.append(
            f"{unparsed} file stems do not follow '<disease-name>-<digits>'; their raw label keeps only the folder"
        )
    records = checks.records(
        table["path"],
        {
            "raw_label": table["raw_label"],
            "modality": "clinical",
            "official_split": table["split"],
            "metadata_file": [str(Path(p).parent) for p in table["path"]],
        },
    )
    quarantine = checks.quarantine(table["path"])

    split_counts = Counter(records["official_split"])
    notes.append(
        f"{len(records)} samples ({', '.join(f'{k}: {v}' for k, v in sorted(split_counts.items()))}) in "
        f"{records['raw_label'].str.split('|').str[0].nunique()} category folders, {len(quarantine)} quarantined"
    )
    return LoadedDataset(DATASET, root, records, quarantine, [], notes)


def _split_dirs(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.is_dir() and p.name.lower() in SPLITS]


def _find_base(root: Path) -> Path:
    """The folder holding train/ and test/: the root, or a wrapper folder one or two levels down."""
    if not root.is_dir():
        raise DatasetFormatError(f"{WHAT}: dataset folder {root} does not exist or is not a folder")
    level = [root]
    for _ in range(3):
        hits = [folder for folder in level if _split_dirs(folder)]
        if hits:
            return sorted(hits)[0]
        level = sorted(p for folder in level for p in folder.iterdir() if p.is_dir() and p.name != "__MACOSX")
    raise DatasetFormatError(
        f"{WHAT}: no train/ or test/ folder in {root} (or a wrapper folder below it); "
        f"found {sorted(p.name for p in root.iterdir())}"
    )


def _walk(base: Path) -> tuple[list[str], Counter]:
    """Relative posix paths of every image below `base` (one directory walk), plus non-image suffix counts.

    macOS zip debris (`__MACOSX/`, `._*`) is not an image even when it carries a `.jpg` suffix.
    """
    images: list[str] = []
    other: Counter = Counter()
    for dirpath, dirnames, filenames in os.walk(base):
        other["__MACOSX/"] += dirnames.count("__MACOSX")
        # os.walk lists a folder symlink but does not enter it (it could lead anywhere): counted, not silent.
        other[LINKED_FOLDERS] += sum(os.path.islink(os.path.join(dirpath, d)) for d in dirnames)
        dirnames[:] = sorted(d for d in dirnames if d != "__MACOSX")
        rel_dir = Path(dirpath).relative_to(base).as_posix()
        prefix = "" if rel_dir == "." else rel_dir + "/"
        for name in sorted(filenames):
            suffix = os.path.splitext(name)[1].lower()
            if suffix in IMAGE_SUFFIXES and not name.startswith("._"):
                images.append(prefix + name)
            else:
                other[suffix] += 1
    return images, +other
