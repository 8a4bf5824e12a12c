"""Cheap, content-sensitive fingerprints of dataset folders, for change detection.

Hashing every image on each sensor tick would cost minutes on real data; the listing of relative path,
size and modification time catches added, removed, replaced and rewritten files at the cost of one
directory walk. `deep=True` hashes bytes too, for file systems that do not keep modification times.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def folder_fingerprint(root: Path, *, deep: bool = False) -> str | None:
    """Hex digest of everything below `root`, or None if the folder does not exist."""
    root = Path(root)
    if not root.is_dir():
        return None
    digest = hashlib.sha256()
    entries: list[tuple[str, int, int, str]] = []
    stack = [root]
    while stack:
        current = stack.pop()
        with os.scandir(current) as it:
            for entry in it:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
                elif entry.is_file():
                    st = entry.stat()
                    content = _file_digest(entry.path) if deep else ""
                    entries.append((os.path.relpath(entry.path, root), st.st_size, st.st_mtime_ns, content))
    for rel, size, mtime, content in sorted(entries):
        digest.update(f"{rel}\0{size}\0{mtime}\0{content}\n".encode())
    return digest.hexdigest()


def _file_digest(path: str) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def newest_change(root: Path) -> float | None:
    """The latest modification time (seconds) of any file or folder below `root` (a deletion touches its folder), or
    None if `root` does not exist. Lets the change sensor tell, on its first look, whether a folder changed after
    the last ingest of it, rather than re-ingesting every dataset once."""
    root = Path(root)
    if not root.is_dir():
        return None
    newest = root.stat().st_mtime
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for entry in it:
                newest = max(newest, entry.stat(follow_symlinks=False).st_mtime)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(Path(entry.path))
    return newest
