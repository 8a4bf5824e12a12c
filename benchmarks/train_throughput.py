"""Training throughput: a few LoRA SFT and GRPO steps through the pipeline's own trainers, timed and costed.

    python benchmarks/train_throughput.py [--arch qwen2.5-vl-7b] [--sft-steps 6] [--grpo-steps 3]
                                          [--rollouts both|vllm|hf] [--json out.json]

Built for one GPU (Training issue, item 9): a Qwen2.5-VL-7B-shaped model with random weights in bf16
(`modeling.architectures`), trained by `training.sft.run_sft` and `training.grpo.run_grpo` exactly as the assets run
them (paper LoRA r=64 on the language model and merger, gradient checkpointing, G=4, beta=0.04). GRPO runs once per
rollout backend in the same process (`--rollouts both`, the default where vLLM is installed): transformers `generate`
and TRL's colocated vLLM engine (with `training.trl_vllm_fixes`; on CPU `training.vllm_cpu_sync`), so their step times
and splits print side by side. `--arch tiny` runs the same path on the demo-sized model, on CPU in a minute or two,
which is what the tests do.

Printed per stage: step time (first step, the warm-up, left out of the means), tokens/s, peak memory, MFU. GRPO's
step is split into rollout (generation), reward, the other preparation (reference and old-policy log-probs) and the
update (loss forward, backward, optimizer), from TRL's own profiling timers and a step clock.

MFU = model FLOPs / step time / the device's dense bf16 peak (`--peak-tflops`, else a table of known GPUs; none on
CPU). Model FLOPs: forward = 2 x (linear parameters of the language model and LM head) per token + causal attention
over the mean sequence length + the vision tower per image patch; the LoRA update's backward costs one more forward
of the language model (input gradients only: the base weights are frozen, the vision tower gets none). Recomputation
by gradient checkpointing is not counted, as is the convention. Rollouts count one forward per generated sequence.

Needs the project installed (`pip install -e '.[gpu]'` on a GPU host); nothing is downloaded: the data are the
embedded demo's, the tokenizer is trained on them, the weights are random.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from transformers import TrainerCallback

#: Dense bf16 tensor-core peak per GPU model (vendor datasheets, no sparsity), in TFLOP/s.
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
GRPO_TIMERS = {
    "rollout": ("transformers.generate", "transformers.generate_batch", "vLLM.generate", "sync_weights"),
    "reward": ("_calculate_rewards",),
    "prepare": ("_prepare_inputs",),
    "loss_forward": ("compute_loss",),
}


class StepClock(TrainerCallback):
    """Wall time of every optimizer step (device synchronised) and the trainer's cumulative token count."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.tokens: dict[int, float] = {}
        self._start = 0.0

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync()
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self._sync()
        self.seconds.append(time.perf_counter() - self._start)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "num_tokens" in logs:
            self.tokens[int(state.global_step)] = float(logs["num_tokens"])

    def tokens_per_step(self) -> float:
        """Mean tokens per step after the first, from the trainer's cumulative count (logged every step)."""
        steps = sorted(self.tokens)
        if len(steps) < 2:
            return self.tokens[steps[0]] / steps[0] if steps else float("nan")
        return (self.tokens[steps[-1]] - self.tokens[steps[0]]) / (steps[-1] - steps[0])


@contextmanager
def trl_timers() -> Iterator[dict[str, list[float]]]:
    """Collect the durations TRL's `profiling_context` measures (it only forwards them to a logging backend)."""
    from trl.extras import profiling

    found: dict[str, list[float]] = {}
    original = profiling.ProfilingContext._log_metrics

    def record(self, duration: float) -> None:
        found.setdefault(self.name.split(".", 1)[-1], []).append(duration)

    profiling.ProfilingContext._log_metrics = record
    try:
        yield found
    finally:
        profiling.ProfilingContext._log_metrics = original


def build_world(workdir: Path, n_per_class: int = 2) -> dict[str, Path]:
    """Demo images in their datasets' layouts, SFT trajectories (template synthesis) and 4-option RL items."""
    from skinr1_pipeline.data.demo.generate import generate_demo_data
    from skinr1_pipeline.knowledge.ddx import DDxGraph
    from skinr1_pipeline.knowledge.knowledge_base import load_knowledge_base
    from skinr1_pipeline.knowledge.taxonomy import Taxonomy
    from skinr1_pipeline.synthesis.generators import TemplateGenerator
    from skinr1_pipeline.synthesis.pipeline import demo_samples, synthesize
    from skinr1_pipeline.tasks.mcq import build_mcq_items

    tax = Taxonomy.load()
    ddx = DDxGraph.load(tax)
    generate_demo_data(workdir / "demo", seed=0, n_per_class=n_per_class, image_size=(600, 450), include_broken=False)
    samples, features = demo_samples(workdir / "demo", tax)
    trajectories = synthesize(
        samples, tax, ddx, load_knowledge_base(tax, ddx), TemplateGenerator(), image_features=features
    ).trajectories
    items = build_mcq_items(samples, tax, splits=("train",)).items
    sft_path, items_path = workdir / "trajectories.parquet", workdir / "items.parquet"
    trajectories.to_parquet(sft_path, index=False)
    items.to_parquet(items_path, index=False)
    corpus = [*trajectories["prompt"], *trajectories["completion"], *items["prompt"]]
    return {"sft": sft_path, "items": items_path, "corpus": corpus}


def build_model(workdir: Path, arch: str, corpus: list[str], max_pixels: int) -> Path:
    if arch == "tiny":
        from skinr1_pipeline.modeling.tiny_model import build_tiny_model

        return build_tiny_model(workdir / "model", corpus, seed=0, max_pixels=max_pixels)
    from skinr1_pipeline.modeling.architectures import build_random_model

    return build_random_model(workdir / "model", corpus, architecture=arch, max_pixels=max_pixels)


def image_tokens(model_dir: Path, max_pixels: int, image_path: str) -> tuple[int, int]:
    """(patches, tokens) one image of the data becomes under `max_pixels` (tokens = patches / merge^2)."""
    from skinr1_pipeline.data.image_open import model_image
    from skinr1_pipeline.modeling.model_factory import load_processor, pixel_limits

    processor = load_processor(model_dir, max_pixels=max_pixels)
    min_pixels, max_pixels = pixel_limits(processor)
    image = model_image(image_path, max_pixels=max_pixels, min_pixels=min_pixels)
    grid = processor.image_processor(images=[image], return_tensors="pt")
    patches = int(grid["image_grid_thw"].prod())
    return patches, patches // processor.image_processor.merge_size**2


def peak_memory() -> dict[str, float]:
    if torch.cuda.is_available():
        return {"peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30}
    return {"peak_host_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def reset_peak() -> None:
    """Free what an earlier stage left (its trainer and model) so this stage's peak is its own."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_flops(override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops:
        return override_tflops * 1e12, f"{override_tflops:g} TFLOP/s (given)"
    if not torch.cuda.is_available():
        return None, "no GPU: MFU not computed"
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_BF16_TFLOPS.items():
        if key in name:
            return tflops * 1e12, f"{tflops:g} TFLOP/s dense bf16 ({name})"
    return None, f"unknown GPU {name}: pass --peak-tflops"


def forward_flops(flops, tokens: float, sequences: float, patches: float) -> float:
    """One forward over `tokens` split evenly into `sequences` (causal attention over the mean length)."""
    length = tokens / max(sequences, 1.0)
    return flops.forward(tokens, attended_positions=sequences * length * (length + 1) / 2, patches=patches)


def step_stats(clock: StepClock) -> dict[str, float]:
    timed = clock.seconds[1:] or clock.seconds
    return {
        "steps": len(clock.seconds),
        "first_step_s": clock.seconds[0] if clock.seconds else float("nan"),
        "mean_step_s": sum(timed) / len(timed) if timed else float("nan"),
    }


def run_sft_stage(
    model_dir: Path, data: Path, out: Path, args, flops, patches_per_image: int, peak: float | None
) -> dict[str, Any]:
    from skinr1_pipeline.training.sft import SFTRunConfig, run_sft

    cfg = SFTRunConfig(
        model_dir=str(model_dir),
        train_path=str(data),
        output_dir=str(out),
        max_steps=args.sft_steps,
        per_device_train_batch_size=args.sft_batch,
        gradient_accumulation_steps=1,
        max_pixels=args.max_pixels,
        logging_steps=1,
        save_steps=10**6,
        warmup_ratio=0.0,
        learning_rate=1e-5,
        report_to=[],
        gradient_checkpointing=None,
    )
    clock = StepClock()
    reset_peak()
    result = run_sft(cfg, callbacks=[clock])
    stats = step_stats(clock)
    tokens = clock.tokens_per_step()
    fwd = forward_flops(flops, tokens, args.sft_batch, 0.0)
    model = 2 * fwd + flops.vision_per_patch * patches_per_image * args.sft_batch
    out_stats = {
        **stats,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / stats["mean_step_s"],
        "model_tflops_per_step": model / 1e12,
        "trainable_parameters": result.trainable_parameters,
        **peak_memory(),
    }
    out_stats["mfu"] = model / stats["mean_step_s"] / peak if peak else None
    return out_stats


def run_grpo_stage(
    model_dir: Path, items: Path, out: Path, args, flops, patches_per_image: int, peak: float | None, use_vllm: bool
) -> dict[str, Any]:
    from skinr1_pipeline.training.grpo import GRPORunConfig, run_grpo

    vllm = dict(
        vllm_gpu_memory_utilization=0.3 if torch.cuda.is_available() else 0.1,
        vllm_max_model_length=args.max_model_length,
    )
    cfg = GRPORunConfig(
        model_dir=str(model_dir),
        items_path=str(items),
        output_dir=str(out),
        use_vllm=use_vllm,
        **vllm,
        max_steps=args.grpo_steps,
        per_device_train_batch_size=args.prompts * args.generations,
        num_generations=args.generations,
        gradient_accumulation_steps=1,
        max_completion_length=args.completion_tokens,
        max_pixels=args.max_pixels,
        logging_steps=1,
        save_steps=10**6,
        log_completions_every=10**6,
        warmup_ratio=0.0,
        gradient_checkpointing=torch.cuda.is_available(),
        seed=0,
    )
    clock = StepClock()
    reset_peak()
    started = time.perf_counter()
    with trl_timers() as timers:
        result = run_grpo(cfg, callbacks=[clock])
    wall = time.perf_counter() - started
    stats = step_stats(clock)
    split = {}
    for part, names in GRPO_TIMERS.items():
        per_step = [sum(v) for k, v in timers.items() if k in names]
        total = sum(per_step)
        split[part] = total / max(len(clock.seconds), 1)
    mean_all = sum(clock.seconds) / max(len(clock.seconds), 1)
    split = {
        "rollout_s": split["rollout"],
        "reward_s": split["reward"],
        "logprobs_and_other_prep_s": split["prepare"] - split["rollout"] - split["reward"],
        "update_s": mean_all - split["prepare"],
        "of_which_loss_forward_s": split["loss_forward"],
    }
    tokens = clock.tokens_per_step()
    sequences = args.prompts * args.generations
    fwd = forward_flops(flops, tokens, sequences, 0.0)
    vision = flops.vision_per_patch * patches_per_image * sequences
    passes = 1 + (1 if cfg.beta > 0 else 0) + 2  # rollout, reference, policy forward + backward
    model = passes * fwd + vision * (2 + (1 if cfg.beta > 0 else 0))
    gap = [
        e["sampling/sampling_logp_difference/max"]
        for e in result.train_log
        if "sampling/sampling_logp_difference/max" in e
    ]
    out_stats = {
        **stats,
        "rollouts": result.params["rollouts"],
        "run_wall_s": wall,
        "engine_logp_gap_max": max(gap) if gap else None,
        "mean_step_all_s": mean_all,
        "split_per_step_mean": split,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / stats["mean_step_s"],
        "completions_per_step": sequences,
        "model_tflops_per_step": model / 1e12,
        **peak_memory(),
        "timers_seen": sorted(timers),
    }
    out_stats["mfu"] = model / stats["mean_step_s"] / peak if peak else None
    return out_stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="qwen2.5-vl-7b", choices=["qwen2.5-vl-7b", "tiny"])
    parser.add_argument("--sft-steps", type=int, default=6)
    parser.add_argument("--sft-batch", type=int, default=4)
    parser.add_argument("--grpo-steps", type=int, default=3)
    parser.add_argument("--prompts", type=int, default=2, help="prompts per GRPO step (each gets --generations)")
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--completion-tokens", type=int, default=256)
    parser.add_argument("--max-pixels", type=int, default=448 * 448)
    parser.add_argument(
        "--rollouts",
        choices=["both", "vllm", "hf"],
        default=None,
        help="GRPO rollout backends to run (default: both where vLLM is installed, else hf)",
    )
    parser.add_argument("--max-model-length", type=int, default=4096, help="vLLM context (prompt + completion)")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--workdir", type=Path, default=None, help="keep data, model and runs here (default: temp)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if min(args.sft_steps, args.grpo_steps) < 1 or args.generations < 2:
        parser.error("--sft-steps and --grpo-steps must be >= 1 and --generations >= 2")
    from skinr1_pipeline.training.grpo import resolve_use_vllm

    rollouts = args.rollouts or ("both" if resolve_use_vllm("auto") else "hf")
    if rollouts != "hf" and not resolve_use_vllm("auto"):
        parser.error("--rollouts vllm/both needs vLLM (the gpu profile, or vllm-cpu on CPU)")
    backends = {"both": ("hf", "vllm"), "vllm": ("vllm",), "hf": ("hf",)}[rollouts]

    import pandas as pd

    from skinr1_pipeline.modeling.architectures import model_flops

    with tempfile.TemporaryDirectory(prefix="skinr1-throughput-") as tmp:
        workdir = args.workdir or Path(tmp)
        t0 = time.perf_counter()
        world = build_world(workdir)
        model_dir = build_model(workdir, args.arch, world["corpus"], args.max_pixels)
        setup_s = time.perf_counter() - t0
        shapes = load_model_meta(model_dir)
        flops = model_flops(shapes)
        first_image = pd.read_parquet(world["sft"], columns=["image_path"])["image_path"].iloc[0]
        patches, image_toks = image_tokens(model_dir, args.max_pixels, first_image)
        peak, peak_note = peak_flops(args.peak_tflops)
        record = {
            "arch": args.arch,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__,
            "setup_s": setup_s,
            "peak": peak_note,
            "image_patches": patches,
            "image_tokens": image_toks,
            "parameters": sum(p.numel() for p in shapes.parameters()),
            "sft": run_sft_stage(model_dir, world["sft"], workdir / "sft", args, flops, patches, peak),
        }
        # transformers first: a colocated engine sets up torch.distributed in this process for the rest of its life
        for backend in backends:
            record[f"grpo_{backend}"] = run_grpo_stage(
                model_dir,
                world["items"],
                workdir / f"grpo_{backend}",
                args,
                flops,
                patches,
                peak,
                use_vllm=backend == "vllm",
            )
        if len(backends) == 2:
            record["vllm_vs_hf"] = {
                k: record["grpo_hf"][k] / record["grpo_vllm"][k]
                for k in ("mean_step_s", "run_wall_s")
                if record["grpo_vllm"][k]
            }
            record["vllm_vs_hf"]["rollout_s"] = record["grpo_hf"]["split_per_step_mean"]["rollout_s"] / max(
                record["grpo_vllm"]["split_per_step_mean"]["rollout_s"], 1e-9
            )
        record["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    print(render(record))
    if args.json:
        args.json.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return 0


def load_model_meta(model_dir: Path):
    """The model's modules without weights (shapes only), for counting parameters and FLOPs."""
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    with torch.device("meta"):
        return Qwen2_5_VLForConditionalGeneration(AutoConfig.from_pretrained(model_dir))


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.3f}" if isinstance(value, float) else str(value)


def render(record: dict[str, Any]) -> str:
    lines = [
        f"{record['arch']} ({record['parameters'] / 1e9:.3g}B parameters) on {record['device']}, torch "
        f"{record['torch']}; peak {record['peak']}; one image = {record['image_patches']} patches = "
        f"{record['image_tokens']} tokens; setup {record['setup_s']:.0f} s"
    ]
    for stage in [k for k in record if k == "sft" or k.startswith("grpo_")]:
        s = record[stage]
        lines.append(
            f"{stage}: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in s.items() if k not in ("split_per_step_mean", "timers_seen"))
        )
        if "split_per_step_mean" in s:
            lines.append(
                "  step split (mean s per step, all steps): "
                + ", ".join(f"{k} {_fmt(v)}" for k, v in s["split_per_step_mean"].items())
            )
    if "vllm_vs_hf" in record:
        lines.append(
            "GRPO, transformers time / vLLM time (>1: vLLM faster): "
            + ", ".join(f"{k} {v:.2f}x" for k, v in record["vllm_vs_hf"].items())
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
