"""The demo over several training seeds: `skinr1 demo` once per seed (same data and items, `SKINR1_TRAIN_SEED`
varied), then every headline figure as mean ± spread, and each claim with the number of seeds on which its paired
test passes. Writes a Markdown report naming the commit, the CPU capability and each seed's wall time per stage.

    python benchmarks/demo_seeds.py --seeds 0 1 2 --root /tmp/skinr1_seeds --out benchmarks/DEMO_SEEDS.md

Why a benchmark and not a test: it trains the demo model once per seed (minutes each); it measures, it asserts
nothing. A seed whose home already holds a finished run is read again without retraining (`--reuse`).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
HEADLINE = ["in_domain", "hierarchical", "ddx", "ood", "malignancy", "open_ended"]
PAPER = ["in_domain_paper", "hierarchical_paper", "ddx_paper", "ood_paper"]


def run_seed(seed: int, home: Path, reuse: bool) -> dict:
    """`skinr1 demo` with this training seed in its own home; returns its timing record."""
    timing = home / "demo_timing.json"
    if reuse and timing.is_file() and json.loads(timing.read_text()).get("success"):
        print(f"== seed {seed}: reusing {home}", flush=True)
        return json.loads(timing.read_text())
    dagster_home = home / "dagster_home"
    dagster_home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "SKINR1_HOME": str(home), "SKINR1_TRAIN_SEED": str(seed), "DAGSTER_HOME": str(dagster_home)}
    env.pop("SKINR1_CONFIG", None)
    log = home / "demo.log"
    print(f"== seed {seed}: skinr1 demo in {home} (log: {log})", flush=True)
    start = time.perf_counter()
    with log.open("w") as out:
        code = subprocess.call(
            [sys.executable, "-m", "skinr1_pipeline.cli", "demo", "--log-level", "WARNING"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wall = time.perf_counter() - start
    record = json.loads(timing.read_text()) if timing.is_file() else {"success": False, "steps": {}}
    record["wall_seconds"] = round(wall, 1)
    record["exit_code"] = code
    print(f"   exit {code} after {wall:.0f} s", flush=True)
    return record


def markdown(seeds: list[int], timings: dict[int, dict], tables_dirs: dict[int, Path], meta: dict) -> str:
    from skinr1_pipeline.evaluation.seed_summary import (
        accuracy_over_seeds,
        claims_over_seeds,
        read_seed_tables,
        stage_seconds,
    )

    tables = read_seed_tables(tables_dirs)
    ablation = tables["ablation_table"]
    lines = [
        "# The demo over training seeds",
        "",
        f"Written by `{meta['command']}` on {meta['date']}: commit {meta['commit']}, {meta['machine']}, torch CPU "
        f"capability {meta['cpu_capability']}, {meta['threads']} threads. Seeds {', '.join(map(str, seeds))} "
        "(`SKINR1_TRAIN_SEED`); the data and every evaluation item are the same for all of them. Cells are mean ± "
        "standard deviation over seeds (range).",
        "",
        "## Wall time",
        "",
        "| seed | materialization (s) | with start-up (s) | exit |",
        "|---|---:|---:|---:|",
    ]
    for seed in seeds:
        t = timings[seed]
        wall = f"{t['wall_seconds']:.0f}" if t.get("wall_seconds") is not None else "– (reused)"
        lines.append(f"| {seed} | {t.get('seconds', float('nan')):.0f} | {wall} | {t.get('exit_code', '–')} |")
    stages = stage_seconds({s: timings[s].get("steps", {}) for s in seeds})
    total = sum(timings[s].get("seconds", 0.0) for s in seeds) / len(seeds)
    lines += ["", "Seconds per asset step (mean over seeds, share of the mean run):", ""]
    lines += ["| step | mean s | share |", "|---|---:|---:|"]
    for name, row in stages.iterrows():
        lines.append(f"| {name} | {row['mean']:.1f} | {row['mean'] / total:.0%} |" if total else f"| {name} | | |")
    suites = [s for s in HEADLINE if f"{s}_acc" in ablation]
    lines += ["", "## Headline (set-first) suites: accuracy", ""]
    lines += _table(accuracy_over_seeds(ablation, suites))
    paper = [s for s in PAPER if f"{s}_acc" in ablation]
    if paper:
        lines += ["", "## Paper-construction suites: accuracy (read beside their blind ceiling)", ""]
        lines += _table(accuracy_over_seeds(ablation, paper))
    claims = claims_over_seeds(tables["versus_blind"], tables["image_use"])
    lines += [
        "",
        "## Claims per seed",
        "",
        "Against the suite's best image-blind guesser (paired on the same items) and against the variant's own answers "
        "with another item's image (exact McNemar); a seed counts when the difference is positive at p < 0.05.",
        "",
    ]
    lines += _table(claims.set_index(["variant", "suite"]))
    lines += ["", f"Run folders: `{meta['root']}`.", ""]
    return "\n".join(lines)


def _table(frame) -> list[str]:
    index = list(frame.index.names)
    header = [*(str(n) for n in index), *map(str, frame.columns)]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in frame.iterrows():
        keys = key if isinstance(key, tuple) else (key,)
        rows.append("| " + " | ".join([*map(str, keys), *map(str, row.tolist())]) + " |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--root", type=Path, default=ROOT / ".skinr1_seeds", help="one home per seed under here")
    parser.add_argument("--out", type=Path, default=HERE / "DEMO_SEEDS.md")
    parser.add_argument("--reuse", action="store_true", help="read a seed's finished run instead of training again")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    from skinr1_pipeline.storage.run_folders import latest_complete

    timings, tables_dirs = {}, {}
    for seed in args.seeds:
        home = (args.root / f"seed_{seed}").resolve()
        timings[seed] = run_seed(seed, home, args.reuse)
        folder = latest_complete(home / "outputs" / "ablation_table")
        if folder is None:
            print(f"seed {seed}: no finished ablation table under {home}; see {home / 'demo.log'}", file=sys.stderr)
            return 1
        tables_dirs[seed] = folder
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    meta = {
        "command": "python benchmarks/demo_seeds.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": (commit.stdout.strip() or "unknown") + (" (with uncommitted changes)" if dirty else ""),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "root": str(args.root.resolve()),
    }
    report = markdown(args.seeds, timings, tables_dirs, meta)
    args.out.write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
