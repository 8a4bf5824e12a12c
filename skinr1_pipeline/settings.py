"""Profiles and paths: one setting (`SKINR1_PROFILE`) chooses demo or gpu; the code paths are the same.

- demo: data generated locally into the pipeline home, tiny model, CPU; finishes in minutes.
- gpu:  real dataset folders and a local Qwen2.5-VL-7B directory, named in a YAML file (`SKINR1_CONFIG`).

Environment variables are read once, at definition load, so a Dagster code location and a standalone
training script started with the same environment agree on every path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from skinr1_pipeline.data.loaders import SUPPORTED_DATASETS
from skinr1_pipeline.runtime.launch import LAUNCHERS

PROFILES = ("demo", "gpu")
# The demo writes these three formats (dermoscopic HAM10000, clinical PAD-UFES-20, both in Derm7pt).
DEMO_DATASETS = ("ham10000", "pad_ufes_20", "derm7pt")
DEMO_FOLDERS = {"ham10000": "HAM10000", "pad_ufes_20": "PAD-UFES-20", "derm7pt": "derm7pt"}


class SettingsError(ValueError):
    """A setting has a value outside what the pipeline accepts; the message names it and the allowed values."""


COMPUTE_KINDS = ("local", "ray")
TEACHER_GENERATORS = ("template", "vllm", "openai")


@dataclass(frozen=True)
class TeacherSettings:
    """The `teacher:` section: what writes the SkinRationale rationales unless the asset config names another.

    demo: the knowledge-grounded template (no model to run). gpu: an LLM teacher, as the authors used (their scripts
    call gpt-4.1-mini through the OpenAI API): `vllm` runs `model_dir` offline (default: the profile's base model,
    a local instruct VLM), `openai` calls an OpenAI-compatible endpoint (`base_url`, `api_model`).
    """

    generator: str = "template"
    model_dir: str = ""
    base_url: str = ""
    api_model: str = ""


@dataclass(frozen=True)
class ComputeSettings:
    """The `compute:` section: where GPU-backed steps run.

    local: `launcher` python | torchrun | accelerate with `processes` per training step (gates and evaluation run
    in one process); ray: jobs on the cluster whose dashboard is `address`, training in `workers` Ray Train workers
    of `cpus_per_worker`/`gpus_per_worker` each, Ray Train state under `storage_path` (shared by all nodes).
    `env` is added to every step's environment.
    """

    kind: str = "local"
    launcher: str = "python"
    processes: int = 1
    launcher_args: tuple[str, ...] = ()
    address: str = ""
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    storage_path: str = ""
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Settings:
    profile: str
    home: Path  # everything the pipeline writes: demo data, asset outputs, MLflow store
    dataset_roots: dict[str, Path] = field(default_factory=dict)
    demo_seed: int = 0
    demo_images_per_class: int = 24
    split_seed: int = 42
    mlflow_tracking_uri: str = ""
    mlflow_experiment: str = "skinr1-pipeline"
    label_map_dir: Path | None = None  # user label-map overrides (same YAML format as the packaged maps)
    base_model_dir: Path | None = None  # gpu profile: a local Qwen2.5-VL directory; demo: built by `base_model`
    # Out-of-distribution hold-out: samples of these modalities / source datasets never reach training, so the
    # OOD suite is honest. Demo: the clinical-photo domain (PAD-UFES-20 and Derm7pt's clinical images).
    ood_modalities: tuple[str, ...] = ()
    ood_sources: tuple[str, ...] = ()
    # Where training, gate and evaluation steps run (`defs.compute`): local processes or a Ray cluster.
    compute: ComputeSettings = field(default_factory=lambda: ComputeSettings())
    teacher: TeacherSettings = field(default_factory=lambda: TeacherSettings())

    @property
    def datasets(self) -> tuple[str, ...]:
        return DEMO_DATASETS if self.profile == "demo" else tuple(sorted(self.dataset_roots))

    @property
    def demo_dir(self) -> Path:
        return self.home / "demo_sources"

    def dataset_root(self, dataset: str) -> Path:
        if self.profile == "demo":
            return self.demo_dir / DEMO_FOLDERS[dataset]
        try:
            return self.dataset_roots[dataset]
        except KeyError:
            raise SettingsError(
                f"dataset {dataset!r} has no folder configured; configured: {sorted(self.dataset_roots)}"
            ) from None

    @property
    def outputs_dir(self) -> Path:
        return self.home / "outputs"


def load_settings(env: dict[str, str] | None = None) -> Settings:
    env = dict(os.environ if env is None else env)
    profile = env.get("SKINR1_PROFILE", "demo").strip().lower()
    if profile not in PROFILES:
        raise SettingsError(f"SKINR1_PROFILE={profile!r} is not a profile; allowed: {', '.join(PROFILES)}")
    home = Path(env.get("SKINR1_HOME") or Path.cwd() / ".skinr1").expanduser().resolve()
    file_config: dict[str, Any] = {}
    config_path = env.get("SKINR1_CONFIG")
    if config_path:
        file_config = _read_config(Path(config_path))
    elif profile == "gpu":
        raise SettingsError("SKINR1_PROFILE=gpu needs SKINR1_CONFIG: a YAML file naming dataset folders and the model")
    roots = {}
    for name, root in (file_config.get("datasets") or {}).items():
        if name not in SUPPORTED_DATASETS:
            raise SettingsError(
                f"{config_path}: datasets.{name} is not a supported dataset; allowed: {', '.join(SUPPORTED_DATASETS)}"
            )
        roots[name] = Path(root).expanduser()
    tracking = env.get("MLFLOW_TRACKING_URI") or file_config.get("mlflow_tracking_uri") or ""
    if not tracking:
        tracking = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    label_map_dir = file_config.get("label_map_dir")
    return Settings(
        profile=profile,
        home=home,
        dataset_roots=roots,
        demo_seed=_int(env, "SKINR1_DEMO_SEED", file_config.get("demo_seed", 0)),
        demo_images_per_class=_int(env, "SKINR1_DEMO_IMAGES_PER_CLASS", file_config.get("demo_images_per_class", 24)),
        split_seed=int(file_config.get("split_seed", 42)),
        mlflow_tracking_uri=tracking,
        mlflow_experiment=env.get("MLFLOW_EXPERIMENT_NAME") or file_config.get("mlflow_experiment", "skinr1-pipeline"),
        label_map_dir=Path(label_map_dir).expanduser() if label_map_dir else None,
        base_model_dir=_model_dir(profile, file_config, config_path),
        ood_modalities=_strings(file_config, "ood", "modalities", ("clinical",) if profile == "demo" else ()),
        ood_sources=_strings(file_config, "ood", "sources", ()),
        compute=_compute(file_config, home),
        teacher=_teacher(profile, file_config),
    )


def _teacher(profile: str, file_config: dict[str, Any]) -> TeacherSettings:
    """The `teacher:` section over the profile's default (template on demo, the base model through vLLM on gpu)."""
    raw = file_config.get("teacher") or {}
    if not isinstance(raw, dict):
        raise SettingsError(f"teacher must be a mapping, got {raw!r}")
    known = set(TeacherSettings.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SettingsError(f"teacher.{unknown[0]} is not a teacher setting; allowed: {', '.join(sorted(known))}")
    generator = _choice(raw.get("generator", "template" if profile == "demo" else "vllm"), "teacher.generator",
                        TEACHER_GENERATORS)
    model_dir = str(raw.get("model_dir") or (file_config.get("model_dir") if generator == "vllm" else "") or "")
    teacher = TeacherSettings(generator=generator, model_dir=model_dir, base_url=str(raw.get("base_url") or ""),
                              api_model=str(raw.get("api_model") or ""))
    if generator == "vllm" and not teacher.model_dir:
        raise SettingsError("teacher.generator=vllm needs teacher.model_dir (a local instruct model directory)")
    if generator == "openai" and not (teacher.base_url and teacher.api_model):
        raise SettingsError("teacher.generator=openai needs teacher.base_url and teacher.api_model")
    return teacher


def _compute(file_config: dict[str, Any], home: Path) -> ComputeSettings:
    """The `compute:` section (top-level `launcher`/`accelerate_args` are still read as local compute)."""
    if not isinstance(file_config.get("compute") or {}, dict):
        raise SettingsError(f"compute must be a mapping, got {file_config.get('compute')!r}")
    raw = dict(file_config.get("compute") or {})
    if "launcher" in file_config:
        raw.setdefault("launcher", file_config["launcher"])
    if "accelerate_args" in file_config:
        raw.setdefault("launcher_args", file_config["accelerate_args"])
    known = {f for f in ComputeSettings.__dataclass_fields__}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SettingsError(f"compute.{unknown[0]} is not a compute setting; allowed: {', '.join(sorted(known))}")
    kind = _choice(raw.get("kind", "local"), "compute.kind", COMPUTE_KINDS)
    launcher = _choice(raw.get("launcher", "python"), "launcher", LAUNCHERS)
    env = raw.get("env") or {}
    if not isinstance(env, dict):
        raise SettingsError(f"compute.env must be a mapping of variable names to values, got {env!r}")
    try:
        compute = ComputeSettings(
            kind=kind, launcher=launcher, processes=int(raw.get("processes", 1)),
            launcher_args=tuple(str(a) for a in raw.get("launcher_args") or ()),
            address=str(raw.get("address", "")), workers=int(raw.get("workers", 1)),
            cpus_per_worker=float(raw.get("cpus_per_worker", 1.0)), gpus_per_worker=float(raw.get("gpus_per_worker", 0)),
            storage_path=str(raw.get("storage_path") or home / "ray_results"),
            env=tuple((str(k), str(v)) for k, v in sorted(env.items())))
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"compute: {exc}") from None
    if compute.processes < 1 or compute.workers < 1:
        raise SettingsError("compute.processes and compute.workers must be >= 1")
    if launcher == "python" and compute.processes > 1:
        raise SettingsError("launcher=python runs one process; set launcher to torchrun or accelerate for "
                            f"compute.processes={compute.processes}")
    if kind == "ray" and not compute.address:
        raise SettingsError("compute.kind=ray needs compute.address: the Ray dashboard, e.g. http://ray-head:8265")
    return compute


def _model_dir(profile: str, file_config: dict[str, Any], config_path: str | None) -> Path | None:
    raw = file_config.get("model_dir")
    if raw is None:
        if profile == "gpu":
            raise SettingsError(f"SKINR1_CONFIG={config_path}: model_dir is required on the gpu profile "
                                "(a local Qwen2.5-VL-7B-Instruct directory with config.json and *.safetensors)")
        return None
    return Path(raw).expanduser()


def _strings(file_config: dict[str, Any], section: str, key: str, default: tuple[str, ...]) -> tuple[str, ...]:
    value = (file_config.get(section) or {}).get(key, default)
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"{section}.{key} must be a list of strings, got {value!r}")
    return tuple(value)


def _choice(value: Any, key: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SettingsError(f"{key}={value!r} is not allowed; allowed: {', '.join(allowed)}")
    return value


def _read_config(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text("utf-8")) or {}
    except OSError as exc:
        raise SettingsError(f"SKINR1_CONFIG={path}: cannot read: {exc}") from exc
    except yaml.YAMLError as exc:
        raise SettingsError(f"SKINR1_CONFIG={path}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise SettingsError(f"SKINR1_CONFIG={path}: expected a mapping at the top level")
    return data


def _int(env: dict[str, str], key: str, default: Any) -> int:
    raw = env.get(key, default)
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"{key}={raw!r} must be an integer") from None
