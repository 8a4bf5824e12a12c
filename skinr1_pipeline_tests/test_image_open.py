"""`open_rgb`, the one opener of training, evaluation, synthesis, serving and diagnose: byte and pixel limits
checked before anything is read or decoded, and every caller bound by them."""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from skinr1_pipeline.data.image_open import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_PIXELS,
    ImageLimitError,
    fit_for_model,
    model_image,
    model_size,
    open_rgb,
)


def _chunk(ctype: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))


def _header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG claiming `width`x`height` with no pixel data: decoding it fails, so a limit error proves no decode."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IEND", b""))
    return path


@pytest.fixture
def small(tmp_path: Path) -> Path:
    path = tmp_path / "small.png"
    Image.new("L", (30, 20), 90).save(path)
    return path


def test_open_rgb_returns_rgb_within_the_limits(small: Path) -> None:
    image = open_rgb(small)
    assert (image.mode, image.size) == ("RGB", (30, 20))
    assert open_rgb(small.read_bytes()).size == (30, 20)
    assert open_rgb(small, max_pixels=600).size == (30, 20)  # the limit itself is allowed


def test_pixel_limit_refuses_before_decoding(tmp_path: Path, small: Path) -> None:
    bomb = _header_only_png(tmp_path / "bomb.png", 8_000, 7_000)  # 56 MP: under PIL's own limits
    with pytest.raises(ImageLimitError) as caught:
        open_rgb(bomb)
    assert caught.value.reason == "decompression_bomb"
    message = str(caught.value)
    assert str(bomb) in message and "8000x7000 = 56,000,000 pixels" in message
    assert f"{DEFAULT_MAX_PIXELS:,}" in message
    with pytest.raises(ImageLimitError, match="30x20 = 600 pixels, above the limit of 599"):
        open_rgb(small, max_pixels=599)


def test_headers_pillow_itself_refuses_become_the_same_error(tmp_path: Path) -> None:
    bomb = _header_only_png(tmp_path / "huge.png", 20_000, 20_000)  # beyond PIL's 2x MAX_IMAGE_PIXELS
    with pytest.raises(ImageLimitError, match=r"huge\.png: header claims 400,000,000 pixels, above the limit"):
        open_rgb(bomb)


def test_byte_limit_refuses_before_reading(tmp_path: Path, small: Path, monkeypatch) -> None:
    padded = tmp_path / "padded.jpg"
    with padded.open("wb") as fh:
        fh.write(small.read_bytes())
        fh.truncate(DEFAULT_MAX_BYTES + 1)  # sparse: costs no disk
    monkeypatch.setattr(Image, "open", lambda *a, **k: pytest.fail("opened a file over the byte limit"))
    with pytest.raises(ImageLimitError) as caught:
        open_rgb(padded)
    assert caught.value.reason == "too_large" and str(padded) in str(caught.value)
    assert f"{DEFAULT_MAX_BYTES + 1:,} bytes" in str(caught.value)
    with pytest.raises(ImageLimitError, match="upload: file is 9 bytes"):
        open_rgb(b"123456789", max_bytes=8, name="upload")


def test_non_files_are_os_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_rgb(tmp_path / "absent.png")
    with pytest.raises(IsADirectoryError):
        open_rgb(tmp_path)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.png")
        with pytest.raises(OSError, match="not a regular file"):
            open_rgb(tmp_path / "pipe.png")


# ------------------------------------------------------------------------------------------ every caller


def test_training_loader_is_bound_and_gives_the_processors_size(tmp_path: Path, small: Path) -> None:
    import pandas as pd

    from skinr1_pipeline.training.sft import load_trajectory_dataset

    def dataset(image: Path):
        rows = pd.DataFrame(
            {
                "sample_id": ["s1"],
                "image_path": [str(image)],
                "prompt": ["Which lesion?"],
                "completion": ["<thinking>x</thinking><diagnosis>nevus</diagnosis>"],
            }
        )
        rows.to_parquet(tmp_path / "t.parquet")
        return load_trajectory_dataset(tmp_path / "t.parquet", max_pixels=112 * 112, system=None)

    with pytest.raises(ImageLimitError, match="8000x7000"):
        dataset(_header_only_png(tmp_path / "bomb.png", 8_000, 7_000))[0]
    assert dataset(small)[0]["images"][0].size == (84, 56)


def test_evaluation_loader_is_bound(tmp_path: Path, small: Path) -> None:
    from skinr1_pipeline.evaluation.runners import load_image

    with pytest.raises(ImageLimitError, match="8000x7000"):
        load_image(str(_header_only_png(tmp_path / "bomb.png", 8_000, 7_000)), (3136, 12544))
    assert load_image(str(small), (3136, 12544)).size == (84, 56) and load_image(None, (3136, 12544)) is None
    assert load_image(str(small), (3136, None)).size == (30, 20)  # no bound given: the processor's saved one applies


def test_vllm_generator_opener_is_bound(tmp_path: Path, small: Path) -> None:
    from skinr1_pipeline.synthesis.vllm_generator import _open_image

    with pytest.raises(ImageLimitError, match="8000x7000"):
        _open_image(str(_header_only_png(tmp_path / "bomb.png", 8_000, 7_000)))
    assert _open_image(small).mode == "RGB"


def test_served_images_are_bound(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("mlflow")
    from skinr1_pipeline.tracking import pyfunc_model
    from skinr1_pipeline.tracking.pyfunc_model import decode_image, encode_image

    bomb = _header_only_png(tmp_path / "bomb.png", 8_000, 7_000)
    for value in (str(bomb), bomb.read_bytes(), base64.b64encode(bomb.read_bytes()).decode()):
        with pytest.raises(ValueError, match="8000x7000 = 56,000,000 pixels, above the limit"):
            decode_image(value)
    with pytest.raises(ValueError, match="8000x7000"):
        encode_image(bomb)
    # A base64 payload over the byte limit is refused before it is decoded.
    monkeypatch.setattr(pyfunc_model, "DEFAULT_MAX_BYTES", 100)
    monkeypatch.setattr(pyfunc_model.base64, "b64decode", lambda *a, **k: pytest.fail("decoded an oversized payload"))
    buf = io.BytesIO()
    Image.new("RGB", (64, 64)).save(buf, format="PNG")
    with pytest.raises(ValueError, match="base64 image: file is .* bytes.*above the limit of 100 bytes"):
        decode_image(base64.b64encode(buf.getvalue() * 2).decode())


# --- one resize rule: the processor's grid -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "max_pixels,min_pixels", [(112 * 112, 56 * 56), (448 * 448, 56 * 56), (12_845_056, 3136), (224 * 224, 200 * 200)]
)
def test_model_size_is_the_qwen_processors_own_target_size(max_pixels: int, min_pixels: int) -> None:
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

    sides = [1, 13, 27, 28, 29, 41, 42, 55, 56, 100, 111, 112, 113, 224, 300, 449, 450, 600, 1023, 3000, 5000]
    for width in sides:
        for height in sides:
            if max(width, height) > 200 * min(width, height):
                with pytest.raises(ValueError, match="aspect ratio"):
                    model_size(width, height, max_pixels=max_pixels, min_pixels=min_pixels)
                continue
            h, w = smart_resize(height, width, factor=28, min_pixels=min_pixels, max_pixels=max_pixels)
            assert model_size(width, height, max_pixels=max_pixels, min_pixels=min_pixels) == (w, h), (width, height)


def test_an_image_fitted_for_the_model_passes_the_processor_unchanged_and_as_the_processor_would_resize_it() -> None:
    """Training, gate, evaluation, diagnose and serving hand the processor `model_image`'s output; GRPO hands it the
    original. Both must give the model the same pixels (up to one level of rounding)."""
    import numpy as np
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    processor = Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=112 * 112)
    original = Image.fromarray(np.random.default_rng(0).integers(0, 256, (450, 600, 3), dtype=np.uint8))
    fitted = fit_for_model(original, max_pixels=112 * 112, min_pixels=56 * 56)
    assert fitted.size == (112, 84)
    assert fit_for_model(fitted, max_pixels=112 * 112, min_pixels=56 * 56) is fitted  # no second resize
    by_processor = processor(images=[original], return_tensors="pt")
    from_fitted = processor(images=[fitted], return_tensors="pt")
    assert by_processor["image_grid_thw"].tolist() == from_fitted["image_grid_thw"].tolist()
    one_level = 1 / 255 / min(processor.image_std)
    assert float((by_processor["pixel_values"] - from_fitted["pixel_values"]).abs().max()) <= one_level * 1.01
    assert fit_for_model(original, max_pixels=None) is original


def test_model_image_is_bounded_like_open_rgb(tmp_path: Path, small: Path) -> None:
    with pytest.raises(ImageLimitError):
        model_image(_header_only_png(tmp_path / "bomb.png", 8_000, 7_000), max_pixels=112 * 112)
    assert model_image(small, max_pixels=112 * 112).size == (84, 56)  # 30x20 grows to the 56x56 minimum area
