"""Rank and device of this process, as the launcher (torchrun, accelerate, Ray Train) set them up.

Why one place: in a job of N processes exactly one may report to Dagster and MLflow, and each must load its model
onto its own device. Both come from what the launcher configured (the `RANK`/`LOCAL_RANK`/`WORLD_SIZE` variables
every torch launcher sets, and accelerate's view of them), never from a hard-coded "cuda", which would put every
rank of an 8-GPU job on GPU 0.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Rank:
    """This process's place in the job: global rank, rank on its machine, and the number of processes."""

    rank: int
    local_rank: int
    world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current_rank(env: dict[str, str] | None = None) -> Rank:
    """The rank the launcher gave this process (a plain `python -m` run is rank 0 of 1)."""
    env = os.environ if env is None else env
    try:
        rank = int(env.get("RANK", 0))
        world = int(env.get("WORLD_SIZE", 1))
        local = int(env.get("LOCAL_RANK", rank))
    except ValueError as exc:
        raise ValueError(f"RANK/LOCAL_RANK/WORLD_SIZE must be integers: {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"RANK={rank} does not fit WORLD_SIZE={world}")
    return Rank(rank=rank, local_rank=local, world_size=world)


def training_device(use_cpu: bool) -> str:
    """This process's device, from accelerate (which reads the launcher's variables): "cpu", or "cuda:<local rank>".

    Loading the model straight onto it spares a 7B copy through host memory per rank.
    """
    from accelerate import PartialState

    return str(PartialState(cpu=use_cpu).device)
