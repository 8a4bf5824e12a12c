"""One image in, a clinician-style answer out: rationale, diagnosis, its taxonomy path and malignancy bucket, and
the differential diagnoses it had to rule out. Backs `skinr1 diagnose`; no Dagster here.

Why the DDx part comes from the graph and not from the model alone: a small model's rationale may skip a
look-alike, and an operator reading one answer needs to see which do-not-miss neighbours were never discussed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from skinr1_pipeline.data.image_open import DEFAULT_MIN_MODEL_PIXELS
from skinr1_pipeline.settings import Settings
from skinr1_pipeline.storage.run_folders import LATEST_LINK, latest_complete
from skinr1_pipeline.tracking.mlflow_runs import REGISTERED_MODEL

# Written last into a registry cache folder: its presence, not MLmodel's, says the download finished.
CACHE_COMPLETE = ".skinr1-download-complete"
REGISTRY_ALIASES = ("champion", "candidate", "previous_champion")
TRAINED_STAGES = ("grpo", "sft")  # newest first: the default model is the furthest-trained adapter on disk


class DiagnoseError(ValueError):
    """Bad input to `diagnose`: the message names the file or model and what was expected."""


@dataclass(frozen=True)
class ModelSource:
    base_dir: Path
    adapter_dir: Path | None
    label: str


@dataclass(frozen=True)
class Differential:
    node: str
    name: str
    discussed: bool  # named in the rationale
    do_not_miss: bool
    tells_apart: str | None


@dataclass(frozen=True)
class DiagnosisReport:
    image: str
    model: str
    completion: str
    format_ok: bool
    parse_error: str | None
    rationale: str | None
    diagnosis: str | None
    stated_status: str | None
    node: str | None = None
    name: str | None = None
    taxonomy_path: list[str] = field(default_factory=list)
    bucket: str | None = None
    differentials: list[Differential] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def _is_adapter_dir(path: Path) -> bool:
    return (path / "adapter_config.json").is_file()


def _newest_model_folder(settings: Settings, stage: str) -> Path:
    """The stage's newest complete run folder (the one the pipeline hands downstream); where there is none, the
    path of its `latest` link, for the error message to name."""
    parent = settings.home / "models" / stage
    return latest_complete(parent) or parent / LATEST_LINK


def default_base_dir(settings: Settings) -> Path:
    return Path(settings.base_model_dir) if settings.base_model_dir else _newest_model_folder(settings, "base")


def resolve_model(spec: str | None, settings: Settings, *, base_dir: str | Path | None = None) -> ModelSource:
    """`spec`: None (newest trained adapter of this home), a model or adapter directory, a registry alias
    (`champion`, `candidate`, `previous_champion`) or a `models:/name@alias` / `models:/name/version` URI."""
    base = Path(base_dir) if base_dir else default_base_dir(settings)
    if spec is None:
        tried = [_newest_model_folder(settings, stage) / "adapter" for stage in TRAINED_STAGES]
        for stage, adapter in zip(TRAINED_STAGES, tried):
            if _is_adapter_dir(adapter):
                return _with_base(ModelSource(base, adapter, f"{stage} adapter {adapter}"))
        raise DiagnoseError(
            f"no trained adapter found (looked for {', '.join(map(str, tried))}); run `make demo` "
            "first or pass --model DIR|champion|models:/name@alias"
        )
    if spec in REGISTRY_ALIASES or spec.startswith("models:/"):
        return _from_registry(
            spec if spec.startswith("models:/") else f"models:/{REGISTERED_MODEL}@{spec}", settings, base_dir
        )
    path = Path(spec).expanduser()
    if _is_adapter_dir(path):
        return _with_base(ModelSource(base, path, f"adapter {path}"))
    if _is_model_dir(path):
        return ModelSource(path, None, f"model {path}")
    raise DiagnoseError(
        f"--model {spec}: not a model directory (config.json), an adapter directory "
        f"(adapter_config.json), a registry alias ({', '.join(REGISTRY_ALIASES)}) or a models:/ URI"
    )


def _with_base(source: ModelSource) -> ModelSource:
    if not _is_model_dir(source.base_dir):
        raise DiagnoseError(
            f"base model {source.base_dir} has no config.json; the adapter needs its base model "
            "(--base DIR, or materialize base_model first)"
        )
    return ModelSource(source.base_dir, source.adapter_dir, f"{source.label} on base {source.base_dir}")


def _from_registry(uri: str, settings: Settings, base_dir: str | Path | None = None) -> ModelSource:
    """Download the registered pyfunc once per version; it carries the adapter and its base model (a copy, or a
    reference resolved here; `base_dir` names a moved copy of a referenced base)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        info = mlflow.models.get_model_info(uri)
        cache = cached_download(
            settings.home / "registry_cache" / info.model_uuid,
            lambda dst: mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst)),
        )
    except MlflowException as exc:
        raise DiagnoseError(
            f"--model {uri}: not found in the registry at {settings.mlflow_tracking_uri}: {exc.message.splitlines()[0]}"
        ) from exc
    return model_source(cache, uri, f"{uri} (registry: {info.model_uuid})", base_override=base_dir)


def cached_download(cache: Path, download: Callable[[Path], object]) -> Path:
    """`cache`, filled by `download(folder)` unless an earlier download finished there.

    Why a marker and a rename: MLmodel is among the first files a download writes, so its presence says nothing
    about the multi-GB weights after it. The download goes to a fresh temporary folder beside the cache, the marker
    is written into it last, and only then is it renamed into place; a killed download leaves a temp folder (never
    read) or an unmarked cache, which is downloaded again.
    """
    if (cache / CACHE_COMPLETE).is_file():
        return cache
    cache.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", suffix=".partial", dir=cache.parent))
    try:
        download(staging)
        (staging / CACHE_COMPLETE).write_text("complete\n", "utf-8")
        if (cache / CACHE_COMPLETE).is_file():  # another process finished the same download meanwhile
            shutil.rmtree(staging, ignore_errors=True)
            return cache
        if cache.exists():  # an unmarked, i.e. interrupted, earlier download
            shutil.rmtree(cache)
        os.replace(staging, cache)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return cache


def model_source(model_dir: Path, uri: str, label: str, *, base_override: str | Path | None = None) -> ModelSource:
    """Base model and adapter of a downloaded Skin-R1 pyfunc, each path from its MLmodel kept inside `model_dir`.

    MLmodel is data from the registry: an artifact path with '..' or an absolute one would point the model loader
    at files outside the download, so each is resolved and must stay below the folder. A referenced base lies
    outside by design: its reference file must stay inside, and the folder it names must match its digest.
    """
    import yaml

    from skinr1_pipeline.tracking.pyfunc_model import ARTIFACT_ADAPTER, ARTIFACT_BASE, ARTIFACT_BASE_REF

    mlmodel = model_dir / "MLmodel"
    try:
        flavors = yaml.safe_load(mlmodel.read_text("utf-8"))["flavors"]
        artifacts = flavors["python_function"].get("artifacts") or {}
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError) as exc:
        raise DiagnoseError(
            f"--model {uri}: {mlmodel} is not a readable pyfunc MLmodel: {type(exc).__name__}: {str(exc)[:200]}"
        ) from exc
    base_key = ARTIFACT_BASE if ARTIFACT_BASE in artifacts else ARTIFACT_BASE_REF  # a copied or referenced base
    missing = [key for key in (base_key, ARTIFACT_ADAPTER) if key not in artifacts]
    if missing:
        raise DiagnoseError(
            f"--model {uri}: the registered model has no {missing} artifact(s); expected a "
            "Skin-R1 pyfunc logged by evaluation_reports"
        )
    base = _contained(model_dir, artifacts[base_key], uri, base_key)
    if base_key == ARTIFACT_BASE_REF:
        base = _referenced_base(base, uri, base_override)
    return ModelSource(base, _contained(model_dir, artifacts[ARTIFACT_ADAPTER], uri, ARTIFACT_ADAPTER), label)


def _referenced_base(reference_file: Path, uri: str, override: str | Path | None) -> Path:
    """The base model folder a registered model's reference names, checked against the recorded digest."""
    from skinr1_pipeline.tracking.pyfunc_model import BaseModelError, read_base_reference, resolve_base_model

    try:
        return resolve_base_model(read_base_reference(reference_file), override)
    except BaseModelError as exc:
        raise DiagnoseError(f"--model {uri}: {exc}") from exc


def _contained(model_dir: Path, artifact: Any, uri: str, key: str) -> Path:
    relative = artifact.get("path") if isinstance(artifact, dict) else None
    if not isinstance(relative, str) or not relative.strip():
        raise DiagnoseError(f"--model {uri}: MLmodel artifact {key!r} has no path")
    root = model_dir.resolve()
    target = (model_dir / relative).resolve()
    if target != root and root not in target.parents:
        raise DiagnoseError(
            f"--model {uri}: MLmodel artifact {key!r} path {relative[:200]!r} leads outside the "
            f"downloaded model folder {model_dir} (to {str(target)[:200]}); refusing to load it"
        )
    return target


def _max_pixels(base_dir: Path) -> int | None:
    """The demo model records the image size it was trained at; real checkpoints use the processor's default."""
    from skinr1_pipeline.modeling.tiny_model import MANIFEST_NAME

    meta = base_dir / MANIFEST_NAME
    if meta.is_file():
        return json.loads(meta.read_text("utf-8")).get("max_pixels")
    return None


def open_image(path: str | Path, max_pixels: int | None, min_pixels: int = DEFAULT_MIN_MODEL_PIXELS) -> Image.Image:
    """The image as the model's processor takes it (`model_image`; max_pixels None keeps its size), refused with a
    DiagnoseError naming the file, its size and the limit when it is over the data layer's byte or pixel limits
    (`open_rgb`, before decoding)."""
    from skinr1_pipeline.data.image_open import ImageLimitError, model_image

    image_path = Path(path)
    if not image_path.is_file():
        raise DiagnoseError(f"{image_path}: no such image file")
    try:
        return model_image(image_path, max_pixels=max_pixels, min_pixels=min_pixels)
    except ImageLimitError as exc:
        raise DiagnoseError(f"{exc.source}: image refused: {exc.detail}") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise DiagnoseError(f"{image_path}: not a readable image (expected JPEG/PNG/...): {exc}") from exc


def explain(completion: str, *, image: str, model: str, taxonomy, ddx, knowledge=None) -> DiagnosisReport:
    """Parse a completion and place its answer in the taxonomy and the DDx graph (pure: no model involved)."""
    from skinr1_pipeline.evaluation.metrics import AnswerMapper
    from skinr1_pipeline.modeling.prompt_format import parse_completion

    parsed = parse_completion(completion, None)
    base = dict(
        image=image,
        model=model,
        completion=completion,
        format_ok=parsed.ok,
        parse_error=parsed.error,
        rationale=parsed.thinking,
        diagnosis=parsed.diagnosis,
        stated_status=parsed.status,
    )
    mapper = AnswerMapper(taxonomy)
    node = mapper(parsed.diagnosis) if parsed.ok else None
    if node is None:
        return DiagnosisReport(**base)
    discussed = mapper.mentions(parsed.thinking)
    differentials = []
    for neighbour in ddx.neighbours_with_expansion(node, taxonomy):
        tells = knowledge.discriminator(node, neighbour) if knowledge is not None else None
        differentials.append(
            Differential(
                neighbour, taxonomy[neighbour].name, neighbour in discussed, ddx.is_do_not_miss(neighbour), tells
            )
        )
    differentials.sort(key=lambda d: (not d.discussed, not d.do_not_miss, d.name))
    return DiagnosisReport(
        **base,
        node=node,
        name=taxonomy[node].name,
        taxonomy_path=[taxonomy[n].name for n in taxonomy.path(node)],
        bucket=taxonomy[node].bucket,
        differentials=differentials,
    )


def diagnose(
    image_path: str | Path, source: ModelSource, *, max_new_tokens: int = 512, question: str | None = None
) -> DiagnosisReport:
    """Greedy answer of `source` to the open question on one image, explained against the packaged knowledge."""
    from skinr1_pipeline.knowledge.ddx import DDxGraph
    from skinr1_pipeline.knowledge.knowledge_base import load_knowledge_base
    from skinr1_pipeline.knowledge.taxonomy import Taxonomy
    from skinr1_pipeline.modeling.generation import generate
    from skinr1_pipeline.modeling.model_factory import (
        load_adapter_model,
        load_model,
        load_processor,
        pixel_limits,
        taught_system_prompt,
    )
    from skinr1_pipeline.modeling.prompt_format import DEFAULT_OPEN_QUESTION, build_open_prompt

    processor = load_processor(source.base_dir, max_pixels=_max_pixels(source.base_dir))
    min_pixels, max_pixels = pixel_limits(processor)
    image = open_image(image_path, max_pixels, min_pixels)
    model = (
        load_adapter_model(source.base_dir, source.adapter_dir, trainable=False)
        if source.adapter_dir
        else load_model(source.base_dir)
    )
    prompt = build_open_prompt(question or DEFAULT_OPEN_QUESTION)
    system = taught_system_prompt(source.base_dir, source.adapter_dir)  # asked as it was taught
    completion = generate(
        model, processor, [image], [prompt], max_new_tokens=max_new_tokens, batch_size=1, system=system
    )[0]
    taxonomy = Taxonomy.load()
    ddx = DDxGraph.load(taxonomy)
    return explain(
        completion,
        image=str(image_path),
        model=source.label,
        taxonomy=taxonomy,
        ddx=ddx,
        knowledge=load_knowledge_base(taxonomy, ddx),
    )


def render(report: DiagnosisReport, width: int = 100) -> str:
    """The terminal view: what a clinician-reader wants first (diagnosis, bucket), then the reasoning."""
    import textwrap

    def wrapped(label: str, text: str | None) -> str:
        body = textwrap.fill(text or "-", width=width - 14, subsequent_indent=" " * 14)
        return f"{label:<14}{body}"

    lines = [wrapped("image", report.image), wrapped("model", report.model)]
    if not report.format_ok:
        lines += [
            wrapped("format", f"NOT PARSEABLE ({report.parse_error})"),
            wrapped("raw output", report.completion[:2000]),
        ]
        return "\n".join(lines)
    lines += [wrapped("rationale", report.rationale), wrapped("diagnosis", report.diagnosis)]
    if report.node is None:
        lines.append(wrapped("taxonomy", "the answer names no single taxonomy node (unknown or ambiguous)"))
        return "\n".join(lines)
    lines += [
        wrapped("taxonomy", " › ".join(report.taxonomy_path)),
        wrapped("bucket", f"{report.bucket or 'unassigned'} (model said: {report.stated_status or '-'})"),
    ]
    if not report.differentials:
        lines.append(wrapped("DDx", "no differential group lists this diagnosis"))
    else:
        lines.append("DDx excluded  (look-alikes from the DDx graph; * = do-not-miss)")
        for d in report.differentials:
            flag = "*" if d.do_not_miss else " "
            said = "ruled out in the rationale" if d.discussed else "not discussed by the model"
            tells = f"; tells apart: {d.tells_apart}" if d.tells_apart else ""
            lines.append(
                textwrap.fill(
                    f"{flag} {d.name}: {said}{tells}", width=width, initial_indent="  ", subsequent_indent="      "
                )
            )
    return "\n".join(lines)
