"""Benchmark: HAM10000-shaped ingest (index + hash + validate) against a naive one-file-at-a-time loop.

    python benchmarks/bench_ingest.py [--n 10015] [--out DIR] [--keep] [--repeat R] [--workers W]

Builds a folder in HAM10000's layout (HAM10000_metadata.csv with the real header, images split over
HAM10000_images_part_1/ and _part_2/) of N synthetic 600x450 JPEGs (quality 90, smooth blobs, a lesion-like
ellipse and sensor-like noise, so files land at ~30-60 KB like real ones), replaces 5 of them with
deliberately broken files, then times in one run:

  ours            read the CSV, index_image_files, inspect_images (all CPUs, full checks)
  ours/structure  the same with decode=False (headers, structure, CRCs; no entropy decode)
  ours/1 worker   full checks in one process (per-core speed)
  naive           per row: find the file, Image.open(p).convert("RGB"), sha256 of the bytes

The page cache is warmed first so every method reads from memory. The machine may be shared: with
--repeat R each method runs R times and the best run is reported (all runs are printed).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import resource
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageChops

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import results as results_file

from skinr1_pipeline.data.images import index_image_files, inspect_images

HEADER = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
PARTS = ("HAM10000_images_part_1", "HAM10000_images_part_2")
PART_1_SIZE = 5000  # the real archive splits 5,000 / 5,015
WIDTH, HEIGHT = 600, 450
FIRST_ID = 24306  # ISIC_0024306 is the first HAM10000 image id
DX = {"nv": 6705, "mel": 1113, "bkl": 1099, "bcc": 514, "akiec": 327, "vasc": 142, "df": 115}
DX_TYPE = ["histo", "follow_up", "consensus", "confocal"]
SITES = ["back", "lower extremity", "trunk", "upper extremity", "abdomen", "face", "chest", "foot", "scalp"]
SOURCES = ["vidir_modern", "rosendahl", "vidir_molemax", "vienna_dermatology"]


# --------------------------------------------------------------------------------------------------
# synthetic dataset
# --------------------------------------------------------------------------------------------------


def _image_id(i: int) -> str:
    return f"ISIC_{FIRST_ID + i:07d}"


def _image_path(root: Path, i: int) -> Path:
    return root / PARTS[0 if i < PART_1_SIZE else 1] / f"{_image_id(i)}.jpg"


def _metadata(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    weights = np.array(list(DX.values()), dtype=float)
    dx = rng.choice(list(DX), size=n, p=weights / weights.sum())
    return pd.DataFrame(
        {
            "lesion_id": [f"HAM_{int(x):07d}" for x in rng.integers(0, 7470, n)],
            "image_id": [_image_id(i) for i in range(n)],
            "dx": dx,
            "dx_type": rng.choice(DX_TYPE, size=n, p=[0.53, 0.37, 0.09, 0.01]),
            "age": rng.choice(np.arange(0, 90, 5), size=n).astype(float),
            "sex": rng.choice(["male", "female", "unknown"], size=n, p=[0.54, 0.45, 0.01]),
            "localization": rng.choice(SITES, size=n),
            "dataset": rng.choice(SOURCES, size=n),
        },
        columns=HEADER,
    )


_NOISE: list[Image.Image] = []  # per worker: noise textures (centred on 128) at a few strengths
_NOISE_SIGMAS = (2.5, 3.5, 4.5, 5.5)
_MASK_GRID = np.mgrid[0 : HEIGHT // 5, 0 : WIDTH // 5].astype(np.float32) * 5


def _render(i: int, seed: int) -> bytes:
    """One dermoscopy-ish picture: skin-toned smooth blobs, a darker fuzzy ellipse, sensor-like noise.

    Built from PIL operations (resize, composite, add) on whole images, so one costs a few ms."""
    if not _NOISE:
        bank = np.random.default_rng((seed, os.getpid())).normal(0.0, 1.0, (HEIGHT * 2, WIDTH * 2, 3))
        for sigma in _NOISE_SIGMAS:
            _NOISE.append(Image.fromarray(np.clip(bank * sigma + 128, 0, 255).astype(np.uint8)))
    rng = np.random.default_rng((seed, i))
    skin = np.array([200, 150, 130]) + rng.normal(0, 15, 3)
    blobs = rng.normal(0, 22, (int(rng.integers(3, 7)), int(rng.integers(4, 9)), 3)) + skin
    background = Image.fromarray(np.clip(blobs, 0, 255).astype(np.uint8)).resize((WIDTH, HEIGHT), Image.BILINEAR)
    yy, xx = _MASK_GRID
    cy, cx = rng.uniform(150, 300), rng.uniform(200, 400)
    ry, rx = rng.uniform(50, 140), rng.uniform(60, 180)
    inside = np.clip(1.5 - np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2), 0, 1)
    mask = Image.fromarray((inside * 255).astype(np.uint8)).resize((WIDTH, HEIGHT), Image.BILINEAR)
    colour = tuple(int(c) for c in np.clip(np.array([95, 60, 45]) + rng.normal(0, 12, 3), 0, 255))
    picture = Image.composite(Image.new("RGB", (WIDTH, HEIGHT), colour), background, mask)
    noise = _NOISE[int(rng.integers(0, len(_NOISE)))]
    oy, ox = int(rng.integers(0, HEIGHT)), int(rng.integers(0, WIDTH))
    picture = ImageChops.add(picture, noise.crop((ox, oy, ox + WIDTH, oy + HEIGHT)), scale=1.0, offset=-128)
    buf = io.BytesIO()
    picture.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _write_range(root: str, start: int, stop: int, seed: int) -> int:
    written = 0
    for i in range(start, stop):
        data = _render(i, seed)
        _image_path(Path(root), i).write_bytes(data)
        written += len(data)
    return written


def build_dataset(root: Path, n: int, seed: int, workers: int) -> int:
    """Write the metadata CSV and N JPEGs (in parallel); return the bytes written."""
    for part in PARTS:
        (root / part).mkdir(parents=True, exist_ok=True)
    _metadata(n, seed).to_csv(root / "HAM10000_metadata.csv", index=False)
    step = 250
    with ProcessPoolExecutor(max_workers=workers) as pool:
        jobs = [(str(root), s, min(n, s + step), seed) for s in range(0, n, step)]
        return sum(pool.map(_write_range, *zip(*jobs)))


def break_files(root: Path, n: int) -> dict[str, str]:
    """Replace five images with broken ones; return image_id -> what was done to it."""
    picks = [n * k // 6 + 3 for k in range(1, 6)]
    broken: dict[str, str] = {}
    # 1. zero bytes (an interrupted download that never wrote)
    _image_path(root, picks[0]).write_bytes(b"")
    broken[_image_id(picks[0])] = "zero bytes"
    # 2. cut at half (an interrupted download)
    path = _image_path(root, picks[1])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    broken[_image_id(picks[1])] = "cut at half"
    # 3. 4 KB of coded data zeroed mid-file, end-of-image marker intact (bit rot / bad sector)
    path = _image_path(root, picks[2])
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 4096] = bytes(4096)
    path.write_bytes(bytes(data))
    broken[_image_id(picks[2])] = "4 KB zeroed mid-file, EOI intact"
    # 4. an HTML error page saved under the image's name
    _image_path(root, picks[3]).write_text("<html><body>403 Forbidden</body></html>\n")
    broken[_image_id(picks[3])] = "HTML page named .jpg"
    # 5. a CMYK JPEG
    path = _image_path(root, picks[4])
    with Image.open(path) as im:
        cmyk = im.convert("CMYK")
    cmyk.save(path, format="JPEG", quality=90)
    broken[_image_id(picks[4])] = "CMYK JPEG"
    return broken


# --------------------------------------------------------------------------------------------------
# the two ways to ingest
# --------------------------------------------------------------------------------------------------


def ours(root: Path, workers: int | None, decode: bool) -> pd.DataFrame:
    meta = pd.read_csv(root / "HAM10000_metadata.csv")
    index = index_image_files(root)
    paths = []
    for image_id in meta["image_id"]:
        hits = index.get(image_id.lower(), [])
        paths.append(hits[0] if len(hits) == 1 else root / "<missing or ambiguous>" / f"{image_id}.jpg")
    frame = inspect_images(paths, workers=workers, decode=decode)
    frame.insert(0, "image_id", meta["image_id"].to_numpy())
    return frame


def naive(root: Path) -> pd.DataFrame:
    meta = pd.read_csv(root / "HAM10000_metadata.csv")
    rows = []
    for image_id in meta["image_id"]:
        path = None
        for part in PARTS:
            candidate = root / part / f"{image_id}.jpg"
            if candidate.exists():
                path = candidate
                break
        error = width = height = None
        try:
            with Image.open(path) as im:
                rgb = im.convert("RGB")
                width, height = rgb.size
        except Exception as exc:  # noqa: BLE001 - the naive loop still must not die on one file
            error = f"{type(exc).__name__}: {exc}"
        sha = hashlib.sha256(path.read_bytes()).hexdigest() if path else None
        rows.append((image_id, error is None, error, sha, width, height))
    return pd.DataFrame(rows, columns=["image_id", "ok", "error", "image_sha256", "image_width", "image_height"])


def _cpu_seconds() -> float:
    """User + system CPU of this process and its reaped children (pool workers are reaped on shutdown)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(label: str, fn, repeat: int) -> tuple[float, pd.DataFrame, float]:
    """Best wall time over `repeat` runs, the result, and the CPU seconds of that best run."""
    runs, result = [], None
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), _cpu_seconds()
        result = fn()
        runs.append((time.perf_counter() - wall, _cpu_seconds() - cpu))
    print(f"  {label:<16} runs (wall/cpu): " + ", ".join(f"{w:.2f}s/{c:.2f}s" for w, c in runs), flush=True)
    best = min(runs)
    return best[0], result, best[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=10_015, help="number of images (HAM10000 has 10,015)")
    parser.add_argument("--out", type=Path, default=None, help="folder to build in (default: a temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the folder afterwards")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; the best is reported")
    parser.add_argument("--workers", type=int, default=None, help="workers for ours (default: all CPUs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-single", action="store_true", help="skip the one-worker run")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here (for run_all.py)")
    args = parser.parse_args(argv)

    cpus = os.cpu_count() or 1
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    print(
        f"CPUs: os.cpu_count()={cpus}, usable={affinity}; Python {sys.version.split()[0]}; Pillow {Image.__version__}"
    )

    made_temp = args.out is None
    root = Path(tempfile.mkdtemp(prefix="bench_ham10000_")) if made_temp else args.out.resolve()
    try:
        start = time.perf_counter()
        total_bytes = build_dataset(root, args.n, args.seed, workers=cpus)
        broken = break_files(root, args.n)
        setup = time.perf_counter() - start
        print(
            f"setup: {args.n:,} JPEGs at {WIDTH}x{HEIGHT}, {total_bytes / args.n / 1024:.1f} KB mean, "
            f"{total_bytes / 2**20:.0f} MiB, built in {setup:.1f}s ({cpus} processes) under {root}"
        )

        for part in PARTS:  # warm the page cache so every method reads from memory
            for entry in os.scandir(root / part):
                with open(entry.path, "rb") as fh:
                    fh.read()

        print("timing:")
        results = {}
        results["ours"] = timed("ours", lambda: ours(root, args.workers, True), args.repeat)
        results["ours/structure"] = timed("ours/structure", lambda: ours(root, args.workers, False), args.repeat)
        if not args.skip_single:
            results["ours/1 worker"] = timed("ours/1 worker", lambda: ours(root, 1, True), args.repeat)
        results["naive"] = timed("naive", lambda: naive(root), args.repeat)

        n = args.n
        naive_s = results["naive"][0]
        print()
        print(f"{'method':<16} {'images':>8} {'seconds':>9} {'images/s':>10} {'vs naive':>9} {'cpu ms/image':>13}")
        for label, (best, _, cpu) in results.items():
            print(
                f"{label:<16} {n:>8,} {best:>9.2f} {n / best:>10,.0f} {naive_s / best:>8.2f}x {cpu / n * 1000:>13.3f}"
            )
        print("(cpu ms/image counts every process of a method and moves far less than wall time when other jobs")
        print(" share the CPUs; naive cpu / ours cpu x usable CPUs estimates the ratio on an otherwise idle machine)")
        print(f"(setup, not timed above: {setup:.1f}s)")

        frame = results["ours"][1]
        plain = results["naive"][1]
        print()
        print("deliberately broken files:")
        print(f"  {'image_id':<14} {'what was done':<34} {'ours':<20} naive")
        for image_id, what in broken.items():
            row = frame.loc[frame["image_id"] == image_id].iloc[0]
            nrow = plain.loc[plain["image_id"] == image_id].iloc[0]
            ours_says = "ok" if row["ok"] else row["reason"]
            naive_says = "ok" if nrow["ok"] else "error: " + str(nrow["error"])[:60]
            print(f"  {image_id:<14} {what:<34} {ours_says:<20} {naive_says}")
            if not row["ok"]:
                print(f"  {'':<14} detail: {row['detail']}")
        quarantined = frame.loc[~frame["ok"], "image_id"].tolist()
        extra = sorted(set(quarantined) - set(broken))
        print(
            f"ours quarantined {len(quarantined)} of {n:,}; all 5 broken among them: "
            f"{set(broken) <= set(quarantined)}; healthy files quarantined: {len(extra)} {extra[:5]}"
        )
        good = frame["ok"]
        same = (frame.loc[good, "image_sha256"].to_numpy() == plain.loc[good, "image_sha256"].to_numpy()).all()
        print(f"sha256 agrees with the naive loop on every accepted file: {bool(same)}")
        results_file.write(
            args.json,
            "ingest",
            {"images": n, "cpus": affinity},
            [
                results_file.row(
                    f"{n:,} JPEGs {WIDTH}x{HEIGHT} in HAM10000's layout: index + hash + full decode",
                    "images/s",
                    n / results["ours"][0],
                    n / naive_s,
                    baseline_name="naive one-file PIL loop",
                    target=5.0,
                    notes=f"all 5 broken files caught: {set(broken) <= set(quarantined)}",
                )
            ],
        )
    finally:
        if made_temp and not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        elif args.keep or not made_temp:
            print(f"dataset kept at {root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
