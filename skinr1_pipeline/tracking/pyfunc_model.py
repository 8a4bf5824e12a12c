"""Skin-R1 as an MLflow pyfunc model: the LoRA adapter dir plus a reference to its base Qwen2.5-VL dir as
artifacts, image + prompt in.

Why a reference and not a copy of the base: the base is the same for every candidate and is ~15 GB for the 7B model;
copying it into each registration filled the artifact store. The reference (`base_model_ref.json`: path, file URI and
a cheap digest, `base_model_digest`) is resolved when the model loads; a missing or different base is a
`BaseModelError` naming both, and `model_config={"base_model_dir": ...}` points a loader at a moved copy (the digest
is still checked). Models logged before this change carry the base as the `base_model` artifact and still load.

Why a custom pyfunc: MLflow 3.17's transformers flavor has no image-text-to-text handling (anchors §D), so the
adapter cannot be served through it. The wrapper loads the LoRA on the base without merging (the authors report
merging changes behaviour), generates greedily, and parses every completion with the same strict parser the rewards
and the evaluation use, so a served answer means exactly what an evaluated answer meant.

Code packaging: the logged python_model is pickled by reference to `skinr1_pipeline.tracking.pyfunc_model`, so the
loading side must import `skinr1_pipeline`. The package is not on any registry, so `pip_requirements` cannot name
it; `log_skinr1_model` bundles the package source with `code_paths` (about 1 MB) instead. That also pins the parser
and prompt contract to the version that produced the adapter. Where `skinr1_pipeline` is already imported (our own
processes), the installed copy wins; `pip_requirements` pins the third-party stack at the logging environment's
versions, which also spares MLflow's slow requirement inference (it would load the model in a subprocess).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import tempfile
import threading
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel
from PIL import Image

from skinr1_pipeline.data.image_open import DEFAULT_MAX_BYTES, ImageLimitError, fit_for_model, open_rgb, too_many_bytes
from skinr1_pipeline.modeling.prompt_format import (
    DEFAULT_MCQ_QUESTION,
    build_mcq_prompt,
    build_open_prompt,
    format_completion,
    parse_completion,
    prompt_options,
)

INPUT_COLUMNS = ("image", "prompt")
OUTPUT_COLUMNS = ("rationale", "diagnosis", "status", "option_letter", "format_ok", "parse_error", "completion")
ARTIFACT_BASE, ARTIFACT_ADAPTER = "base_model", "adapter"  # ARTIFACT_BASE: models logged with a copied base
ARTIFACT_BASE_REF, BASE_REF_FILE = "base_model_ref", "base_model_ref.json"
BASE_DIR_CONFIG = "base_model_dir"  # model_config key: load the referenced base from here instead
BASE_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".jinja", ".tiktoken", ".py")
_SAMPLE_BYTES = 1 << 20
# "" = the recorded base path; logged as a key so a loader may override it (MLflow ignores unknown keys at load).
DEFAULT_CONFIG = {
    "max_new_tokens": 512,
    "batch_size": 8,
    "dtype": "auto",
    "device": None,
    "max_pixels": None,
    BASE_DIR_CONFIG: "",
}
PINNED_PACKAGES = ("mlflow", "torch", "torchvision", "transformers", "peft", "accelerate", "pillow", "pandas", "numpy")
_MAX_PATH_CHARS = 4096


class BaseModelError(RuntimeError):
    """The base model a registered adapter references is missing, unreadable or not the one it was trained on."""


def _model_files(model_dir: Path) -> list[Path]:
    """Files that define a Hugging Face model folder: weights, configs, tokenizer, processor, chat template (the
    folder's top level; dotfiles such as run-folder markers excluded)."""
    return sorted(
        p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix in BASE_FILE_SUFFIXES
    )


def base_model_digest(model_dir: str | Path) -> dict[str, Any]:
    """A cheap fingerprint of a model folder: {"digest", "files", "bytes"}.

    Hashes each model file's name and size, and its bytes when small; of a larger file only the first, middle and
    last MiB (safetensors headers name every tensor's shape and offset, and any retraining changes the sampled
    values). About 3 MiB read per weight shard instead of 15 GB: it tells a different or re-trained base apart, it is
    not a defence against a deliberate edit of unsampled bytes.
    """
    folder = Path(model_dir)
    digest, total, files = hashlib.sha256(), 0, _model_files(folder)
    for path in files:
        size = path.stat().st_size
        total += size
        digest.update(f"{path.name}\0{size}\0".encode())
        with path.open("rb") as fh:
            if size <= 3 * _SAMPLE_BYTES:
                digest.update(fh.read())
                continue
            for offset in (0, (size - _SAMPLE_BYTES) // 2, size - _SAMPLE_BYTES):
                fh.seek(offset)
                digest.update(fh.read(_SAMPLE_BYTES))
    return {"digest": f"sha256:{digest.hexdigest()}", "files": len(files), "bytes": total}


def base_model_reference(model_dir: str | Path) -> dict[str, Any]:
    """What a registered model records about its base instead of a copy: resolved path, file URI and digest."""
    folder = Path(model_dir).resolve()  # not `latest`: that link moves to the next base model
    config = json.loads((folder / "config.json").read_text("utf-8"))
    return {
        "format": 1,
        "path": str(folder),
        "uri": folder.as_uri(),
        "model_type": config.get("model_type", ""),
        **base_model_digest(folder),
    }


def read_base_reference(path: str | Path) -> dict[str, Any]:
    """A `base_model_ref.json`, checked for the keys `resolve_base_model` needs."""
    try:
        reference = json.loads(Path(path).read_text("utf-8"))
    except (OSError, ValueError) as exc:
        raise BaseModelError(f"base model reference {path} is not readable JSON: {exc}") from exc
    if not isinstance(reference, dict) or not all(isinstance(reference.get(k), str) for k in ("path", "digest")):
        raise BaseModelError(f"base model reference {path} lacks a 'path' or 'digest' string")
    return reference


def resolve_base_model(reference: dict[str, Any], override: str | Path | None = None) -> Path:
    """The base folder `reference` names (or `override`), after checking that its digest matches."""
    folder = Path(override or reference["path"])
    where = f"{folder}" + (f" (given instead of the recorded {reference['path']})" if override else "")
    restore = (
        f"restore the base model there, or pass model_config={{'{BASE_DIR_CONFIG}': '<dir>'}} (diagnose: "
        "--base) pointing at an identical copy"
    )
    if not (folder / "config.json").is_file():
        raise BaseModelError(
            f"the base model this adapter was trained on is missing: no config.json in {where}; "
            f"expected digest {reference['digest']}; {restore}"
        )
    found = base_model_digest(folder)["digest"]
    if found != reference["digest"]:
        raise BaseModelError(
            f"the base model at {where} is not the one this adapter was trained on: digest "
            f"{found}, expected {reference['digest']}; {restore}"
        )
    return folder


def decode_image(value: Any) -> Image.Image:
    """An RGB image from a file path, raw bytes, or a base64 PNG/JPEG string (a `data:` URI prefix is allowed).

    Served input is untrusted: it is opened with the data layer's `open_rgb`, so a file or payload over its byte
    limit is refused before it is read or base64-decoded, and a header over its pixel limit before decoding; every
    refusal is a ValueError whose message says which limit.
    """
    source: bytes | str
    if isinstance(value, (bytes, bytearray)):
        source, name = bytes(value), "image bytes"
    elif isinstance(value, str):
        text = value.strip()
        if len(text) < _MAX_PATH_CHARS and Path(text).is_file():
            source, name = text, text
        else:
            if text.startswith("data:"):
                text = text.partition(",")[2]
            too_big = too_many_bytes(len(text) * 3 // 4, DEFAULT_MAX_BYTES)  # the decoded size, before decoding
            if too_big:
                raise ValueError(f"base64 image: {too_big}")
            try:
                source, name = base64.b64decode(text, validate=True), "base64 image"
            except (binascii.Error, ValueError) as exc:
                raise ValueError("image must be an existing file path or a base64-encoded PNG/JPEG") from exc
    else:
        raise ValueError(f"image must be a path or base64 string, got {type(value).__name__}")
    try:
        return open_rgb(source, name=name)
    except ImageLimitError:  # already names the source, its size and the limit
        raise
    except Exception as exc:
        raise ValueError(f"image could not be decoded: {exc}") from exc


def encode_image(path: str | Path, *, max_side: int | None = None) -> str:
    """Base64 PNG of an image file, optionally shrunk so its longer side is at most `max_side`."""
    im = open_rgb(path)
    if max_side:
        im.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def completion_row(completion: str, prompt: str) -> dict[str, Any]:
    """One output row: the raw completion and what the strict parser reads from it (options taken from the prompt)."""
    options = prompt_options(prompt)
    try:
        parsed = parse_completion(completion, options)
    except ValueError:  # options the parser rejects: read the answer as free text
        parsed = parse_completion(completion, None)
    return {
        "rationale": parsed.thinking,
        "diagnosis": parsed.diagnosis,
        "status": parsed.status,
        "option_letter": parsed.option_letter,
        "format_ok": bool(parsed.ok),
        "parse_error": parsed.error,
        "completion": completion,
    }


class SkinR1Model(PythonModel):
    """Greedy Skin-R1 inference; the model is loaded on the first `predict`, not at `load_model` time.

    Lazy loading keeps `mlflow.pyfunc.load_model` cheap (registry checks, signature inspection) and defers the
    multi-GB weight load to the process that actually predicts (the base reference is checked at load time,
    cheaply). `model_config` keys: max_new_tokens, batch_size, dtype, device, max_pixels, base_model_dir;
    `params={"max_new_tokens": n}` overrides per call.
    """

    def __init__(self) -> None:
        self._model = None
        self._processor = None
        self._system: str | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle weights or the lock into the artifact. Non-empty on purpose: pickle skips __setstate__
        # for a falsy state, and __setstate__ is what recreates the lock.
        return {"lazy": True}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def load_context(self, context) -> None:
        self._config = {**DEFAULT_CONFIG, **dict(getattr(context, "model_config", None) or {})}
        self._adapter_dir = context.artifacts[ARTIFACT_ADAPTER]
        if ARTIFACT_BASE in context.artifacts:  # logged with a copy of the base
            self._base_dir = context.artifacts[ARTIFACT_BASE]
        else:  # checked now, so `load_model` fails with the reason instead of the first `predict`
            reference = read_base_reference(context.artifacts[ARTIFACT_BASE_REF])
            self._base_dir = str(resolve_base_model(reference, self._config.get(BASE_DIR_CONFIG)))

    def _ensure_loaded(self) -> None:
        with self._lock:
            if self._model is not None:
                return
            from skinr1_pipeline.modeling.model_factory import (
                load_adapter_model,
                load_processor,
                taught_system_prompt,
            )

            cfg = self._config
            self._system = taught_system_prompt(self._base_dir, self._adapter_dir)  # asked as it was taught
            self._processor = load_processor(self._base_dir, max_pixels=cfg.get("max_pixels"))
            self._model = load_adapter_model(
                self._base_dir,
                self._adapter_dir,
                trainable=False,
                dtype=cfg.get("dtype") or "auto",
                device=cfg.get("device"),
            )

    def predict(self, context, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        """One row per input row: rationale, diagnosis, status, option_letter, format_ok, parse_error, completion."""
        from skinr1_pipeline.modeling.generation import generate
        from skinr1_pipeline.modeling.model_factory import pixel_limits

        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        missing = [c for c in INPUT_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"model_input lacks column(s) {missing}; expected {list(INPUT_COLUMNS)}")
        prompts = [str(p) for p in frame["prompt"]]
        images = [decode_image(v) for v in frame["image"]]
        self._ensure_loaded()
        min_pixels, max_pixels = pixel_limits(self._processor)  # resized as in training and evaluation
        images = [fit_for_model(im, max_pixels=max_pixels, min_pixels=min_pixels) for im in images]
        max_new = int((params or {}).get("max_new_tokens") or self._config["max_new_tokens"])
        completions = generate(
            self._model,
            self._processor,
            images,
            prompts,
            max_new_tokens=max_new,
            batch_size=int(self._config["batch_size"]),
            system=self._system,
        )
        return pd.DataFrame([completion_row(c, p) for c, p in zip(completions, prompts)], columns=list(OUTPUT_COLUMNS))


def pinned_requirements() -> list[str]:
    """`name==version` for the inference stack as installed here (packages that are absent are skipped)."""
    out = []
    for name in PINNED_PACKAGES:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return out


def example_frames(image_path: str | Path, prompt: str | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A one-row input example (image shrunk to <= 224 px, base64 PNG) and outputs that show every column's type.

    The outputs cover an open answer, an MCQ answer and an unreadable completion, so the inferred output schema
    types each column as an optional string (or boolean) instead of "any".
    """
    prompt = prompt or build_open_prompt()
    example_in = pd.DataFrame({"image": [encode_image(image_path, max_side=224)], "prompt": [prompt]})
    reasoning = "Symmetric brown macule with a regular pigment network."
    mcq = build_mcq_prompt(DEFAULT_MCQ_QUESTION, ["melanoma", "melanocytic nevus"])
    rows = [
        completion_row(format_completion(reasoning, "melanocytic nevus; status: benign"), prompt),
        completion_row(format_completion(reasoning, "B. melanocytic nevus; status: benign"), mcq),
        completion_row("melanocytic nevus", mcq),
    ]
    return example_in, pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def log_skinr1_model(
    base_model_dir: str | Path,
    adapter_dir: str | Path,
    *,
    name: str,
    input_example_image_path: str | Path,
    registered_model_name: str | None = None,
    input_example_prompt: str | None = None,
    model_config: dict[str, Any] | None = None,
    bundle_code: bool = True,
    tags: dict[str, str] | None = None,
):
    """Log the adapter and a reference to its base model as a pyfunc with a signature and an input example;
    returns MLflow's ModelInfo.

    Both directories are validated first, so a wrong path fails here, not at serving time. The base is referenced
    (path + digest, also in the MLmodel metadata as `skinr1_base_model`), not copied: a loader needs the same base
    at that path or a copy named by `model_config["base_model_dir"]`. To validate the input example MLflow loads
    the model and runs one prediction while logging; keep `max_new_tokens` in `model_config` modest.
    """
    from mlflow.models import infer_signature

    from skinr1_pipeline.modeling.model_factory import validate_adapter_dir, validate_model_dir

    validate_model_dir(base_model_dir)
    validate_adapter_dir(adapter_dir)
    config = {**DEFAULT_CONFIG, **(model_config or {})}
    example_in, example_out = example_frames(input_example_image_path, input_example_prompt)
    signature = infer_signature(example_in, example_out, params={"max_new_tokens": int(config["max_new_tokens"])})
    package_dir = Path(__file__).resolve().parents[1]
    reference = base_model_reference(base_model_dir)
    with tempfile.TemporaryDirectory(prefix="skinr1-base-ref-") as scratch:
        reference_path = Path(scratch) / BASE_REF_FILE
        reference_path.write_text(json.dumps(reference, indent=1), "utf-8")
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=SkinR1Model(),
            artifacts={ARTIFACT_BASE_REF: str(reference_path), ARTIFACT_ADAPTER: str(adapter_dir)},
            signature=signature,
            input_example=example_in,
            pip_requirements=pinned_requirements(),
            code_paths=[str(package_dir)] if bundle_code else None,
            model_config={k: v for k, v in config.items() if v is not None},
            metadata={"skinr1_base_model": reference},
            registered_model_name=registered_model_name,
            tags=tags,
        )
