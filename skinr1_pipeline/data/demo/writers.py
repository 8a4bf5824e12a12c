"""File writers for the embedded demo: the real headers, deterministic encodings, and deliberately broken files.

Why a separate module: the generator decides *what* rows and images exist; this module owns *how* they land on
disk, so the on-disk details that loaders depend on (exact column order, byte-identical output for a seed, the
kind of damage each broken file has) live in one place.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from skinr1_pipeline.storage.atomic import atomic_path

# Exact headers of the public files (column order matters to positional readers).
HAM10000_COLUMNS: tuple[str, ...] = (
    "lesion_id",
    "image_id",
    "dx",
    "dx_type",
    "age",
    "sex",
    "localization",
    "dataset",
)
# The Dataverse copy of the ISIC 2018 Task 3 test ground truth uses the same metadata-style layout.
ISIC2018_TEST_COLUMNS: tuple[str, ...] = HAM10000_COLUMNS
PAD_UFES_20_COLUMNS: tuple[str, ...] = (
    "patient_id",
    "lesion_id",
    "smoke",
    "drink",
    "background_father",
    "background_mother",
    "age",
    "pesticide",
    "gender",
    "skin_cancer_history",
    "cancer_history",
    "has_piped_water",
    "has_sewage_system",
    "fitspatrick",
    "region",
    "diameter_1",
    "diameter_2",
    "diagnostic",
    "itch",
    "grew",
    "hurt",
    "changed",
    "bleed",
    "elevation",
    "img_id",
    "biopsed",
)
DERM7PT_COLUMNS: tuple[str, ...] = (
    "case_num",
    "diagnosis",
    "seven_point_score",
    "pigment_network",
    "streaks",
    "pigmentation",
    "regression_structures",
    "dots_and_globules",
    "blue_whitish_veil",
    "vascular_structures",
    "level_of_diagnostic_difficulty",
    "elevation",
    "location",
    "sex",
    "management",
    "clinic",
    "derm",
)
DERM7PT_INDEX_COLUMN = "indexes"

# Reason codes a loader's image check is expected to report for each kind of damage.
BROKEN_REASONS: tuple[str, ...] = ("missing_file", "zero_bytes", "truncated", "corrupt", "unsupported_mode")

JPEG_QUALITY = 90
PNG_COMPRESS_LEVEL = 1  # PAD-UFES-20 ships PNGs; the fastest level keeps generation quick (output stays deterministic)


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> int:
    """Comma-separated, header first, '\\n' line ends, minimal quoting; returns the number of data rows."""
    count = 0
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(columns)
        for row in rows:
            unknown = set(row) - set(columns)
            if unknown:
                raise ValueError(f"{path.name}: row has columns {sorted(unknown)} outside the header {list(columns)}")
            writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])
            count += 1
    return count


def encode_image(image: Image.Image, fmt: str) -> bytes:
    """JPEG or PNG bytes with fixed settings and no timestamps, so a seed reproduces identical files."""
    buffer = io.BytesIO()
    if fmt == "JPEG":
        image.save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
    elif fmt == "PNG":
        image.save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)
    else:
        raise ValueError(f"unsupported demo image format {fmt!r}")
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------- broken files
# Each returns the reason code a loader should quarantine the file with, plus a human-readable detail.


def write_zero_bytes(path: Path, image: Image.Image | None = None) -> tuple[str, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return "zero_bytes", "empty file (0 bytes), as left by an interrupted download"


def write_truncated_jpeg(path: Path, image: Image.Image) -> tuple[str, str]:
    data = encode_image(image, "JPEG")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) // 2])
    return "truncated", f"valid JPEG header but only {len(data) // 2} of {len(data)} bytes (cut in half)"


def write_cmyk_jpeg(path: Path, image: Image.Image) -> tuple[str, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    image.convert("CMYK").save(buffer, "JPEG", quality=JPEG_QUALITY)
    path.write_bytes(buffer.getvalue())
    return "unsupported_mode", "JPEG in CMYK colour mode (4 channels); the pipeline expects RGB"


def write_16bit_png(path: Path, image: Image.Image) -> tuple[str, str]:
    grey = np.asarray(image.convert("L"), np.uint16) * 257
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL)  # uint16 -> mode I;16
    path.write_bytes(buffer.getvalue())
    return "unsupported_mode", "16-bit greyscale PNG (mode I;16); the pipeline expects 8-bit RGB"


def write_palette_png(path: Path, image: Image.Image) -> tuple[str, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    image.quantize(colors=64, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        buffer, "PNG", compress_level=PNG_COMPRESS_LEVEL
    )
    path.write_bytes(buffer.getvalue())
    return "unsupported_mode", "palette PNG (mode P, 64 colours); the pipeline expects 8-bit RGB"


def write_not_an_image(path: Path, image: Image.Image | None = None) -> tuple[str, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"<!DOCTYPE html>\n<html><head><title>403 Forbidden</title></head>\n"
        b"<body><h1>Forbidden</h1><p>You need to register to download this file.</p></body></html>\n"
    )
    return "corrupt", "an HTML error page saved under an image file name"


def skip_file(path: Path, image: Image.Image | None = None) -> tuple[str, str]:
    """The metadata names the file but it is never written."""
    return "missing_file", "listed in the metadata but absent from the image folders"


BROKEN_WRITERS = {
    "zero_bytes": write_zero_bytes,
    "truncated_jpeg": write_truncated_jpeg,
    "cmyk_jpeg": write_cmyk_jpeg,
    "16bit_png": write_16bit_png,
    "palette_png": write_palette_png,
    "not_an_image": write_not_an_image,
    "missing_file": skip_file,
}
