"""The one way training, evaluation, synthesis, serving and `diagnose` open an image: bounded before decoding, and
for the model resized once, by the model's own rule.

Why here, in the data layer: ingest accepts an image only below these limits (`images.inspect_image` uses the same
constants and wording), so every later stage can refuse what ingest would have quarantined instead of paying for
it. Why before decoding: `Image.open` only parses the header, and PIL otherwise decodes whatever the header claims
up to ~179 MP (a 143 KB zero-filled PNG claiming 7000x7000 costs ~190 MB once loaded), and a path is read only
after its size on disk (os.stat) passed, so a 200 MB file named `.jpg` costs nothing to refuse.

Why one resize rule (`model_image`): the Qwen2-VL processor resizes every image to a grid of 28-pixel cells within
its pixel bounds. Training used to shrink images first by a rule of its own and let the processor resize again, while
evaluation handed over the original: the same image reached the model as different pixels in training, gate and
evaluation. Resizing straight to the processor's grid size makes its own resize a no-op, so every stage (and GRPO,
which leaves the resize to the processor) sees the same pixels.
"""

from __future__ import annotations

import io
import math
import os
import re
import stat
import warnings

from PIL import Image

# Above the largest images of the supported datasets (ISIC ~30 MP) and below PIL's own warning limit (~89 MP).
DEFAULT_MAX_PIXELS = 50_000_000
# A 50 MP JPEG is ~10-25 MB; a dermatology image file past this is damage, padding or not an image.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

#: Qwen2-VL and Qwen2.5-VL: 14-pixel patches merged 2x2, so an image's sides are multiples of 28 pixels.
GRID = 28
#: The processors' default lower bound (shortest_edge), also the demo model's.
DEFAULT_MIN_MODEL_PIXELS = 56 * 56
_MAX_ASPECT = 200  # the processor refuses flatter images

_PILLOW_PIXELS = re.compile(r"\((\d+) pixels\)")


class ImageLimitError(ValueError):
    """An image over a limit; `reason` is the ingest quarantine code (too_large, decompression_bomb) and the
    message names the file, its size and the limit."""

    def __init__(self, reason: str, source: str, detail: str) -> None:
        super().__init__(f"{source}: {detail}")
        self.reason = reason
        self.source = source
        self.detail = detail


def too_many_bytes(size: int, max_bytes: int) -> str | None:
    """Why a file of `size` bytes is refused, or None when it is within the limit."""
    if size <= max_bytes:
        return None
    return f"file is {size:,} bytes ({size / 2**20:,.1f} MiB), above the limit of {max_bytes:,} bytes"


def too_many_pixels(width: int, height: int, max_pixels: int) -> str | None:
    """Why an image whose header claims `width`x`height` is refused, or None when it is within the limit."""
    if width * height <= max_pixels:
        return None
    return f"header claims {width}x{height} = {width * height:,} pixels, above the limit of {max_pixels:,}"


def refused_by_pillow(exc: Image.DecompressionBombError, max_pixels: int) -> str:
    """Detail for a header so large that PIL itself refused it in `Image.open` (over 2x its MAX_IMAGE_PIXELS),
    worded like `too_many_pixels` (PIL gives the pixel count but not the dimensions)."""
    found = _PILLOW_PIXELS.search(str(exc))
    claim = f"{int(found.group(1)):,} pixels" if found else "more pixels than Pillow accepts"
    return f"header claims {claim}, above the limit of {max_pixels:,} (Pillow refused to open it)"


class NotARegularFile(OSError):
    """A path that is neither a file nor a folder: reading a FIFO could block, a device never end."""


def file_size(path: str | os.PathLike[str]) -> int:
    """Size of a regular file; a FIFO or device is refused, as reading one could block or never end."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{os.fspath(path)}: is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise NotARegularFile(f"{os.fspath(path)}: not a regular file (a FIFO, socket or device)")
    return st.st_size


def read_bounded(path: str | os.PathLike[str], max_bytes: int = DEFAULT_MAX_BYTES) -> bytes:
    """A file's bytes, refused (ImageLimitError too_large) before reading when os.stat puts it over `max_bytes`;
    the read is capped too, in case the file grows after the stat."""
    label = os.fspath(path)
    detail = too_many_bytes(file_size(path), max_bytes)
    if detail:
        raise ImageLimitError("too_large", label, detail)
    with open(path, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ImageLimitError("too_large", label, f"file grew past the limit of {max_bytes:,} bytes while being read")
    return data


def open_rgb(
    source: str | os.PathLike[str] | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_bytes: int = DEFAULT_MAX_BYTES,
    name: str | None = None,
) -> Image.Image:
    """Decode a file path or encoded bytes to an RGB image, refusing (ImageLimitError) a source over `max_bytes`
    or a header over `max_pixels` before any pixel is decoded.

    `name` labels bytes in messages. Missing files raise FileNotFoundError, undecodable data PIL's own errors
    (UnidentifiedImageError, OSError); callers keep their handling of those.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        label = name or "<image bytes>"
        size = len(source)
        fp: io.BytesIO | str = io.BytesIO(bytes(source))
    else:
        label = name or os.fspath(source)
        size = file_size(source)
        fp = os.fspath(source)
    detail = too_many_bytes(size, max_bytes)
    if detail:
        raise ImageLimitError("too_large", label, detail)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit, checked below, decides
        try:
            im = Image.open(fp)
        except Image.DecompressionBombError as exc:
            raise ImageLimitError("decompression_bomb", label, refused_by_pillow(exc, max_pixels)) from None
    with im:
        detail = too_many_pixels(*im.size, max_pixels)
        if detail:
            raise ImageLimitError("decompression_bomb", label, detail)
        return im.convert("RGB")


def model_size(
    width: int, height: int, *, max_pixels: int, min_pixels: int = DEFAULT_MIN_MODEL_PIXELS, grid: int = GRID
) -> tuple[int, int]:
    """(width, height) the Qwen2-VL image processor turns a `width` x `height` image into: each side rounded to the
    nearest multiple of `grid`, then, keeping the aspect ratio, scaled down into `max_pixels` or up to `min_pixels`
    total pixels (sides floored, respectively ceiled, to the grid)."""
    if min(width, height) < 1:
        raise ValueError(f"image of {width}x{height} pixels has no area")
    if max(width, height) > _MAX_ASPECT * min(width, height):
        raise ValueError(f"image of {width}x{height} pixels: aspect ratio above {_MAX_ASPECT}, which the model refuses")
    w, h = round(width / grid) * grid, round(height / grid) * grid  # 0 for a side under half a cell: grown below
    if w * h > max_pixels:
        shrink = math.sqrt(width * height / max_pixels)
        w = max(grid, math.floor(width / shrink / grid) * grid)
        h = max(grid, math.floor(height / shrink / grid) * grid)
    elif w * h < min_pixels:
        grow = math.sqrt(min_pixels / (width * height))
        w, h = math.ceil(width * grow / grid) * grid, math.ceil(height * grow / grid) * grid
    return max(grid, w), max(grid, h)


def fit_for_model(
    image: Image.Image, *, max_pixels: int | None, min_pixels: int = DEFAULT_MIN_MODEL_PIXELS
) -> Image.Image:
    """`image` resized (bicubic, as the processor does) to `model_size`; unchanged when it already has that size or
    when `max_pixels` is None (the processor's saved bounds then decide)."""
    if max_pixels is None:
        return image
    size = model_size(*image.size, max_pixels=max_pixels, min_pixels=min_pixels)
    return image if size == image.size else image.resize(size, Image.BICUBIC)


def model_image(
    source: str | os.PathLike[str] | bytes,
    *,
    max_pixels: int | None,
    min_pixels: int = DEFAULT_MIN_MODEL_PIXELS,
    name: str | None = None,
) -> Image.Image:
    """The image a model stage gives its processor: `open_rgb` (bounded), then `fit_for_model`."""
    return fit_for_model(open_rgb(source, name=name), max_pixels=max_pixels, min_pixels=min_pixels)
