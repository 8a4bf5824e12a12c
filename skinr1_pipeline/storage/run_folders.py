"""Run-scoped output folders: each materialization writes `<parent>/<run id>/`, never a fixed path.

Why: a killed or concurrent run then cannot touch the folder the last good materialization wrote, and a downstream
asset reads the exact folder its upstream value names. A folder counts as complete once its marker exists (written
last); `latest` is a symlink to the newest complete folder, for people and CLIs. Old folders are pruned by a
retention rule that never removes the newest complete folder, a folder a live run is writing, nor a pinned folder
(one something outside the home refers to, e.g. the base model a registered model version was logged against).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Collection
from pathlib import Path

from skinr1_pipeline.storage.atomic import point_symlink, remove_stale_temps, write_json

RUN_STAMP = ".run"  # written when a folder is opened: only stamped folders are ours to list and prune
COMPLETE_MARKER = ".complete"
PINS = ".pins"  # one file per reference that needs the folder kept
LATEST_LINK = "latest"
DEFAULT_KEEP = 3
STALE_TEMP_SECONDS = 24 * 3600


class RunFolderError(ValueError):
    """A run id that cannot name a folder, or a `latest` link that points outside its parent."""


def _checked_name(run_id: str) -> str:
    if not run_id or run_id in (".", "..", LATEST_LINK) or "/" in run_id or "\\" in run_id or run_id.startswith("."):
        raise RunFolderError(f"run id {run_id!r} cannot name a run folder")
    return run_id


def open_run_folder(parent: str | Path, run_id: str) -> Path:
    """`<parent>/<run id>/`, created (a retried step of the same run writes the same folder again)."""
    folder = Path(parent) / _checked_name(run_id)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / RUN_STAMP).is_file():
        write_json(folder / RUN_STAMP, {"run_id": run_id, "started_at": time.time()})
    return folder


def is_run_folder(folder: str | Path) -> bool:
    """Whether `folder` is one of ours (stamped by `open_run_folder`), as opposed to, say, a user's model folder."""
    return (Path(folder) / RUN_STAMP).is_file()


def is_complete(folder: str | Path) -> bool:
    return (Path(folder) / COMPLETE_MARKER).is_file()


def mark_complete(folder: str | Path, run_id: str) -> None:
    """Seal `folder` (marker written last, atomically) and point `latest` at it."""
    folder = Path(folder)
    write_json(folder / COMPLETE_MARKER, {"run_id": run_id, "finished_at": time.time()})
    point_symlink(folder.parent / LATEST_LINK, folder.name)


def pin(folder: str | Path, holder: str, detail: dict | None = None) -> Path:
    """Keep `folder` out of pruning for as long as `holder` (e.g. "skinr1-derm-vlm/3") needs it; the pin is a file
    under `<folder>/.pins/`, so a person can see and remove it. The folder keeps its modification time: the order
    of run folders (newest written first) must not change because an old one was pinned."""
    folder = Path(folder)
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in holder).strip(".") or "pin"
    written = folder.stat()
    path = write_json(folder / PINS / name, {"holder": holder, "pinned_at": time.time(), **(detail or {})})
    os.utime(folder, ns=(written.st_atime_ns, written.st_mtime_ns))
    return path


def pins(folder: str | Path) -> list[str]:
    """Who holds `folder` (the holders of its pins)."""
    pin_dir = Path(folder) / PINS
    return sorted(p.name for p in pin_dir.iterdir() if p.is_file()) if pin_dir.is_dir() else []


def run_folders(parent: str | Path) -> list[Path]:
    """Run folders under `parent`, most recently written first: stamped folders only, so `latest`, temp entries and
    anything else a person keeps there (an older layout's files) are never listed, let alone pruned."""
    root = Path(parent)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and not p.is_symlink() and (p / RUN_STAMP).is_file()]
    return sorted(found, key=lambda p: (p.stat().st_mtime, p.name), reverse=True)


def latest_complete(parent: str | Path) -> Path | None:
    """The folder `latest` names when it is complete, else the most recently written complete folder."""
    root = Path(parent)
    link = root / LATEST_LINK
    if link.is_symlink():
        target = (root / link.readlink()).resolve()
        if target.parent != root.resolve():
            raise RunFolderError(f"{link} points outside {root}: {target}")
        if is_complete(target):
            return root / target.name
    return next((p for p in run_folders(root) if is_complete(p)), None)


def newest_with(parent: str | Path, has_state: Callable[[Path], bool]) -> Path | None:
    """The most recently written run folder for which `has_state` holds (e.g. one with a training checkpoint)."""
    return next((p for p in run_folders(parent) if has_state(p)), None)


def prune(parent: str | Path, *, keep: int = DEFAULT_KEEP, protect: Collection[str] = ()) -> list[Path]:
    """Delete run folders beyond the `keep` most recently written ones, except the newest complete folder and those
    named in `protect` (the folders of runs still in progress) and pinned folders (`pin`). Temp files a killed writer
    left directly under `parent` are removed once a day old. Returns what was removed."""
    if keep < 1:
        raise RunFolderError(f"keep must be at least 1, got {keep}")
    root = Path(parent)
    folders = run_folders(root)
    spared = {p.name for p in folders[:keep]} | set(protect)
    newest = latest_complete(root)
    if newest is not None:
        spared.add(newest.name)
    removed = []
    for folder in folders:
        if folder.name not in spared and not pins(folder):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    remove_stale_temps(root, older_than_s=STALE_TEMP_SECONDS, now=time.time())
    return removed


def describe(folder: str | Path) -> dict:
    """The marker's content (run id, finish time) of a complete folder; {} otherwise."""
    marker = Path(folder) / COMPLETE_MARKER
    return json.loads(marker.read_text("utf-8")) if marker.is_file() else {}
