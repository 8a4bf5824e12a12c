"""Image integrity checks and content hashes (SHA-256 and a perceptual dHash) that never let one bad file fail a
dataset.

Public dermatology mirrors ship the odd zero-byte download, half-written JPEG, CMYK scan or renamed text
file. Every check here returns a verdict (an `ImageCheck`, or one frame row) with an exact reason code
instead of raising, so ingest can quarantine one file and keep the other ten thousand.

Reason codes: missing_file, zero_bytes, too_large, truncated, corrupt, unsupported_mode, decompression_bomb,
too_small, unreadable, unhashable. "too_large" means more bytes on disk than `max_bytes` (judged by
os.stat, before anything is read); "truncated" means the file stops before its format's end marker (a cut download,
or one padded out with zeros); "corrupt" means it is complete but its content is not a consistent image;
"unhashable" means it passed every check but its dHash could not be computed (e.g. more pixels than
`PIL.Image.MAX_IMAGE_PIXELS` when `max_pixels` is set above it), and the detail names the file. Loaders add
"outside_root" for a symlink whose target leaves the dataset folder: `index_image_files` never indexes one.
The byte and pixel limits are those of `image_open.open_rgb`, which every later stage opens images with, so a
file ingest accepts always opens there.

Every accepted file also gets `image_dhash` (16 hex chars, `perceptual_hash.dhash_bytes` of its bytes), so
cross-dataset dedup and the train/eval contamination check can catch resized or re-saved copies that SHA-256
misses. The hash reuses the check's decode instead of decoding the file a second time: JPEGs are decoded at
the DCT scale dHash asks for, and fully decoded PNGs (and other formats) are hashed as decoded. Both give
exactly the `dhash_bytes` value (draft only changes JPEGs), which the tests pin.

Where the time goes (2-core machine, 600x450 JPEGs of ~40 KB; benchmarks/bench_ingest.py):
  * each file is read once and hashed from memory (read + sha256 ~0.07 ms), after os.stat showed it is at most
    `max_bytes` (the read is capped there too, should it grow meanwhile); the bytes are needed in memory for the
    structure checks anyway, so hashing the blob costs no extra memory, whereas chunks joined for those checks
    would cost a second copy. Where the bytes are not needed (a file that killed its worker) the hash streams;
  * headers are parsed lazily by PIL (size and mode, no pixels), so the bomb, size and mode verdicts
    cost no decode and the bomb check happens before anything is decompressed;
  * JPEG structure (marker segments, end-of-image marker, stray markers in the coded data) and PNG
    structure (every chunk's CRC, IEND) are checked on the raw bytes (~0.05 ms);
  * JPEGs are then decoded reduced in grey (`draft`): libjpeg still runs the whole entropy decoder,
    which is where damage shows, and skips most IDCT, upsampling and colour work. The scale is the one
    dHash uses (the smallest that keeps 8x its 9x8 thumbnail: 1/8 for anything from 576x512 up, 1/2 for
    the demo's 300x225), so that one decode serves both; with `perceptual_hash=False` it is always 1/8.
    The entropy decoder alone is ~0.55 ms, about 40% of a full decode, and is most of our cost;
    `decode=False` (structure only, ~4x faster) is there for corpora so large that this matters, but the
    dHash then needs a decode of its own, so that speed needs `perceptual_hash=False` too;
  * the dHash on top of the decode is a grey conversion and a 9x8 Lanczos resize of the decoded image:
    +0.17 ms per JPEG whatever its size (reduced decode), +0.3 ms per 290x290 PNG and +8 ms per 1600x1200
    PNG (PNGs are hashed at full resolution; the inflate, ~34 ms there, still dominates). Hashing the bytes
    separately would instead cost a second decode, ~2x the check for JPEGs and PNGs alike;
  * a process pool fed chunks of a few hundred paths, so IPC is paid per chunk, not per file. Always a pool,
    even for one file: a decoder crash or the OOM killer then costs a quarantine row, not the calling process
    (a Dagster step). A forked pool costs ~5 ms over checking 5 files in-process (~10 ms); with forkserver or
    spawn (chosen while other threads run) ~0.5 s per call, mostly importing this module in the worker.

Pillow silences libjpeg's "Corrupt JPEG data" warnings: a JPEG whose coded bytes were damaged mid-file
decodes "fine" there. For single-scan JPEGs (what cameras and PIL write) we therefore check that the
coded data has the length the frame needs: the decoder gets the data up to the end-of-image marker in two
steps, then a few bytes of filler bits; finishing early (spare coded bytes) or eating past the filler
(missing bytes) both mean the bitstream is inconsistent. Damage that keeps the length (a flipped bit,
say) and damage inside progressive files are not detectable this way and are not claimed.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import re
import stat
import sys
import threading
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, UnidentifiedImageError

from skinr1_pipeline.data.image_open import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageLimitError,
    NotARegularFile,
    read_bounded,
    refused_by_pillow,
    too_many_pixels,
)

# DRAFT_SIZE is the JPEG draft request `dhash_bytes` makes: the check decodes at that scale so its decode can be
# hashed (the tests pin that the two stay equal).
from skinr1_pipeline.data.perceptual_hash import (
    DRAFT_SIZE,
    ImageHashError,
    dhash,
    dhash_bytes,
    dhash_hex,
)

if TYPE_CHECKING:  # pandas is imported lazily: pool workers never need it
    import pandas as pd

DEFAULT_MIN_SIDE = 16
ACCEPTED_MODES: tuple[str, ...] = ("RGB", "RGBA", "L", "LA")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
REASONS: tuple[str, ...] = (
    "missing_file",
    "zero_bytes",
    "too_large",
    "truncated",
    "corrupt",
    "unsupported_mode",
    "decompression_bomb",
    "too_small",
    "unreadable",
    "unhashable",
)
FRAME_COLUMNS: tuple[str, ...] = (
    "image_path",
    "ok",
    "reason",
    "detail",
    "image_sha256",
    "image_dhash",
    "image_width",
    "image_height",
    "image_format",
    "image_mode",
)
_HASH_CHUNK = 1 << 20
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Inside entropy-coded JPEG data 0xFF is always followed by 0x00 (stuffing), 0xD0-0xD7 (restart) or
# 0xFF (fill); any other pair is the marker that ends the scan.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Markers that may follow a scan (DHT, DAC, DNL, DQT, DRI, SOS, APPn, COM); anything else there is damage.
_BETWEEN_SCANS = frozenset([0xC4, 0xCC, 0xDC, 0xDB, 0xDD, 0xDA, 0xFE, *range(0xE0, 0xF0)])
# Eight stuffed 0xFF bytes = 64 one-bits. A consistent stream needs at most 8 bytes past its end as
# lookahead (libjpeg-turbo refills a 64-bit bit buffer); all-ones is never a valid Huffman code, so a
# stream still owing symbols burns 17 bits per symbol and asks for more than there is.
_FILLER = b"\xff\x00" * 8
# A decoder that has every block it needs with at least this many coded bytes unread saw spare data.
_SPARE_BYTES = 32


@dataclass(frozen=True)
class ImageCheck:
    """The verdict on one file. Header facts (size, format, mode) are filled whenever they could be read,
    also for rejected files; sha256 is None only when the bytes were not read (missing, unreadable, too large).
    dhash (16 hex chars, see `perceptual_hash.dhash_hex`) is set for accepted files only, and None when hashing
    was turned off."""

    image_path: str
    ok: bool
    reason: str | None
    detail: str
    sha256: str | None
    width: int | None
    height: int | None
    format: str | None
    mode: str | None
    dhash: str | None = None


class _Reject(Exception):
    """Internal: stop checking one file, with a reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------------------------------
# One file
# --------------------------------------------------------------------------------------------------


def inspect_image(
    path: str | os.PathLike[str],
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    decode: bool = True,
    perceptual_hash: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ImageCheck:
    """Read, hash and validate one image file; never raises for a bad file.

    `max_bytes` is judged from os.stat, before anything is read (a bigger file is "too_large", with no sha256);
    `max_pixels` from the header, before anything is decoded. `decode=False` skips the JPEG entropy decode and the
    PNG inflate (structure, CRCs, header, size and mode are still checked), though the dHash of an accepted file
    still decodes it. `perceptual_hash=False` leaves `dhash` None. A file whose dHash fails after every check
    passed is rejected as "unhashable", never raised.
    """
    spath = os.fspath(path)
    try:
        data = read_bounded(spath, max_bytes)
    except ImageLimitError as exc:
        return _verdict(spath, exc.reason, exc.detail)
    except NotARegularFile as exc:
        return _verdict(spath, "unreadable", str(exc).removeprefix(f"{spath}: "))
    except FileNotFoundError:
        return _verdict(spath, "missing_file", "no file at this path")
    except PermissionError as exc:
        return _verdict(spath, "unreadable", f"permission denied: {exc.strerror or exc}")
    except IsADirectoryError:
        return _verdict(spath, "unreadable", "path is a directory, not a file")
    except OSError as exc:
        return _verdict(spath, "unreadable", f"{type(exc).__name__}: {exc.strerror or exc}")

    sha = hashlib.sha256(data).hexdigest()
    if not data:
        return _verdict(spath, "zero_bytes", "file is empty (0 bytes)", sha)

    header: list = [None, None, None, None]  # width, height, format, mode, as far as known
    try:
        decoded_hash = _check_bytes(data, header, max_pixels, min_side, decode, perceptual_hash)
    except _Reject as rej:
        return _verdict(spath, rej.reason, rej.detail, sha, header)
    except Exception as exc:  # noqa: BLE001 - a decoder surprise must not take the batch down
        return _verdict(spath, "corrupt", f"unexpected {type(exc).__name__}: {exc}", sha, header)
    image_dhash: str | None = None
    if perceptual_hash:
        try:
            image_dhash = dhash_hex(decoded_hash if decoded_hash is not None else dhash_bytes(data, spath))
        except ImageHashError as exc:  # its message names the file and why
            return _verdict(spath, "unhashable", str(exc), sha, header)
        except Exception as exc:  # noqa: BLE001 -- like a decoder surprise above: one file, not the batch
            return _verdict(
                spath, "unhashable", f"cannot hash image {spath!r}: unexpected {type(exc).__name__}: {exc}", sha, header
            )
    return ImageCheck(spath, True, None, "", sha, *header, image_dhash)


def _file_sha256(path: str, max_bytes: int) -> str | None:
    """SHA-256 of a file streamed in chunks (bounded memory); None when unreadable, not regular or over the limit."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > max_bytes:
            return None
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
        return digest.hexdigest()
    except OSError:
        return None


def _verdict(path: str, reason: str, detail: str, sha: str | None = None, header: list | None = None) -> ImageCheck:
    width, height, fmt, mode = header or (None, None, None, None)
    return ImageCheck(path, False, reason, detail, sha, width, height, fmt, mode, None)


def _check_bytes(
    data: bytes, header: list, max_pixels: int, min_side: int, decode: bool, want_hash: bool = False
) -> int | None:
    """Raise _Reject unless `data` is a sound, usable image, filling `header` as facts become known.

    Order: header first (a bomb is named as one even when also cut short), then structure, size, mode,
    and last the decode, which only a sound file with a usable mode is worth. With `want_hash`, JPEGs are
    decoded at dHash's draft scale and the return value is the file's dHash taken from that decode (None
    when there was no decode to reuse, or it could not be hashed: the caller then hashes the bytes).
    """
    is_jpeg = data.startswith(_JPEG_MAGIC)
    is_png = data.startswith(_PNG_MAGIC)
    structural: _Reject | None = None
    scan: tuple[int, int] | None = None
    try:
        if is_jpeg:
            scan = _jpeg_structure(data)
        elif is_png:
            _png_structure(data)
    except _Reject as rej:
        structural = rej

    reader: _MeteredReader | None = None
    if decode and scan is not None and scan[0] == 1:
        # Parse the header from the same buffer the length check will decode from: one open per file.
        reader = _MeteredReader(data, scan[1])
        source: io.BytesIO = reader
    else:
        source = io.BytesIO(data)

    with warnings.catch_warnings():
        # Pillow warns between its own bomb limits; our limit, checked below, decides instead.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(source)
        except Image.DecompressionBombError as exc:
            raise _Reject("decompression_bomb", refused_by_pillow(exc, max_pixels)) from None
        except (UnidentifiedImageError, SyntaxError, ValueError, EOFError, OSError, IndexError) as exc:
            if structural is not None:
                raise structural from None
            raise _Reject("corrupt", _not_an_image(data, exc)) from None

    with im:
        width, height = im.size
        header[:] = [width, height, im.format, im.mode]
        bomb = too_many_pixels(width, height, max_pixels)
        if bomb:
            raise _Reject("decompression_bomb", bomb)
        if structural is not None:
            raise structural
        if width < min_side or height < min_side:
            raise _Reject("too_small", f"{width}x{height} px; both sides must be at least {min_side} px")
        if im.mode not in ACCEPTED_MODES:
            raise _Reject(
                "unsupported_mode",
                f"mode {im.mode!r}{_MODE_NAMES.get(im.mode, ' (16-bit)' if im.mode.startswith('I;16') else '')}"
                f" found; accepted modes are {', '.join(ACCEPTED_MODES)}",
            )
        if reader is not None:
            _decode_jpeg_checked(im, reader, want_hash)
        elif is_jpeg:
            if decode:  # multi-scan (progressive) JPEG: decoded as is, without the length check
                _jpeg_draft(im, want_hash)
                _load(im)
            else:
                return None
        elif decode or not is_png:  # formats without a cheap structure check are always decoded
            _load(im)
        else:
            return None
        return _hash_decoded(im, width * height) if want_hash else None


def _jpeg_draft(im: Image.Image, for_hash: bool) -> None:
    """Pick the JPEG's DCT scale before decoding: dHash's (so the decode can be hashed), or the cheapest 1/8.

    RGB and grey JPEGs (the only modes that get here) are decoded in grey either way, as `dhash_bytes` does.
    """
    mode = "L" if im.mode == "RGB" else im.mode
    im.draft(mode, DRAFT_SIZE if for_hash else _eighth(im.size))


def _hash_decoded(im: Image.Image, header_pixels: int) -> int | None:
    """dHash of an image this module just decoded, equal to `dhash_bytes` of its file: a JPEG was drafted
    exactly as `dhash_bytes` drafts it, and draft changes nothing else. None when `dhash_bytes` must decide
    (it refuses files whose header, not the draft, is above PIL's own pixel limit, with a named error) or
    when hashing the decode failed."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and header_pixels > limit:
        return None
    try:
        return dhash(im)
    except Exception:  # noqa: BLE001 -- e.g. a mode PIL cannot convert: the bytes path reports it
        return None


_MODE_NAMES = {
    "CMYK": " (CMYK print colour)",
    "P": " (palette)",
    "PA": " (palette with alpha)",
    "1": " (1-bit)",
    "I": " (32-bit integer)",
    "F": " (32-bit float)",
    "LAB": " (CIE L*a*b*)",
    "YCbCr": " (raw YCbCr)",
    "RGBX": " (RGB with padding)",
    "RGBa": " (premultiplied RGBA)",
    "La": " (premultiplied LA)",
}


# Signatures of image formats, named in a quarantine detail instead of the file's own bytes.
_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG", "PNG"),
    (b"GIF8", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"RIFF", "RIFF/WebP"),
)


def _not_an_image(data: bytes, exc: BaseException) -> str:
    """Why bytes did not decode, naming the format signature found, never the bytes: a quarantine detail reaches
    Parquet, Dagster metadata and logs, and the file may be anything (a mis-pointed path could be a secrets file)."""
    found = next(
        (f"a {name} signature ({magic.hex(' ')})" for magic, name in _SIGNATURES if data.startswith(magic)),
        "no known image signature",
    )
    if isinstance(exc, UnidentifiedImageError):  # its message names a buffer object, not the file
        return f"not a recognised image format ({found})"
    return f"not a decodable image ({found}): {type(exc).__name__}: {str(exc)[:200]}"


def _eighth(size: tuple[int, int]) -> tuple[int, int]:
    return max(1, size[0] // 8), max(1, size[1] // 8)


def _load(im: Image.Image) -> None:
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, zlib.error) as exc:
        text = str(exc)
        reason = "truncated" if "truncated" in text or isinstance(exc, EOFError) else "corrupt"
        what = f"{im.format or 'image'} data does not decode: {type(exc).__name__}: {text}"
        raise _Reject(reason, what) from None


# --------------------------------------------------------------------------------------------------
# JPEG
# --------------------------------------------------------------------------------------------------


def _jpeg_structure(data: bytes) -> tuple[int, int]:
    """Walk the marker segments; return (number of scans, offset of the end-of-image marker).

    truncated: the file ends before its end-of-image marker (cut download, or one padded with zeros);
    corrupt: a marker that cannot occur where it is, e.g. random bytes written over coded data.
    """
    n = len(data)
    pos = 2
    scans = 0
    while True:
        if pos >= n:
            raise _Reject("truncated", f"JPEG ends after {n:,} bytes, before its end-of-image marker")
        if data[pos] != 0xFF:
            raise _Reject("corrupt", f"JPEG: expected a marker at byte {pos:,}, found 0x{data[pos]:02x}")
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            raise _Reject("truncated", f"JPEG ends after {n:,} bytes, before its end-of-image marker")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            if scans == 0:
                raise _Reject("corrupt", "JPEG has an end-of-image marker before any image data")
            return scans, pos - 2
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue
        if marker < 0xC0 or marker == 0xD8 or (scans and marker not in _BETWEEN_SCANS):
            where = "after the image data began" if scans else "in the header"
            raise _Reject("corrupt", f"JPEG: invalid marker 0xFF{marker:02X} at byte {pos - 2:,} {where}")
        if pos + 2 > n:
            raise _Reject("truncated", f"JPEG ends inside a marker segment at byte {pos:,}")
        length = (data[pos] << 8) | data[pos + 1]
        if length < 2:
            raise _Reject("corrupt", f"JPEG: marker 0xFF{marker:02X} has impossible length {length}")
        pos += length
        if pos > n:
            raise _Reject("truncated", f"JPEG ends inside marker 0xFF{marker:02X} ({n:,} of {pos:,} bytes)")
        if marker == 0xDA:  # start of scan: jump over the entropy-coded data to the marker ending it
            scans += 1
            end = _SCAN_END.search(data, pos)
            if end is None:
                raise _Reject(
                    "truncated", f"JPEG ends inside its image data after {n:,} bytes (no end-of-image marker)"
                )
            pos = end.start()


class _MeteredReader(io.BytesIO):
    """The file as the length check feeds it: coded data up to the end-of-image marker, then filler.

    Once armed, a read never crosses a cut (a little before the coded data ends, and where it ends), so the
    furthest byte served tells how much data the decoder needed. Unarmed, while Pillow parses the header
    with dozens of small reads, `read` is the plain C method.
    """

    def __init__(self, data: bytes, eoi: int) -> None:
        end = eoi
        while data[end - 1] == 0xFF:  # fill bytes before the marker are not data
            end -= 1
        super().__init__(data[:end] + _FILLER)
        self.data_end = end
        self._size = end + len(_FILLER)
        self._cuts = (end - _SPARE_BYTES, end)
        self.served = 0
        self.ran_dry = False
        self.read = super().read  # type: ignore[method-assign]

    def arm(self) -> None:
        self.read = self._metered_read  # type: ignore[method-assign]

    def _metered_read(self, size: int | None = -1) -> bytes:
        pos = self.tell()
        if size is None or size < 0:
            size = self._size - pos
        for cut in self._cuts:
            if pos < cut < pos + size:
                size = cut - pos
                break
        chunk = super().read(size)
        if size and not chunk:
            self.ran_dry = True
        if pos + len(chunk) > self.served:
            self.served = pos + len(chunk)
        return chunk


def _decode_jpeg_checked(im: Image.Image, reader: _MeteredReader, for_hash: bool = False) -> None:
    """Entropy-decode a single-scan JPEG reduced (1/8, or dHash's scale) and check its coded data has the
    needed length. The scale changes only the IDCT; every coded byte is consumed either way."""
    _jpeg_draft(im, for_hash)
    reader.arm()
    short = (
        "JPEG image data is shorter than its frame needs although the end-of-image marker is present "
        "(damaged, or cut and patched, entropy-coded data)"
    )
    try:
        im.load()
    except OSError as exc:
        if reader.ran_dry:
            raise _Reject("corrupt", short) from None
        raise _Reject("corrupt", f"JPEG image data does not decode: {exc}") from None
    if reader.ran_dry:  # only when Pillow is told to pad short files (ImageFile.LOAD_TRUNCATED_IMAGES)
        raise _Reject("corrupt", short)
    if reader.served <= reader.data_end - _SPARE_BYTES:
        raise _Reject(
            "corrupt",
            f"JPEG image data was complete at least {_SPARE_BYTES} bytes before its end at byte "
            f"{reader.data_end:,} (damaged entropy-coded data)",
        )


# --------------------------------------------------------------------------------------------------
# PNG
# --------------------------------------------------------------------------------------------------


def _png_structure(data: bytes) -> None:
    """Walk the chunks to IEND checking every CRC: truncation and bit rot found without inflating."""
    n = len(data)
    view = memoryview(data)
    pos = 8
    while True:
        if pos + 8 > n:
            raise _Reject("truncated", f"PNG ends after {n:,} bytes, before its IEND chunk")
        length = int.from_bytes(data[pos : pos + 4], "big")
        ctype = data[pos + 4 : pos + 8]
        if length > 0x7FFFFFFF or not ctype.isalpha():
            raise _Reject("corrupt", f"PNG: malformed chunk header at byte {pos:,}")
        end = pos + 12 + length
        name = ctype.decode("ascii")
        if end > n:
            raise _Reject("truncated", f"PNG ends inside chunk {name} ({n:,} of {end:,} bytes)")
        if zlib.crc32(view[pos + 4 : end - 4]) != int.from_bytes(data[end - 4 : end], "big"):
            raise _Reject("corrupt", f"PNG: CRC mismatch in chunk {name} at byte {pos:,}")
        if ctype == b"IEND":
            return
        pos = end


# --------------------------------------------------------------------------------------------------
# Many files
# --------------------------------------------------------------------------------------------------


def _inspect_chunk(
    paths: Sequence[str],
    max_pixels: int,
    min_side: int,
    decode: bool,
    perceptual_hash: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[tuple]:
    rows = []  # tuples pickle back from a worker faster than dataclasses
    for p in paths:
        c = inspect_image(
            p,
            max_pixels=max_pixels,
            min_side=min_side,
            decode=decode,
            perceptual_hash=perceptual_hash,
            max_bytes=max_bytes,
        )
        rows.append((c.image_path, c.ok, c.reason, c.detail, c.sha256, c.dhash, c.width, c.height, c.format, c.mode))
    return rows


def _pool_context() -> multiprocessing.context.BaseContext:
    """fork is cheapest (workers inherit every imported module) and safe while this process has a single
    thread; with other threads alive (a Dagster webserver, say) a forked child could inherit a held lock."""
    if sys.platform.startswith("linux") and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _worker_init() -> None:
    """Offer the worker to the OOM killer first: should a decode exhaust memory, the kernel kills the worker (one
    quarantine row) rather than the step that started it. Raising one's own score needs no privilege."""
    try:
        with open("/proc/self/oom_score_adj", "w") as fh:
            fh.write("1000")
    except OSError:  # not Linux, or /proc not mounted: the pool still isolates crashes
        pass


def _run_pool(
    chunks: Sequence[Sequence[str]], n_workers: int, args: tuple, finished: Callable[[int], None] | None = None
) -> list[list[tuple] | None]:
    """Run chunks in a fresh pool; a chunk whose result never came (the pool broke) stays None."""
    results: list[list[tuple] | None] = [None] * len(chunks)
    try:
        with ProcessPoolExecutor(max_workers=n_workers, mp_context=_pool_context(), initializer=_worker_init) as pool:
            futures = {pool.submit(_inspect_chunk, chunk, *args): i for i, chunk in enumerate(chunks)}
            for future in as_completed(futures):
                i = futures[future]
                results[i] = future.result()
                if finished is not None:
                    finished(i)
    except BrokenProcessPool:
        pass
    return results


def _rerun_isolated(chunk: Sequence[str], args: tuple) -> list[tuple]:
    """A worker died (a decoder crash, or the OOM killer) and took its pool down. Re-run the chunk in a
    fresh pool; if it kills that one too, one file per pool, so only the file that kills is quarantined."""
    (again,) = _run_pool([chunk], 1, args)
    if again is not None:
        return again
    max_bytes = args[4]
    rows: list[tuple] = []
    for path in chunk:
        (one,) = _run_pool([[path]], 1, args)
        rows.extend(one if one is not None else [_crash_row(path, max_bytes)])
    return rows


def _crash_row(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple:
    detail = "checking this file killed the worker process (decoder crash or out of memory)"
    return (path, False, "corrupt", detail, _file_sha256(path, max_bytes), None, None, None, None, None)


def inspect_images(
    paths: Iterable[str | os.PathLike[str]],
    workers: int | None = None,
    chunk_size: int = 256,
    progress: Callable[[int, int], None] | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int = DEFAULT_MIN_SIDE,
    decode: bool = True,
    perceptual_hash: bool = True,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> pd.DataFrame:
    """`inspect_image` over many paths in a chunked process pool: one row per path, in input order
    (columns FRAME_COLUMNS), never raising for a bad file.

    workers=None uses os.cpu_count() worker processes (never more than there are chunks). Checks never run in
    this process, whatever the batch size: a file that kills its worker (a decoder crash, or the OOM killer) is
    isolated by re-running its chunk and comes back as "corrupt", and the caller carries on. `progress(done,
    total)` is called here after each chunk. `image_dhash` is filled for accepted files (None elsewhere, or
    everywhere with perceptual_hash=False).
    """
    import pandas as pd

    items = [os.fspath(p) for p in paths]
    total = len(items)
    chunk_size = max(1, int(chunk_size))
    chunks = [items[i : i + chunk_size] for i in range(0, total, chunk_size)]
    n_workers = (os.cpu_count() or 1) if workers is None else max(1, int(workers))
    n_workers = min(n_workers, len(chunks))

    args = (max_pixels, min_side, decode, perceptual_hash, max_bytes)
    rows: list[tuple] = []
    if chunks:
        done = 0

        def finished(i: int) -> None:
            nonlocal done
            done += len(chunks[i])
            if progress is not None:
                progress(done, total)

        results = _run_pool(chunks, n_workers, args, finished)
        for i, part in enumerate(results):
            if part is None:  # the pool broke (a worker died) before this chunk finished
                results[i] = _rerun_isolated(chunks[i], args)
                finished(i)
        for part in results:
            rows.extend(part or ())

    if rows:
        frame = pd.DataFrame.from_records(rows, columns=list(FRAME_COLUMNS))
    else:
        frame = pd.DataFrame({c: pd.Series(dtype="object") for c in FRAME_COLUMNS})
    frame["ok"] = frame["ok"].astype(bool)
    frame["image_width"] = frame["image_width"].astype("Int64")
    frame["image_height"] = frame["image_height"].astype("Int64")
    return frame


# --------------------------------------------------------------------------------------------------
# Finding files
# --------------------------------------------------------------------------------------------------


def index_image_files(
    root: str | os.PathLike[str],
    extensions: Iterable[str] = IMAGE_EXTENSIONS,
    *,
    outside: list[tuple[Path, Path]] | None = None,
) -> dict[str, list[Path]]:
    """Map lower-cased file stem -> every image path under `root` (sorted), so a loader finds
    `<image_id>.jpg` however a mirror nests it. A stem seen twice keeps both; the caller reports ambiguity.

    Paths are absolute (root made absolute; symlinks kept as the mirror laid them out), and every one lies under
    the root once symlinks are resolved: a file or directory symlink whose target leaves the root's real location
    is never indexed (nor entered); each is appended to `outside` as (link, resolved target), so the caller can
    count and report it rather than drop it unseen. Why: a dataset folder is data from elsewhere, and a link in it
    must not make ingest read (and publish hashes or errors about) files outside it.

    An explicit os.scandir walk (file types come from the directory listing, no stat per file) is 2-3x faster than
    Path.rglob plus is_file(); only symlinks are resolved. Directory symlinks inside the root are followed once
    each (loops cut by inode); macOS resource forks (`._*` files, `__MACOSX/`) and unreadable directories are
    skipped.
    """
    wanted = {(e if e.startswith(".") else "." + e).lower() for e in extensions}
    found: dict[str, list[str]] = {}
    seen_dirs: set[tuple[int, int]] = set()
    top = os.path.abspath(os.fspath(root))
    real_root = os.path.realpath(top)

    def escapes(link: str) -> bool:
        target = os.path.realpath(link)
        if target == real_root or target.startswith(real_root.rstrip(os.sep) + os.sep):
            return False
        if outside is not None:
            outside.append((Path(link), Path(target)))
        return True

    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            st = os.stat(directory)
            if (st.st_dev, st.st_ino) in seen_dirs:
                continue
            seen_dirs.add((st.st_dev, st.st_ino))
            with os.scandir(directory) as entries:
                for entry in entries:
                    name = entry.name
                    try:
                        if entry.is_dir():
                            if name != "__MACOSX" and not (entry.is_symlink() and escapes(entry.path)):
                                stack.append(entry.path)
                            continue
                    except OSError:
                        continue
                    if name.startswith("._"):
                        continue
                    stem, ext = os.path.splitext(name)
                    if ext.lower() in wanted and not (entry.is_symlink() and escapes(entry.path)):
                        found.setdefault(stem.lower(), []).append(entry.path)
        except OSError:
            continue
    return {stem: [Path(p) for p in sorted(ps)] for stem, ps in found.items()}
