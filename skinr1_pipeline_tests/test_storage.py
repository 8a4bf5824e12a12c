"""Atomic writes and run folders: a failed write keeps the old file, retention never removes the last good run."""

from __future__ import annotations

import os
import time
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from skinr1_pipeline.defs.io_manager import AtomicFilesystemIOManager
from skinr1_pipeline.storage.atomic import TEMP_SUFFIX, atomic_path, point_symlink, write_parquet, write_text
from skinr1_pipeline.storage.run_folders import (
    LATEST_LINK,
    RunFolderError,
    is_complete,
    latest_complete,
    mark_complete,
    open_run_folder,
    pin,
    pins,
    prune,
    run_folders,
)


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX)]


def test_a_write_that_fails_midway_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = write_text(tmp_path / "table.csv", "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half a new fi")
            raise RuntimeError("killed writer")
    assert target.read_text() == "old\n" and _leftovers(tmp_path) == []


def test_a_writer_that_writes_nothing_is_an_error_not_an_empty_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_path(tmp_path / "x.parquet"):
            pass
    assert not (tmp_path / "x.parquet").exists()


def test_parquet_is_replaced_whole(tmp_path: Path) -> None:
    path = write_parquet(pd.DataFrame({"a": [1, 2]}), tmp_path / "t.parquet")
    write_parquet(pd.DataFrame({"a": [3]}), path)
    assert pd.read_parquet(path)["a"].tolist() == [3] and _leftovers(tmp_path) == []


def test_symlink_repointed_in_place(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    point_symlink(tmp_path / "latest", "a")
    point_symlink(tmp_path / "latest", "b")
    assert os.readlink(tmp_path / "latest") == "b"


def _run(parent: Path, run_id: str, *, complete: bool, age: float) -> Path:
    folder = open_run_folder(parent, run_id)
    if complete:
        mark_complete(folder, run_id)
    stamp = time.time() - age
    os.utime(folder, (stamp, stamp))
    return folder


def test_retention_keeps_the_newest_the_last_complete_and_live_runs(tmp_path: Path) -> None:
    good = _run(tmp_path, "good", complete=True, age=500)
    for i, age in enumerate((400, 300, 200, 100)):
        _run(tmp_path, f"killed{i}", complete=False, age=age)
    live = _run(tmp_path, "live", complete=False, age=900)
    (tmp_path / "teacher_cache").mkdir()  # not a run folder: never listed, never pruned
    removed = prune(tmp_path, keep=2, protect={"live"})
    assert {p.name for p in removed} == {"killed0", "killed1"}
    assert {p.name for p in run_folders(tmp_path)} == {"killed3", "killed2", "good", "live"}
    assert latest_complete(tmp_path) == good and live.is_dir() and (tmp_path / "teacher_cache").is_dir()


def test_a_pinned_folder_survives_pruning_and_keeps_its_place_in_the_order(tmp_path: Path) -> None:
    """A registered model version references the base model folder it was logged against (not a copy)."""
    base = _run(tmp_path, "base-1", complete=True, age=500)
    pin(base, "skinr1-derm-vlm/1", {"model_uri": "models:/m-1"})
    assert pins(base) == ["skinr1-derm-vlm_1"] and abs(base.stat().st_mtime - (time.time() - 500)) < 5
    for i, age in enumerate((400, 300, 200)):
        _run(tmp_path, f"base-{i + 2}", complete=True, age=age)
    removed = prune(tmp_path, keep=1)
    assert {p.name for p in removed} == {"base-2", "base-3"}
    assert [p.name for p in run_folders(tmp_path)] == ["base-4", "base-1"]
    assert latest_complete(tmp_path).name == "base-4"


def test_latest_names_the_newest_sealed_folder(tmp_path: Path) -> None:
    assert latest_complete(tmp_path) is None
    first = _run(tmp_path, "r1", complete=True, age=10)
    second = _run(tmp_path, "r2", complete=True, age=0)
    assert latest_complete(tmp_path) == second and (tmp_path / LATEST_LINK).resolve() == second
    assert is_complete(first)
    with pytest.raises(RunFolderError):
        prune(tmp_path, keep=0)


@pytest.mark.parametrize("run_id", ["", "..", "a/b", ".hidden", LATEST_LINK])
def test_run_ids_that_cannot_name_a_folder_are_refused(tmp_path: Path, run_id: str) -> None:
    with pytest.raises(RunFolderError):
        open_run_folder(tmp_path, run_id)


def test_a_latest_link_leaving_its_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    os.symlink("../elsewhere", tmp_path / "runs" / LATEST_LINK)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / ".complete").write_text("{}")
    with pytest.raises(RunFolderError, match="outside"):
        latest_complete(tmp_path / "runs")


def test_an_unpicklable_value_leaves_the_stored_one(tmp_path: Path) -> None:
    calls = {"n": 0}

    @dg.asset
    def value() -> object:
        calls["n"] += 1
        return {"ok": 1} if calls["n"] == 1 else (lambda: None)

    resources = {"io_manager": AtomicFilesystemIOManager(base_dir=str(tmp_path))}
    assert dg.materialize([value], resources=resources).success
    assert not dg.materialize([value], resources=resources, raise_on_error=False).success
    import pickle

    assert pickle.loads((tmp_path / "value").read_bytes()) == {"ok": 1} and _leftovers(tmp_path) == []
