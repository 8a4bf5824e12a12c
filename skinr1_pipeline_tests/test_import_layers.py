"""Imports only run downward: each module of the package may import its own layer's modules and the layers below.

The layer order, lowest first (the one place it is written; the README's "Layout" section explains it):
  foundation  storage (atomic files, run folders), messages, progress, runtime (process launch)
  knowledge   taxonomy, DDx graph, label maps, knowledge base, lesion features
  data        loaders, images, ingest, splits, the embedded demo's sources
  modeling    prompt format (the answer contract), model factory, generation, vLLM engine
  tasks       item rules shared by synthesis, training and evaluation (MCQ, set-first, option scans)
  synthesis   SkinRationale trajectories and their verification
  evaluation  suites, runners, metrics, paired tests, report
  training    SFT, GRPO, rewards, gates, demo-only model preparation
  tracking    MLflow runs, lineage, registry, the served model
  config      settings and scale presets
  tools       diagnose, doctor
  orchestration  the Dagster definitions (defs, definitions), the in-process runner
  cli         the command line

Every import counts, also those inside functions (they run sooner or later, and a cycle between layers is a design
fault whether or not Python happens to tolerate it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "skinr1_pipeline"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("storage", "messages", "progress", "runtime")),
    ("knowledge", ("knowledge",)),
    ("data", ("data",)),
    ("modeling", ("modeling",)),
    ("tasks", ("tasks",)),
    ("synthesis", ("synthesis",)),
    ("evaluation", ("evaluation",)),
    ("training", ("training",)),
    ("tracking", ("tracking",)),
    ("config", ("settings", "presets")),
    ("tools", ("diagnose", "doctor")),
    ("orchestration", ("defs", "definitions", "runner")),
    ("cli", ("cli",)),
)


def layer_of(module: str, layers=LAYERS) -> int:
    """The index of the layer holding `module` (its first name below the package)."""
    unit = module.split(".")[1] if module.count(".") else ""
    for index, (_, units) in enumerate(layers):
        if unit in units:
            return index
    raise KeyError(f"{module}: its unit {unit!r} is in no layer; add it to LAYERS in {Path(__file__).name}")


def package_imports(root: Path, package: str = PACKAGE) -> list[tuple[str, str, int]]:
    """(importing module, imported module, line) for every import of `package` inside it, relative ones resolved."""
    found = []
    for path in sorted(root.rglob("*.py")):
        parts = (package, *path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        module = ".".join(parts[:-1] if is_package else parts)
        for node in ast.walk(ast.parse(path.read_text("utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - node.level + 1]
                    targets = [".".join([*base, node.module] if node.module else base)]
                else:
                    targets = [node.module or ""]
            else:
                continue
            found += [(module, t, node.lineno) for t in targets if t == package or t.startswith(package + ".")]
    return found


def back_edges(imports, layers=LAYERS) -> list[str]:
    """Each import that reaches a higher layer, as 'importer:line -> imported (layer -> layer)'."""
    names = [name for name, _ in layers]
    bad = []
    for importer, imported, line in imports:
        if imported == PACKAGE:
            continue
        low, high = layer_of(importer, layers), layer_of(imported, layers)
        if high > low:
            bad.append(f"{importer}:{line} -> {imported} ({names[low]} -> {names[high]})")
    return bad


def test_no_import_runs_up_the_layers() -> None:
    imports = package_imports(ROOT)
    assert len(imports) > 300, "the walk found too few imports to be looking at the package"
    assert back_edges(imports) == []


def test_every_unit_of_the_package_has_a_layer() -> None:
    units = {
        p.stem if p.is_file() else p.name
        for p in ROOT.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").is_file())
    }
    placed = {unit for _, group in LAYERS for unit in group}
    assert units == placed


def test_the_check_finds_a_back_edge_and_resolves_relative_imports(tmp_path: Path) -> None:
    pkg = tmp_path / PACKAGE
    (pkg / "storage").mkdir(parents=True)
    (pkg / "training").mkdir()
    for folder in (pkg, pkg / "storage", pkg / "training"):
        (folder / "__init__.py").write_text("")
    (pkg / "training" / "sft.py").write_text("from ..storage import atomic\n")
    (pkg / "storage" / "atomic.py").write_text("def write():\n    from skinr1_pipeline.training import sft\n")
    imports = package_imports(pkg)
    assert ("skinr1_pipeline.training.sft", "skinr1_pipeline.storage", 1) in imports
    assert back_edges(imports) == [
        "skinr1_pipeline.storage.atomic:2 -> skinr1_pipeline.training (foundation -> training)"
    ]
    with pytest.raises(KeyError, match="'nowhere' is in no layer"):
        layer_of("skinr1_pipeline.nowhere.x")
