"""Command lines that start a pipeline step in N processes, and what the failed ones left behind.

Why plain functions: the Dagster compute resources (`defs.compute`) and the tests build the same commands, and a
user can copy them from the run log to rerun a step by hand. Launchers:
- `python`: one process on one device.
- `torchrun`: N processes on this machine (`--standalone`); each gets RANK/LOCAL_RANK/WORLD_SIZE, and accelerate
  (inside the HF trainers) joins them: NCCL on GPUs, gloo on CPU. It is the CPU stand-in for a multi-GPU host too.
- `accelerate`: `accelerate launch` with the user's arguments (multi-GPU, FSDP, DeepSpeed configs); accelerate runs
  several processes on GPUs only (`--multi_gpu` is added for N > 1).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

LAUNCHERS = ("python", "torchrun", "accelerate")
#: Where a failing rank writes its traceback (`training.cli.record_failure`); the launching step reads it back.
FAILURE_DIR_ENV = "SKINR1_FAILURE_DIR"
FAILURE_FILE_GLOB = "rank-*.txt"


def failure_file(folder: str | Path, rank: int) -> Path:
    return Path(folder) / f"rank-{rank}.txt"


def launch_command(
    launcher: str,
    module: str,
    args: Sequence[str],
    *,
    processes: int = 1,
    launcher_args: Sequence[str] = (),
    python: str | None = None,
) -> list[str]:
    """The argv that runs `python -m module args...` under `launcher` with `processes` processes."""
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {LAUNCHERS}, got {launcher!r}")
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    python = python or sys.executable
    if launcher == "python":
        if processes != 1:
            raise ValueError("launcher 'python' runs one process; use torchrun or accelerate for more")
        return [python, "-m", module, *args]
    if launcher == "torchrun":
        return [
            python,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(processes),
            *launcher_args,
            "-m",
            module,
            *args,
        ]
    multi = ["--multi_gpu"] if processes > 1 and "--multi_gpu" not in launcher_args else []
    return [
        python,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(processes),
        *multi,
        *launcher_args,
        "-m",
        module,
        *args,
    ]


def rank_failures(folder: str | Path) -> list[tuple[int, str]]:
    """(rank, traceback) of every rank that recorded a failure in `folder` (`training.cli.record_failure`), lowest
    rank first."""
    found = []
    for path in Path(folder).glob(FAILURE_FILE_GLOB):
        try:
            rank = int(path.stem.split("-", 1)[1])
        except ValueError:
            continue
        found.append((rank, path.read_text(encoding="utf-8", errors="replace")))
    return sorted(found)


def failure_summary(failures: Sequence[tuple[int, str]], tail_lines: int = 12) -> str:
    """One message naming each failed rank with its exception line, then the first one's traceback tail."""
    if not failures:
        return ""
    heads = []
    for rank, text in failures:
        lines = [line for line in text.strip().splitlines() if line.strip()]
        heads.append(f"rank {rank}: {lines[-1] if lines else '(empty traceback)'}")
    first = "\n".join(failures[0][1].strip().splitlines()[-tail_lines:])
    return "; ".join(heads) + f"\n\ntraceback of rank {failures[0][0]} (last {tail_lines} lines):\n{first}"
