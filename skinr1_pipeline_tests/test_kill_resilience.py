"""A materialization SIGKILLed in the middle of writing leaves the last good one readable, and a re-run succeeds."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from skinr1_pipeline.storage.atomic import TEMP_SUFFIX
from skinr1_pipeline.storage.run_folders import is_complete, latest_complete, run_folders
from skinr1_pipeline_tests.kill_target import materialize

pytestmark = pytest.mark.slow


def _temp_files(folder: Path, name: str) -> list[Path]:
    """Temp files of an atomic write of `name` under `folder` (a writer is in the middle of it)."""
    return list(folder.rglob(f".{name}.*{TEMP_SUFFIX}")) if folder.exists() else []


def _kill_when(proc: subprocess.Popen, seen, timeout: float = 240.0) -> None:
    """SIGKILL `proc` the moment `seen()` is true (a write is under way); fail if it finishes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if seen():
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            return
        if proc.poll() is not None:
            pytest.fail(f"the run finished (rc {proc.returncode}) before a write could be interrupted")
        time.sleep(0.002)
    proc.kill()
    pytest.fail("no write started in time")


def _spawn(home: Path, rows: int, value_items: int, tag: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "skinr1_pipeline_tests.kill_target", str(home), str(rows), str(value_items), tag],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _good_state(home: Path) -> tuple[Path, dict]:
    folder = latest_complete(home / "outputs" / "big_export")
    value = pickle.loads((home / "dagster_storage" / "big_export").read_bytes())
    return folder, value


@pytest.mark.parametrize("stage", ["export", "io_manager"])
def test_a_kill_mid_write_leaves_the_last_good_materialization(tmp_path: Path, stage: str) -> None:
    assert materialize(str(tmp_path), 2_000, 10, "first").success
    good_folder, good_value = _good_state(tmp_path)
    good_export = pd.read_parquet(good_folder / "export.parquet")

    if stage == "export":  # killed while the Parquet file is being written
        proc = _spawn(tmp_path, 6_000_000, 10, "killed")
        _kill_when(proc, lambda: _temp_files(tmp_path / "outputs" / "big_export", "export.parquet"))
    else:  # the export is done; killed while the IO manager pickles a large value
        proc = _spawn(tmp_path, 2_000, 3_000_000, "killed")
        _kill_when(proc, lambda: _temp_files(tmp_path / "dagster_storage", "big_export"))

    folder, value = _good_state(tmp_path)
    assert value == good_value  # the stored value Dagster hands downstream: still the first run's
    pd.testing.assert_frame_equal(pd.read_parquet(value["path"]), good_export)
    killed = [f for f in run_folders(tmp_path / "outputs" / "big_export") if f != good_folder]
    assert len(killed) == 1
    if stage == "export":  # the killed folder never counts as complete; `latest` still names the first run's
        assert not is_complete(killed[0]) and folder == good_folder
    else:  # its export was sealed before the kill, so it is complete and newest, and whole
        assert folder == killed[0] and len(pd.read_parquet(folder / "export.parquet")) == 2_000

    rerun = materialize(str(tmp_path), 2_000, 10, "second")
    assert rerun.success
    folder, value = _good_state(tmp_path)
    assert value["tag"] == "second" and folder != good_folder and Path(value["path"]).parent == folder
    assert pd.read_parquet(value["path"])["tag"].eq("second").all()
