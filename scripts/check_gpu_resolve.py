"""Resolve the gpu profile's install without a GPU, the way a Linux x86-64 CUDA host would, and compare the result
with `requirements/gpu-resolved.txt`.

Why a resolver run and not an install: the gpu set (torch 2.13.0 CUDA, vLLM 0.31, flashinfer, triton) is several GB
and needs a GPU to be useful, but whether its pins fit together is decided by metadata alone. pip's resolver runs
over the registry's metadata (`--dry-run --report`) for the GPU host's platform tags, with this machine's pip
configuration switched off (its local CPU-only torch wheels and its torch cap would otherwise stand in for the
registry's CUDA builds). Exit status 0 = resolves and matches the committed list; 1 = does not resolve or differs.

    python scripts/check_gpu_resolve.py            # check (CI)
    python scripts/check_gpu_resolve.py --write    # refresh requirements/gpu-resolved.txt after changing pins
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESOLVED = ROOT / "requirements" / "gpu-resolved.txt"
EXTRAS = ("gpu", "cluster")
# Every platform tag an x86-64 host with glibc 2.35 (Ubuntu 22.04, the usual CUDA image) accepts; pip matches
# --platform tags exactly, so each is listed.
GLIBC_MINOR = 35
PLATFORMS = [
    *(f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MINOR, 4, -1)),
    "manylinux2014_x86_64",
    "manylinux2010_x86_64",
    "manylinux1_x86_64",
    "linux_x86_64",
]
# Packages whose resolved version the README, `skinr1 doctor` and the closing notes quote.
HEADLINE = (
    "torch",
    "torchvision",
    "vllm",
    "transformers",
    "trl",
    "peft",
    "accelerate",
    "datasets",
    "dagster",
    "mlflow",
    "ray",
    "dagster-ray",
    "flashinfer-python",
    "triton",
)


def requirements(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The project's dependencies plus the gpu profile's extras, as pip requirement strings."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return reqs


def resolve(reqs: list[str]) -> dict[str, str]:
    """{normalized name: version} that pip would install on a Python 3.11 glibc 2.35 x86-64 host."""
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "report.json")
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--ignore-installed",
            "--quiet",
            "--report",
            str(report),
            "--target",
            str(Path(tmp, "target")),
            "--python-version",
            "3.11",
            "--implementation",
            "cp",
            "--abi",
            "cp311",
            "--only-binary=:all:",
            *[f"--platform={p}" for p in PLATFORMS],
            *reqs,
        ]
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in ("PIP_CERT", "PIP_DEFAULT_TIMEOUT")
        }
        env["PIP_CONFIG_FILE"] = os.devnull  # no local wheel folders, no torch cap: the registry alone
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the gpu profile does not resolve:\n{done.stderr.strip()[-4000:]}")
        data = json.loads(report.read_text(encoding="utf-8"))
    return {_norm(i["metadata"]["name"]): i["metadata"]["version"] for i in data["install"]}


def pinned_names(reqs: list[str]) -> list[str]:
    """Names of the requirements pinned with `==` (torch, torchvision, vllm, dagster, ...)."""
    from packaging.requirements import Requirement

    return sorted({_norm(r.name) for r in map(Requirement, reqs) if any(s.operator == "==" for s in r.specifier)})


def _norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def render(resolved: dict[str, str]) -> str:
    head = (
        "# The gpu profile (`pip install -e '.[gpu,cluster,test]'` minus test tools) as pip resolves it for a Python\n"
        "# 3.11 glibc 2.35 x86-64 host, written by `python scripts/check_gpu_resolve.py --write`; CI re-resolves\n"
        "# and fails when the result differs. Not a constraint file: the pins live in pyproject.toml.\n"
    )
    return head + "".join(f"{name}=={version}\n" for name, version in sorted(resolved.items()))


def read(path: Path = RESOLVED) -> dict[str, str]:
    out = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            out[name] = version
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help=f"write {RESOLVED.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    resolved = resolve(requirements())
    print("gpu profile resolves:", ", ".join(f"{n} {resolved[n]}" for n in HEADLINE if n in resolved))
    if args.write:
        RESOLVED.write_text(render(resolved), encoding="utf-8")
        print(f"wrote {len(resolved)} packages to {RESOLVED}")
        return 0
    committed = read()
    # The exactly pinned packages must resolve as committed; the rest (peft, fastapi, opentelemetry, ...) moves with
    # new releases inside their ranges, which is reported, not failed on: CI must not go red for a patch release.
    pinned = pinned_names(requirements())
    changed = {n: (committed.get(n), resolved.get(n)) for n in pinned if committed.get(n) != resolved.get(n)}
    drift = sorted(n for n in set(committed) | set(resolved) if n not in pinned and committed.get(n) != resolved.get(n))
    if drift:
        print(
            f"note: {len(drift)} unpinned packages resolve differently from {RESOLVED.name} (their ranges allow "
            "it): "
            + ", ".join(f"{n} {committed.get(n)} -> {resolved.get(n)}" for n in drift[:12])
            + (" ..." if len(drift) > 12 else "")
        )
    if changed:
        print(
            "pinned versions differ from the committed list (was -> now): "
            + ", ".join(f"{n} {a} -> {b}" for n, (a, b) in changed.items())
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
