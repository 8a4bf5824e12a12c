"""Atomic file writes: a same-folder temp file, fsync, then `os.replace`.

Why: a process killed mid-write (SIGKILL, OOM, a pre-empted node) must leave either the old file or the new one,
never a torn one; readers in another run must never see half a file. `os.replace` is atomic within one filesystem,
which is why the temp file lives beside its target. The folder is fsynced too, so the rename survives a crash of
the machine, not only of the process.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_SUFFIX = ".tmp"


def temp_sibling(path: Path) -> Path:
    """A unique hidden name beside `path` (unique per writer, so two concurrent writers never share one)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}{TEMP_SUFFIX}")


def fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write `path` through (any writer that takes a path: pandas, pyarrow, PIL, pickle).

    On a clean exit the temp file is fsynced and renamed over `path`; on an exception it is removed and `path` is
    left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_sibling(target)
    try:
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"nothing was written to {tmp} (for {target})")
        _fsync_file(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(target.parent)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any, **dumps_kwargs: Any) -> Path:
    return write_text(path, json.dumps(obj, **{"indent": 2, **dumps_kwargs}) + "\n")


def write_yaml(path: str | Path, obj: Any) -> Path:
    import yaml

    return write_text(path, yaml.safe_dump(obj, sort_keys=False))


def write_parquet(frame: Any, path: str | Path, **kwargs: Any) -> Path:
    """`frame.to_parquet` (pandas or a Hugging Face dataset) through a temp file; pandas frames drop their index
    unless `index=` is given."""
    with atomic_path(path) as tmp:
        if hasattr(frame, "to_pandas"):  # datasets.Dataset: its to_parquet takes no index argument
            frame.to_parquet(str(tmp), **kwargs)
        else:
            frame.to_parquet(tmp, **{"index": False, **kwargs})
    return Path(path)


def write_csv(frame: Any, path: str | Path, **kwargs: Any) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, **kwargs)
    return Path(path)


def point_symlink(link: str | Path, target: str) -> None:
    """Make `link` point at `target` (relative names stay relative) by renaming a new link over the old one, so a
    reader following `link` sees the old target or the new one, never a missing link."""
    link = Path(link)
    tmp = temp_sibling(link)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, link)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(link.parent)


def remove_stale_temps(folder: str | Path, *, older_than_s: float, now: float) -> list[Path]:
    """Delete our temp files in `folder` (not recursive) last written more than `older_than_s` ago: what a killed
    writer leaves behind. Young ones may belong to a writer that is still running."""
    removed = []
    root = Path(folder)
    if not root.is_dir():
        return removed
    for path in root.iterdir():
        if path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX) and path.is_file():
            try:
                if now - path.stat().st_mtime > older_than_s:
                    path.unlink()
                    removed.append(path)
            except FileNotFoundError:
                continue
    return removed
