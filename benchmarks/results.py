"""One record format for every benchmark, so `run_all.py` can gather them into one Markdown table.

Each row compares ours with a baseline measured in the same run (never a number remembered from elsewhere).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def row(
    measure: str,
    unit: str,
    ours: float,
    baseline: float | None,
    *,
    baseline_name: str = "",
    target: float | None = None,
    higher_is_better: bool = True,
    notes: str = "",
) -> dict[str, Any]:
    """`baseline=None` records an absolute figure (no ratio), e.g. a throughput with nothing comparable to run."""
    ratio = None if baseline is None else (ours / baseline if higher_is_better else baseline / ours)
    return {
        "measure": measure,
        "unit": unit,
        "ours": ours,
        "baseline": baseline,
        "baseline_name": baseline_name,
        "ratio": ratio,
        "target": target,
        "met": None if target is None or ratio is None else ratio >= target,
        "notes": notes,
    }


def write(path: str | Path | None, benchmark: str, config: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    if path is None:
        return
    Path(path).write_text(json.dumps({"benchmark": benchmark, "config": config, "rows": rows}, indent=2), "utf-8")
