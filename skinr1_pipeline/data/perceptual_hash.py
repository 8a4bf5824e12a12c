"""Perceptual image hashes (64-bit difference hash) for near-duplicate detection across datasets and splits.

Why: SHA-256 only catches identical bytes. A copy that was resized and re-saved as JPEG (a mirror re-hosting
ISIC images, a dataset shipping "preprocessed" files) has new bytes and often a new id, and slips through both
cross-dataset dedup and the train/eval contamination check. dHash survives such re-encoding: it keeps only the
sign of the brightness gradient between neighbouring cells of a 9x8 grey thumbnail.

The hash definition is fixed, because stored hashes (`image_dhash`, 16 hex chars) are compared across runs:
EXIF orientation applied, grey ("L"), resized to 9x8 with Lanczos, bit = left cell brighter than its right
neighbour, row-major with the first (top-left) comparison in the most significant bit. JPEG files opened from a
path are decoded at a reduced scale (`draft`, never below 8x the thumbnail) to bound memory and time.

How close counts as "the same image" depends on the corpus (procedural or cropped-from-one-slide images can be
a couple of bits apart), so the threshold is measured with `calibrate_threshold`, not assumed.
"""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:  # pandas is imported lazily: ingest's image-pool workers hash files and never need it
    import pandas as pd

HASH_BITS = 64
HEX_CHARS = HASH_BITS // 4
THUMB_SIZE = (9, 8)  # width, height: 8 comparisons per row, 8 rows
RESAMPLE = Image.Resampling.LANCZOS
# JPEG draft target: DCT scaling stops once either side would drop below this, so the final Lanczos
# resize, not libjpeg's scaling, shapes the thumbnail.
DRAFT_SIZE = (THUMB_SIZE[0] * 8, THUMB_SIZE[1] * 8)
# Distance reported when the reference set is empty: larger than any real distance, so never a match.
NO_MATCH = HASH_BITS + 1
# Pairs (query x reference) compared per block: 2**21 uint64 XORs = 16 MiB of scratch, cache-friendly.
DEFAULT_CHUNK = 1 << 21

_HAS_BITWISE_COUNT = hasattr(np, "bitwise_count")  # numpy >= 2.0
_POPCOUNT8 = np.array([i.bit_count() for i in range(256)], dtype=np.uint8)
_BIT_WEIGHTS = (np.uint64(1) << np.arange(HASH_BITS - 1, -1, -1, dtype=np.uint64)).reshape(THUMB_SIZE[1], -1)
_TRANSPOSE_FOR_ORIENTATION = {  # EXIF orientation -> the transpose that shows the image upright
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112


class ImageHashError(ValueError):
    """A file could not be hashed (missing, not an image, truncated, or too many pixels); names the file."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot hash image {path!r}: {reason}")
        self.path = path
        self.reason = reason


# --------------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------------


def dhash(image: Image.Image | str | os.PathLike[str]) -> int:
    """64-bit difference hash of a PIL image or an image file, as an int in [0, 2**64).

    Files are opened in a `with` block; JPEGs are decoded at reduced scale. A file with more pixels than
    `PIL.Image.MAX_IMAGE_PIXELS`, or one that does not decode, raises `ImageHashError` (a ValueError) naming it.
    A PIL image is hashed as given (full resolution, not modified), so a JPEG hashed from its path and from an
    already-decoded copy may differ by a bit or two; hash files by path (or `dhash_bytes`) wherever hashes are
    stored.
    """
    if isinstance(image, Image.Image):
        return _hash_image(image, draft=False)
    path = os.fspath(image)
    return _hash_source(path, path)


def dhash_bytes(data: bytes, name: str = "<bytes>") -> int:
    """`dhash` of an encoded image file already in memory (same value as hashing the file by path), for callers
    that read the bytes anyway (ingest hashes them with SHA-256); `name` is the file named in errors."""
    return _hash_source(io.BytesIO(data), name)


def _hash_source(source: str | io.BytesIO, name: str) -> int:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own check below decides
            with Image.open(source) as im:
                _check_pixels(im, name)
                return _hash_image(im, draft=True)
    except ImageHashError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageHashError(name, f"more pixels than PIL.Image.MAX_IMAGE_PIXELS allows: {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as exc:  # missing, unidentified, truncated
        raise ImageHashError(name, f"{type(exc).__name__}: {exc}") from exc


def _check_pixels(im: Image.Image, path: str) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    width, height = im.size
    if limit is not None and width * height > limit:
        raise ImageHashError(
            path, f"{width}x{height} = {width * height:,} pixels exceeds PIL.Image.MAX_IMAGE_PIXELS ({limit:,})"
        )


def _hash_image(im: Image.Image, *, draft: bool) -> int:
    try:
        orientation = int(im.getexif().get(_ORIENTATION_TAG, 1))
    except (OSError, ValueError, TypeError, KeyError, SyntaxError, struct.error):  # damaged EXIF: treat as upright
        orientation = 1
    if draft and im.format == "JPEG":
        im.draft("L", DRAFT_SIZE)  # lazily-opened file only: picks the DCT scale before decoding
    grey = im.convert("L")
    if orientation in _TRANSPOSE_FOR_ORIENTATION:
        grey = grey.transpose(_TRANSPOSE_FOR_ORIENTATION[orientation])
    thumb = np.asarray(grey.resize(THUMB_SIZE, RESAMPLE), dtype=np.int16)  # shape (8, 9)
    bits = thumb[:, :-1] > thumb[:, 1:]
    return int(_BIT_WEIGHTS[bits].sum(dtype=np.uint64))


# --------------------------------------------------------------------------------------------------
# Representation
# --------------------------------------------------------------------------------------------------


def dhash_hex(value: int) -> str:
    """The 16-hex-char lower-case form stored in `image_dhash` columns."""
    if not 0 <= int(value) < 1 << HASH_BITS:
        raise ValueError(f"not a 64-bit hash: {value!r}")
    return f"{int(value):0{HEX_CHARS}x}"


def parse_dhash(text: str) -> int:
    """Inverse of `dhash_hex`; raises ValueError on anything but 16 hex chars."""
    if not isinstance(text, str) or len(text.strip()) != HEX_CHARS:
        raise ValueError(f"not a {HEX_CHARS}-hex-char dHash: {text!r}")
    try:
        return int(text.strip(), 16)
    except ValueError:
        raise ValueError(f"not a {HEX_CHARS}-hex-char dHash: {text!r}") from None


def hash_array(hashes: Iterable[int | str] | np.ndarray) -> np.ndarray:
    """Hashes as a 1-D uint64 array: ints, hex strings (`dhash_hex` form), or an int64/uint64 array."""
    if isinstance(hashes, np.ndarray) and hashes.dtype in (np.uint64, np.int64):
        return np.ascontiguousarray(hashes.reshape(-1)).view(np.uint64)
    values = [parse_dhash(h) if isinstance(h, str) else int(h) for h in hashes]
    for v in values:
        if not 0 <= v < 1 << HASH_BITS:
            raise ValueError(f"not a 64-bit hash: {v!r}")
    return np.array(values, dtype=np.uint64)


def hamming(a: int | str, b: int | str) -> int:
    """Number of differing bits between two hashes (ints or hex strings)."""
    x = parse_dhash(a) if isinstance(a, str) else int(a)
    y = parse_dhash(b) if isinstance(b, str) else int(b)
    return (x ^ y).bit_count()


# --------------------------------------------------------------------------------------------------
# Many against many
# --------------------------------------------------------------------------------------------------


def _popcount(x: np.ndarray) -> np.ndarray:
    """Set bits per uint64 element, as uint8 of the same shape."""
    if _HAS_BITWISE_COUNT:
        return np.bitwise_count(x)
    x = np.ascontiguousarray(x)
    return _POPCOUNT8[x.view(np.uint8)].reshape(*x.shape, 8).sum(axis=-1, dtype=np.uint8)


def _blocks(n_query: int, n_reference: int, chunk: int) -> Iterable[tuple[slice, slice]]:
    """Tiles of at most `chunk` pairs: whole reference rows when they fit, else reference slices too."""
    chunk = max(1, int(chunk))
    ref_step = max(1, min(n_reference, chunk))
    query_step = max(1, chunk // ref_step)
    for q0 in range(0, n_query, query_step):
        for r0 in range(0, n_reference, ref_step):
            yield slice(q0, min(q0 + query_step, n_query)), slice(r0, min(r0 + ref_step, n_reference))


def _block_distances(query: np.ndarray, reference: np.ndarray, qs: slice, rs: slice) -> np.ndarray:
    return _popcount(np.bitwise_xor(query[qs, None], reference[None, rs]))


def pairwise_min_distances(
    query: np.ndarray | Sequence[int | str], reference: np.ndarray | Sequence[int | str], chunk: int = DEFAULT_CHUNK
) -> tuple[np.ndarray, np.ndarray]:
    """For each query hash, the smallest Hamming distance to any reference hash and that reference's index.

    Computed in tiles of at most `chunk` pairs, so memory stays ~9 bytes x chunk whatever the sizes. Ties go to
    the lowest reference index. An empty reference gives distance NO_MATCH (65) and index -1 everywhere.
    Returns (min_distance int64[n_query], argmin int64[n_query]).
    """
    q, r = hash_array(query), hash_array(reference)
    best = np.full(len(q), NO_MATCH, dtype=np.uint8)
    where = np.full(len(q), -1, dtype=np.int64)
    if len(q) == 0 or len(r) == 0:
        return best.astype(np.int64), where
    for qs, rs in _blocks(len(q), len(r), chunk):
        dist = _block_distances(q, r, qs, rs)
        arg = dist.argmin(axis=1)
        low = dist[np.arange(len(arg)), arg]
        better = low < best[qs]  # strict: an earlier reference block keeps its tie
        best[qs] = np.where(better, low, best[qs])
        where[qs] = np.where(better, arg + rs.start, where[qs])
    return best.astype(np.int64), where


def near_duplicate_pairs(
    query_hashes: np.ndarray | Sequence[int | str],
    reference_hashes: np.ndarray | Sequence[int | str],
    max_distance: int,
    chunk: int = DEFAULT_CHUNK,
) -> pd.DataFrame:
    """Every (query_index, reference_index, distance) pair with distance <= max_distance, sorted by the indices.

    The output grows with the number of matches: keep max_distance near a calibrated threshold.
    """
    import pandas as pd

    q, r = hash_array(query_hashes), hash_array(reference_hashes)
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    if len(q) and len(r) and max_distance >= 0:
        for qs, rs in _blocks(len(q), len(r), chunk):
            dist = _block_distances(q, r, qs, rs)
            qi, ri = np.nonzero(dist <= max_distance)
            if len(qi):
                parts.append((qi + qs.start, ri + rs.start, dist[qi, ri]))
    if parts:
        qi = np.concatenate([p[0] for p in parts]).astype(np.int64)
        ri = np.concatenate([p[1] for p in parts]).astype(np.int64)
        dist = np.concatenate([p[2] for p in parts]).astype(np.int64)
        order = np.lexsort((ri, qi))
        qi, ri, dist = qi[order], ri[order], dist[order]
    else:
        qi = ri = dist = np.empty(0, dtype=np.int64)
    return pd.DataFrame({"query_index": qi, "reference_index": ri, "distance": dist})


def _distinct_pair_histogram(
    hashes: np.ndarray, keys: np.ndarray, sampled: np.ndarray, chunk: int = DEFAULT_CHUNK
) -> np.ndarray:
    """Counts of distances 0..64 between each sampled image and every image, leaving out pairs with equal `keys`
    (identical bytes, which includes an image with itself) and counting a pair of two sampled images once."""
    is_sampled = np.zeros(len(hashes), dtype=bool)
    is_sampled[sampled] = True
    query, query_keys = hashes[sampled], keys[sampled]
    hist = np.zeros(HASH_BITS + 1, dtype=np.int64)
    for qs, rs in _blocks(len(query), len(hashes), chunk):
        dist = _block_distances(query, hashes, qs, rs)
        columns = np.arange(rs.start, rs.stop)
        skip = query_keys[qs, None] == keys[None, rs]
        skip |= is_sampled[None, rs] & (columns[None, :] < sampled[qs, None])  # already counted from the other side
        hist += np.bincount(dist[~skip], minlength=HASH_BITS + 1)
    return hist


# --------------------------------------------------------------------------------------------------
# Calibration
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ThresholdCalibration:
    """How far apart re-encoded copies and distinct images are in one corpus, and the threshold chosen from it.

    Distinct-pair quantiles are lower quantiles of the integer distances (smallest d with CDF >= q).
    """

    threshold: int
    n_images: int
    n_copies: int
    sampled: tuple[int, ...]  # indices into image_paths of the images that got copies
    copy_distances: tuple[int, ...]  # per sampled image, original to its re-encoded copy
    copy_distance_median: float
    copy_distance_max: int
    n_distinct_pairs: int
    distinct_distance_min: int
    distinct_distance_p01: int
    distinct_distance_median: int
    copies_caught: int  # copies within `threshold` of their original
    false_positive_rate: float  # share of distinct pairs within `threshold`
    max_false_positive_rate: float
    meets_false_positive_target: bool
    seed: int
    scale: float
    jpeg_quality: int

    @property
    def copies_missed(self) -> int:
        return self.n_copies - self.copies_caught

    def describe(self) -> str:
        """One paragraph: what was measured and why the threshold is what it is."""
        text = (
            f"dHash near-duplicate threshold {self.threshold} bits, calibrated on {self.n_images} images "
            f"(seed {self.seed}): {self.n_copies} sampled images were resized to {self.scale:g}x and re-saved as "
            f"JPEG quality {self.jpeg_quality}; copy-to-original distances had median {self.copy_distance_median:g} "
            f"and max {self.copy_distance_max}. Across {self.n_distinct_pairs:,} pairs of distinct images "
            f"(sampled originals against all images, identical files excluded) distances had min "
            f"{self.distinct_distance_min}, 1st percentile {self.distinct_distance_p01} and median "
            f"{self.distinct_distance_median}. "
        )
        if self.copies_caught == self.n_copies and self.meets_false_positive_target:
            text += (
                f"The threshold is the largest copy distance; it catches all {self.n_copies} copies with a "
                f"false-positive rate of {self.false_positive_rate:.4%} on distinct pairs "
                f"(target at most {self.max_false_positive_rate:.4%})."
            )
        elif self.meets_false_positive_target:
            text += (
                f"Catching every copy would push the false-positive rate above {self.max_false_positive_rate:.4%}, "
                f"so the threshold is the largest that stays within it ({self.false_positive_rate:.4%}); "
                f"{self.copies_missed} of {self.n_copies} copies would be missed."
            )
        else:
            text += (
                f"Even distance 0 gives a false-positive rate of {self.false_positive_rate:.4%}, above the target "
                f"{self.max_false_positive_rate:.4%}: distinct images in this corpus share hashes, so dHash matches "
                f"here need review; {self.copies_missed} of {self.n_copies} copies would be missed at 0."
            )
        if self.n_distinct_pairs and 1 / self.n_distinct_pairs > self.max_false_positive_rate:
            text += (
                f" With only {self.n_distinct_pairs:,} distinct pairs the rate cannot be resolved below "
                f"{1 / self.n_distinct_pairs:.4%}: calibrate on more images."
            )
        return text


def _reencoded_copy(im: Image.Image, scale: float, jpeg_quality: int) -> Image.Image:
    rgb = im.convert("RGB")
    size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    buf = io.BytesIO()
    rgb.resize(size, Image.Resampling.BICUBIC).save(buf, format="JPEG", quality=jpeg_quality)
    buf.seek(0)
    return Image.open(buf)


def _lower_quantile(hist: np.ndarray, q: float) -> int:
    cdf = np.cumsum(hist)
    return int(np.searchsorted(cdf, q * cdf[-1], side="left"))


def calibrate_threshold(
    image_paths: Sequence[str | os.PathLike[str]],
    *,
    n_copies: int = 60,
    seed: int = 0,
    scale: float = 0.8,
    jpeg_quality: int = 85,
    max_false_positive_rate: float = 0.001,
) -> ThresholdCalibration:
    """Measure a near-duplicate threshold on a corpus instead of assuming one.

    A seeded sample of `n_copies` images gets re-encoded copies (resized by `scale`, JPEG `jpeg_quality`, in
    memory; copies are hashed the way stored files are). Distinct pairs are each sampled original against every
    given image, identical files (same SHA-256) left out, each unordered pair once. The threshold is the largest
    copy distance if its false-positive rate on distinct pairs is at most `max_false_positive_rate`; otherwise
    the largest threshold that keeps the rate (copies beyond it are recorded as missed). Deterministic for a
    seed. Unreadable files raise `ImageHashError`.
    """
    paths = [os.fspath(p) for p in image_paths]
    if len(paths) < 2:
        raise ValueError(f"calibration needs at least two images, got {len(paths)}")
    if not 0 < scale <= 1 or not 1 <= jpeg_quality <= 100 or not 0 <= max_false_positive_rate < 1:
        raise ValueError(
            f"bad calibration settings: scale={scale}, jpeg_quality={jpeg_quality}, "
            f"max_false_positive_rate={max_false_positive_rate}"
        )
    rng = np.random.default_rng(seed)
    sampled = np.sort(rng.choice(len(paths), size=min(max(1, n_copies), len(paths)), replace=False))
    is_sampled = np.zeros(len(paths), dtype=bool)
    is_sampled[sampled] = True

    hashes = np.zeros(len(paths), dtype=np.uint64)
    shas: list[str] = []
    copy_distances: list[int] = []
    for i, path in enumerate(paths):
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            raise ImageHashError(path, f"{type(exc).__name__}: {exc}") from exc
        shas.append(hashlib.sha256(data).hexdigest())
        hashes[i] = dhash_bytes(data, path)
        if is_sampled[i]:
            try:
                with Image.open(io.BytesIO(data)) as im, _reencoded_copy(im, scale, jpeg_quality) as copy:
                    copy_hash = _hash_image(copy, draft=True)
            except (OSError, SyntaxError, ValueError, EOFError) as exc:
                raise ImageHashError(path, f"re-encoding failed: {type(exc).__name__}: {exc}") from exc
            copy_distances.append(hamming(int(hashes[i]), copy_hash))

    sha_codes = np.unique(np.array(shas), return_inverse=True)[1]  # equal code = identical bytes
    hist = _distinct_pair_histogram(hashes, sha_codes, sampled)
    n_pairs = int(hist.sum())
    if n_pairs == 0:
        raise ValueError("no distinct image pairs: every given file has the same bytes")

    false_positives = np.cumsum(hist) / n_pairs  # rate at threshold t = index t
    allowed = np.nonzero(false_positives <= max_false_positive_rate)[0]
    copies = np.array(copy_distances, dtype=np.int64)
    largest_ok = int(allowed.max()) if len(allowed) else -1
    threshold = int(copies.max()) if copies.max() <= largest_ok else max(largest_ok, 0)
    return ThresholdCalibration(
        threshold=threshold,
        n_images=len(paths),
        n_copies=len(copies),
        sampled=tuple(int(i) for i in sampled),
        copy_distances=tuple(int(d) for d in copies),
        copy_distance_median=float(np.median(copies)),
        copy_distance_max=int(copies.max()),
        n_distinct_pairs=n_pairs,
        distinct_distance_min=int(np.nonzero(hist)[0][0]),
        distinct_distance_p01=_lower_quantile(hist, 0.01),
        distinct_distance_median=_lower_quantile(hist, 0.5),
        copies_caught=int((copies <= threshold).sum()),
        false_positive_rate=float(false_positives[threshold]),
        max_false_positive_rate=float(max_false_positive_rate),
        meets_false_positive_target=largest_ok >= 0,
        seed=int(seed),
        scale=float(scale),
        jpeg_quality=int(jpeg_quality),
    )
