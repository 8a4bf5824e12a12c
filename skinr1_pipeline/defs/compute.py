"""Where GPU-backed steps run, as a Dagster resource: local processes or a Ray cluster, chosen by the profile's
`compute:` settings. Assets describe a step (`ComputeStep`); the resource decides how it starts.

Why a resource: the Dagster process must never need a GPU. Training (with its held-out gate) and evaluation run
where the model is, in a child process, a `torchrun`/`accelerate` job or a Ray job, and report back through Pipes;
the asset body is the same for a laptop, an 8-GPU host and a cluster.
"""

from __future__ import annotations

import shlex
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from skinr1_pipeline.runtime.launch import FAILURE_DIR_ENV, failure_summary, launch_command, rank_failures
from skinr1_pipeline.settings import Settings

TRAINING_CLI = "skinr1_pipeline.training.cli"
#: Every step's environment: log lines arrive as they are written; tokenizers do not fork-warn in child processes.
STEP_ENV = {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
RAY_TRAINING_JOB = "skinr1_pipeline.training.ray_job"


@dataclass(frozen=True)
class ComputeStep:
    """One step to run where the model is.

    `trainer` steps are `training.cli` argv (`sft --config ... --gate ...`) and may span several processes or
    workers (locally `module` runs under the launcher; on Ray, `training.ray_job` runs `training.cli` in its
    workers); other steps are one process of `python -m module args`. `workdir` holds the step's configs and the
    failed ranks' tracebacks.
    """

    module: str
    args: list[str]
    workdir: Path
    trainer: bool = False
    env: Mapping[str, str] = field(default_factory=dict)


class StepFailed(dg.Failure):
    """A step's process(es) failed; the description names each failed rank and its exception."""


class Compute(dg.ConfigurableResource):
    """Base of the compute resources; `run` starts the step and returns the metadata it reported through Pipes."""

    env: dict[str, str] = Field(default_factory=dict, description="added to every step's environment")

    def run(self, context: dg.AssetExecutionContext, step: ComputeStep) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def _launch(self, context: dg.AssetExecutionContext, step: ComputeStep, start) -> dict[str, Any]:
        """Clear the step's failure folder, run `start(env)`, and turn a failure into the failed ranks' message."""
        failures = step.workdir / "failures"
        shutil.rmtree(failures, ignore_errors=True)
        failures.mkdir(parents=True, exist_ok=True)
        env = {**STEP_ENV, **self.env, **step.env, FAILURE_DIR_ENV: str(failures)}
        try:
            invocation = start(env)
        except Exception as exc:
            ranks = rank_failures(failures)
            if not ranks:
                raise
            raise StepFailed(
                description=f"{step.module} failed on {self.describe()}: {failure_summary(ranks)}",
                metadata={"failed_ranks": [r for r, _ in ranks]},
            ) from exc
        return dict(invocation.get_materialize_result().metadata or {})


class LocalCompute(Compute):
    """Child processes on this machine: one for gates and evaluation, `processes` for a trainer under `launcher`."""

    launcher: Literal["python", "torchrun", "accelerate"] = Field(
        default="python", description="python (one process) | torchrun | accelerate (accelerate launch)"
    )
    processes: int = Field(default=1, ge=1, description="processes per training step (one per GPU)")
    launcher_args: list[str] = Field(default_factory=list, description="extra torchrun / accelerate launch arguments")

    def describe(self) -> str:
        return f"{self.processes} local process(es) via {self.launcher}"

    def command(self, step: ComputeStep) -> list[str]:
        if step.trainer:
            return launch_command(
                self.launcher, step.module, step.args, processes=self.processes, launcher_args=self.launcher_args
            )
        return launch_command("python", step.module, step.args)

    def run(self, context: dg.AssetExecutionContext, step: ComputeStep) -> dict[str, Any]:
        from skinr1_pipeline.defs.pipes_messages import LineSafeFileMessageReader

        command = self.command(step)
        context.log.info(f"launching: {shlex.join(command)}")
        client = dg.PipesSubprocessClient(message_reader=LineSafeFileMessageReader())
        return self._launch(context, step, lambda env: client.run(command=command, context=context, env=env))


class RayCompute(Compute):
    """Jobs on a Ray cluster (dagster-ray's Pipes client): trainers in `workers` Ray Train workers, gates and
    evaluation as a one-process job holding one worker's resources."""

    address: str = Field(description="the Ray dashboard, e.g. http://ray-head:8265 (KubeRay: the head service)")
    workers: int = Field(default=1, ge=1, description="Ray Train workers per training step")
    cpus_per_worker: float = Field(default=1.0, gt=0)
    gpus_per_worker: float = Field(default=0.0, ge=0)
    storage_path: str = Field(description="Ray Train's run folder, shared by every node")
    python: str = Field(default="", description="the interpreter on the cluster (default: this process's)")
    poll_interval: float = 0.5

    def describe(self) -> str:
        return f"Ray at {self.address} ({self.workers} worker(s), {self.gpus_per_worker} GPU each)"

    def entrypoint(self, step: ComputeStep) -> tuple[list[str], dict[str, float]]:
        """(entrypoint argv, its resource request); trainers' resources are held by their workers, not the driver."""
        import sys

        python = self.python or sys.executable
        if step.trainer:
            return (
                [
                    python,
                    "-m",
                    RAY_TRAINING_JOB,
                    *step.args,
                    "--workers",
                    str(self.workers),
                    "--cpus-per-worker",
                    str(self.cpus_per_worker),
                    "--gpus-per-worker",
                    str(self.gpus_per_worker),
                    "--storage",
                    self.storage_path,
                ],
                {"entrypoint_num_cpus": 0},
            )
        request = {"entrypoint_num_cpus": self.cpus_per_worker}
        if self.gpus_per_worker:
            request["entrypoint_num_gpus"] = self.gpus_per_worker
        return [python, "-m", step.module, *step.args], request

    def run(self, context: dg.AssetExecutionContext, step: ComputeStep) -> dict[str, Any]:
        from skinr1_pipeline.defs.ray_pipes import FreshReaderPipesRayJobClient

        argv, request = self.entrypoint(step)
        context.log.info(f"submitting Ray job to {self.address}: {shlex.join(argv)}")
        client = FreshReaderPipesRayJobClient(address=self.address, poll_interval=self.poll_interval)

        def submit(env: dict[str, str]):
            params = {"entrypoint": shlex.join(argv), "runtime_env": {"env_vars": env}, **request}
            return client.run(context=context, submit_job_params=params)

        return self._launch(context, step, submit)


def compute_resource(settings: Settings) -> Compute:
    """The profile's `compute:` settings as a resource."""
    c = settings.compute
    env = dict(c.env)
    if c.kind == "ray":
        return RayCompute(
            address=c.address,
            workers=c.workers,
            cpus_per_worker=c.cpus_per_worker,
            gpus_per_worker=c.gpus_per_worker,
            storage_path=c.storage_path,
            env=env,
        )
    return LocalCompute(launcher=c.launcher, processes=c.processes, launcher_args=list(c.launcher_args), env=env)
