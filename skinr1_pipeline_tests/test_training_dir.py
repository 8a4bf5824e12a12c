"""Re-materializing a training asset starts a new run; the earlier one is kept once, and resume keeps it in place."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from skinr1_pipeline.defs.resources import PipelineHome
from skinr1_pipeline.defs.training_assets import training_dir


def test_new_materialization_moves_the_earlier_run_aside(tmp_path: Path) -> None:
    home = PipelineHome(home=str(tmp_path))
    context = dg.build_asset_context()
    first = training_dir(context, home, "sft", resume=False)
    assert first == tmp_path / "models" / "sft" and first.is_dir() and not any(first.iterdir())
    (first / "checkpoint-5").mkdir()
    second = training_dir(context, home, "sft", resume=False)
    assert second == first and not any(second.iterdir())
    assert (tmp_path / "models" / "sft.previous" / "checkpoint-5").is_dir()

    (second / "checkpoint-7").mkdir()
    kept = training_dir(context, home, "sft", resume=True)  # after a kill: continue where it stopped
    assert (kept / "checkpoint-7").is_dir()
    assert (tmp_path / "models" / "sft.previous" / "checkpoint-5").is_dir()

    training_dir(context, home, "sft", resume=False)  # only the latest earlier run is kept
    assert [p.name for p in (tmp_path / "models" / "sft.previous").iterdir()] == ["checkpoint-7"]
