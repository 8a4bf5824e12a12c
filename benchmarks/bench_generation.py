"""Benchmark: trajectory generation throughput - template renderer, then vLLM vs HF `generate` on one model.

    python benchmarks/bench_generation.py [--prompts 64] [--max-tokens 64] [--hf-batch 8] [--in-process]

One run prints:
  template     SkinRationale trajectories/s through `synthesize` (build requests + render + verify), all 5 types
               on the embedded demo samples;
  hf / vllm    generated tokens/s of HF `generate` (modeling.generation, batched, greedy) and of vLLM (one
               offline batch, greedy) on the SAME tiny random Qwen2.5-VL, the SAME prompts (chat template +
               one image each) and the same max_new_tokens, with the ratio side by side (target: vLLM >= 5x).
Tokens are counted the same way for both (re-tokenising the decoded text), so early stops count equally.
vLLM's load time is printed separately and not part of its rate. HF runs with `--hf-threads` torch threads (default
1, like vLLM's CPU worker). `--in-process` runs the engine core in this
process (VLLM_ENABLE_V1_MULTIPROCESSING=0) instead of vLLM's default engine-core subprocess.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import results


def set_hf_threads(n: int) -> None:
    """Torch threads for the HF side. Default 1, as vLLM's CPU worker serves with one torch thread; on a shared
    2-core machine 2 threads made HF 1.5-10x slower and erratic (OpenMP spin-waits under oversubscription)."""
    import torch

    torch.set_num_threads(n)


def setup_world(workdir: Path, n_per_class: int = 2):
    """Demo data, knowledge, eval suite items and a tiny model trained on their prompts."""
    from skinr1_pipeline.data.demo.generate import generate_demo_data
    from skinr1_pipeline.evaluation.suites import SuiteConfig, build_suites
    from skinr1_pipeline.knowledge.ddx import DDxGraph
    from skinr1_pipeline.knowledge.knowledge_base import load_knowledge_base
    from skinr1_pipeline.knowledge.taxonomy import Taxonomy
    from skinr1_pipeline.modeling.tiny_model import build_tiny_model
    from skinr1_pipeline.synthesis.pipeline import demo_samples

    tax = Taxonomy.load()
    ddx = DDxGraph.load(tax)
    kb = load_knowledge_base(tax, ddx)
    generate_demo_data(workdir / "demo", seed=0, n_per_class=n_per_class, image_size=(160, 120), include_broken=False)
    samples, feats = demo_samples(workdir / "demo", tax)
    items = build_suites(samples, tax, ddx, SuiteConfig(splits=("train", "valid", "test"))).items
    model_dir = build_tiny_model(workdir / "model", list(items["prompt"]), seed=0)
    return {
        "tax": tax,
        "ddx": ddx,
        "kb": kb,
        "samples": samples,
        "features": feats,
        "items": items,
        "model_dir": model_dir,
    }


def bench_template(world) -> dict[str, float]:
    from skinr1_pipeline.synthesis.generators import TemplateGenerator
    from skinr1_pipeline.synthesis.pipeline import synthesize

    t = time.perf_counter()
    result = synthesize(
        world["samples"],
        world["tax"],
        world["ddx"],
        world["kb"],
        TemplateGenerator(),
        per_sample=4,
        splits=("train", "valid", "test"),
        image_features=world["features"],
    )
    seconds = time.perf_counter() - t
    n = result.counts["requests"]
    return {"trajectories": n, "accepted": result.counts["accepted"], "seconds": seconds, "per_s": n / seconds}


def prompt_set(world, n: int):
    """n (image, prompt) pairs cycling over the suite items (each has an image)."""
    from PIL import Image

    rows = world["items"].reset_index(drop=True)
    images, prompts = [], []
    for i in range(n):
        row = rows.iloc[i % len(rows)]
        with Image.open(row["image_path"]) as img:
            images.append(img.convert("RGB"))
        prompts.append(row["prompt"])
    return images, prompts


def count_tokens(tokenizer, texts) -> int:
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def bench_hf(world, images, prompts, max_tokens: int, batch: int) -> dict[str, float]:
    from skinr1_pipeline.modeling.generation import generate
    from skinr1_pipeline.modeling.model_factory import load_model, load_processor

    model = load_model(world["model_dir"], dtype="float32", device="cpu")
    processor = load_processor(world["model_dir"])
    generate(model, processor, images[:2], prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up
    t = time.perf_counter()
    texts = generate(model, processor, images, prompts, max_new_tokens=max_tokens, batch_size=batch)
    seconds = time.perf_counter() - t
    tokens = count_tokens(processor.tokenizer, texts)
    return {"seconds": seconds, "tokens": tokens, "tok_s": tokens / seconds, "texts": texts}


def bench_vllm(world, images, prompts, max_tokens: int) -> dict[str, float]:
    from skinr1_pipeline.modeling.chat import build_messages
    from skinr1_pipeline.modeling.vllm_engine import VllmEngine

    t = time.perf_counter()
    engine = VllmEngine.load(world["model_dir"])
    load_s = time.perf_counter() - t
    try:
        vprompts = [engine.prompt(build_messages(p), [img]) for p, img in zip(prompts, images)]
        params = engine.sampling(max_tokens=max_tokens, temperature=0.0, seed=0)
        engine.generate(vprompts[:2], [engine.sampling(max_tokens=4)] * 2)  # warm-up
        t = time.perf_counter()
        outs = engine.generate(vprompts, [params] * len(vprompts))
        seconds = time.perf_counter() - t
        texts = [o.outputs[0].text for o in outs]
        tokens = count_tokens(engine.processor.tokenizer, texts)
    finally:
        engine.close()
    return {"seconds": seconds, "tokens": tokens, "tok_s": tokens / seconds, "load_s": load_s, "texts": texts}


def backend_args(parser: argparse.ArgumentParser, count_flag: str, count_default: int) -> argparse.Namespace:
    """Flags both benchmarks share; applies the thread and process settings before any model loads."""
    parser.add_argument(count_flag, type=int, default=count_default)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--hf-batch", type=int, default=8)
    parser.add_argument("--hf-threads", type=int, default=1)
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here (for run_all.py)")
    args = parser.parse_args()
    if args.in_process:
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    set_hf_threads(args.hf_threads)
    return args


def main() -> None:
    args = backend_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), "--prompts", 64)
    with tempfile.TemporaryDirectory(prefix="bench-gen-") as tmp:
        t = time.perf_counter()
        world = setup_world(Path(tmp))
        print(
            f"setup: {len(world['samples'])} demo samples, {len(world['items'])} suite items, tiny model "
            f"({time.perf_counter() - t:.1f}s)",
            flush=True,
        )
        tpl = bench_template(world)
        print(
            f"template  {tpl['trajectories']} trajectories ({tpl['accepted']} accepted) in {tpl['seconds']:.2f}s"
            f" = {tpl['per_s']:.0f} trajectories/s",
            flush=True,
        )
        images, prompts = prompt_set(world, args.prompts)
        hf = bench_hf(world, images, prompts, args.max_tokens, args.hf_batch)
        vl = bench_vllm(world, images, prompts, args.max_tokens)
        same = sum(a == b for a, b in zip(hf["texts"], vl["texts"]))
        print(f"\n{args.prompts} prompts with images, max_new_tokens={args.max_tokens}, greedy, same tiny model")
        print(f"{'backend':8} {'seconds':>8} {'tokens':>7} {'tokens/s':>9}")
        print(
            f"{'hf':8} {hf['seconds']:8.2f} {hf['tokens']:7d} {hf['tok_s']:9.1f}   "
            f"(batch {args.hf_batch}, {args.hf_threads} thread(s))"
        )
        print(
            f"{'vllm':8} {vl['seconds']:8.2f} {vl['tokens']:7d} {vl['tok_s']:9.1f}   (engine load "
            f"{vl['load_s']:.1f}s, not counted)"
        )
        ratio = vl["tok_s"] / hf["tok_s"]
        print(
            f"ratio vllm/hf: {ratio:.1f}x (target >= 5x: {'met' if ratio >= 5 else 'NOT met'}); "
            f"identical greedy texts: {same}/{args.prompts}"
        )
        results.write(
            args.json,
            "generation",
            {"prompts": args.prompts, "max_new_tokens": args.max_tokens},
            [
                results.row(
                    "rationale synthesis, template generator (generate + verify + dedup)",
                    "trajectories/s",
                    tpl["per_s"],
                    None,
                    notes=f"{tpl['trajectories']} trajectories, absolute figure",
                ),
                results.row(
                    f"image-prompt generation, {args.prompts} prompts x {args.max_tokens} tokens",
                    "tokens/s",
                    vl["tok_s"],
                    hf["tok_s"],
                    baseline_name=f"HF generate (batch {args.hf_batch})",
                    target=5.0,
                    notes=f"identical greedy texts {same}/{args.prompts}",
                ),
            ],
        )


if __name__ == "__main__":
    main()
