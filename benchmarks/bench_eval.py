"""Benchmark: evaluation throughput (images/s), `VllmRunner` vs `HFRunner` on the same model and suite items.

    python benchmarks/bench_eval.py [--items 128] [--max-tokens 64] [--hf-batch 8] [--in-process]

Builds the embedded demo, its evaluation suites and a tiny random Qwen2.5-VL, then runs both runners over the same
items (cycled to --items; every item has an image): same prompts (chat.build_messages + chat template), greedy, same
seed and stop ids. Prints images/s for each, the ratio, how many completions are identical, and that both score
through `score_predictions` (a random model never writes the answer format, so accuracy is 0 for both).
HF uses `--hf-threads` torch threads (default 1, like vLLM's CPU worker; see bench_generation.set_hf_threads).
Engine/model load time is printed separately and not part of the rates.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import results
from bench_generation import backend_args, setup_world


def main() -> None:
    args = backend_args(argparse.ArgumentParser(description=__doc__.split("\n\n")[0]), "--items", 128)

    import pandas as pd

    from skinr1_pipeline.evaluation.metrics import score_predictions
    from skinr1_pipeline.evaluation.runners import HFRunner, VllmRunner

    with tempfile.TemporaryDirectory(prefix="bench-eval-") as tmp:
        world = setup_world(Path(tmp))
        base = world["items"].reset_index(drop=True)  # round-robin over suites, so any --items mixes them all
        base = base.iloc[base.groupby("suite").cumcount().sort_values(kind="stable").index].reset_index(drop=True)
        items = pd.concat([base] * (-(-args.items // len(base))), ignore_index=True).head(args.items)
        items["item_id"] = [f"{i}/{x}" for i, x in enumerate(items["item_id"])]

        t = time.perf_counter()
        hf = HFRunner(
            world["model_dir"], max_new_tokens=args.max_tokens, batch_size=args.hf_batch, dtype="float32", device="cpu"
        )
        hf_load = time.perf_counter() - t
        hf.run(items.head(2))  # warm-up
        t = time.perf_counter()
        hf_out = hf.run(items)
        hf_s = time.perf_counter() - t

        t = time.perf_counter()
        vr = VllmRunner(world["model_dir"], max_new_tokens=args.max_tokens)
        v_load = time.perf_counter() - t
        try:
            vr.run(items.head(2))  # warm-up
            t = time.perf_counter()
            v_out = vr.run(items)
            v_s = time.perf_counter() - t
        finally:
            vr.engine.close()

        scores = {
            name: score_predictions(items, out, taxonomy=world["tax"])
            for name, out in (("hf", hf_out), ("vllm", v_out))
        }
        same = sum(a == b for a, b in zip(hf_out, v_out))
        n = len(items)
        print(
            f"\n{n} suite items with images ({items['suite'].nunique()} suites), max_new_tokens={args.max_tokens}, "
            "greedy, same tiny model"
        )
        print(f"{'runner':8} {'load s':>7} {'run s':>7} {'images/s':>9} {'accuracy':>9} {'format_ok':>9}")
        for name, load_s, run_s in (("hf", hf_load, hf_s), ("vllm", v_load, v_s)):
            sc = scores[name]
            print(
                f"{name:8} {load_s:7.1f} {run_s:7.2f} {n / run_s:9.1f} {sc['correct'].mean():9.2f} "
                f"{sc['format_ok'].mean():9.2f}"
            )
        ratio = hf_s / v_s
        print(
            f"ratio vllm/hf: {ratio:.1f}x images/s; identical completions: {same}/{n}; HF batch {args.hf_batch}, "
            f"{args.hf_threads} torch thread(s)"
        )
        results.write(
            args.json,
            "evaluation",
            {"items": n, "max_new_tokens": args.max_tokens},
            [
                results.row(
                    f"suite evaluation, {n} items x {args.max_tokens} tokens",
                    "images/s",
                    n / v_s,
                    n / hf_s,
                    baseline_name=f"HF runner (batch {args.hf_batch})",
                    target=5.0,
                    notes=f"identical completions {same}/{n}",
                )
            ],
        )


if __name__ == "__main__":
    main()
