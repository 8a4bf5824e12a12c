"""Verifier: one test per rejection reason, plus the things it must accept."""

from __future__ import annotations

import random

import pytest

from skinr1_pipeline.synthesis import REASONS, TYPES, BuildExtras, TemplateGenerator, Verifier, VerifyConfig

MEL_FEATURES = {
    "asymmetry": 0.8,
    "border_irregularity": 0.7,
    "border_sharpness": 0.5,
    "colours": ["dark_brown", "black"],
    "diameter_mm": 11.0,
    "elevation": "flat",
    "vessels": "none",
    "scale": "none",
    "surface": "smooth",
    "structures": ["atypical_network", "irregular_dots"],
    "domain": "dermoscopic",
}
OBS = (
    "The lesion is flat, clearly asymmetric and about 11 mm across. Colours present: dark brown and black. "
    "It has a smooth surface. I can see atypical network and irregular dots. "
)
ANSWER = "<diagnosis>melanoma; status: malignant</diagnosis>"
seen_reasons: set[str] = set()


@pytest.fixture(scope="module")
def verifier(knowledge):
    """A Verifier with the default config over the packaged knowledge."""
    return Verifier(*knowledge)


def _req(knowledge, ttype="contrast", node="melanoma", bucket="malignant", mcq=0.0, features=MEL_FEATURES, seed=0):
    tax, ddx, kb = knowledge
    sample = {
        "sample_id": f"t/{node}",
        "source_dataset": "t",
        "image_path": "/i.jpg",
        "taxonomy_node": node,
        "bucket": bucket,
    }
    pool = ["melanoma", "melanocytic_nevus", "seborrheic_keratosis", "basal_cell_carcinoma", "dermatofibroma"]
    return TYPES[ttype].build(
        sample,
        tax,
        ddx,
        kb,
        random.Random(seed),
        BuildExtras(image_features=features, options_pool=pool, mcq_fraction=mcq),
    )


def _check(verifier, text, req, reason=None, **kw):
    verdict = verifier.check(text, req, **kw)
    if reason is None:
        assert verdict.ok, verdict
    else:
        assert (verdict.ok, verdict.reason) == (False, reason), verdict
        seen_reasons.add(reason)
    return verdict


def _think(body: str, answer: str = ANSWER) -> str:
    return f"<thinking>{body}</thinking>\n{answer}"


def test_template_output_is_accepted_for_every_type_and_form(knowledge, verifier):
    for ttype in TYPES:
        for mcq in (0.0, 1.0):
            req = _req(knowledge, ttype, mcq=mcq)
            _check(verifier, TemplateGenerator().generate([req])[0], req)


def test_bad_format_and_garbage(knowledge, verifier):
    req = _req(knowledge)
    rng = random.Random(0)
    garbage = " ".join("".join(rng.choice("qwxzkjv") for _ in range(6)) for _ in range(80))
    assert _check(verifier, garbage, req, "bad_format").detail == "no_thinking"
    assert _check(verifier, _think(OBS * 3) + _think("again"), req, "bad_format").detail == "multiple_thinking"
    assert _check(verifier, "<think>x</think>" + ANSWER, req, "bad_format").detail == "foreign_tag"
    # garbage inside well-formed tags still fails, on content
    _check(verifier, _think(garbage, "<diagnosis>zzqx vvkj; status: malignant</diagnosis>"), req, "unknown_diagnosis")
    _check(verifier, _think(garbage), req, "no_features_cited")


def test_length_bounds(knowledge, verifier):
    req = _req(knowledge)
    _check(verifier, _think("Atypical network is present."), req, "too_short")
    tight = Verifier(*knowledge, VerifyConfig(max_chars=300))
    verdict = tight.check(_think(OBS * 3), req)
    assert verdict.reason == "too_long"
    seen_reasons.add("too_long")


def test_open_answers(knowledge, verifier):
    req = _req(knowledge)
    _check(
        verifier,
        _think(OBS * 2, "<diagnosis>melanoma or seborrheic keratosis; status: malignant</diagnosis>"),
        req,
        "ambiguous_diagnosis",
    )
    _check(
        verifier,
        _think(OBS * 2, "<diagnosis>basal cell carcinoma; status: malignant</diagnosis>"),
        req,
        "wrong_diagnosis",
    )
    # a non-category ancestor is allowed (coarser but correct), a synonym too
    _check(verifier, _think(OBS * 2, "<diagnosis>malignant melanocytic neoplasm; status: malignant</diagnosis>"), req)
    _check(verifier, _think(OBS * 2, "<diagnosis>Malignant melanoma; status: malignant</diagnosis>"), req)


def test_group_label_accepts_a_member(knowledge, verifier):
    feats = {
        "colours": ["tan"],
        "elevation": "raised",
        "vessels": "none",
        "scale": "none",
        "surface": "verrucous",
        "structures": ["milia_like_cysts"],
    }
    req = _req(knowledge, node="benign_keratosis_like", bucket="benign", features=feats)
    body = "It is raised and tan. It has a verrucous surface. I can see milia-like cysts. " * 3
    _check(verifier, _think(body, "<diagnosis>seborrheic keratosis; status: benign</diagnosis>"), req)


def test_mcq_answers(knowledge, verifier):
    req = _req(knowledge, mcq=1.0)
    right = req.context.answer_index
    wrong = (right + 1) % 4
    letter = "ABCD"[wrong]
    _check(
        verifier,
        _think(OBS * 2, f"<diagnosis>{letter}. {req.options[wrong]}; status: malignant</diagnosis>"),
        req,
        "wrong_diagnosis",
    )
    ok_letter = "ABCD"[right]
    _check(verifier, _think(OBS * 2, f"<diagnosis>{ok_letter}; status: malignant</diagnosis>"), req)


def test_status(knowledge, verifier):
    req = _req(knowledge)
    _check(verifier, _think(OBS * 2, "<diagnosis>melanoma; status: benign</diagnosis>"), req, "wrong_status")
    _check(verifier, _think(OBS * 2, "<diagnosis>melanoma</diagnosis>"), req, "wrong_status")


def test_no_features_cited(knowledge, verifier):
    body = (
        "The lesion looks worrying to me and I have considered it carefully from several angles. "
        "Overall the appearance is what one sees in this condition, and it has changed recently. "
    ) * 2
    _check(verifier, _think(body), _req(knowledge), "no_features_cited")


def test_kb_contradiction_and_negation(knowledge, verifier):
    req = _req(knowledge)
    # melanoma's KB entry lists milia-like cysts as absent
    _check(verifier, _think(OBS + "Milia-like cysts are present as well. " + OBS), req, "kb_contradiction")
    # negated or hedged mentions are not claims
    _check(
        verifier,
        _think(OBS + "There are no milia-like cysts. Seborrheic keratosis would show milia-like cysts. " + OBS),
        req,
    )


def test_unsupported_feature(knowledge, verifier):
    req = _req(knowledge)
    v = _check(verifier, _think(OBS + "A blue-white veil covers the centre. " + OBS), req, "unsupported_feature")
    assert "blue_white_veil" in v.detail
    # the same claim is fine when the image does show it
    shown = {**MEL_FEATURES, "structures": ["atypical_network", "irregular_dots", "blue_white_veil"]}
    _check(verifier, _think(OBS + "A blue-white veil covers the centre. " + OBS), req, image_features=shown)


def test_ddx_rules(knowledge, verifier):
    req = _req(knowledge, "ddx")
    _check(verifier, _think(OBS * 2), req, "ddx_missing")
    _check(
        verifier, _think(OBS * 2 + "Psoriasis is less likely because it shows thick scale."), req, "ddx_not_neighbour"
    )
    _check(verifier, _think(OBS * 2 + "Seborrheic keratosis is less likely: there are no milia-like cysts."), req)
    # an offered option may be named in a DDx rationale (the compact option check names every option); a
    # non-neighbour that is not offered still fails
    tax, ddx, kb = knowledge
    pool = ["melanoma", "melanocytic_nevus", "psoriasis", "basal_cell_carcinoma", "dermatofibroma"]
    reqs = [
        TYPES["ddx"].build(
            {
                "sample_id": "t/melanoma",
                "source_dataset": "t",
                "image_path": "/i.jpg",
                "taxonomy_node": "melanoma",
                "bucket": "malignant",
            },
            tax,
            ddx,
            kb,
            random.Random(seed),
            BuildExtras(image_features=MEL_FEATURES, options_pool=pool, mcq_fraction=1.0, style="compact"),
        )
        for seed in range(40)
    ]
    offered = next(r for r in reqs if "psoriasis" in r.context.option_nodes)
    text = TemplateGenerator().generate([offered])[0]
    assert "psoriasis: does not fit" in text
    _check(verifier, text, offered)
    other = next(r for r in reqs if "psoriasis" not in r.context.option_nodes)
    text = (
        TemplateGenerator()
        .generate([other])[0]
        .replace("</thinking>", "Psoriasis is less likely because it shows thick scale.\n</thinking>")
    )
    _check(verifier, text, other, "ddx_not_neighbour")
    # random-comparison types may name any diagnosis
    _check(
        verifier,
        _think(OBS * 2 + "Psoriasis is less likely because it shows thick scale."),
        _req(knowledge, "contrast"),
    )


def test_hierarchy_incomplete(knowledge, verifier):
    req = _req(knowledge, "hierarchy")
    _check(verifier, _think(OBS * 2 + "This is melanoma."), req, "hierarchy_incomplete")


def test_near_duplicates(verifier):
    a = " ".join(f"word{i}" for i in range(200))
    b = a.replace("word100", "changed")  # 5 of ~200 shingles differ: Jaccard ~0.95
    c = "Entirely different wording about a pearly border and arborizing vessels on the nose. " * 3
    verdicts = verifier.dedup([("s1", "a", a), ("s1", "b", b), ("s1", "c", c), ("s2", "d", a)])
    assert [v.ok for v in verdicts] == [True, False, True, True]
    assert verdicts[1].reason == "near_duplicate" and "with a" in verdicts[1].detail
    seen_reasons.add("near_duplicate")


def test_every_reason_is_exercised():
    """Runs last in this module: each reason code of the verifier has a test above."""
    assert seen_reasons == set(REASONS)
