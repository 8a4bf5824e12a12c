"""Benchmark: peak memory of checking one hostile image file, before (a git revision) and after (this checkout).

    python benchmarks/image_check_memory.py [--baseline-rev REV] [--json PATH]

Cases (built in a temp folder):
  (a) a 200 MB file named .jpg: a valid 192x144 JPEG followed by zeros (sparse on disk, so cheap to make)
  (b) a zero-filled 7000x7000 RGB PNG: ~143 KB on disk, 49 MP, just under the 50 MP pixel limit

Measures, each in a fresh Python process that imports `skinr1_pipeline.data.images` as it is at REV (via
`git show`) or in this checkout:
  inspect_image          growth of that process's peak RSS (ru_maxrss) over its RSS just before the call
  inspect_images: caller the same for a batch of one, i.e. what the calling process (a Dagster step) pays
  inspect_images: worker peak RSS of its worker processes (ru_maxrss of children) over the caller's RSS before
                         the call: what a pool worker pays ("-" when the check ran in the caller)

The baseline defaults to b37f462, the last commit before checks were bounded (file size before reading) and
moved out of the calling process; the after column is whatever this checkout holds.
"""

from __future__ import annotations

import argparse
import importlib.util
import io
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import results as results_file  # noqa: E402

BASELINE_REV = "b37f462"
MODULE = "skinr1_pipeline/data/images.py"
MEASURES = ("inspect_image", "inspect_images: caller", "inspect_images: worker")


def _rss_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() // 1024


def _measure(module_path: str, func: str, path: str) -> dict:
    """Run in a fresh process: one call of `func` on `path`, with the memory figures described above."""
    if module_path == "-":
        from skinr1_pipeline.data import images
    else:
        spec = importlib.util.spec_from_file_location("baseline_images", module_path)
        images = importlib.util.module_from_spec(spec)
        sys.modules["baseline_images"] = images  # so a forked pool worker can unpickle its functions
        spec.loader.exec_module(images)
    import pandas  # noqa: F401 -- imported by inspect_images; loaded first so it is not counted as the check's cost

    before = _rss_kb()
    if func == "inspect_image":
        check = images.inspect_image(path)
        verdict = check.reason or "ok"
    else:
        frame = images.inspect_images([path], workers=1)
        verdict = frame.loc[0, "reason"] or "ok"
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {
        "self_mb": max(0, own - before) / 1024,
        "worker_mb": max(0, children - before) / 1024 if children else None,
        "verdict": verdict,
    }


def _make_cases(folder: Path) -> dict[str, Path]:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (192, 144), (150, 90, 70)).save(buf, format="JPEG")
    padded = folder / "padded_200mb.jpg"
    with padded.open("wb") as fh:
        fh.write(buf.getvalue())
        fh.truncate(200 * 1024 * 1024)
    bomb = folder / "zeros_7000x7000.png"
    Image.new("RGB", (7000, 7000)).save(bomb, format="PNG")
    return {"(a) 200 MB .jpg": padded, f"(b) 49 MP zero PNG ({bomb.stat().st_size / 1000:.0f} KB)": bomb}


def _baseline_module(rev: str, folder: Path) -> Path | None:
    try:
        text = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{rev}:{MODULE}"], check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        print(f"baseline {rev} unavailable ({exc}); only the after column is measured", file=sys.stderr)
        return None
    path = folder / f"images_{rev}.py"
    path.write_text(text, "utf-8")
    return path


def _child(module: str, func: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--measure", module, func, str(path)],
        check=True,
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mb(value: float | None) -> str:
    return "-" if value is None else f"+{value:,.0f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline-rev", default=BASELINE_REV, help="git revision measured as 'before'")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here (for run_all.py)")
    parser.add_argument("--measure", nargs=3, metavar=("MODULE", "FUNC", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--make-cases", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(_measure(*args.measure)))
        return 0
    if args.make_cases:
        print(json.dumps({case: str(path) for case, path in _make_cases(args.make_cases).items()}))
        return 0

    rows, table = [], []
    with tempfile.TemporaryDirectory(prefix="image-memory-") as tmp:
        folder = Path(tmp)
        baseline = _baseline_module(args.baseline_rev, folder)
        # Built in a child: Linux carries a parent's peak RSS into the ru_maxrss of a process it starts, so this
        # process must never hold the 147 MB the 49 MP image takes to encode.
        made = subprocess.run(
            [sys.executable, __file__, "--make-cases", str(folder)],
            check=True,
            capture_output=True,
            text=True,
            cwd=REPO,
        ).stdout
        for case, path in json.loads(made.strip().splitlines()[-1]).items():
            for func in ("inspect_image", "inspect_images"):
                before = _child(str(baseline), func, path) if baseline else None
                after = _child("-", func, path)
                pairs = (
                    [("inspect_image", "self_mb")]
                    if func == "inspect_image"
                    else [("inspect_images: caller", "self_mb"), ("inspect_images: worker", "worker_mb")]
                )
                for measure, key in pairs:
                    old = before[key] if before else None
                    table.append(
                        (
                            case,
                            measure,
                            _mb(old),
                            _mb(after[key]),
                            f"{before['verdict'] if before else '-'} -> {after['verdict']}",
                        )
                    )
                    if after[key] is not None and old is not None:
                        ours = max(after[key], 1.0)  # 1 MB: below the resolution of ru_maxrss deltas
                        rows.append(
                            results_file.row(
                                f"{case}: {measure} peak RSS",
                                "MB",
                                ours,
                                old,
                                baseline_name=args.baseline_rev,
                                higher_is_better=False,
                                notes=f"verdict {before['verdict']} -> {after['verdict']}",
                            )
                        )

    header = ("case", "measure", f"before ({args.baseline_rev})", "after", "verdict")
    widths = [max(len(str(r[i])) for r in (header, *table)) for i in range(len(header))]
    for line in (header, tuple("-" * w for w in widths), *table):
        print("  ".join(str(cell).ljust(w) for cell, w in zip(line, widths)).rstrip())
    results_file.write(args.json, "image_memory", {"baseline_rev": args.baseline_rev}, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
