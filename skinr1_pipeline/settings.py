"""Profiles and paths: one setting (`SKINR1_PROFILE`) chooses demo or gpu; the code paths are the same.

- demo: data generated locally into the pipeline home, tiny model, CPU; finishes in minutes.
- gpu:  real dataset folders and a local Qwen2.5-VL-7B directory, named in a YAML file (`SKINR1_CONFIG`).

Environment variables are read once, at definition load, so a Dagster code location and a standalone
training script started with the same environment agree on every path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from skinr1_pipeline.data.loaders import SUPPORTED_DATASETS
from skinr1_pipeline.data.schema import MODALITIES
from skinr1_pipeline.messages import capped
from skinr1_pipeline.runtime.launch import LAUNCHERS

PROFILES = ("demo", "gpu")
# The demo writes these three formats (dermoscopic HAM10000, clinical PAD-UFES-20, both in Derm7pt).
DEMO_DATASETS = ("ham10000", "pad_ufes_20", "derm7pt")
DEMO_FOLDERS = {"ham10000": "HAM10000", "pad_ufes_20": "PAD-UFES-20", "derm7pt": "derm7pt"}


class SettingsError(ValueError):
    """A setting has a value outside what the pipeline accepts; the message names it and the allowed values."""


COMPUTE_KINDS = ("local", "ray")
# Every key a config file may hold. Anything else is a typo or a setting this version lacks, and is refused by name
# rather than ignored (a silently ignored `split_seed` once left every split on the default seed).
# `launcher`/`accelerate_args` are the spelling from before `compute:`, still read as local compute.
FILE_KEYS = (
    "datasets",
    "model_dir",
    "training_recipe",
    "train_seed",
    "label_map_dir",
    "mlflow_tracking_uri",
    "mlflow_experiment",
    "demo_seed",
    "demo_images_per_class",
    "split_seed",
    "ood",
    "compute",
    "teacher",
    "automation",
    "scale",
    "launcher",
    "accelerate_args",
)
# Keys only one profile reads: the demo generates its own dataset folders (and can shrink to toy scale); the gpu
# profile generates no data.
PROFILE_KEYS = {"datasets": "gpu", "demo_seed": "demo", "demo_images_per_class": "demo", "scale": "demo"}
OOD_KEYS = ("modalities", "sources")
TEACHER_GENERATORS = ("template", "vllm", "openai")
# full: every stage at the profile's own size. toy: every stage at smoke-test size (`presets.TOY_ASSET_CONFIG`), for
# tests that run the whole chain under a real daemon; the numbers mean nothing.
SCALES = ("full", "toy")


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
class AutomationSettings:
    """The `automation:` section: which stages Dagster re-runs by itself once their inputs change.

    ingest: the dataset-folder sensor, the knowledge assets, `raw_datasets` and `unified_samples`. training: the
    trajectories, RL items, base model, SFT, GRPO and RL-only. evaluation: suites, variant evaluations, ablation table
    and report. A stage that is off is materialized by a person (in the UI), after which the automatic stages below
    it follow. Defaults: everything on the demo (minutes of CPU); on gpu training waits for approval, because a run
    costs GPU hours and a lab reviews new data before training on it, while ingest and evaluation are cheap.
    """

    ingest: bool = True
    training: bool = True
    evaluation: bool = True
    interval_seconds: int = 30  # how often the dataset sensor and the automation sensor look


AUTOMATION_STAGES = ("ingest", "training", "evaluation")


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
    base_model_dir: Path | None = None  # `model_dir:` (required on gpu); None: base_model builds the tiny demo model
    # Out-of-distribution hold-out: samples of these modalities / source datasets never reach training, so the
    # OOD suite is honest. Demo: the clinical-photo domain (PAD-UFES-20 and Derm7pt's clinical images).
    ood_modalities: tuple[str, ...] = ()
    ood_sources: tuple[str, ...] = ()
    # Where training, gate and evaluation steps run (`defs.compute`): local processes or a Ray cluster.
    compute: ComputeSettings = field(default_factory=lambda: ComputeSettings())
    teacher: TeacherSettings = field(default_factory=lambda: TeacherSettings())
    automation: AutomationSettings = field(default_factory=lambda: AutomationSettings())
    scale: str = "full"  # `SCALES`; toy shrinks every stage for the daemon test (demo profile only)
    # How the model is taught (`training.recipes`): a shipped recipe (`demo` for the tiny built model, `paper`) or a
    # lab's own folder of sft.yaml/grpo.yaml/recipe.yaml.
    training_recipe: str = "paper"
    # The seed of every training step (the demo's model build, warm-ups and drill rows; SFT and GRPO), apart from the
    # data's: several runs over the same data and items say how much of a result is the seed. None: the demo builds
    # from `demo_seed` and the trainers take the recipe's `seed`.
    train_seed: int | None = None

    @property
    def model_seed(self) -> int:
        """The seed the demo's base model is built and warmed up with."""
        return self.demo_seed if self.train_seed is None else self.train_seed

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
    source = f"SKINR1_CONFIG={config_path}: " if config_path else ""
    _check_file(file_config, profile, source)
    roots = {name: Path(root).expanduser() for name, root in (file_config.get("datasets") or {}).items()}
    tracking = env.get("MLFLOW_TRACKING_URI") or file_config.get("mlflow_tracking_uri") or ""
    if not tracking:
        tracking = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    label_map_dir = file_config.get("label_map_dir")
    return Settings(
        profile=profile,
        home=home,
        dataset_roots=roots,
        demo_seed=_int(env, "SKINR1_DEMO_SEED", file_config, "demo_seed", 0, minimum=0, source=source),
        demo_images_per_class=_int(
            env, "SKINR1_DEMO_IMAGES_PER_CLASS", file_config, "demo_images_per_class", 24, minimum=1, source=source
        ),
        split_seed=_whole(file_config.get("split_seed", 42), f"{source}split_seed", minimum=0),
        mlflow_tracking_uri=tracking,
        mlflow_experiment=(
            env.get("MLFLOW_EXPERIMENT_NAME") or file_config.get("mlflow_experiment") or "skinr1-pipeline"
        ),
        label_map_dir=Path(label_map_dir).expanduser() if label_map_dir else None,
        base_model_dir=_model_dir(profile, file_config, config_path),
        ood_modalities=_strings(
            file_config, "modalities", ("clinical",) if profile == "demo" else (), MODALITIES, source
        ),
        ood_sources=_strings(file_config, "sources", (), SUPPORTED_DATASETS, source),
        compute=_compute(file_config, home),
        teacher=_teacher(profile, file_config),
        automation=_automation(profile, file_config, source),
        scale=_choice(file_config.get("scale", "full"), f"{source}scale", SCALES),
        training_recipe=_recipe(file_config, "demo" if profile == "demo" else "paper", source),
        train_seed=(
            _int(env, "SKINR1_TRAIN_SEED", file_config, "train_seed", 0, minimum=0, source=source)
            if "SKINR1_TRAIN_SEED" in env or "train_seed" in file_config
            else None
        ),
    )


def _recipe(file_config: dict[str, Any], default: str, source: str) -> str:
    """`training_recipe:`, checked now (both trainers' files, `recipe.yaml`) so a typo fails before any run."""
    from skinr1_pipeline.training.config import ConfigError
    from skinr1_pipeline.training.recipes import check_recipe

    recipe = file_config.get("training_recipe", default)
    if not isinstance(recipe, str) or not recipe.strip():
        raise SettingsError(f"{source}training_recipe must be a recipe name or folder, got {capped(repr(recipe))}")
    try:
        check_recipe(recipe)
    except ConfigError as exc:
        raise SettingsError(f"{source}training_recipe: {exc}") from None
    return recipe


def _automation(profile: str, file_config: dict[str, Any], source: str) -> AutomationSettings:
    """The `automation:` section over the profile's default (all on for demo; training on approval for gpu)."""
    default = AutomationSettings() if profile == "demo" else AutomationSettings(training=False)
    raw = file_config.get("automation") or {}  # the mapping and its keys were checked by _check_file
    values: dict[str, Any] = {}
    for stage in AUTOMATION_STAGES:
        if stage in raw and not isinstance(raw[stage], bool):
            raise SettingsError(f"{source}automation.{stage} must be true or false, got {capped(repr(raw[stage]))}")
        values[stage] = raw.get(stage, getattr(default, stage))
    interval = _whole(
        raw.get("interval_seconds", default.interval_seconds), f"{source}automation.interval_seconds", minimum=1
    )
    return replace(default, **values, interval_seconds=interval)


def _teacher(profile: str, file_config: dict[str, Any]) -> TeacherSettings:
    """The `teacher:` section over the profile's default (template on demo, the base model through vLLM on gpu)."""
    raw = file_config.get("teacher") or {}
    if not isinstance(raw, dict):
        raise SettingsError(f"teacher must be a mapping, got {raw!r}")
    known = set(TeacherSettings.__dataclass_fields__)
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SettingsError(f"teacher.{unknown[0]} is not a teacher setting; allowed: {', '.join(sorted(known))}")
    generator = _choice(
        raw.get("generator", "template" if profile == "demo" else "vllm"), "teacher.generator", TEACHER_GENERATORS
    )
    model_dir = str(raw.get("model_dir") or (file_config.get("model_dir") if generator == "vllm" else "") or "")
    teacher = TeacherSettings(
        generator=generator,
        model_dir=model_dir,
        base_url=str(raw.get("base_url") or ""),
        api_model=str(raw.get("api_model") or ""),
    )
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
    scalar = (str, int, float)
    if not isinstance(env, dict) or not all(isinstance(v, scalar) and not isinstance(v, bool) for v in env.values()):
        raise SettingsError(
            "compute.env must be a mapping of variable names to strings or numbers (quote true/false),"
            f" got {capped(repr(env))}"
        )
    args = raw.get("launcher_args") or ()
    if not isinstance(args, (list, tuple)) or not all(isinstance(a, scalar) for a in args):
        raise SettingsError(f"compute.launcher_args must be a list of arguments, got {capped(repr(args))}")
    for key in ("address", "storage_path"):
        if not isinstance(raw.get(key) or "", str):
            raise SettingsError(f"compute.{key} must be a string, got {capped(repr(raw[key]))}")
    compute = ComputeSettings(
        kind=kind,
        launcher=launcher,
        processes=_whole(raw.get("processes", 1), "compute.processes", minimum=1),
        launcher_args=tuple(str(a) for a in args),
        address=raw.get("address") or "",
        workers=_whole(raw.get("workers", 1), "compute.workers", minimum=1),
        cpus_per_worker=_number(raw.get("cpus_per_worker", 1.0), "compute.cpus_per_worker", minimum=0),
        gpus_per_worker=_number(raw.get("gpus_per_worker", 0), "compute.gpus_per_worker", minimum=0),
        storage_path=raw.get("storage_path") or str(home / "ray_results"),
        env=tuple((str(k), str(v)) for k, v in sorted(env.items(), key=lambda kv: str(kv[0]))),
    )
    if launcher == "python" and compute.processes > 1:
        raise SettingsError(
            "launcher=python runs one process; set launcher to torchrun or accelerate for "
            f"compute.processes={compute.processes}"
        )
    if kind == "ray" and not compute.address:
        raise SettingsError("compute.kind=ray needs compute.address: the Ray dashboard, e.g. http://ray-head:8265")
    return compute


def _model_dir(profile: str, file_config: dict[str, Any], config_path: str | None) -> Path | None:
    raw = file_config.get("model_dir")
    if raw is None:
        if profile == "gpu":
            raise SettingsError(
                f"SKINR1_CONFIG={config_path}: model_dir is required on the gpu profile "
                "(a local Qwen2.5-VL-7B-Instruct directory with config.json and *.safetensors)"
            )
        return None
    return Path(raw).expanduser()


def _strings(
    file_config: dict[str, Any], key: str, default: tuple[str, ...], allowed: tuple[str, ...], source: str
) -> tuple[str, ...]:
    """`ood.<key>`: a list drawn from `allowed`; a misspelt entry would hold nothing out, so it is refused."""
    value = (file_config.get("ood") or {}).get(key, default)
    value = () if value is None else value
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise SettingsError(f"{source}ood.{key} must be a list of strings, got {capped(repr(value))}")
    unknown = [v for v in value if v not in allowed]
    if unknown:
        raise SettingsError(
            f"{source}ood.{key}: {capped(repr(unknown[0]))} is not allowed; allowed: {', '.join(allowed)}"
        )
    return tuple(value)


def _check_file(file_config: dict[str, Any], profile: str, source: str) -> None:
    """Refuse, by name, every key the pipeline would not read: unknown top-level keys, unknown keys of each section,
    keys the active profile ignores, and path/URI keys that are not strings (the types of the rest are checked
    where they are read). Why: a misspelt or ignored key otherwise runs the pipeline on defaults, silently."""
    _known_keys(file_config, FILE_KEYS, "", "a setting", source)
    for key, only in PROFILE_KEYS.items():
        if key in file_config and profile != only:
            raise SettingsError(
                f"{source}{key} is read on the {only} profile only and this is "
                f"SKINR1_PROFILE={profile}; remove it or run with SKINR1_PROFILE={only}"
            )
    sections = {
        "datasets": (SUPPORTED_DATASETS, "a supported dataset"),
        "ood": (OOD_KEYS, "an ood setting"),
        "compute": (tuple(ComputeSettings.__dataclass_fields__), "a compute setting"),
        "teacher": (tuple(TeacherSettings.__dataclass_fields__), "a teacher setting"),
        "automation": (tuple(AutomationSettings.__dataclass_fields__), "an automation setting"),
    }
    for section, (allowed, what) in sections.items():
        raw = file_config.get(section)
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise SettingsError(f"{source}{section} must be a mapping, got {capped(repr(raw))}")
        _known_keys(raw, allowed, f"{section}.", what, source)
    texts = [
        (k, file_config.get(k)) for k in ("model_dir", "label_map_dir", "mlflow_tracking_uri", "mlflow_experiment")
    ]
    texts += [(f"datasets.{k}", v) for k, v in (file_config.get("datasets") or {}).items()]
    for key, value in texts:
        if value is not None and (not isinstance(value, str) or not value.strip()):
            raise SettingsError(
                f"{source}{key} must be a non-empty string (a path, URI or name), got {capped(repr(value))}"
            )


def _known_keys(raw: dict[Any, Any], allowed: tuple[str, ...], prefix: str, what: str, source: str) -> None:
    unknown = [k for k in raw if k not in allowed]
    if unknown:
        raise SettingsError(
            f"{source}{prefix}{capped(unknown[0])} is not {what}; allowed: {', '.join(sorted(allowed))}"
        )


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


def _int(
    env: dict[str, str], env_key: str, file_config: dict[str, Any], key: str, default: int, *, minimum: int, source: str
) -> int:
    """An integer setting: the environment variable if set, else the config file's key, else `default`."""
    if env_key in env:
        return _whole(env[env_key], env_key, minimum=minimum)
    return _whole(file_config.get(key, default), f"{source}{key}", minimum=minimum)


def _whole(value: Any, key: str, *, minimum: int) -> int:
    """`value` as an integer >= `minimum`. Bools and fractions are refused rather than truncated (int(2.7) is 2)."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SettingsError(f"{key}={capped(repr(value))} must be an integer >= {minimum}")
    return value


def _number(value: Any, key: str, *, minimum: float) -> float:
    """`value` as a float >= `minimum`; bools and non-numbers are refused by name instead of raising TypeError."""
    try:
        number = float(value) if not isinstance(value, bool) else None
    except (TypeError, ValueError):
        number = None
    if number is None or not number >= minimum:
        raise SettingsError(f"{key}={capped(repr(value))} must be a number >= {minimum}")
    return number
