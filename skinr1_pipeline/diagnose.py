"""One image in, a clinician-style answer out: rationale, diagnosis, its taxonomy path and malignancy bucket, and
the differential diagnoses it had to rule out. Backs `skinr1 diagnose`; no Dagster here.

Why the DDx part comes from the graph and not from the model alone: a small model's rationale may skip a
look-alike, and an operator reading one answer needs to see which do-not-miss neighbours were never discussed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from skinr1_pipeline.settings import Settings

REGISTERED_MODEL = "skinr1-grpo"
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


def default_base_dir(settings: Settings) -> Path:
    return Path(settings.base_model_dir) if settings.base_model_dir else settings.home / "models" / "base"


def resolve_model(spec: str | None, settings: Settings, *, base_dir: str | Path | None = None) -> ModelSource:
    """`spec`: None (newest trained adapter of this home), a model or adapter directory, a registry alias
    (`champion`, `candidate`, `previous_champion`) or a `models:/name@alias` / `models:/name/version` URI."""
    base = Path(base_dir) if base_dir else default_base_dir(settings)
    if spec is None:
        tried = [settings.home / "models" / stage / "adapter" for stage in TRAINED_STAGES]
        for stage, adapter in zip(TRAINED_STAGES, tried):
            if _is_adapter_dir(adapter):
                return _with_base(ModelSource(base, adapter, f"{stage} adapter {adapter}"))
        raise DiagnoseError(f"no trained adapter found (looked for {', '.join(map(str, tried))}); run `make demo` "
                            "first or pass --model DIR|champion|models:/name@alias")
    if spec in REGISTRY_ALIASES or spec.startswith("models:/"):
        return _from_registry(spec if spec.startswith("models:/") else f"models:/{REGISTERED_MODEL}@{spec}", settings)
    path = Path(spec).expanduser()
    if _is_adapter_dir(path):
        return _with_base(ModelSource(base, path, f"adapter {path}"))
    if _is_model_dir(path):
        return ModelSource(path, None, f"model {path}")
    raise DiagnoseError(f"--model {spec}: not a model directory (config.json), an adapter directory "
                        f"(adapter_config.json), a registry alias ({', '.join(REGISTRY_ALIASES)}) or a models:/ URI")


def _with_base(source: ModelSource) -> ModelSource:
    if not _is_model_dir(source.base_dir):
        raise DiagnoseError(f"base model {source.base_dir} has no config.json; the adapter needs its base model "
                            "(--base DIR, or materialize base_model first)")
    return ModelSource(source.base_dir, source.adapter_dir, f"{source.label} on base {source.base_dir}")


def _from_registry(uri: str, settings: Settings) -> ModelSource:
    """Download the registered pyfunc once per version; it carries both the base model and the adapter."""
    import os

    import mlflow
    import yaml
    from mlflow.exceptions import MlflowException

    from skinr1_pipeline.tracking.pyfunc_model import ARTIFACT_ADAPTER, ARTIFACT_BASE

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        info = mlflow.models.get_model_info(uri)
        cache = settings.home / "registry_cache" / info.model_uuid
        if not (cache / "MLmodel").is_file():
            cache.mkdir(parents=True, exist_ok=True)
            mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(cache))
    except MlflowException as exc:
        raise DiagnoseError(f"--model {uri}: not found in the registry at {settings.mlflow_tracking_uri}: "
                            f"{exc.message.splitlines()[0]}") from exc
    artifacts = yaml.safe_load((cache / "MLmodel").read_text("utf-8"))["flavors"]["python_function"].get("artifacts", {})
    missing = [key for key in (ARTIFACT_BASE, ARTIFACT_ADAPTER) if key not in artifacts]
    if missing:
        raise DiagnoseError(f"--model {uri}: the registered model has no {missing} artifact(s); expected a "
                            "Skin-R1 pyfunc logged by evaluation_reports")
    return ModelSource(cache / artifacts[ARTIFACT_BASE]["path"], cache / artifacts[ARTIFACT_ADAPTER]["path"],
                       f"{uri} (registry: {info.model_uuid})")


def _max_pixels(base_dir: Path) -> int | None:
    """The demo model records the image size it was trained at; real checkpoints use the processor's default."""
    from skinr1_pipeline.modeling.tiny_model import MANIFEST_NAME

    meta = base_dir / MANIFEST_NAME
    if meta.is_file():
        return json.loads(meta.read_text("utf-8")).get("max_pixels")
    return None


def open_image(path: str | Path, max_pixels: int | None) -> Image.Image:
    from skinr1_pipeline.training.sft import load_image

    image_path = Path(path)
    if not image_path.is_file():
        raise DiagnoseError(f"{image_path}: no such image file")
    try:
        return load_image(image_path, max_pixels)
    except (UnidentifiedImageError, OSError) as exc:
        raise DiagnoseError(f"{image_path}: not a readable image (expected JPEG/PNG/...): {exc}") from exc


def explain(completion: str, *, image: str, model: str, taxonomy, ddx, knowledge=None) -> DiagnosisReport:
    """Parse a completion and place its answer in the taxonomy and the DDx graph (pure: no model involved)."""
    from skinr1_pipeline.evaluation.metrics import AnswerMapper
    from skinr1_pipeline.modeling.prompt_format import parse_completion

    parsed = parse_completion(completion, None)
    base = dict(image=image, model=model, completion=completion, format_ok=parsed.ok, parse_error=parsed.error,
                rationale=parsed.thinking, diagnosis=parsed.diagnosis, stated_status=parsed.status)
    mapper = AnswerMapper(taxonomy)
    node = mapper(parsed.diagnosis) if parsed.ok else None
    if node is None:
        return DiagnosisReport(**base)
    discussed = mapper.mentions(parsed.thinking)
    differentials = []
    for neighbour in ddx.neighbours_with_expansion(node, taxonomy):
        tells = knowledge.discriminator(node, neighbour) if knowledge is not None else None
        differentials.append(Differential(neighbour, taxonomy[neighbour].name, neighbour in discussed,
                                          ddx.is_do_not_miss(neighbour), tells))
    differentials.sort(key=lambda d: (not d.discussed, not d.do_not_miss, d.name))
    return DiagnosisReport(**base, node=node, name=taxonomy[node].name,
                           taxonomy_path=[taxonomy[n].name for n in taxonomy.path(node)], bucket=taxonomy[node].bucket,
                           differentials=differentials)


def diagnose(image_path: str | Path, source: ModelSource, *, max_new_tokens: int = 512,
             question: str | None = None) -> DiagnosisReport:
    """Greedy answer of `source` to the open question on one image, explained against the packaged knowledge."""
    from skinr1_pipeline.knowledge.ddx import DDxGraph
    from skinr1_pipeline.knowledge.knowledge_base import load_knowledge_base
    from skinr1_pipeline.knowledge.taxonomy import Taxonomy
    from skinr1_pipeline.modeling.generation import generate
    from skinr1_pipeline.modeling.model_factory import load_adapter_model, load_model, load_processor
    from skinr1_pipeline.modeling.prompt_format import DEFAULT_OPEN_QUESTION, build_open_prompt

    max_pixels = _max_pixels(source.base_dir)
    image = open_image(image_path, max_pixels)
    processor = load_processor(source.base_dir, max_pixels=max_pixels)
    model = (load_adapter_model(source.base_dir, source.adapter_dir, trainable=False) if source.adapter_dir
             else load_model(source.base_dir))
    prompt = build_open_prompt(question or DEFAULT_OPEN_QUESTION)
    completion = generate(model, processor, [image], [prompt], max_new_tokens=max_new_tokens, batch_size=1)[0]
    taxonomy = Taxonomy.load()
    ddx = DDxGraph.load(taxonomy)
    return explain(completion, image=str(image_path), model=source.label, taxonomy=taxonomy, ddx=ddx,
                   knowledge=load_knowledge_base(taxonomy, ddx))


def render(report: DiagnosisReport, width: int = 100) -> str:
    """The terminal view: what a clinician-reader wants first (diagnosis, bucket), then the reasoning."""
    import textwrap

    def wrapped(label: str, text: str | None) -> str:
        body = textwrap.fill(text or "-", width=width - 14, subsequent_indent=" " * 14)
        return f"{label:<14}{body}"

    lines = [wrapped("image", report.image), wrapped("model", report.model)]
    if not report.format_ok:
        lines += [wrapped("format", f"NOT PARSEABLE ({report.parse_error})"),
                  wrapped("raw output", report.completion[:2000])]
        return "\n".join(lines)
    lines += [wrapped("rationale", report.rationale), wrapped("diagnosis", report.diagnosis)]
    if report.node is None:
        lines.append(wrapped("taxonomy", "the answer names no single taxonomy node (unknown or ambiguous)"))
        return "\n".join(lines)
    lines += [wrapped("taxonomy", " › ".join(report.taxonomy_path)),
              wrapped("bucket", f"{report.bucket or 'unassigned'} (model said: {report.stated_status or '-'})")]
    if not report.differentials:
        lines.append(wrapped("DDx", "no differential group lists this diagnosis"))
    else:
        lines.append("DDx excluded  (look-alikes from the DDx graph; * = do-not-miss)")
        for d in report.differentials:
            flag = "*" if d.do_not_miss else " "
            said = "ruled out in the rationale" if d.discussed else "not discussed by the model"
            tells = f"; tells apart: {d.tells_apart}" if d.tells_apart else ""
            lines.append(textwrap.fill(f"{flag} {d.name}: {said}{tells}", width=width, initial_indent="  ",
                                       subsequent_indent="      "))
    return "\n".join(lines)
