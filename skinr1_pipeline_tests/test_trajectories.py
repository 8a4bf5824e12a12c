"""Trajectory types, question forms, template generator, determinism and speed on demo data."""

from __future__ import annotations

import random
import re

import pandas as pd
import pytest

from skinr1_pipeline.data.demo import generate_demo_data
from skinr1_pipeline.modeling.prompt_format import build_open_prompt, parse_completion, prompt_options
from skinr1_pipeline.synthesis import (
    TYPES,
    BuildExtras,
    CallableGenerator,
    Generator,
    TemplateGenerator,
    Verifier,
    demo_samples,
    synthesize,
)
from skinr1_pipeline.synthesis.trajectories import STYLES
from skinr1_pipeline.synthesis.verify import VerifyConfig
from skinr1_pipeline.tasks.mcq import TOP_SCORE, option_path, option_scan_lines


@pytest.fixture(scope="module")
def demo(tmp_path_factory, tax):
    out = tmp_path_factory.mktemp("demo")
    generate_demo_data(out, seed=3, n_per_class=3)
    return demo_samples(out, tax)


def _row(samples: pd.DataFrame, node: str) -> dict:
    return samples[samples["taxonomy_node"] == node].iloc[0].to_dict()


def _extras(samples, features, row, **kw) -> BuildExtras:
    pool = sorted(set(samples.loc[samples["source_dataset"] == row["source_dataset"], "taxonomy_node"]))
    return BuildExtras(image_features=features[row["sample_id"]], options_pool=pool, **kw)


def test_demo_samples_use_label_maps(demo):
    samples, features = demo
    expected = {"benign_keratosis_like", "dysplastic_nevus", "melanoma", "ak_or_scc_in_situ"}
    assert expected <= set(samples["taxonomy_node"])
    assert set(samples["split"]) == {"train", "valid", "test"}
    assert set(features) == set(samples["sample_id"])


def test_hierarchy_walks_the_path(knowledge, demo):
    tax, ddx, kb = knowledge
    samples, features = demo
    row = _row(samples, "melanoma")
    req = TYPES["hierarchy"].build(row, tax, ddx, kb, random.Random(0), _extras(samples, features, row, mcq_fraction=0))
    ctx = req.context
    assert [lv.node for lv in ctx.levels] == tax.path("melanoma")[1:]
    assert ctx.observed_source == "image" and req.prompt == build_open_prompt()
    text = TemplateGenerator().generate([req])[0]
    thinking = parse_completion(text).thinking
    positions = [thinking.find(tax[n].name) for n in tax.path("melanoma")[1:]]
    assert all(p >= 0 for p in positions) and positions == sorted(positions)


def test_ddx_names_and_excludes_neighbours(knowledge, demo):
    tax, ddx, kb = knowledge
    samples, features = demo
    for node in ("melanoma", "basal_cell_carcinoma", "dermatofibroma"):
        row = _row(samples, node)
        req = TYPES["ddx"].build(row, tax, ddx, kb, random.Random(1), _extras(samples, features, row))
        alts = req.context.alternatives
        assert alts and all(a.node in ddx.neighbours(node) and a.relation == "ddx" for a in alts)
        text = TemplateGenerator().generate([req])[0]
        for a in alts:
            assert a.name in text.lower() and a.discriminator.rstrip(".")[5:30].lower() in text.lower()
        assert any(c.startswith("ddx:") for c in req.context.citations)


def test_switch_types_start_from_the_wrong_diagnosis(knowledge, demo):
    tax, ddx, kb = knowledge
    samples, features = demo
    row = _row(samples, "seborrheic_keratosis")
    for name, relation in (("ddx_switch", "ddx"), ("contrast_switch", "random")):
        req = TYPES[name].build(row, tax, ddx, kb, random.Random(2), _extras(samples, features, row, mcq_fraction=0))
        first = req.context.first
        assert first is not None and first.relation == relation
        thinking = parse_completion(TemplateGenerator().generate([req])[0]).thinking
        assert thinking.find(first.name) < thinking.rfind("seborrheic keratosis")
        assert "diagnosis is seborrheic keratosis" in thinking


def test_contrast_picks_a_non_neighbour(knowledge, demo):
    tax, ddx, kb = knowledge
    samples, features = demo
    row = _row(samples, "melanocytic_nevus")
    req = TYPES["contrast"].build(row, tax, ddx, kb, random.Random(3), _extras(samples, features, row))
    (alt,) = req.context.alternatives
    assert alt.relation == "random" and alt.node in kb.entries
    assert alt.node not in ddx.neighbours_with_expansion("melanocytic_nevus", tax)


def test_mcq_options(knowledge, demo):
    """Options as in tasks.mcq.build_mcq_items: 1-3 nodes of the label's path (scored by depth) + same-dataset
    distractors."""
    tax, ddx, kb = knowledge
    samples, features = demo
    row = _row(samples, "basal_cell_carcinoma")
    extras = _extras(samples, features, row, mcq_fraction=1.0)
    path = option_path(tax, "basal_cell_carcinoma")
    pool = {p for n in extras.options_pool for p in option_path(tax, n)}
    answers = set()
    for seed in range(30):
        req = TYPES["ddx"].build(row, tax, ddx, kb, random.Random(seed), extras)
        ctx = req.context
        assert ctx.question_form == "mcq" and len(req.options) == 4 and len(set(req.options)) == 4
        assert prompt_options(req.prompt) == list(req.options)
        correct = [n for n in ctx.option_nodes if n in path]
        assert 1 <= len(correct) <= 3
        assert [s for n, s in zip(ctx.option_nodes, ctx.option_scores) if n not in path] == [0.0] * (4 - len(correct))
        deepest = max(correct, key=path.index)
        assert ctx.answer_node == deepest == ctx.option_nodes[ctx.answer_index]  # the most specific correct option
        assert ctx.option_scores[ctx.answer_index] == max(ctx.option_scores) == TOP_SCORE
        answers.add(deepest)
        others = [n for n in ctx.option_nodes if n not in path]
        assert set(others) <= pool  # the dataset has enough other path nodes
        assert not any(n in tax.descendants("basal_cell_carcinoma") for n in others)
        for style in STYLES:
            text = TemplateGenerator(style=style).generate([req])[0]
            assert parse_completion(text, req.options).option_index == ctx.answer_index
            assert Verifier(tax, ddx, kb, VerifyConfig.for_style(style)).check(text, req).ok
    assert "basal_cell_carcinoma" in answers and answers - {"basal_cell_carcinoma"}  # ancestors are answers too


def test_set_first_mcq_options_offer_one_level_and_pass_the_verifier(knowledge, demo):
    """`mcq_construction="set_first"`: the options are nodes of one taxonomy level, exactly one on the label's path,
    so the deepest-offered-ancestor shortcut the paper's options teach has nothing to find."""
    tax, ddx, kb = knowledge
    samples, features = demo
    levels, answers = set(), []
    for node in sorted(set(samples["taxonomy_node"])):
        row = _row(samples, node)
        extras = _extras(samples, features, row, mcq_fraction=1.0, mcq_construction="set_first")
        path = option_path(tax, node)
        for seed in range(6):
            req = TYPES["ddx"].build(row, tax, ddx, kb, random.Random(seed), extras)
            ctx = req.context
            if ctx.question_form == "open":  # no level of this label's path offers 4 nodes in its dataset
                continue
            depths = {len(option_path(tax, n)) for n in ctx.option_nodes}
            assert len(depths) == 1 and len(set(ctx.option_nodes)) == 4  # one level: none above another
            assert [i for i, n in enumerate(ctx.option_nodes) if n in path] == [ctx.answer_index]
            assert ctx.option_scores[ctx.answer_index] == TOP_SCORE and sorted(ctx.option_scores)[:3] == [0.0] * 3
            levels |= depths
            answers.append(ctx.answer_index)
            text = TemplateGenerator(style="compact").generate([req])[0]
            assert parse_completion(text, req.options).option_index == ctx.answer_index
            assert Verifier(tax, ddx, kb, VerifyConfig.for_style("compact")).check(text, req).ok
    assert len(levels) >= 2 and set(answers) == {0, 1, 2, 3}  # several levels asked; every letter answers
    result = synthesize(samples, tax, ddx, kb, TemplateGenerator(), mcq_construction="set_first", mcq_fraction=1.0)
    assert result.counts["rejected"] == 0 and len(result.trajectories)
    with pytest.raises(ValueError, match="mcq_construction must be one of"):
        synthesize(samples, tax, ddx, kb, TemplateGenerator(), mcq_construction="gold_first")


def test_text_form_answers_copy_the_deepest_offered_name_from_the_path(knowledge, demo):
    """`answer_form="text"`: a compact MCQ rationale ends with the diagnosis's taxonomy path instead of one line per
    option, and the answer is the offered option's text on that path, with no letter; it parses to the gold option
    and passes the verifier. An unknown form is refused."""
    tax, ddx, kb = knowledge
    samples, features = demo
    text_form = {"style": "compact", "mcq_construction": "set_first", "mcq_fraction": 1.0, "answer_form": "text"}
    result = synthesize(samples, tax, ddx, kb, TemplateGenerator(), image_features=features, **text_form)
    assert result.counts["rejected"] == 0, result.rejections[["trajectory_type", "reason", "detail"]].head()
    mcq = result.trajectories[result.trajectories["question_form"] == "mcq"]
    assert len(mcq) > 20
    for row in mcq.itertuples():
        names = [tax[n].name for n in tax.path(row.taxonomy_node)[1:]]
        thinking, diagnosis = row.completion.split("</thinking>")
        assert thinking.rstrip().endswith("Path: " + " > ".join(names) + ".") and "fits" not in thinking
        answer = diagnosis.split("<diagnosis>")[1].split(";")[0]
        offered = [o for o in row.options if o in names]
        assert answer == max(offered, key=names.index)  # the deepest offered name on the path, no letter
        assert parse_completion(row.completion, list(row.options)).ok
    with pytest.raises(ValueError, match="answer_form must be one of"):
        synthesize(samples.head(2), tax, ddx, kb, TemplateGenerator(), answer_form="number", mcq_fraction=1.0)


def test_compact_style_is_short_and_verified(knowledge, demo):
    tax, ddx, kb = knowledge
    samples, features = demo
    full = synthesize(
        samples, tax, ddx, kb, TemplateGenerator(), seed=0, splits=("train", "valid", "test"), image_features=features
    )
    compact = synthesize(
        samples,
        tax,
        ddx,
        kb,
        TemplateGenerator(),
        seed=0,
        splits=("train", "valid", "test"),
        image_features=features,
        style="compact",
    )
    assert compact.counts["rejected"] == 0, compact.rejections[["trajectory_type", "reason", "detail"]].head()
    assert compact.counts["accepted"] == full.counts["accepted"]
    assert list(compact.trajectories["prompt"]) == list(full.trajectories["prompt"])  # same questions, same facts
    lengths = compact.trajectories["completion"].str.split().str.len()
    # MCQs add one check line per option and the deepest fit on top of the rationale
    assert lengths.max() <= 100 and lengths.mean() < full.trajectories["completion"].str.split().str.len().mean() / 3
    hier = compact.trajectories[compact.trajectories["trajectory_type"] == "hierarchy"].iloc[0]
    assert "Path: " in hier["completion"]
    # Non-switch types open with the diagnosis read off the image; switch types with the wrong first thought.
    first_line = compact.trajectories["completion"].str.split("\n").str[1]
    switch = compact.trajectories["trajectory_type"].str.endswith("_switch")
    assert first_line[switch].str.startswith("First thought: ").all()
    names = compact.trajectories["taxonomy_node"].map(lambda n: tax[n].name)
    assert (first_line[~switch] == "Impression: " + names[~switch] + ".").all()
    # MCQs place every option, in the order offered, on the label's path (its level) or off it; the chosen option
    # (letter and text) is the deepest one that fits.
    mcq = compact.trajectories[compact.trajectories["question_form"] == "mcq"]
    for row in mcq.itertuples():
        scan = re.findall(r"^([A-Z])\. (.+?): (fits, level (\d+)|does not fit)\.$", row.completion, flags=re.M)
        assert [(s[0], s[1]) for s in scan] == [(chr(65 + i), o) for i, o in enumerate(row.options)], row.completion
        path = [tax[n].name for n in tax.path(row.taxonomy_node)[1:]]
        levels = {s[0]: int(s[3]) for s in scan if s[3]}
        assert levels and all(path[k - 1] == list(row.options)[ord(x) - 65] for x, k in levels.items())
        assert all(o not in path for o, s in zip(row.options, scan) if not s[3])
        best = max(levels, key=levels.get)
        assert f"<diagnosis>{best}. {list(row.options)[ord(best) - 65]};" in row.completion
    assert mcq["completion"].str.contains("does not fit").all()
    # the explicit generator style overrides the context's; an unknown style is an error
    forced = synthesize(
        samples.head(4),
        tax,
        ddx,
        kb,
        TemplateGenerator(style="compact"),
        seed=0,
        splits=("train", "valid", "test"),
        image_features=features,
        verify_config=VerifyConfig(min_chars=50),
    )
    assert forced.trajectories["completion"].str.split().str.len().max() <= 100
    with pytest.raises(ValueError, match="style"):
        synthesize(samples, tax, ddx, kb, TemplateGenerator(), style="tiny")
    with pytest.raises(ValueError, match="style"):
        TemplateGenerator(style="tiny")


def test_real_sample_uses_knowledge_base_features_and_skips_unknown(knowledge):
    tax, ddx, kb = knowledge
    samples = pd.DataFrame(
        [
            {
                "sample_id": "r/1",
                "source_dataset": "r",
                "image_path": "/i/1.jpg",
                "taxonomy_node": "psoriasis",
                "bucket": "none",
                "split": "train",
            },
            {
                "sample_id": "r/2",
                "source_dataset": "r",
                "image_path": "/i/2.jpg",
                "taxonomy_node": "inflammatory",
                "bucket": "none",
                "split": "train",
            },
        ]
    )
    result = synthesize(samples, tax, ddx, kb, TemplateGenerator(), per_sample=2, seed=5)
    assert result.counts["skipped"] == {"no_knowledge": 10}
    assert len(result.rejections) == 0 or set(result.rejections["reason"]) == {"near_duplicate"}
    done = result.trajectories
    assert set(done["taxonomy_node"]) == {"psoriasis"}
    assert all("status" not in c.split("<diagnosis>")[1] for c in done["completion"])  # no bucket -> no status
    assert all("dotted vessels" in c for c in done["completion"])


def test_template_passes_its_own_verifier_on_demo(knowledge, demo):
    tax, ddx, kb = knowledge
    samples, features = demo
    result = synthesize(
        samples,
        tax,
        ddx,
        kb,
        TemplateGenerator(),
        per_sample=1,
        seed=0,
        splits=("train", "valid", "test"),
        image_features=features,
    )
    assert result.counts["rejected"] == 0, result.rejections[["trajectory_type", "reason", "detail"]].head()
    assert result.counts["accepted"] == len(samples) * len(TYPES)
    assert set(result.trajectories["question_form"]) == {"open", "mcq"}
    assert list(result.trajectories.columns) == [
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
    ]
    assert result.counts["per_type"]["hierarchy"] == {"accepted": len(samples), "rejected": 0}


@pytest.mark.slow  # synthesizes the demo set four times
def test_deterministic_per_seed_and_row_order(knowledge, demo):
    tax, ddx, kb = knowledge
    samples, features = demo
    kw = dict(per_sample=2, splits=("train", "valid", "test"), image_features=features)
    a = synthesize(samples, tax, ddx, kb, TemplateGenerator(), seed=7, **kw).trajectories
    b = synthesize(samples.sample(frac=1, random_state=1), tax, ddx, kb, TemplateGenerator(), seed=7, **kw).trajectories
    c = synthesize(samples, tax, ddx, kb, TemplateGenerator(), seed=8, **kw).trajectories
    key = ["sample_id", "trajectory_type", "completion"]
    assert a.equals(synthesize(samples, tax, ddx, kb, TemplateGenerator(), seed=7, **kw).trajectories)
    assert a[key].sort_values(key).reset_index(drop=True).equals(b[key].sort_values(key).reset_index(drop=True))
    assert not set(a["completion"]) == set(c["completion"])


@pytest.mark.slow  # builds, writes and verifies ~1,000 requests
def test_generator_interface(knowledge, demo):
    """Speed is measured by benchmarks/bench_generation.py, not asserted here."""
    tax, ddx, kb = knowledge
    samples, features = demo
    assert isinstance(TemplateGenerator(), Generator)
    rows = samples.to_dict("records")
    requests = [
        TYPES[t].build(r, tax, ddx, kb, random.Random(i), BuildExtras(image_features=features[r["sample_id"]]))
        for i, r in enumerate(rows * 10)
        for t in TYPES
    ]
    texts = TemplateGenerator().generate(requests)
    assert len(texts) == len(requests) and all(texts)
    verifier = Verifier(tax, ddx, kb)
    assert all(verifier.check(t, r).ok for t, r in zip(texts[:200], requests[:200]))
    with pytest.raises(ValueError, match="returned 1 texts for 2"):
        CallableGenerator(lambda reqs: ["x"]).generate(requests[:2])


def test_llm_style_generator_receives_messages_and_failures_are_counted(knowledge, demo):
    tax, ddx, kb = knowledge
    samples, features = demo
    seen = []

    def fake_llm(requests):
        seen.extend(requests)
        return ["I think it is a mole." for _ in requests]

    result = synthesize(
        samples.head(3),
        tax,
        ddx,
        kb,
        CallableGenerator(fake_llm, "fake"),
        types=("ddx",),
        splits=("train", "valid", "test"),
        image_features=features,
    )
    assert seen and all(r.messages[0]["role"] == "system" and r.sampling.seed is not None for r in seen)
    assert result.counts["rejections"] == {"bad_format": len(seen)}


def test_option_scan_places_each_option_on_the_path():
    path = ["neoplastic", "benign_neoplasm", "benign_melanocytic", "melanocytic_nevus"]
    lines = option_scan_lines(
        ["melanoma", "benign neoplasm", "melanocytic nevus"], ["melanoma", "benign_neoplasm", "melanocytic_nevus"], path
    )
    assert lines == [
        "A. melanoma: does not fit.",
        "B. benign neoplasm: fits, level 2.",
        "C. melanocytic nevus: fits, level 4.",
    ]
    assert option_scan_lines([], [], path) == []
    with pytest.raises(ValueError, match="2 option texts but 1 option nodes"):
        option_scan_lines(["a", "b"], ["a"], path)
