"""`skinr1 diagnose`: placing an answer in the taxonomy and DDx graph, model resolution, and the CLI end to end
on a tiny model (from the pipeline home's adapters and from the MLflow registry)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from skinr1_pipeline.cli import main
from skinr1_pipeline.diagnose import DiagnoseError, explain, render, resolve_model
from skinr1_pipeline.knowledge.ddx import DDxGraph
from skinr1_pipeline.knowledge.knowledge_base import load_knowledge_base
from skinr1_pipeline.knowledge.taxonomy import Taxonomy
from skinr1_pipeline.modeling.prompt_format import format_completion
from skinr1_pipeline.settings import load_settings
from skinr1_pipeline_tests.tiny_models import tiny_base_and_adapter


@pytest.fixture(scope="module")
def knowledge():
    taxonomy = Taxonomy.load()
    ddx = DDxGraph.load(taxonomy)
    return taxonomy, ddx, load_knowledge_base(taxonomy, ddx)


def _explain(completion: str, knowledge):
    taxonomy, ddx, kb = knowledge
    return explain(completion, image="x.jpg", model="m", taxonomy=taxonomy, ddx=ddx, knowledge=kb)


def test_answer_is_placed_in_taxonomy_with_its_differentials(knowledge) -> None:
    completion = format_completion("Pearly border with arborizing vessels. Unlike melanoma there is no pigment "
                                   "network.", "basal cell carcinoma; status: malignant")
    report = _explain(completion, knowledge)
    taxonomy, ddx, _ = knowledge
    assert report.format_ok and report.node == taxonomy.resolve("basal cell carcinoma")
    assert report.taxonomy_path[0] == taxonomy[taxonomy.path(report.node)[0]].name
    assert report.taxonomy_path[-1] == "basal cell carcinoma" and report.bucket == "malignant"
    assert report.stated_status == "malignant"
    by_name = {d.name: d for d in report.differentials}
    assert {taxonomy[n].name for n in ddx.neighbours_with_expansion(report.node, taxonomy)} == set(by_name)
    assert by_name["melanoma"].discussed and by_name["melanoma"].do_not_miss and by_name["melanoma"].tells_apart
    assert sum(d.discussed for d in report.differentials) == 1
    assert report.differentials[0].name == "melanoma"  # discussed first, then do-not-miss
    text = render(report)
    assert "basal cell carcinoma" in text and "ruled out in the rationale" in text and "not discussed" in text


def test_unreadable_and_hedged_answers_are_reported_not_guessed(knowledge) -> None:
    broken = _explain("basal cell carcinoma", knowledge)
    assert not broken.format_ok and broken.node is None and broken.differentials == []
    assert "NOT PARSEABLE" in render(broken) and "basal cell carcinoma" in render(broken)
    hedged = _explain(format_completion("Could be either.", "melanoma or melanocytic nevus"), knowledge)
    assert hedged.format_ok and hedged.node is None
    assert "no single taxonomy node" in render(hedged)


def test_model_resolution_names_what_is_missing(tmp_path: Path) -> None:
    settings = load_settings({"SKINR1_HOME": str(tmp_path)})
    with pytest.raises(DiagnoseError, match="no trained adapter found.*make demo"):
        resolve_model(None, settings)
    with pytest.raises(DiagnoseError, match="not a model directory"):
        resolve_model(str(tmp_path / "nowhere"), settings)
    adapter = tmp_path / "models" / "sft" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(DiagnoseError, match="base model .* has no config.json"):
        resolve_model(None, settings)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "config.json").write_text("{}")
    source = resolve_model(str(tmp_path / "full"), settings)
    assert source.adapter_dir is None and source.base_dir == tmp_path / "full"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A pipeline home holding a tiny base model and an SFT adapter where the pipeline would leave them."""
    root = tmp_path_factory.mktemp("home")
    tiny_base_and_adapter(root / "models" / "base", root / "models" / "sft" / "adapter")
    Image.new("RGB", (300, 200), (150, 90, 70)).save(root / "lesion.jpg")
    return root


@pytest.fixture()
def home_env(home: Path, monkeypatch):
    """The CLI reads the home from the environment; the registry step points this process at the home's store."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    monkeypatch.setenv("SKINR1_HOME", str(home))
    monkeypatch.setenv("SKINR1_PROFILE", "demo")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    yield home
    mlflow.set_tracking_uri(saved)


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_diagnoses_with_the_home_adapter_and_the_registered_model(home_env: Path, capsys) -> None:
    image = str(home_env / "lesion.jpg")
    code, out, _ = _run(["diagnose", image, "--max-new-tokens", "8"], capsys)
    assert f"sft adapter {home_env / 'models' / 'sft' / 'adapter'}" in out
    # Random weights: the answer is noise, and the command says so instead of inventing a diagnosis.
    assert code == 1 and ("NOT PARSEABLE" in out or "no single taxonomy node" in out)
    code, out, _ = _run(["diagnose", image, "--max-new-tokens", "8", "--json"], capsys)
    local = json.loads(out)
    assert local["format_ok"] is False and local["image"] == image and local["completion"]

    from skinr1_pipeline.tracking.pyfunc_model import log_skinr1_model
    from skinr1_pipeline.tracking.registry import register_candidate

    settings = load_settings()
    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    with mlflow.start_run():
        info = log_skinr1_model(home_env / "models" / "base", home_env / "models" / "sft" / "adapter", name="m",
                                input_example_image_path=image, model_config={"max_new_tokens": 4, "device": "cpu"})
    register_candidate(info.model_uri, "skinr1-grpo")
    code, out, _ = _run(["diagnose", image, "--max-new-tokens", "8", "--json", "--model", "candidate"], capsys)
    registered = json.loads(out)
    assert registered["model"].startswith("models:/skinr1-grpo@candidate")
    assert registered["completion"] == local["completion"]  # the registry carries the same weights

    code, _, err = _run(["diagnose", image, "--model", "champion"], capsys)
    assert code == 2 and "not found in the registry" in err


def test_cli_rejects_bad_images(home_env: Path, capsys) -> None:
    code, _, err = _run(["diagnose", str(home_env / "missing.jpg")], capsys)
    assert code == 2 and "missing.jpg: no such image file" in err
    text = home_env / "notes.jpg"
    text.write_text("not an image")
    code, _, err = _run(["diagnose", str(text)], capsys)
    assert code == 2 and "notes.jpg: not a readable image" in err
