"""`synthesize`: unified samples → reasoning trajectories (SkinRationale), verified, with every rejection counted.

Determinism: each (sample, type, k) gets its own RNG seeded from (seed, sample_id, type, k), so output does not
depend on row order, batch size or which other samples are present; the generator receives per-request seeds too.

Generation failures are not verifier rejections: a generator may expose `failed_requests` (request_id -> an object
with `kind`, `detail`, `text`, as `OpenAICompatibleGenerator` does) for requests it could not answer. Those skip the
verifier, are counted in `counts["transport_failures"]` by kind (not in `rejected`/`rejections`), and appear in the
rejections frame with reason `transport:<kind>`, or `truncated` for a completion cut at max_tokens (partial text kept
in the row), so a dead server never reads as a teacher that writes `bad_format`.
"""

from __future__ import annotations

import json
import random
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from skinr1_pipeline.knowledge.corpus import Corpus, Passage
from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.knowledge_base import KnowledgeBase
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.modeling.prompt_format import parse_completion
from skinr1_pipeline.synthesis.generators import Generator
from skinr1_pipeline.synthesis.trajectories import (
    MCQ_CONSTRUCTIONS,
    STYLES,
    TYPES,
    BuildExtras,
    GenerationRequest,
    NotApplicable,
    SamplingParams,
)
from skinr1_pipeline.synthesis.verify import Verdict, Verifier, VerifyConfig

TRAJECTORY_COLUMNS = (
    "sample_id",
    "image_path",
    "source_dataset",
    "split",
    "trajectory_type",
    "question_form",
    "prompt",
    "options",
    "completion",
    "taxonomy_node",
    "bucket",
    "citations",
    "generator",
)
REJECTION_COLUMNS = ("sample_id", "trajectory_type", "reason", "detail", "text")
_DEMO_SPLITS = ("train",) * 14 + ("valid",) * 3 + ("test",) * 3  # 70/15/15 by id hash


@dataclass
class SynthesisResult:
    trajectories: pd.DataFrame
    rejections: pd.DataFrame
    counts: dict[str, Any] = field(default_factory=dict)


def _seed(*parts: Any) -> int:
    return zlib.crc32(":".join(map(str, parts)).encode())


def _lookup(features: Mapping[str, Any] | None, row: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """Per-image features by sample id, else by image path (ingested ids differ from the demo manifest's ids)."""
    if not features:
        return None
    found = features.get(str(row["sample_id"]))
    if found is None and row.get("image_path") is not None:
        found = features.get(str(row["image_path"]))
    return found


def synthesize(
    samples: pd.DataFrame,
    taxonomy: Taxonomy,
    ddx: DDxGraph,
    knowledge: KnowledgeBase,
    generator: Generator,
    *,
    types: Sequence[str] = tuple(TYPES),
    per_sample: int = 1,
    seed: int = 0,
    splits: Sequence[str] = ("train",),
    image_features: Mapping[str, Mapping[str, Any]] | None = None,
    corpus: Corpus | None = None,
    mcq_fraction: float = 0.5,
    mcq_construction: str = "paper",
    answer_form: str = "letter",
    sampling: SamplingParams = SamplingParams(),
    verify_config: VerifyConfig | None = None,
    batch_size: int = 512,
    style: str = "full",
    progress: Callable[[int, int], None] | None = None,
) -> SynthesisResult:
    """Build requests for every (sample in `splits`, type, k < per_sample), generate, verify, deduplicate.

    `style` ("full" | "compact") is recorded in each request's context: the template generator renders it (unless
    constructed with an explicit style) and LLM teachers are told to be brief. `verify_config` defaults to
    `VerifyConfig.for_style(style)` (same checks; compact only lowers min_chars). MCQ distractors come from the path
    nodes of every labelled sample of the dataset in `samples` (all splits: labels, not images), as in
    `tasks.mcq.build_mcq_items` (`mcq_construction="paper"`) or, `set_first`, one taxonomy level per question.
    `answer_form` (`prompt_format.ANSWER_FORMS`) is how multiple-choice answers name their option.
    `progress(done, total)` is called after each generated batch.
    """
    unknown = [t for t in types if t not in TYPES]
    if unknown:
        raise ValueError(f"unknown trajectory types {unknown}; known: {list(TYPES)}")
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if mcq_construction not in MCQ_CONSTRUCTIONS:
        raise ValueError(f"mcq_construction must be one of {MCQ_CONSTRUCTIONS}, got {mcq_construction!r}")
    verify_config = verify_config if verify_config is not None else VerifyConfig.for_style(style)
    rows = samples[samples["split"].isin(list(splits))] if "split" in samples else samples
    pools = {ds: sorted(set(g["taxonomy_node"])) for ds, g in rows.groupby("source_dataset")} if len(rows) else {}
    mcq_pools = (
        {
            str(ds): sorted({n for n in g["taxonomy_node"] if isinstance(n, str)})
            for ds, g in samples.groupby("source_dataset")
        }
        if len(samples)
        else {}
    )
    passages: dict[str, list[Passage]] = {}
    requests: list[tuple[GenerationRequest, dict[str, Any]]] = []
    skips: dict[str, int] = {}
    for row in rows.to_dict("records"):
        node = row["taxonomy_node"]
        if corpus is not None and node in taxonomy and node not in passages:
            passages[node] = corpus.passages_for(node, taxonomy)
        feats = _lookup(image_features, row)
        for ttype in types:
            for k in range(per_sample):
                rng = random.Random(_seed(seed, row["sample_id"], ttype, k))
                extras = BuildExtras(
                    image_features=feats,
                    options_pool=pools.get(row["source_dataset"], ()),
                    mcq_pool=mcq_pools.get(str(row["source_dataset"]), ()),
                    style=style,
                    mcq_fraction=mcq_fraction,
                    mcq_construction=mcq_construction,
                    answer_form=answer_form,
                    passages=passages.get(node, ()),
                    index=k,
                    sampling=SamplingParams(**{**sampling.__dict__, "seed": _seed(seed, row["sample_id"], ttype, k)}),
                )
                try:
                    req = TYPES[ttype].build(row, taxonomy, ddx, knowledge, rng, extras)
                except NotApplicable as exc:
                    skips[exc.reason] = skips.get(exc.reason, 0) + 1
                    continue
                requests.append((req, row))
    texts: list[str] = []
    failures: dict[str, Any] = {}
    for start in range(0, len(requests), batch_size):
        batch = [r for r, _ in requests[start : start + batch_size]]
        texts += generator.generate(batch)
        failures.update(getattr(generator, "failed_requests", None) or {})
        if progress is not None:  # generation is the slow part with an LLM teacher; verification is not
            progress(len(texts), len(requests))
    verifier = Verifier(taxonomy, ddx, knowledge, verify_config)
    verdicts: list[Verdict] = []
    for i, ((req, _), text) in enumerate(zip(requests, texts)):
        failure = failures.get(req.request_id)
        if failure is None:
            verdicts.append(verifier.check(text, req))
        else:
            verdicts.append(Verdict(False, failure_reason(failure.kind), failure.detail))
            texts[i] = failure.text or ""
    passed = [i for i, v in enumerate(verdicts) if v.ok]
    dedup_items = []
    for i in passed:
        req, row = requests[i]
        group = row["sample_id"] if verify_config.dedup_scope == "sample" else row["taxonomy_node"]
        thinking = parse_completion(texts[i], list(req.options) or None).thinking or ""
        dedup_items.append((f"{group}::{req.trajectory_type}", req.request_id, thinking))
    for i, v in zip(passed, verifier.dedup(dedup_items)):
        verdicts[i] = v
    result = _result(requests, texts, verdicts, skips, generator.name)
    stats = getattr(generator, "stats", None)
    if stats:
        result.counts["generator_stats"] = {str(k): int(v) for k, v in sorted(stats.items())}
    return result


def failure_reason(kind: str) -> str:
    """Rejection reason of a request the generator could not answer (never one of the verifier's reasons)."""
    return "truncated" if kind == "truncated" else f"transport:{kind}"


def _is_generation_failure(reason: str) -> bool:
    return reason == "truncated" or reason.startswith("transport:")


def _result(requests, texts, verdicts, skips, generator_name) -> SynthesisResult:
    kept, rejected = [], []
    for (req, row), text, verdict in zip(requests, texts, verdicts):
        if verdict.ok:
            kept.append(
                {
                    "sample_id": req.sample_id,
                    "image_path": row.get("image_path"),
                    "source_dataset": row.get("source_dataset"),
                    "split": row.get("split"),
                    "trajectory_type": req.trajectory_type,
                    "question_form": req.context.question_form,
                    "prompt": req.prompt,
                    "options": list(req.options),
                    "completion": text,
                    "taxonomy_node": req.context.node,
                    "bucket": row.get("bucket"),
                    "citations": list(req.context.citations),
                    "generator": generator_name,
                }
            )
        else:
            rejected.append(
                {
                    "sample_id": req.sample_id,
                    "trajectory_type": req.trajectory_type,
                    "reason": verdict.reason,
                    "detail": verdict.detail,
                    "text": text,
                }
            )
    traj = pd.DataFrame(kept, columns=list(TRAJECTORY_COLUMNS))
    rej = pd.DataFrame(rejected, columns=list(REJECTION_COLUMNS))
    failed = rej["reason"].map(_is_generation_failure).astype(bool)
    verified, transport = rej[~failed], rej[failed]
    kinds = transport["reason"].str.removeprefix("transport:")
    counts = {
        "requests": len(requests),
        "accepted": len(traj),
        "rejected": len(verified),  # by the verifier; generation failures are counted apart
        "transport_failed": len(transport),
        "skipped": dict(sorted(skips.items())),
        "per_type": {
            t: {
                "accepted": int((traj["trajectory_type"] == t).sum()),
                "rejected": int((verified["trajectory_type"] == t).sum()),
            }
            for t in sorted({r.trajectory_type for r, _ in requests})
        },
        "per_class": {str(k): int(v) for k, v in traj["taxonomy_node"].value_counts().sort_index().items()},
        "per_question_form": {str(k): int(v) for k, v in traj["question_form"].value_counts().sort_index().items()},
        "rejections": {str(k): int(v) for k, v in verified["reason"].value_counts().sort_index().items()},
        "transport_failures": {str(k): int(v) for k, v in kinds.value_counts().sort_index().items()},
    }
    return SynthesisResult(traj, rej, counts)


def demo_samples(
    out_dir: str | Path, taxonomy: Taxonomy, *, label_maps: Mapping[str, Any] | None = None, seed: int = 0
) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """Unified-style samples and their per-image features from a demo folder's `demo_features.jsonl`.

    Labels go through the datasets' label maps (HAM10000 `bkl` → benign_keratosis_like, Derm7pt `clark nevus` →
    dysplastic_nevus), as ingestion would, so coarse and fine labels both appear. Splits are a stable hash of the id
    (70/15/15); the ISIC 2018 test images keep split "test". Skips the images the demo deliberately broke.
    """
    from skinr1_pipeline.knowledge.label_maps import load_label_maps

    out_dir = Path(out_dir)
    maps = label_maps if label_maps is not None else load_label_maps(taxonomy)
    broken = set()
    manifest = out_dir / "demo_manifest.json"
    if manifest.exists():
        broken = {b["path"] for b in json.loads(manifest.read_text()).get("broken", [])}
    rows, features = [], {}
    for line in (out_dir / "demo_features.jsonl").read_text().splitlines():
        rec = json.loads(line)
        dataset = rec["dataset"]
        source = "ham10000" if dataset == "isic2018_task3_test" else dataset
        if any(str(rec["path"]).endswith(b) for b in broken):
            continue
        resolved = maps[source].resolve(rec["raw_label"], taxonomy)
        node = resolved[0] if resolved else rec["diagnosis"]
        sample_id = f"{dataset}/{rec['sample_id']}"
        bucket = taxonomy[node].bucket
        split = "test" if dataset == "isic2018_task3_test" else _DEMO_SPLITS[_seed(seed, sample_id) % 20]
        rows.append(
            {
                "sample_id": sample_id,
                "source_dataset": source,
                "image_path": str((out_dir / rec["path"]).resolve()),
                "raw_label": rec["raw_label"],
                "modality": rec["features"].get("domain", "dermoscopic"),
                "taxonomy_node": node,
                "taxonomy_path": taxonomy.path(node),
                "taxonomy_depth": taxonomy.depth(node),
                "bucket": bucket or "none",
                "split": split,
                "image_sha256": None,
                "age": None,
                "sex": None,
                "site": None,
                "fitzpatrick": rec["features"].get("fitzpatrick"),
            }
        )
        features[sample_id] = rec["features"]
    return pd.DataFrame(rows), features
