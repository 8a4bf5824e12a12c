"""A training step as a Ray job: Ray Train runs the trainer in N workers, the job's driver reports once.

    python -m skinr1_pipeline.training.ray_job sft --config cfg.yaml [--gate gate.yaml] --workers 2 \\
        [--cpus-per-worker 1] [--gpus-per-worker 0] --storage /shared/ray_results [--key value ...]

Submitted by the `ray` compute resource (dagster-ray's Pipes client), or by hand with `ray job submit`. Why this
shape: Ray Train's `TorchTrainer` places the workers on the cluster (one GPU each, or CPUs), sets up the process
group (NCCL on GPUs, gloo on CPUs) and RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR, so each worker is one rank of the
same job `torchrun` would start: it runs `training.cli.run_step` unchanged. Workers never talk to Dagster (their
output reaches the job log with a "(RayTrainWorker ...)" prefix, which Pipes cannot parse); rank 0 hands its summary
and metadata back as its return value, which Ray Train hands to the driver, and the driver, which holds the Pipes
channel, reports them once.

`--storage` must be a folder every node can write (Ray Train keeps its run state there); on a local cluster any local
folder. The model, data and output folders in the configs must likewise be reachable from every worker.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from skinr1_pipeline.runtime.launch import FAILURE_DIR_ENV


def worker_loop(config: dict[str, Any]) -> dict[str, Any] | None:
    """One Ray Train worker: a rank of the training job. Rank 0 returns its summary and metadata (Ray hands rank 0's
    return value to the driver)."""
    from skinr1_pipeline.runtime.distributed import current_rank
    from skinr1_pipeline.training.cli import record_failure, run_step

    for key in [k for k in os.environ if k.startswith("DAGSTER_PIPES_")]:  # the driver reports, not the workers
        del os.environ[key]
    if config.get("failure_dir"):
        os.environ[FAILURE_DIR_ENV] = config["failure_dir"]
    rank = current_rank()
    try:
        summary, metadata = run_step(config["step"], config["config"], config["overrides"], config["gate"])
    except Exception:  # not SystemExit: `--help` and clean exits are no failures
        record_failure(rank.rank)
        raise
    return {"summary": summary, "metadata": metadata} if rank.is_main else None


def fit(args: argparse.Namespace, overrides: Sequence[str]) -> dict[str, Any]:
    """Run the workers; returns rank 0's {"summary", "metadata"}."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    if not ray.is_initialized():
        ray.init()  # inside a Ray job: the job's cluster (RAY_ADDRESS)
    use_gpu = args.gpus_per_worker > 0
    resources = {"CPU": args.cpus_per_worker, **({"GPU": args.gpus_per_worker} if use_gpu else {})}
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={
            "step": args.step,
            "config": os.path.abspath(args.config),
            "overrides": list(overrides),
            "gate": os.path.abspath(args.gate) if args.gate else None,
            "failure_dir": os.environ.get(FAILURE_DIR_ENV, ""),
        },
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=args.workers, use_gpu=use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=args.name, storage_path=os.path.abspath(args.storage), failure_config=FailureConfig(max_failures=0)
        ),
    )
    returned = trainer.fit().return_value
    if not isinstance(returned, dict) or "metadata" not in returned:
        raise RuntimeError(f"Ray Train finished without rank 0's summary (returned {returned!r})")
    return returned


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m skinr1_pipeline.training.ray_job",
        description="SFT or GRPO in N Ray Train workers, reported once",
    )
    parser.add_argument("step", choices=("sft", "grpo"))
    parser.add_argument("--config", required=True)
    parser.add_argument("--gate", default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--cpus-per-worker", type=float, default=1.0)
    parser.add_argument("--gpus-per-worker", type=float, default=0.0)
    parser.add_argument("--storage", required=True, help="Ray Train storage folder, shared by all nodes")
    parser.add_argument("--name", default=None, help="Ray Train run name (default: Ray's)")
    args, overrides = parser.parse_known_args(argv)
    if args.workers < 1 or args.cpus_per_worker <= 0 or args.gpus_per_worker < 0:
        parser.error("--workers must be >= 1, --cpus-per-worker > 0 and --gpus-per-worker >= 0")
    if not os.environ.get("DAGSTER_PIPES_CONTEXT"):
        print(json.dumps(fit(args, overrides)["summary"], sort_keys=True), flush=True)
        return 0
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        pipes.log.info(
            f"{args.step} on {args.workers} Ray Train worker(s), {args.cpus_per_worker} CPU and "
            f"{args.gpus_per_worker} GPU each"
        )
        reported = fit(args, overrides)
        pipes.report_asset_materialization(metadata={**reported["metadata"], "ray_train_workers": args.workers})
    print(json.dumps(reported["summary"], sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
