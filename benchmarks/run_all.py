"""Run every benchmark and gather their ratios into one Markdown table (default: benchmarks/RESULTS.md).

Each benchmark runs in its own process (vLLM engines and process pools never share one interpreter) and writes
its figures as JSON; a benchmark that fails is listed as failed with its exit code, never left out.
`skinr1 bench` calls this; `python benchmarks/run_all.py --quick` is the same with smaller workloads.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (script, full-size arguments, quick arguments)
BENCHMARKS: dict[str, tuple[str, list[str], list[str]]] = {
    "ingest": ("bench_ingest.py", ["--repeat", "2"], ["--n", "2000", "--skip-single"]),
    "generation": (
        "bench_generation.py",
        ["--prompts", "256", "--max-tokens", "128"],
        ["--prompts", "64", "--max-tokens", "64"],
    ),
    "evaluation": ("bench_eval.py", ["--items", "256"], ["--items", "64"]),
    "image_memory": ("image_check_memory.py", [], []),
}


def _fmt(value, digits: int = 1) -> str:
    if value is None:
        return "–"
    return f"{value:,.{digits}f}"


def markdown(records: list[dict], failures: dict[str, str], meta: dict) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{meta['command']}` on {meta['date']} ({meta['machine']}; load average at start "
        f"{meta['load']}). Ours and the baseline are measured in the same run; ratio = ours / baseline.",
        "",
        "| benchmark | measure | unit | ours | baseline | ratio | target | met | notes |",
        "|---|---|---|---:|---|---:|---:|---|---|",
    ]
    for record in records:
        for r in record["rows"]:
            baseline = f"{_fmt(r['baseline'])} ({r['baseline_name']})" if r["baseline"] is not None else "–"
            ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "–"
            target = f"≥ {r['target']:g}x" if r["target"] is not None else "–"
            met = "–" if r["met"] is None else ("yes" if r["met"] else "**no**")
            lines.append(
                f"| {record['benchmark']} | {r['measure']} | {r['unit']} | {_fmt(r['ours'])} | {baseline} | "
                f"{ratio} | {target} | {met} | {r['notes']} |"
            )
    for name, why in failures.items():
        lines.append(f"| {name} | **failed**: {why} | | | | | | | |")
    lines += ["", "Configurations:", ""]
    lines += [f"- {rec['benchmark']}: `{json.dumps(rec['config'])}`" for rec in records]
    lines += ["", "Full logs of this run: " + ", ".join(f"`{p}`" for p in meta["logs"]), ""]
    return "\n".join(lines)


def run(names: list[str], *, quick: bool, out: Path, log_dir: Path) -> int:
    log_dir.mkdir(parents=True, exist_ok=True)
    records, failures, logs = [], {}, []
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    for name in names:
        script, full, small = BENCHMARKS[name]
        json_path = log_dir / f"{name}.json"
        log_path = log_dir / f"{name}.log"
        json_path.unlink(missing_ok=True)
        argv = [sys.executable, str(HERE / script), *(small if quick else full), "--json", str(json_path)]
        print(f"== {name}: {' '.join(argv[1:])}", flush=True)
        start = time.perf_counter()
        with log_path.open("w") as log:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for line in proc.stdout:  # echo as it runs, so a long benchmark shows progress
                sys.stdout.write(line)
                log.write(line)
            code = proc.wait()
        print(f"== {name}: exit {code} after {time.perf_counter() - start:.0f}s", flush=True)
        logs.append(str(log_path))
        if code != 0 or not json_path.is_file():
            failures[name] = f"exit code {code}, see {log_path}"
            continue
        records.append(json.loads(json_path.read_text("utf-8")))
    meta = {
        "command": "skinr1 bench" + (" --quick" if quick else ""),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {platform.machine()}",
        "load": load,
        "logs": logs,
    }
    out.write_text(markdown(records, failures, meta), "utf-8")
    print(f"\nwrote {out}")
    print(out.read_text("utf-8"))
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller workloads (a few minutes on 2 CPUs)")
    parser.add_argument("--only", nargs="+", choices=sorted(BENCHMARKS), default=list(BENCHMARKS))
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="Markdown table to write")
    parser.add_argument("--log-dir", type=Path, default=None, help="per-benchmark logs and JSON (default: a temp dir)")
    args = parser.parse_args(argv)
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="skinr1-bench-"))
    return run(args.only, quick=args.quick, out=args.out, log_dir=log_dir)


if __name__ == "__main__":
    sys.exit(main())
