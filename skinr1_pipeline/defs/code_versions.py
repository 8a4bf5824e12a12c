"""Code versions derived from source, so that Dagster marks an asset stale exactly when the code it runs changes.

A hand-written `code_version="1"` goes stale itself: behaviour changed and nobody bumped it, and Dagster kept older
materializations fresh. Here an asset's version is a short digest of the bytes of its defining module, of the
domain modules it declares, of every module of this package those import (followed through the import graph), and
of the packaged data files it reads. Modules are read and hashed once per process (at definition load); the
import graph comes from `ast`, so nothing is imported to compute it.
"""

from __future__ import annotations

import ast
import hashlib
from collections.abc import Iterable
from functools import cache
from pathlib import Path

PACKAGE = "skinr1_pipeline"
ROOT = Path(__file__).resolve().parent.parent  # the skinr1_pipeline package folder
DIGEST_CHARS = 12
_COVERED: dict[str, frozenset[str]] = {}  # version -> modules behind it (what the staleness tests read)


def code_version_of(defining_module: str, *modules: str, data: tuple[str, ...] = ()) -> str:
    """The code version of an asset defined in `defining_module` that calls `modules` (dotted names, relative to
    this package or absolute; `pkg.*` = every module of a package, e.g. loaders looked up by name) and reads the
    packaged files `data` (globs relative to the package folder). The defining module counts by its own source
    only: what it imports for other assets does not make this one stale."""
    named = [m if m == PACKAGE or m.startswith(PACKAGE + ".") else f"{PACKAGE}.{m}" for m in modules]
    closure = import_closure([name for pattern in named for name in _expand(pattern)])
    names = sorted({defining_module, *closure})
    files = sorted({p for pattern in data for p in ROOT.glob(pattern) if p.is_file()})
    if data and not files:
        raise FileNotFoundError(f"code_version_of: no packaged file matches {data} under {ROOT}")
    digest = hashlib.sha256()
    for name in names:
        digest.update(f"{name}\0{_file_digest(_module_path(name))}\n".encode())
    for path in files:
        digest.update(f"{path.relative_to(ROOT)}\0{_file_digest(path)}\n".encode())
    version = digest.hexdigest()[:DIGEST_CHARS]
    _COVERED[version] = frozenset(names)
    return version


def covered_modules(version: str) -> frozenset[str]:
    """The modules whose source went into `version` (for tests that keep the declarations honest)."""
    return _COVERED[version]


def import_closure(modules: Iterable[str]) -> frozenset[str]:
    """`modules` and every module of this package they import, directly or not (function-level imports too)."""
    seen: set[str] = set()
    stack = list(modules)
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        stack.extend(_imports(name))
    return frozenset(seen)


def _expand(pattern: str) -> tuple[str, ...]:
    if not pattern.endswith(".*"):
        _module_path(pattern)  # a misspelt name fails at definition load, not silently
        return (pattern,)
    package = pattern[:-2]
    folder = _module_path(package).parent
    return (package, *sorted(f"{package}.{p.stem}" for p in folder.glob("*.py") if p.stem != "__init__"))


@cache
def _module_path(name: str) -> Path:
    if name != PACKAGE and not name.startswith(PACKAGE + "."):
        raise ValueError(f"{name!r} is not a module of {PACKAGE}")
    relative = Path(*name.split(".")[1:])
    for path in (ROOT / relative.with_suffix(".py"), ROOT / relative / "__init__.py"):
        if path.is_file():
            return path
    raise ModuleNotFoundError(f"code_version_of: no module {name} under {ROOT}")


@cache
def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@cache
def _imports(name: str) -> tuple[str, ...]:
    """The modules of this package that `name` imports, absolute or relative, at any depth of its source."""
    path = _module_path(name)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return tuple(sorted(m for m in found if _is_module(m)))


def _is_module(name: str) -> bool:
    try:
        _module_path(name)
    except (ValueError, ModuleNotFoundError):
        return False
    return True
