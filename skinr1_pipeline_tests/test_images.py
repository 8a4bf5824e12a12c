"""Image integrity checks: every bad-input case is a tiny file built in tmp_path, with its exact reason code."""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import re
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile

from skinr1_pipeline.data.images import (
    FRAME_COLUMNS,
    REASONS,
    ImageCheck,
    index_image_files,
    inspect_image,
    inspect_images,
)
from skinr1_pipeline.data.perceptual_hash import dhash, dhash_bytes, dhash_hex, hamming
from skinr1_pipeline.data.schema import IMAGE_COLUMNS

# --------------------------------------------------------------------------------------------------
# builders
# --------------------------------------------------------------------------------------------------


def _picture(width: int = 192, height: int = 144, seed: int = 0) -> Image.Image:
    """Smooth colour blobs plus noise, so JPEG entropy data looks like a photo's, not a flat field's."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray((rng.random((4, 5, 3)) * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(base).astype(np.int16) + rng.integers(-12, 13, (height, width, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _encode(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _jpeg_eoi(data: bytes) -> int:
    assert data.endswith(b"\xff\xd9")
    return len(data) - 2


def _scan_start(data: bytes) -> int:
    sos = data.index(b"\xff\xda")
    return sos + 2 + struct.unpack(">H", data[sos + 2 : sos + 4])[0]


def _png_chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims a size in its IHDR and carries no pixel data at all (valid CRCs, IEND present)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IEND", b"")


def _reason(path: Path, **kw) -> str | None:
    return inspect_image(path, **kw).reason


@pytest.fixture
def good_jpeg(tmp_path: Path) -> Path:
    return _write(tmp_path, "good.jpg", _encode(_picture(), "JPEG", quality=90))


@pytest.fixture
def good_png(tmp_path: Path) -> Path:
    return _write(tmp_path, "good.png", _encode(_picture(), "PNG"))


# --------------------------------------------------------------------------------------------------
# good files
# --------------------------------------------------------------------------------------------------


def test_valid_rgb_jpeg_passes_with_hash_and_size(good_jpeg: Path) -> None:
    check = inspect_image(good_jpeg)
    assert check == ImageCheck(
        image_path=str(good_jpeg),
        ok=True,
        reason=None,
        detail="",
        sha256=hashlib.sha256(good_jpeg.read_bytes()).hexdigest(),
        width=192,
        height=144,
        format="JPEG",
        mode="RGB",
        dhash=dhash_hex(dhash_bytes(good_jpeg.read_bytes())),
    )


def test_valid_rgb_png_passes_with_hash_and_size(good_png: Path) -> None:
    check = inspect_image(good_png)
    assert check.ok and check.reason is None
    assert check.sha256 == hashlib.sha256(good_png.read_bytes()).hexdigest()
    assert (check.width, check.height, check.format, check.mode) == (192, 144, "PNG", "RGB")


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA"])
def test_accepted_png_modes_pass(tmp_path: Path, mode: str) -> None:
    path = _write(tmp_path, f"m_{mode}.png", _encode(_picture().convert(mode), "PNG"))
    check = inspect_image(path)
    assert check.ok, check.detail
    assert check.mode == mode


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("progressive", {"progressive": True}),
        ("optimized", {"optimize": True}),
        ("restart_markers", {"restart_marker_blocks": 3}),
        ("subsampling_444", {"subsampling": 0, "quality": 95}),
        ("low_quality", {"quality": 15}),
    ],
)
def test_jpeg_encoder_variants_pass(tmp_path: Path, name: str, kwargs: dict) -> None:
    path = _write(tmp_path, f"{name}.jpg", _encode(_picture(seed=3), "JPEG", **kwargs))
    check = inspect_image(path)
    assert check.ok, check.detail


def test_grey_jpeg_and_odd_sizes_pass(tmp_path: Path) -> None:
    grey = _write(tmp_path, "grey.jpg", _encode(_picture().convert("L"), "JPEG"))
    odd = _write(tmp_path, "odd.jpg", _encode(_picture(601 // 3, 449 // 3), "JPEG"))
    smallest = _write(tmp_path, "sixteen.jpg", _encode(_picture(16, 16), "JPEG"))
    assert inspect_image(grey).mode == "L" and inspect_image(grey).ok
    assert inspect_image(odd).ok
    assert inspect_image(smallest).ok


def test_bytes_after_end_of_image_are_tolerated(tmp_path: Path) -> None:
    data = _encode(_picture(), "JPEG")
    assert inspect_image(_write(tmp_path, "zeros.jpg", data + bytes(300))).ok
    assert inspect_image(_write(tmp_path, "trailer.jpg", data + b"camera trailer" * 20)).ok
    assert inspect_image(_write(tmp_path, "fill.jpg", data[:-2] + b"\xff\xff\xff\xd9")).ok


def test_a_png_named_jpg_is_judged_by_content(tmp_path: Path) -> None:
    check = inspect_image(_write(tmp_path, "actually_png.jpg", _encode(_picture(), "PNG")))
    assert check.ok and check.format == "PNG"


# --------------------------------------------------------------------------------------------------
# perceptual hash (image_dhash)
# --------------------------------------------------------------------------------------------------

HEX16 = re.compile(r"[0-9a-f]{16}")


def _reencoded(data: bytes, scale: float = 0.8, quality: int = 85) -> bytes:
    """What a mirror does to a photograph: resize it and save it again as JPEG."""
    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
    size = (round(rgb.width * scale), round(rgb.height * scale))
    return _encode(rgb.resize(size, Image.Resampling.BICUBIC), "JPEG", quality=quality)


def test_dhash_is_16_hex_chars_and_equal_for_identical_bytes(tmp_path: Path) -> None:
    data = _encode(_picture(seed=4), "JPEG", quality=90)
    a = inspect_image(_write(tmp_path, "a/one.jpg", data))
    b = inspect_image(_write(tmp_path, "b/renamed_copy.jpg", data))
    other = inspect_image(_write(tmp_path, "other.jpg", _encode(_picture(seed=5), "JPEG", quality=90)))
    assert a.ok and b.ok and other.ok
    assert HEX16.fullmatch(a.dhash) and a.dhash == b.dhash
    assert hamming(a.dhash, other.dhash) > 10


def test_reencoded_jpeg_copy_is_within_a_few_bits(tmp_path: Path) -> None:
    for seed in range(6):
        original = _encode(_picture(400, 300, seed=seed), "JPEG", quality=90)
        first = inspect_image(_write(tmp_path, f"orig{seed}.jpg", original))
        copy = inspect_image(_write(tmp_path, f"copy{seed}.jpg", _reencoded(original)))
        assert first.ok and copy.ok
        assert first.sha256 != copy.sha256  # invisible to the byte hash ...
        assert hamming(first.dhash, copy.dhash) <= 3, seed  # ... but not to the perceptual one


def _exif_rotated(fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees
    return _encode(_picture(seed=7), fmt, exif=exif.tobytes())


@pytest.mark.parametrize(
    "name, data",
    [
        ("small.jpg", _encode(_picture(300, 225, seed=1), "JPEG", quality=90)),  # decoded at 1/2 for dHash
        ("large.jpg", _encode(_picture(1200, 900, seed=2), "JPEG", quality=90)),  # 1/8
        ("odd.jpg", _encode(_picture(201, 149, seed=3), "JPEG")),
        ("grey.jpg", _encode(_picture(seed=4).convert("L"), "JPEG")),
        ("progressive.jpg", _encode(_picture(640, 480, seed=5), "JPEG", progressive=True)),
        ("restart.jpg", _encode(_picture(seed=6), "JPEG", restart_marker_blocks=3)),
        ("rgb.png", _encode(_picture(seed=8), "PNG")),
        ("la.png", _encode(_picture(seed=9).convert("LA"), "PNG")),
        ("rgba.png", _encode(_picture(seed=10).convert("RGBA"), "PNG")),
        ("rotated.jpg", _exif_rotated("JPEG")),
        ("rotated.png", _exif_rotated("PNG")),
        ("picture.bmp", _encode(_picture(seed=11), "BMP")),
    ],
)
@pytest.mark.parametrize("decode", [True, False])
def test_dhash_taken_from_the_check_decode_equals_hashing_the_file(
    tmp_path: Path, name: str, data: bytes, decode: bool
) -> None:
    # The check hashes its own decode instead of decoding twice; the stored value must still be the file's.
    path = _write(tmp_path, name, data)
    check = inspect_image(path, decode=decode)
    assert check.ok, check.detail
    assert check.dhash == dhash_hex(dhash_bytes(data)) == dhash_hex(dhash(path))


def test_perceptual_hash_can_be_turned_off(good_jpeg: Path) -> None:
    check = inspect_image(good_jpeg, perceptual_hash=False)
    assert check.ok and check.dhash is None
    frame = inspect_images([good_jpeg], workers=1, perceptual_hash=False)
    assert frame["image_dhash"].isna().all()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_a_file_that_cannot_be_dhashed_is_unhashable_not_a_crash(tmp_path: Path, monkeypatch, fmt: str) -> None:
    # Our limit lets the file through, PIL's own (which dHash enforces) does not: a valid image, no hash.
    path = _write(tmp_path, f"wide.{fmt.lower()}", _encode(_picture(), fmt))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 192 * 144 - 1)
    check = inspect_image(path)
    assert (check.ok, check.reason, check.dhash) == (False, "unhashable", None)
    assert str(path) in check.detail and "MAX_IMAGE_PIXELS" in check.detail
    assert check.sha256 and (check.width, check.height) == (192, 144)


def test_an_unexpected_dhash_error_is_unhashable_and_the_batch_goes_on(tmp_path: Path, monkeypatch) -> None:
    from skinr1_pipeline.data import images

    paths, expected = _zoo(tmp_path)
    unlucky = _write(tmp_path, "unlucky.png", _encode(_picture(seed=12), "PNG"))
    real = images.dhash_bytes

    def failing(data: bytes, name: str = "<bytes>") -> int:
        if name.endswith("unlucky.png"):
            raise RuntimeError("hash backend exploded")
        return real(data, name)

    monkeypatch.setattr(images, "_hash_decoded", lambda im, pixels: None)  # every hash from the bytes
    monkeypatch.setattr(images, "dhash_bytes", failing)
    # The check runs in a worker; only a forked one inherits the patches (other tests may leave threads alive).
    monkeypatch.setattr(images, "_pool_context", lambda: multiprocessing.get_context("fork"))
    frame = inspect_images([*paths, unlucky], workers=1)
    row = frame.iloc[-1]
    assert (row["ok"], row["reason"], row["image_dhash"]) == (False, "unhashable", None)
    assert str(unlucky) in row["detail"] and "RuntimeError: hash backend exploded" in row["detail"]
    assert frame["reason"].iloc[:-1].tolist() == list(expected.values())
    assert frame["image_dhash"].iloc[:-1].notna().tolist() == [r is None for r in expected.values()]


# --------------------------------------------------------------------------------------------------
# bad files: one reason code each
# --------------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    check = inspect_image(tmp_path / "nope.jpg")
    assert (check.ok, check.reason, check.sha256) == (False, "missing_file", None)


def test_zero_bytes(tmp_path: Path) -> None:
    assert _reason(_write(tmp_path, "empty.jpg", b"")) == "zero_bytes"


def test_jpeg_cut_at_half_is_truncated(tmp_path: Path) -> None:
    data = _encode(_picture(), "JPEG")
    check = inspect_image(_write(tmp_path, "half.jpg", data[: len(data) // 2]))
    assert check.reason == "truncated"
    assert (check.width, check.height) == (192, 144)  # header facts still reported


def test_jpeg_cut_then_zero_padded_to_full_length_is_truncated(tmp_path: Path) -> None:
    data = _encode(_picture(), "JPEG")
    half = len(data) // 2
    assert _reason(_write(tmp_path, "padded.jpg", data[:half] + bytes(len(data) - half))) == "truncated"


def test_jpeg_cut_inside_its_header_is_truncated(tmp_path: Path) -> None:
    data = _encode(_picture(), "JPEG")
    assert _reason(_write(tmp_path, "head.jpg", data[:40])) == "truncated"


def test_png_cut_at_half_is_truncated(tmp_path: Path) -> None:
    data = _encode(_picture(), "PNG")
    assert _reason(_write(tmp_path, "half.png", data[: len(data) // 2])) == "truncated"


def test_jpeg_with_zeroed_entropy_bytes_and_intact_eoi_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(_encode(_picture(), "JPEG", quality=90))
    start, end = _scan_start(data), _jpeg_eoi(bytes(data))
    middle = (start + end) // 2
    data[middle - 600 : middle + 600] = bytes(1200)
    assert data.endswith(b"\xff\xd9")
    path = _write(tmp_path, "damaged.jpg", bytes(data))
    # Pillow alone decodes this "fine" (it silences libjpeg's warnings); the length check does not.
    Image.open(path).convert("RGB")
    assert _reason(path) == "corrupt"
    # The structure-only mode trades exactly this case for speed.
    assert inspect_image(path, decode=False).ok


def test_jpeg_with_coded_bytes_cut_out_is_corrupt(tmp_path: Path) -> None:
    data = _encode(_picture(), "JPEG")
    start, end = _scan_start(data), _jpeg_eoi(data)
    spliced = data[: (start + end) // 2] + data[end:]  # second half of the coded data gone, EOI kept
    assert _reason(_write(tmp_path, "spliced.jpg", spliced)) == "corrupt"


def test_jpeg_with_random_bytes_written_over_its_data_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(_encode(_picture(), "JPEG"))
    middle = (_scan_start(data) + _jpeg_eoi(bytes(data))) // 2
    data[middle : middle + 512] = np.random.default_rng(7).integers(0, 256, 512, dtype=np.uint8).tobytes()
    assert _reason(_write(tmp_path, "noise.jpg", bytes(data))) == "corrupt"


def test_png_with_a_flipped_byte_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(_encode(_picture(), "PNG"))
    data[data.index(b"IDAT") + 40] ^= 0x10
    assert _reason(_write(tmp_path, "rot.png", bytes(data))) == "corrupt"


def test_text_file_named_jpg_is_corrupt(tmp_path: Path) -> None:
    check = inspect_image(_write(tmp_path, "readme.jpg", b"404 Not Found\n<html>nothing here</html>\n"))
    assert check.reason == "corrupt"
    assert "no known image signature" in check.detail and "404" not in check.detail  # never the file's bytes
    assert check.sha256 is not None


def test_jpeg_magic_with_garbage_after_is_corrupt(tmp_path: Path) -> None:
    assert _reason(_write(tmp_path, "magic.jpg", b"\xff\xd8\xff" + b"\x00garbage" * 50)) == "corrupt"


def test_cmyk_jpeg_is_unsupported_mode(tmp_path: Path) -> None:
    check = inspect_image(_write(tmp_path, "cmyk.jpg", _encode(_picture().convert("CMYK"), "JPEG")))
    assert check.reason == "unsupported_mode"
    assert "CMYK" in check.detail and "RGB, RGBA, L, LA" in check.detail
    assert check.mode == "CMYK"


def test_16_bit_png_is_unsupported_mode(tmp_path: Path) -> None:
    im = Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60)
    path = _write(tmp_path, "deep.png", _encode(im, "PNG"))
    assert Image.open(path).mode.startswith("I;16")
    check = inspect_image(path)
    assert check.reason == "unsupported_mode"
    assert "I;16" in check.detail and "16-bit" in check.detail


@pytest.mark.parametrize(
    "mode, fmt",
    [("P", "PNG"), ("1", "PNG"), ("F", "TIFF"), ("I", "TIFF"), ("CMYK", "TIFF"), ("LAB", "TIFF")],
)
def test_palette_bilevel_float_and_other_modes_are_unsupported(tmp_path: Path, mode: str, fmt: str) -> None:
    path = _write(tmp_path, f"mode_{mode}.{fmt.lower()}", _encode(_picture().convert(mode), fmt))
    assert Image.open(path).mode == mode
    check = inspect_image(path)
    assert check.reason == "unsupported_mode"
    assert f"mode {mode!r}" in check.detail and "RGB, RGBA, L, LA" in check.detail


def test_png_claiming_60_megapixels_is_a_bomb_before_any_decode(tmp_path: Path) -> None:
    check = inspect_image(_write(tmp_path, "bomb.png", _png_header_only(10_000, 6_000)))
    assert check.reason == "decompression_bomb"
    assert (check.width, check.height) == (10_000, 6_000)


def test_png_claiming_10_gigapixels_is_a_bomb(tmp_path: Path) -> None:
    # Beyond Pillow's own hard limit, so Pillow refuses the header itself.
    assert _reason(_write(tmp_path, "huge.png", _png_header_only(100_000, 100_000))) == "decompression_bomb"


def test_jpeg_whose_header_claims_a_huge_frame_is_a_bomb(tmp_path: Path) -> None:
    data = bytearray(_encode(_picture(), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 9_000, 9_000)  # height, width
    assert _reason(_write(tmp_path, "liar.jpg", bytes(data))) == "decompression_bomb"


def test_bomb_limit_is_configurable(good_jpeg: Path) -> None:
    assert _reason(good_jpeg, max_pixels=192 * 144 - 1) == "decompression_bomb"
    assert _reason(good_jpeg, max_pixels=192 * 144) is None


def test_file_over_the_byte_limit_is_too_large_and_never_read(tmp_path: Path, good_jpeg: Path, monkeypatch) -> None:
    """A 200 MB `.jpg` used to be read whole (+205 MB RSS): os.stat now refuses it before any read."""
    import skinr1_pipeline.data.images as images

    padded = tmp_path / "padded.jpg"
    with padded.open("wb") as fh:  # a valid JPEG padded (sparsely) past the default limit
        fh.write(good_jpeg.read_bytes())
        fh.truncate(images.DEFAULT_MAX_BYTES + 1)

    def no_reading(*args, **kwargs):
        raise AssertionError("the file was opened although os.stat showed it is over the limit")

    monkeypatch.setattr(images, "open", no_reading, raising=False)
    check = inspect_image(padded)
    assert (check.ok, check.reason, check.sha256) == (False, "too_large", None)
    assert f"{images.DEFAULT_MAX_BYTES + 1:,} bytes" in check.detail and f"{images.DEFAULT_MAX_BYTES:,}" in check.detail
    monkeypatch.undo()
    size = good_jpeg.stat().st_size
    assert _reason(good_jpeg, max_bytes=size - 1) == "too_large"
    assert _reason(good_jpeg, max_bytes=size) is None
    assert "too_large" in REASONS


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_named_pipe_is_unreadable_without_blocking(tmp_path: Path) -> None:
    import threading

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    verdict: list = []
    worker = threading.Thread(target=lambda: verdict.append(inspect_image(fifo)), daemon=True)
    worker.start()
    worker.join(10)  # opening a FIFO for reading blocks until a writer appears: that must never happen
    assert verdict, "inspect_image blocked on a named pipe"
    assert verdict[0].reason == "unreadable" and "not a regular file" in verdict[0].detail


def test_tiny_image_is_too_small(tmp_path: Path) -> None:
    path = _write(tmp_path, "tiny.png", _encode(_picture(8, 8), "PNG"))
    assert _reason(path) == "too_small"
    assert _reason(path, min_side=8) is None
    assert _reason(_write(tmp_path, "thin.jpg", _encode(_picture(300, 12), "JPEG"))) == "too_small"


def test_directory_is_unreadable(tmp_path: Path) -> None:
    (tmp_path / "folder.jpg").mkdir()
    assert _reason(tmp_path / "folder.jpg") == "unreadable"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_permission_denied_is_unreadable(good_jpeg: Path) -> None:
    good_jpeg.chmod(0)
    try:
        check = inspect_image(good_jpeg)
    finally:
        good_jpeg.chmod(0o644)
    assert (check.reason, check.sha256) == ("unreadable", None)


def test_os_errors_while_reading_are_unreadable(good_jpeg: Path, monkeypatch) -> None:
    # Runs as root too (where chmod 000 cannot deny a read): the OS error is simulated at the opener's open().
    import skinr1_pipeline.data.image_open as images

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(images, "open", denied, raising=False)
    check = inspect_image(good_jpeg)
    assert (check.reason, check.sha256) == ("unreadable", None)
    assert "permission denied" in check.detail.lower()

    def io_error(*args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(images, "open", io_error, raising=False)
    assert _reason(good_jpeg) == "unreadable"


def test_verdicts_do_not_depend_on_pillows_truncated_images_switch(tmp_path: Path, monkeypatch) -> None:
    data = _encode(_picture(), "JPEG")
    start, end = _scan_start(data), _jpeg_eoi(data)
    half = _write(tmp_path, "half.jpg", data[: len(data) // 2])
    spliced = _write(tmp_path, "spliced.jpg", data[: (start + end) // 2] + data[end:])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    assert _reason(half) == "truncated"
    assert _reason(spliced) == "corrupt"


def test_structure_only_mode_still_catches_structural_damage(tmp_path: Path) -> None:
    jpeg = _encode(_picture(), "JPEG")
    png = _encode(_picture(), "PNG")
    rotten = bytearray(png)
    rotten[rotten.index(b"IDAT") + 40] ^= 0x10
    assert _reason(_write(tmp_path, "a.jpg", jpeg[: len(jpeg) // 2]), decode=False) == "truncated"
    assert _reason(_write(tmp_path, "b.png", bytes(rotten)), decode=False) == "corrupt"
    assert _reason(_write(tmp_path, "c.jpg", b"hello"), decode=False) == "corrupt"
    assert _reason(_write(tmp_path, "d.jpg", _encode(_picture().convert("CMYK"), "JPEG")), decode=False) == (
        "unsupported_mode"
    )
    assert inspect_image(_write(tmp_path, "e.png", png), decode=False).ok


# --------------------------------------------------------------------------------------------------
# many files
# --------------------------------------------------------------------------------------------------


def _zoo(tmp_path: Path) -> tuple[list[Path], dict[str, str | None]]:
    """One file per verdict, keyed by name -> expected reason (None = ok)."""
    jpeg = _encode(_picture(), "JPEG")
    zeroed = bytearray(jpeg)
    middle = (_scan_start(jpeg) + _jpeg_eoi(jpeg)) // 2
    zeroed[middle - 600 : middle + 600] = bytes(1200)
    files = {
        "ok.jpg": (jpeg, None),
        "ok.png": (_encode(_picture(seed=1), "PNG"), None),
        "empty.jpg": (b"", "zero_bytes"),
        "half.jpg": (jpeg[: len(jpeg) // 2], "truncated"),
        "zeroed.jpg": (bytes(zeroed), "corrupt"),
        "text.jpg": (b"just text", "corrupt"),
        "cmyk.jpg": (_encode(_picture().convert("CMYK"), "JPEG"), "unsupported_mode"),
        "bomb.png": (_png_header_only(10_000, 6_000), "decompression_bomb"),
        "tiny.png": (_encode(_picture(8, 8), "PNG"), "too_small"),
    }
    paths: dict[str, str | None] = {}
    for name, (data, reason) in files.items():
        paths[str(_write(tmp_path, name, data))] = reason
    paths[str(tmp_path / "missing.jpg")] = "missing_file"
    return [Path(p) for p in paths], paths


def test_inspect_images_mixed_batch_one_worker(tmp_path: Path) -> None:
    paths, expected = _zoo(tmp_path)
    seen: list[tuple[int, int]] = []
    frame = inspect_images(paths, workers=1, progress=lambda done, total: seen.append((done, total)))
    assert list(frame.columns) == list(FRAME_COLUMNS)
    assert set(IMAGE_COLUMNS) <= set(frame.columns)
    assert frame["image_path"].tolist() == [str(p) for p in paths]
    assert frame["reason"].tolist() == list(expected.values())
    assert frame["ok"].tolist() == [r is None for r in expected.values()]
    assert set(frame["reason"].dropna()) <= set(REASONS)
    assert seen[-1] == (len(paths), len(paths))
    good = frame[frame["ok"]]
    assert good["image_sha256"].notna().all() and (good["image_width"] > 0).all()
    assert good["image_dhash"].map(lambda h: bool(HEX16.fullmatch(h))).all()
    assert frame.loc[~frame["ok"], "image_dhash"].isna().all()
    assert frame["image_width"].dtype == "Int64"


def test_inspect_images_pool_matches_in_process_and_keeps_order(tmp_path: Path) -> None:
    paths, expected = _zoo(tmp_path)
    # Enough paths to use the pool, a small chunk size so chunks finish out of order, repeats included.
    rng = np.random.default_rng(0)
    batch = [paths[i] for i in rng.integers(0, len(paths), 150)]
    calls: list[tuple[int, int]] = []
    serial = inspect_images(batch, workers=1)
    pooled = inspect_images(batch, workers=2, chunk_size=7, progress=lambda d, t: calls.append((d, t)))
    pd.testing.assert_frame_equal(serial, pooled)
    assert pooled["image_path"].tolist() == [str(p) for p in batch]
    assert pooled["reason"].tolist() == [expected[str(p)] for p in batch]
    assert calls[-1] == (150, 150) and len(calls) == -(-150 // 7)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="relies on fork carrying the patch into workers")
def test_a_file_that_kills_its_worker_is_quarantined_and_the_batch_goes_on(tmp_path: Path, monkeypatch) -> None:
    import skinr1_pipeline.data.images as images

    paths, expected = _zoo(tmp_path)
    killer = _write(tmp_path, "killer.jpg", _encode(_picture(), "JPEG"))
    real = images.inspect_image

    def crashing(path, **kwargs):
        if os.fspath(path).endswith("killer.jpg"):
            os._exit(3)  # what a segfaulting decoder looks like from the pool
        return real(path, **kwargs)

    monkeypatch.setattr(images, "inspect_image", crashing)
    # Earlier tests in the session may leave threads alive (torch, MLflow), which makes the pool avoid fork;
    # this test needs fork so the patched function reaches the workers.
    monkeypatch.setattr(images, "_pool_context", lambda: multiprocessing.get_context("fork"))
    batch = paths * 8 + [killer] + paths * 2
    frame = inspect_images(batch, workers=2, chunk_size=16)
    assert frame["image_path"].tolist() == [str(p) for p in batch]
    row = frame.iloc[len(paths) * 8]
    assert (row["image_path"], row["ok"], row["reason"]) == (str(killer), False, "corrupt")
    assert "killed the worker" in row["detail"]
    assert row["image_sha256"] == hashlib.sha256(killer.read_bytes()).hexdigest()
    others = frame.drop(index=len(paths) * 8)
    assert others["reason"].tolist() == list(expected.values()) * 10


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="relies on fork carrying the patch into workers")
def test_a_small_batch_is_checked_in_a_worker_so_a_crash_costs_one_row(tmp_path: Path, monkeypatch) -> None:
    """Below 64 files the checks ran in the calling process (the Dagster step): a decoder crash or the OOM killer
    took the step down. Now even one file is checked in a worker, and a worker that dies is one quarantine row."""
    import skinr1_pipeline.data.images as images

    good = _write(tmp_path, "good.jpg", _encode(_picture(), "JPEG"))
    killer = _write(tmp_path, "killer.jpg", _encode(_picture(seed=1), "JPEG"))
    caller = os.getpid()
    real = images.inspect_image

    def crashing(path, **kwargs):
        if os.getpid() == caller:
            raise AssertionError("an image check ran in the calling process")
        if os.fspath(path).endswith("killer.jpg"):
            os._exit(3)  # what a segfaulting decoder or the OOM killer looks like from the pool
        return real(path, **kwargs)

    monkeypatch.setattr(images, "inspect_image", crashing)
    monkeypatch.setattr(images, "_pool_context", lambda: multiprocessing.get_context("fork"))
    seen: list[tuple[int, int]] = []
    frame = inspect_images([good, killer, good], workers=1, progress=lambda d, t: seen.append((d, t)))
    assert frame["reason"].tolist() == [None, "corrupt", None]
    assert "killed the worker" in frame.loc[1, "detail"]
    assert frame.loc[1, "image_sha256"] == hashlib.sha256(killer.read_bytes()).hexdigest()  # streamed
    assert seen[-1] == (3, 3)


def test_pool_without_fork_when_threads_are_running(tmp_path: Path) -> None:
    # With other threads alive the pool must not fork (a child could inherit a held lock).
    import threading

    import skinr1_pipeline.data.images as images

    paths, expected = _zoo(tmp_path)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        assert images._pool_context().get_start_method() != "fork"
        frame = inspect_images(paths * 7, workers=2, chunk_size=20)
    finally:
        stop.set()
        thread.join()
    assert frame["reason"].tolist() == list(expected.values()) * 7


def test_inspect_images_empty_and_default_workers(tmp_path: Path, good_jpeg: Path) -> None:
    empty = inspect_images([])
    assert list(empty.columns) == list(FRAME_COLUMNS) and empty.empty
    frame = inspect_images([good_jpeg, str(good_jpeg)])
    assert frame["ok"].all() and frame["image_sha256"].nunique() == 1


# --------------------------------------------------------------------------------------------------
# index_image_files
# --------------------------------------------------------------------------------------------------


def test_index_image_files_nested_case_insensitive_and_duplicates(tmp_path: Path) -> None:
    root = tmp_path / "mirror"
    a = _write(root, "HAM10000_images_part_1/ISIC_0024306.jpg", b"x")
    b = _write(root, "deep/er/still/ISIC_0024307.JPG", b"x")
    c = _write(root, "part_2/isic_0024306.jpeg", b"x")  # same stem, other folder and case
    d = _write(root, "pngs/Lesion_A.PNG", b"x")
    _write(root, "HAM10000_metadata.csv", b"x")
    _write(root, "notes/ISIC_0024306.txt", b"x")
    _write(root, "HAM10000_images_part_1/._ISIC_0024306.jpg", b"x")  # macOS resource fork
    _write(root, "__MACOSX/HAM10000_images_part_1/ISIC_0099999.jpg", b"x")

    index = index_image_files(root)
    assert set(index) == {"isic_0024306", "isic_0024307", "lesion_a"}
    assert index["isic_0024306"] == sorted([a, c])
    assert index["isic_0024307"] == [b]
    assert index["lesion_a"] == [d]
    assert all(isinstance(p, Path) for ps in index.values() for p in ps)


def test_index_image_files_extension_filter_and_symlink_loop(tmp_path: Path) -> None:
    root = tmp_path / "r"
    _write(root, "x/one.jpg", b"x")
    _write(root, "x/two.png", b"x")
    os.symlink(root, root / "x" / "loop")  # a mirror that links back to its own root
    assert set(index_image_files(root, extensions=("png",))) == {"two"}
    assert set(index_image_files(root)) == {"one", "two"}


def test_index_image_files_never_indexes_symlinks_leading_out_of_the_root(tmp_path: Path) -> None:
    """File and directory symlinks whose target leaves the dataset root were followed and indexed; now each is
    reported in `outside` (link, real target) and never indexed or entered."""
    secret = _write(tmp_path, "elsewhere/ISIC_9.jpg", b"x")
    _write(tmp_path, "elsewhere/deep/ISIC_8.jpg", b"x")
    root = tmp_path / "mirror"
    kept = _write(root, "part_1/ISIC_1.jpg", b"x")
    os.symlink(secret, root / "part_1" / "ISIC_2.jpg")  # file link out
    os.symlink(tmp_path / "elsewhere" / "deep", root / "part_2")  # directory link out
    os.symlink(kept, root / "ISIC_3.jpg")  # file link within the root: fine
    os.symlink(root / "part_1", root / "alias")  # directory link within the root: entered once, same files
    os.symlink(tmp_path / "nowhere.jpg", root / "ISIC_4.jpg")  # dangling, pointing out

    outside: list[tuple[Path, Path]] = []
    index = index_image_files(root, outside=outside)
    assert set(index) == {"isic_1", "isic_3"}
    assert all(str(p.resolve()).startswith(str(root.resolve())) for ps in index.values() for p in ps)
    assert sorted(outside) == sorted(
        [
            (root / "part_1" / "ISIC_2.jpg", secret.resolve()),
            (root / "part_2", (tmp_path / "elsewhere" / "deep").resolve()),
            (root / "ISIC_4.jpg", (tmp_path / "nowhere.jpg").resolve()),
        ]
    )
    assert index_image_files(root) == index  # the collector is optional; containment is not


def test_index_image_files_under_a_symlinked_root_keeps_its_files(tmp_path: Path) -> None:
    real = tmp_path / "disk" / "ham"
    image = _write(real, "ISIC_1.jpg", b"x")
    os.symlink(real, tmp_path / "ham")  # the dataset folder itself is a link (a mounted disk, say)
    outside: list = []
    assert index_image_files(tmp_path / "ham", outside=outside) == {"isic_1": [tmp_path / "ham" / image.name]}
    assert outside == []


def test_index_image_files_on_missing_root_is_empty(tmp_path: Path) -> None:
    assert index_image_files(tmp_path / "absent") == {}


def test_index_image_files_returns_absolute_paths_for_a_relative_root(tmp_path: Path, monkeypatch) -> None:
    image = _write(tmp_path, "data/sub/ISIC_1.jpg", b"x")
    monkeypatch.chdir(tmp_path)
    assert index_image_files("data") == {"isic_1": [image]}


def test_rejection_detail_names_a_signature_never_the_file_bytes(tmp_path: Path) -> None:
    """Quarantine details reach Parquet, Dagster metadata and logs: a mis-pointed path to a secrets file must not
    copy its first bytes there."""
    secret = inspect_image(_write(tmp_path, "passwd.jpg", b"root:x:0:0:root:/root:/bin/bash\n" * 4))
    assert secret.reason == "corrupt" and "root" not in secret.detail and "no known image signature" in secret.detail
    gif = inspect_image(_write(tmp_path, "broken.gif", b"GIF89a" + b"\x00garbage" * 50))
    assert gif.reason == "corrupt" and "GIF signature (47 49 46 38)" in gif.detail and "garbage" not in gif.detail
