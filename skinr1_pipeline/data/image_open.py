"""The one way training, evaluation, synthesis, serving and `diagnose` open an image: bounded before decoding.

Why here, in the data layer: ingest accepts an image only below these limits (`images.inspect_image` uses the same
constants and wording), so every later stage can refuse what ingest would have quarantined instead of paying for
it. Why before decoding: `Image.open` only parses the header, and PIL otherwise decodes whatever the header claims
up to ~179 MP (a 143 KB zero-filled PNG claiming 7000x7000 costs ~190 MB once loaded), and a path is read only
after its size on disk (os.stat) passed, so a 200 MB file named `.jpg` costs nothing to refuse.
"""

from __future__ import annotations

import io
import os
import re
import stat
import warnings

from PIL import Image

# Above the largest images of the supported datasets (ISIC ~30 MP) and below PIL's own warning limit (~89 MP).
DEFAULT_MAX_PIXELS = 50_000_000
# A 50 MP JPEG is ~10-25 MB; a dermatology image file past this is damage, padding or not an image.
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

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


def file_size(path: str | os.PathLike[str]) -> int:
    """Size of a regular file; a FIFO or device is refused, as reading one could block or never end."""
    st = os.stat(path)
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(f"{os.fspath(path)}: is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise OSError(f"{os.fspath(path)}: not a regular file")
    return st.st_size


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
