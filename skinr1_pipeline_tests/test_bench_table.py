"""The benchmark table: every benchmark's JSON record becomes rows, failures stay visible, and a real (small)
ingest benchmark writes the record `run_all.py` reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import results  # noqa: E402
import run_all  # noqa: E402

META = {"command": "skinr1 bench", "date": "2026-12-01", "machine": "2 CPUs", "load": "1.0", "logs": ["x.log"]}


def test_table_lists_ratios_targets_and_failures() -> None:
    records = [
        {
            "benchmark": "evaluation",
            "config": {"items": 8},
            "rows": [
                results.row("suite evaluation", "images/s", 50.0, 10.0, baseline_name="HF runner", target=5.0),
                results.row("latency", "s", 2.0, 3.0, baseline_name="old", target=2.0, higher_is_better=False),
                results.row("template", "trajectories/s", 900.0, None),
            ],
        }
    ]
    table = run_all.markdown(records, {"ingest": "exit code 1, see ingest.log"}, META)
    lines = table.splitlines()
    assert "| evaluation | suite evaluation | images/s | 50.0 | 10.0 (HF runner) | 5.00x | ≥ 5x | yes |" in table
    assert any(line.startswith("| evaluation | latency |") and "1.50x" in line and "**no**" in line for line in lines)
    assert any(line.startswith("| evaluation | template |") and "| – | – |" in line for line in lines)
    assert "| ingest | **failed**: exit code 1, see ingest.log |" in table
    assert '`{"items": 8}`' in table


@pytest.mark.slow  # runs a benchmark in a subprocess
def test_ingest_benchmark_writes_its_record(tmp_path: Path) -> None:
    out = tmp_path / "ingest.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH / "bench_ingest.py"),
            "--n",
            "60",
            "--skip-single",
            "--workers",
            "1",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    record = json.loads(out.read_text())
    (row,) = record["rows"]
    assert record["benchmark"] == "ingest" and record["config"]["images"] == 60
    assert row["ours"] > 0 and row["baseline"] > 0 and row["ratio"] == row["ours"] / row["baseline"]
    assert row["notes"] == "all 5 broken files caught: True"
