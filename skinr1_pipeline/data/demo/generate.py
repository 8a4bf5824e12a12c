"""Generate the embedded demo: HAM10000, PAD-UFES-20 and Derm7pt folders in their real layouts, with rendered
lesion images whose visible features follow the lesion feature profiles.

Why real layouts rather than a convenient demo format: the demo must exercise the real loaders, label maps and
quarantine logic end to end, so every file name, header and label string is the one the public dataset uses.

Determinism: every lesion and every view gets its own random stream keyed by (seed, dataset, diagnosis, lesion,
view), so output bytes depend on the seed only, never on generation order or worker count.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from skinr1_pipeline.data.demo import writers
from skinr1_pipeline.data.demo.render import LesionSpec, draw_lesion, sample_lesion
from skinr1_pipeline.knowledge.lesion_features import DEMO_DIAGNOSES, LesionFeatureProfile, load_lesion_features
from skinr1_pipeline.storage.atomic import write_bytes, write_json, write_text

DATASET_DIRS: dict[str, str] = {"ham10000": "HAM10000", "pad_ufes_20": "PAD-UFES-20", "derm7pt": "derm7pt"}
ISIC2018_TEST_KEY = "isic2018_task3_test"
MANIFEST_NAME = "demo_manifest.json"
FEATURES_NAME = "demo_features.jsonl"

HAM_LABELS: dict[str, str] = {
    "actinic_keratosis": "akiec",
    "basal_cell_carcinoma": "bcc",
    "seborrheic_keratosis": "bkl",
    "dermatofibroma": "df",
    "melanoma": "mel",
    "melanocytic_nevus": "nv",
    "benign_vascular": "vasc",
}
PAD_LABELS: dict[str, str] = {
    "actinic_keratosis": "ACK",
    "basal_cell_carcinoma": "BCC",
    "melanoma": "MEL",
    "melanocytic_nevus": "NEV",
    "squamous_cell_carcinoma": "SCC",
    "seborrheic_keratosis": "SEK",
}
# Derm7pt spells diagnoses finely; each demo diagnosis draws one of its real strings.
DERM7PT_LABELS: dict[str, dict[str, float]] = {
    "melanoma": {
        "melanoma (less than 0.76 mm)": 0.4,
        "melanoma (in situ)": 0.25,
        "melanoma (0.76 to 1.5 mm)": 0.2,
        "melanoma (more than 1.5 mm)": 0.1,
        "melanoma": 0.05,
    },
    "melanocytic_nevus": {"clark nevus": 0.8, "dermal nevus": 0.1, "congenital nevus": 0.1},
    "seborrheic_keratosis": {"seborrheic keratosis": 1.0},
    "basal_cell_carcinoma": {"basal cell carcinoma": 1.0},
    "dermatofibroma": {"dermatofibroma": 1.0},
    "benign_vascular": {"vascular lesion": 1.0},
}
_DATASET_CODE = {"ham10000": 1, ISIC2018_TEST_KEY: 4, "pad_ufes_20": 2, "derm7pt": 3}
_DX_CODE = {dx: i for i, dx in enumerate(DEMO_DIAGNOSES)}
_BROKEN_LESION = 100_000  # lesion numbers of the extra broken rows, far from the clean ones
_NO_PIXELS = {"zero_bytes", "not_an_image", "missing_file"}  # broken kinds that need no rendered image


@dataclass(frozen=True)
class BrokenFile:
    """A deliberately damaged (or absent) file and the quarantine reason a loader should give for it."""

    dataset: str
    path: str  # relative to the dataset root, POSIX separators
    reason: str
    sample_id: str
    raw_label: str
    detail: str


@dataclass
class DemoManifest:
    """What `generate_demo_data` wrote, so tests and the pipeline can check loaders against known truth."""

    seed: int
    out_dir: Path
    roots: dict[str, Path]  # loader key -> dataset folder
    class_counts: dict[str, dict[str, int]]  # dataset -> raw label -> metadata rows (Derm7pt: cases)
    clean_class_counts: dict[str, dict[str, int]]  # same, counting only rows whose images are all intact
    diagnosis_counts: dict[str, dict[str, int]]  # dataset -> taxonomy node -> metadata rows
    image_files: dict[str, int]  # dataset -> image paths referenced by metadata (broken included)
    broken: list[BrokenFile]
    n_per_class: int
    image_size: tuple[int, int]
    features_file: Path

    @property
    def ham10000_root(self) -> Path:
        return self.roots["ham10000"]

    @property
    def pad_ufes_20_root(self) -> Path:
        return self.roots["pad_ufes_20"]

    @property
    def derm7pt_root(self) -> Path:
        return self.roots["derm7pt"]

    def broken_path(self, item: BrokenFile) -> Path:
        root = self.roots["ham10000"] if item.dataset == ISIC2018_TEST_KEY else self.roots[item.dataset]
        return root / item.path

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "out_dir": str(self.out_dir),
            "roots": {k: str(v) for k, v in self.roots.items()},
            "class_counts": self.class_counts,
            "clean_class_counts": self.clean_class_counts,
            "diagnosis_counts": self.diagnosis_counts,
            "image_files": self.image_files,
            "broken": [vars(b) for b in self.broken],
            "n_per_class": self.n_per_class,
            "image_size": list(self.image_size),
            "features_file": str(self.features_file),
        }


@dataclass
class _Image:
    """One image to render (or to damage): where it goes and which random streams draw it."""

    dataset: str
    path: Path  # absolute
    sample_id: str
    raw_label: str
    diagnosis: str
    spec: LesionSpec
    domain: str
    view_key: tuple[int, ...]
    size: tuple[int, int]
    fitzpatrick: int | None = None
    broken: str | None = None  # key of writers.BROKEN_WRITERS


@dataclass
class _Plan:
    images: list[_Image] = field(default_factory=list)
    tables: list[tuple[Path, tuple[str, ...], list[dict[str, Any]]]] = field(default_factory=list)
    counts: dict[str, Counter] = field(default_factory=dict)
    clean: dict[str, Counter] = field(default_factory=dict)
    diagnoses: dict[str, Counter] = field(default_factory=dict)

    def count(self, dataset: str, raw_label: str, diagnosis: str, clean: bool) -> None:
        self.counts.setdefault(dataset, Counter())[raw_label] += 1
        self.diagnoses.setdefault(dataset, Counter())[diagnosis] += 1
        self.clean.setdefault(dataset, Counter())[raw_label] += int(clean)


def generate_demo_data(
    out_dir: Path,
    seed: int = 0,
    n_per_class: int = 24,
    image_size: tuple[int, int] = (300, 225),
    include_broken: bool = True,
    *,
    workers: int | None = None,
    profiles: dict[str, LesionFeatureProfile] | None = None,
) -> DemoManifest:
    """Write the three demo datasets under `out_dir` and return (and save) their manifest.

    `image_size` is (width, height) of HAM10000 and Derm7pt images (PAD-UFES-20 sizes vary around it, as in
    the real set). `workers` > 1 renders in a process pool; output bytes are the same either way.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    out_dir = Path(out_dir)
    size = (int(image_size[0]), int(image_size[1]))
    profiles = profiles if profiles is not None else load_lesion_features()
    missing = [dx for dx in DEMO_DIAGNOSES if dx not in profiles]
    if missing:
        raise ValueError(f"lesion feature profiles lack demo diagnoses {missing}")
    roots = {key: out_dir / name for key, name in DATASET_DIRS.items()}
    plan = _Plan()
    _plan_ham10000(plan, roots["ham10000"], profiles, seed, n_per_class, size, include_broken)
    _plan_pad_ufes_20(plan, roots["pad_ufes_20"], profiles, seed, n_per_class, size, include_broken)
    _plan_derm7pt(plan, roots["derm7pt"], profiles, seed, n_per_class, size, include_broken)

    for path, columns, rows in plan.tables:
        writers.write_csv(path, columns, rows)
    broken: list[BrokenFile] = []
    features: list[dict[str, Any]] = []
    for job, (payload, feats) in zip(plan.images, _render_all(plan.images, workers)):
        root = roots["ham10000"] if job.dataset == ISIC2018_TEST_KEY else roots[job.dataset]
        rel = job.path.relative_to(root).as_posix()
        if job.broken:
            image = Image.open(io.BytesIO(payload)) if payload else None
            reason, detail = writers.BROKEN_WRITERS[job.broken](job.path, image)
            broken.append(BrokenFile(job.dataset, rel, reason, job.sample_id, job.raw_label, detail))
            continue
        write_bytes(job.path, payload)  # a sensor or ingest reading the folder meanwhile never sees half an image
        features.append(
            {
                "dataset": job.dataset,
                "path": job.path.relative_to(out_dir).as_posix(),
                "sample_id": job.sample_id,
                "raw_label": job.raw_label,
                "diagnosis": job.diagnosis,
                "features": feats,
            }
        )
    features_file = out_dir / FEATURES_NAME
    write_text(features_file, "".join(json.dumps(f, sort_keys=True) + "\n" for f in features))
    manifest = DemoManifest(
        seed=seed,
        out_dir=out_dir,
        roots=roots,
        class_counts={k: dict(sorted(v.items())) for k, v in plan.counts.items()},
        clean_class_counts={k: dict(sorted(v.items())) for k, v in plan.clean.items()},
        diagnosis_counts={k: dict(sorted(v.items())) for k, v in plan.diagnoses.items()},
        image_files=dict(Counter(job.dataset for job in plan.images)),
        broken=broken,
        n_per_class=n_per_class,
        image_size=size,
        features_file=features_file,
    )
    write_json(out_dir / MANIFEST_NAME, manifest.to_dict())
    return manifest


# ------------------------------------------------------------------------------------------------ rendering


def _render_one(job: _Image) -> tuple[bytes, dict[str, Any]]:
    if job.broken in _NO_PIXELS:
        return b"", {}
    image, feats = draw_lesion(
        job.spec, job.domain, np.random.default_rng(job.view_key), job.size, fitzpatrick=job.fitzpatrick
    )
    fmt = "PNG" if job.path.suffix.lower() == ".png" else "JPEG"
    if job.broken:
        fmt = "PNG"  # lossless hand-over; the broken writer re-encodes it in its own damaged way
    return writers.encode_image(image, fmt), feats


def _render_all(jobs: list[_Image], workers: int | None) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Render in job order, in a process pool for full-size runs (results are identical either way)."""
    if workers is None:
        workers = min(4, os.cpu_count() or 1) if len(jobs) >= 200 else 1
    if workers <= 1:
        yield from map(_render_one, jobs)
        return
    context = get_context("fork" if "fork" in get_all_start_methods() else "spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_tune_allocator) as pool:
        try:
            results = pool.map(_render_one, jobs, chunksize=16)
        except (AssertionError, OSError, RuntimeError):  # e.g. a daemonic parent may not start workers
            results = map(_render_one, jobs)
        yield from results


def _tune_allocator() -> None:
    """Worker-process only: stop glibc returning freed image buffers to the OS after every image.

    Each render allocates and frees a few MB of temporaries; with default malloc settings every image pays for
    fresh page faults, which on small VMs costs about a third of the wall time. Best effort, glibc only.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 * 1024 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


# ------------------------------------------------------------------------------------------------ helpers


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng([int(k) for k in key])


def _pick(rng: np.random.Generator, weights: dict[Any, float]) -> Any:
    keys = list(weights)
    p = np.array([weights[k] for k in keys], float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _lesion(profiles: dict[str, LesionFeatureProfile], seed: int, dataset: str, dx: str, lesion: int) -> LesionSpec:
    return sample_lesion(dx, profiles[dx], _rng(seed, _DATASET_CODE[dataset], _DX_CODE[dx], lesion))


def _view_key(seed: int, dataset: str, dx: str, lesion: int, view: int) -> tuple[int, ...]:
    return (seed, _DATASET_CODE[dataset], _DX_CODE[dx], lesion, view, 1)


def _group_sizes(rng: np.random.Generator, n: int) -> list[int]:
    """Images per lesion: mostly one, sometimes two or three, as in HAM10000 and PAD-UFES-20."""
    sizes: list[int] = []
    while sum(sizes) < n:
        sizes.append(min(int(rng.choice([1, 1, 1, 1, 2, 2, 3])), n - sum(sizes)))
    return sizes


def _unique_ids(rng: np.random.Generator, low: int, high: int, n: int) -> list[int]:
    if n > high - low:
        raise ValueError(f"cannot draw {n} unique ids from [{low}, {high})")
    return sorted(int(x) for x in rng.choice(np.arange(low, high), size=n, replace=False))


# ------------------------------------------------------------------------------------------------ HAM10000

_HAM_SITES: dict[str, dict[str, float]] = {
    "akiec": {
        "face": 0.35,
        "lower extremity": 0.2,
        "upper extremity": 0.2,
        "back": 0.1,
        "scalp": 0.05,
        "hand": 0.05,
        "neck": 0.05,
    },
    "bcc": {
        "back": 0.35,
        "face": 0.2,
        "lower extremity": 0.1,
        "upper extremity": 0.1,
        "chest": 0.1,
        "scalp": 0.05,
        "abdomen": 0.05,
        "neck": 0.05,
    },
    "bkl": {
        "face": 0.3,
        "back": 0.2,
        "lower extremity": 0.15,
        "upper extremity": 0.1,
        "chest": 0.1,
        "trunk": 0.1,
        "scalp": 0.05,
    },
    "df": {"lower extremity": 0.7, "upper extremity": 0.2, "abdomen": 0.05, "foot": 0.05},
    "mel": {
        "back": 0.3,
        "upper extremity": 0.2,
        "lower extremity": 0.2,
        "face": 0.1,
        "chest": 0.05,
        "abdomen": 0.05,
        "trunk": 0.05,
        "neck": 0.05,
    },
    "nv": {
        "lower extremity": 0.2,
        "back": 0.2,
        "trunk": 0.2,
        "abdomen": 0.1,
        "upper extremity": 0.1,
        "foot": 0.05,
        "chest": 0.05,
        "unknown": 0.03,
        "genital": 0.02,
        "acral": 0.01,
        "ear": 0.01,
        "hand": 0.01,
        "neck": 0.02,
    },
    "vasc": {
        "trunk": 0.25,
        "lower extremity": 0.2,
        "abdomen": 0.2,
        "back": 0.15,
        "upper extremity": 0.1,
        "face": 0.05,
        "hand": 0.05,
    },
}
_HAM_AGE = {
    "akiec": (67, 11),
    "bcc": (67, 13),
    "bkl": (64, 14),
    "df": (53, 13),
    "mel": (61, 15),
    "nv": (46, 15),
    "vasc": (51, 21),
}
_HAM_DX_TYPE = {
    "akiec": {"histo": 1.0},
    "bcc": {"histo": 1.0},
    "mel": {"histo": 1.0},
    "bkl": {"histo": 0.7, "consensus": 0.24, "confocal": 0.06},
    "df": {"histo": 0.5, "consensus": 0.5},
    "nv": {"follow_up": 0.55, "histo": 0.37, "consensus": 0.08},
    "vasc": {"consensus": 0.5, "histo": 0.5},
}
_HAM_SOURCE = {
    "akiec": {"rosendahl": 0.9, "vidir_modern": 0.1},
    "bcc": {"rosendahl": 0.58, "vidir_modern": 0.41, "vienna_dias": 0.01},
    "bkl": {"rosendahl": 0.45, "vidir_modern": 0.43, "vidir_molemax": 0.11, "vienna_dias": 0.01},
    "df": {"vidir_modern": 0.45, "rosendahl": 0.26, "vidir_molemax": 0.26, "vienna_dias": 0.03},
    "mel": {"vidir_modern": 0.61, "rosendahl": 0.31, "vienna_dias": 0.06, "vidir_molemax": 0.02},
    "nv": {"vidir_molemax": 0.55, "vidir_modern": 0.27, "rosendahl": 0.12, "vienna_dias": 0.06},
    "vasc": {"vidir_modern": 0.58, "vidir_molemax": 0.38, "vienna_dias": 0.02, "rosendahl": 0.02},
}
_HAM_BROKEN = (
    ("melanocytic_nevus", "zero_bytes"),
    ("melanoma", "truncated_jpeg"),
    ("seborrheic_keratosis", "cmyk_jpeg"),
)


def _ham_lesion_row(rng: np.random.Generator, dx: str) -> dict[str, Any]:
    mean, sd = _HAM_AGE[dx]
    age = "" if rng.random() < 0.02 else str(int(np.clip(round(rng.normal(mean, sd) / 5) * 5, 0, 85)))
    sex = "unknown" if rng.random() < 0.01 else ("male" if rng.random() < 0.55 else "female")
    return {
        "dx": dx,
        "dx_type": _pick(rng, _HAM_DX_TYPE[dx]),
        "age": age,
        "sex": sex,
        "localization": _pick(rng, _HAM_SITES[dx]),
        "dataset": _pick(rng, _HAM_SOURCE[dx]),
    }


def _plan_ham10000(
    plan: _Plan, root: Path, profiles: dict, seed: int, n: int, size: tuple[int, int], include_broken: bool
) -> None:
    """Training metadata (several images per lesion) split over two image folders, plus the ISIC 2018 test set."""
    train: list[tuple[str, int, int]] = []  # (diagnosis, lesion number, view number)
    for dx in HAM_LABELS:
        lesion = 0
        for group in _group_sizes(_rng(seed, 1, _DX_CODE[dx], 1000), n):
            train += [(dx, lesion, view) for view in range(group)]
            lesion += 1
    broken = [(dx, _BROKEN_LESION + i, 0, kind) for i, (dx, kind) in enumerate(_HAM_BROKEN)] if include_broken else []
    test_n = max(1, n // 4)
    test = [(dx, lesion, 0) for dx in HAM_LABELS for lesion in range(test_n)]

    ids = _rng(seed, 1, 99)
    lesions = sorted({(dx, les) for dx, les, _ in train} | {(dx, les) for dx, les, _, _ in broken})
    lesion_ids = dict(zip(lesions, (f"HAM_{i:07d}" for i in ids.permutation(_unique_ids(ids, 0, 7628, len(lesions))))))
    n_train = len(train) + len(broken)
    image_ids = [f"ISIC_{i:07d}" for i in ids.permutation(_unique_ids(ids, 24306, 34321, n_train))]
    test_ids = [f"ISIC_{i:07d}" for i in ids.permutation(_unique_ids(ids, 34524, 36060, len(test)))]
    test_lesion_ids = [f"HAMTEST_{i:07d}" for i in ids.permutation(_unique_ids(ids, 0, 1512, len(test)))]

    rows: list[dict[str, Any]] = []
    items = [(dx, les, view, None) for dx, les, view in train] + broken
    for (dx, les, view, kind), image_id in zip(items, image_ids):
        label = HAM_LABELS[dx]
        row = {
            "lesion_id": lesion_ids[(dx, les)],
            "image_id": image_id,
            **_ham_lesion_row(_rng(seed, 1, _DX_CODE[dx], les, 7), label),
        }
        rows.append(row)
        part = "HAM10000_images_part_1" if int(image_id[5:]) < 29306 else "HAM10000_images_part_2"
        plan.images.append(
            _Image(
                "ham10000",
                root / part / f"{image_id}.jpg",
                image_id,
                label,
                dx,
                _lesion(profiles, seed, "ham10000", dx, les),
                "dermoscopic",
                _view_key(seed, "ham10000", dx, les, view),
                size,
                broken=kind,
            )
        )
        plan.count("ham10000", label, dx, clean=kind is None)
    order = list(HAM_LABELS.values())  # the real file groups rows by dx
    rows.sort(key=lambda r: (order.index(r["dx"]), r["lesion_id"], r["image_id"]))
    plan.tables.append((root / "HAM10000_metadata.csv", writers.HAM10000_COLUMNS, rows))

    test_rows: list[dict[str, Any]] = []
    for (dx, les, view), image_id, lesion_id in zip(test, test_ids, test_lesion_ids):
        label = HAM_LABELS[dx]
        test_rows.append(
            {
                "lesion_id": lesion_id,
                "image_id": image_id,
                **_ham_lesion_row(_rng(seed, 4, _DX_CODE[dx], les, 7), label),
            }
        )
        plan.images.append(
            _Image(
                ISIC2018_TEST_KEY,
                root / "ISIC2018_Task3_Test_Images" / f"{image_id}.jpg",
                image_id,
                label,
                dx,
                _lesion(profiles, seed, ISIC2018_TEST_KEY, dx, les),
                "dermoscopic",
                _view_key(seed, ISIC2018_TEST_KEY, dx, les, view),
                size,
            )
        )
        plan.count(ISIC2018_TEST_KEY, label, dx, clean=True)
    test_rows.sort(key=lambda r: r["image_id"])
    plan.tables.append((root / "ISIC2018_Task3_Test_GroundTruth.csv", writers.ISIC2018_TEST_COLUMNS, test_rows))


# ------------------------------------------------------------------------------------------------ PAD-UFES-20

_PAD_REGIONS = {
    "ACK": {"FACE": 0.3, "FOREARM": 0.25, "HAND": 0.15, "NOSE": 0.1, "ARM": 0.1, "SCALP": 0.05, "EAR": 0.05},
    "BCC": {"FACE": 0.35, "NOSE": 0.15, "BACK": 0.15, "CHEST": 0.1, "ARM": 0.1, "NECK": 0.1, "EAR": 0.05},
    "MEL": {"BACK": 0.35, "CHEST": 0.2, "ARM": 0.15, "THIGH": 0.15, "FACE": 0.15},
    "NEV": {"BACK": 0.35, "ABDOMEN": 0.2, "CHEST": 0.2, "FACE": 0.15, "ARM": 0.1},
    "SCC": {"FACE": 0.3, "FOREARM": 0.2, "HAND": 0.2, "NOSE": 0.1, "LIP": 0.1, "SCALP": 0.1},
    "SEK": {"BACK": 0.3, "FACE": 0.25, "CHEST": 0.25, "ABDOMEN": 0.1, "NECK": 0.1},
}
_PAD_ANCESTRY = {
    "POMERANIA": 0.3,
    "GERMANY": 0.2,
    "ITALY": 0.2,
    "BRAZIL": 0.15,
    "PORTUGAL": 0.05,
    "NETHERLANDS": 0.04,
    "POLAND": 0.03,
    "SPAIN": 0.02,
    "UNK": 0.01,
}
_PAD_FITZPATRICK = {1: 0.12, 2: 0.45, 3: 0.28, 4: 0.09, 5: 0.04, 6: 0.02}  # the real cohort is mostly light-skinned
_PAD_BROKEN = (
    ("melanocytic_nevus", "16bit_png"),
    ("basal_cell_carcinoma", "palette_png"),
    ("actinic_keratosis", "missing_file"),
)


def _flag(rng: np.random.Generator, p_true: float, p_unknown: float = 0.0) -> str:
    u = rng.random()
    return "UNK" if u < p_unknown else ("True" if u < p_unknown + p_true else "False")


def _plan_pad_ufes_20(
    plan: _Plan, root: Path, profiles: dict, seed: int, n: int, size: tuple[int, int], include_broken: bool
) -> None:
    """Clinical smartphone photos, one row per image, PNGs over three image folders, Fitzpatrick per patient."""
    items: list[tuple[str, int, int, str | None]] = []
    for dx in PAD_LABELS:
        lesion = 0
        for group in _group_sizes(_rng(seed, 2, _DX_CODE[dx], 1000), n):
            items += [(dx, lesion, view, None) for view in range(group)]
            lesion += 1
    if include_broken:
        items += [(dx, _BROKEN_LESION + i, 0, kind) for i, (dx, kind) in enumerate(_PAD_BROKEN)]
    ids = _rng(seed, 2, 99)
    lesions = sorted({(dx, les) for dx, les, _, _ in items})
    patient_numbers = ids.permutation(_unique_ids(ids, 1, 2300, len(lesions)))
    lesion_numbers = ids.permutation(_unique_ids(ids, 1, 3500, len(lesions)))
    # about one patient in five has a second lesion in the set, as in the real data
    patients = {key: int(patient_numbers[i]) for i, key in enumerate(lesions)}
    for i in range(1, len(lesions), 5):
        patients[lesions[i]] = patients[lesions[i - 1]]
    lesion_no = {key: int(lesion_numbers[i]) for i, key in enumerate(lesions)}
    suffixes = ids.permutation(_unique_ids(ids, 0, max(1000, len(items)), len(items)))

    rows: list[dict[str, Any]] = []
    for k, (dx, les, view, kind) in enumerate(items):
        label = PAD_LABELS[dx]
        person = _rng(seed, 2, 0, patients[(dx, les)], 7)  # patient-level answers agree across their lesions
        meta = _rng(seed, 2, _DX_CODE[dx], les, 7)
        spec = _lesion(profiles, seed, "pad_ufes_20", dx, les)
        fitz = int(_pick(person, _PAD_FITZPATRICK))
        d1 = max(1.0, round(spec.diameter_mm))
        img_id = f"PAT_{patients[(dx, les)]}_{lesion_no[(dx, les)]}_{int(suffixes[k])}.png"
        biopsed = label in ("BCC", "MEL", "SCC") or meta.random() < 0.25
        rows.append(
            {
                "patient_id": f"PAT_{patients[(dx, les)]}",
                "lesion_id": lesion_no[(dx, les)],
                "smoke": _flag(person, 0.15),
                "drink": _flag(person, 0.3),
                "background_father": _pick(person, _PAD_ANCESTRY),
                "background_mother": _pick(person, _PAD_ANCESTRY),
                "age": int(np.clip(meta.normal(62 if label != "NEV" else 38, 14), 6, 95)),
                "pesticide": _flag(person, 0.3),
                "gender": "MALE" if person.random() < 0.5 else "FEMALE",
                "skin_cancer_history": _flag(person, 0.45),
                "cancer_history": _flag(person, 0.5),
                "has_piped_water": _flag(person, 0.7),
                "has_sewage_system": _flag(person, 0.55),
                "fitspatrick": f"{fitz:.1f}",
                "region": _pick(meta, _PAD_REGIONS[label]),
                "diameter_1": f"{d1:.1f}",
                "diameter_2": f"{max(1.0, round(d1 * meta.uniform(0.6, 1.0))):.1f}",
                "diagnostic": label,
                "itch": _flag(meta, 0.6 if label in ("ACK", "BCC") else 0.3, 0.03),
                "grew": _flag(meta, 0.6 if label in ("BCC", "MEL", "SCC") else 0.3, 0.08),
                "hurt": _flag(meta, 0.4 if label == "SCC" else 0.15, 0.03),
                "changed": _flag(meta, 0.5 if label in ("MEL", "SCC") else 0.15, 0.1),
                "bleed": "True" if spec.surface == "ulcerated" else _flag(meta, 0.15, 0.02),
                "elevation": "False" if spec.elevation == "flat" else "True",
                "img_id": img_id,
                "biopsed": str(bool(biopsed)),
            }
        )
        side = min(size)
        width = int(_rng(*_view_key(seed, "pad_ufes_20", dx, les, view), 5).integers(side, max(size) + 1))
        part = f"imgs_part_{k % 3 + 1}"
        plan.images.append(
            _Image(
                "pad_ufes_20",
                root / "images" / part / img_id,
                img_id,
                label,
                dx,
                spec,
                "clinical",
                _view_key(seed, "pad_ufes_20", dx, les, view),
                (width, width),
                fitzpatrick=fitz,
                broken=kind,
            )
        )
        plan.count("pad_ufes_20", label, dx, clean=kind is None)
    shuffle = _rng(seed, 2, 98).permutation(len(rows))
    plan.tables.append((root / "metadata.csv", writers.PAD_UFES_20_COLUMNS, [rows[i] for i in shuffle]))


# ------------------------------------------------------------------------------------------------ Derm7pt

_DERM7PT_FOLDERS = ("NEL", "NML", "NAL", "NBL", "NGL", "NIL", "NDL", "NFL", "FBL", "FCL", "FDL", "Fhl", "Ggl", "Gal")
_DERM7PT_LOCATIONS = {
    "back": 0.3,
    "lower limbs": 0.2,
    "abdomen": 0.12,
    "upper limbs": 0.12,
    "chest": 0.1,
    "head neck": 0.1,
    "acral": 0.03,
    "buttocks": 0.02,
    "genital areas": 0.01,
}
_DERM7PT_MANAGEMENT = {
    "melanoma": {"excision": 1.0},
    "basal_cell_carcinoma": {"excision": 1.0},
    "melanocytic_nevus": {"excision": 0.5, "clinical follow up": 0.4, "no further examination": 0.1},
    "seborrheic_keratosis": {"no further examination": 0.6, "clinical follow up": 0.3, "excision": 0.1},
    "dermatofibroma": {"no further examination": 0.6, "clinical follow up": 0.3, "excision": 0.1},
    "benign_vascular": {"no further examination": 0.7, "clinical follow up": 0.2, "excision": 0.1},
}
_DERM7PT_SPLIT = (("train", 0.4), ("valid", 0.2), ("test", 0.4))  # roughly the official 413 / 203 / 395


def seven_point_criteria(spec: LesionSpec) -> dict[str, Any]:
    """Derm7pt's checklist columns filled from what the renderer drew (streaks are never drawn, so absent)."""
    s, colours = set(spec.structures), set(spec.colours)
    network = (
        "atypical" if "atypical_network" in s else ("typical" if s & {"network", "peripheral_network"} else "absent")
    )
    if spec.diagnosis == "melanoma":
        pigmentation = "diffuse irregular" if "black" in colours else "localized irregular"
    elif spec.diagnosis in ("melanocytic_nevus", "seborrheic_keratosis") and len(colours) > 1:
        pigmentation = "diffuse regular"
    else:
        pigmentation = "absent"
    if "regression" in s:
        regression = "combinations" if "blue_grey" in colours else "white areas"
    elif s & {"blue_grey_ovoid_nests", "blue_white_veil"}:
        regression = "blue areas"
    else:
        regression = "absent"
    dots = (
        "irregular"
        if "irregular_dots" in s
        else ("regular" if s & {"regular_globules", "comedo_like_openings"} else "absent")
    )
    veil = "present" if "blue_white_veil" in s else "absent"
    vascular = {"arborizing": "arborizing", "dotted": "dotted", "glomerular": "dotted"}.get(spec.vessels, "absent")
    streaks = "absent"
    score = (
        2 * (network == "atypical")
        + 2 * (veil == "present")
        + 2 * (vascular in ("dotted", "linear irregular"))
        + (streaks == "irregular")
        + ("irregular" in pigmentation)
        + (dots == "irregular")
        + (regression != "absent")
    )
    return {
        "seven_point_score": score,
        "pigment_network": network,
        "streaks": streaks,
        "pigmentation": pigmentation,
        "regression_structures": regression,
        "dots_and_globules": dots,
        "blue_whitish_veil": veil,
        "vascular_structures": vascular,
    }


def _plan_derm7pt(
    plan: _Plan, root: Path, profiles: dict, seed: int, n: int, size: tuple[int, int], include_broken: bool
) -> None:
    """One row per case; each case has a clinical and a dermoscopic image of the same lesion, official splits."""
    cases = [(dx, les, None) for dx in DERM7PT_LABELS for les in range(n)]
    if include_broken:
        cases.append(("melanocytic_nevus", _BROKEN_LESION, "not_an_image"))
    order = _rng(seed, 3, 98).permutation(len(cases))
    cases = [cases[i] for i in order]
    folders = _rng(seed, 3, 97)
    numbering: Counter = Counter()
    rows: list[dict[str, Any]] = []
    splits: dict[str, list[int]] = {name: [] for name, _ in _DERM7PT_SPLIT}
    by_class: dict[str, list[int]] = {}
    for position, (dx, les, kind) in enumerate(cases):
        meta = _rng(seed, 3, _DX_CODE[dx], les, 7)
        spec = _lesion(profiles, seed, "derm7pt", dx, les)
        label = _pick(meta, DERM7PT_LABELS[dx])
        folder = str(folders.choice(_DERM7PT_FOLDERS))
        numbering[folder] += 2
        number = 10 + numbering[folder]
        clinic = f"{folder}/{folder.upper()}{number - 1:03d}.JPG"
        derm = f"{folder}/{folder[0]}{folder[1:].lower()}{number:03d}.jpg"
        difficulty = _pick(
            meta,
            {"low": 0.3, "medium": 0.45, "high": 0.25}
            if dx == "melanoma"
            else {"low": 0.55, "medium": 0.35, "high": 0.1},
        )
        rows.append(
            {
                "case_num": position + 1,
                "diagnosis": label,
                **seven_point_criteria(spec),
                "level_of_diagnostic_difficulty": difficulty,
                "elevation": {"flat": "flat", "raised": "palpable", "nodular": "nodular"}[spec.elevation],
                "location": _pick(meta, _DERM7PT_LOCATIONS),
                "sex": "male" if meta.random() < 0.5 else "female",
                "management": _pick(meta, _DERM7PT_MANAGEMENT[dx]),
                "clinic": clinic,
                "derm": derm,
            }
        )
        fitz = int(_pick(meta, {1: 0.3, 2: 0.5, 3: 0.2}))  # an Italian atlas: light skin
        for view, (domain, rel, broken) in enumerate((("clinical", clinic, None), ("dermoscopic", derm, kind))):
            plan.images.append(
                _Image(
                    "derm7pt",
                    root / "images" / rel,
                    rel,
                    label,
                    dx,
                    spec,
                    domain,
                    _view_key(seed, "derm7pt", dx, les, view),
                    size,
                    fitzpatrick=fitz if domain == "clinical" else None,
                    broken=broken,
                )
            )
        plan.count("derm7pt", label, dx, clean=kind is None)
        by_class.setdefault(dx, []).append(position)
    split_rng = _rng(seed, 3, 96)
    for positions in by_class.values():
        shuffled = [positions[i] for i in split_rng.permutation(len(positions))]
        n_train = max(1, round(len(shuffled) * _DERM7PT_SPLIT[0][1]))
        n_valid = max(1, round(len(shuffled) * _DERM7PT_SPLIT[1][1])) if len(shuffled) > 2 else 0
        splits["train"] += shuffled[:n_train]
        splits["valid"] += shuffled[n_train : n_train + n_valid]
        splits["test"] += shuffled[n_train + n_valid :]
    plan.tables.append((root / "meta" / "meta.csv", writers.DERM7PT_COLUMNS, rows))
    for name, positions in splits.items():
        plan.tables.append(
            (
                root / "meta" / f"{name}_indexes.csv",
                (writers.DERM7PT_INDEX_COLUMN,),
                [{writers.DERM7PT_INDEX_COLUMN: p} for p in sorted(positions)],
            )
        )
