"""`skinr1 diagnose`: placing an answer in the taxonomy and DDx graph, model resolution, and the CLI end to end
on a tiny model (from the pipeline home's adapters and from the MLflow registry)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import mlflow
import pytest
from PIL import Image

from skinr1_pipeline.cli import main
from skinr1_pipeline.diagnose import DiagnoseError, explain, render, resolve_model
from skinr1_pipeline.modeling.prompt_format import format_completion
from skinr1_pipeline.settings import load_settings
from skinr1_pipeline.storage.run_folders import mark_complete, open_run_folder
from skinr1_pipeline_tests.tiny_models import tiny_base_and_adapter


def _explain(completion: str, knowledge):
    taxonomy, ddx, kb = knowledge
    return explain(completion, image="x.jpg", model="m", taxonomy=taxonomy, ddx=ddx, knowledge=kb)


def test_answer_is_placed_in_taxonomy_with_its_differentials(knowledge) -> None:
    completion = format_completion(
        "Pearly border with arborizing vessels. Unlike melanoma there is no pigment network.",
        "basal cell carcinoma; status: malignant",
    )
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
    run = open_run_folder(tmp_path / "models" / "sft", "run-1")
    (run / "adapter").mkdir()
    (run / "adapter" / "adapter_config.json").write_text("{}")
    mark_complete(run, "run-1")
    with pytest.raises(DiagnoseError, match="base model .* has no config.json"):
        resolve_model(None, settings)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "config.json").write_text("{}")
    source = resolve_model(str(tmp_path / "full"), settings)
    assert source.adapter_dir is None and source.base_dir == tmp_path / "full"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    """A pipeline home holding a tiny base model and an SFT adapter where the pipeline would leave them (sealed run
    folders, `latest` naming each)."""
    root = tmp_path_factory.mktemp("home")
    base, sft = open_run_folder(root / "models" / "base", "run-1"), open_run_folder(root / "models" / "sft", "run-1")
    tiny_base_and_adapter(base, sft / "adapter")
    mark_complete(base, "run-1"), mark_complete(sft, "run-1")
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


@pytest.mark.slow  # builds a tiny base model and adapter
def test_the_home_adapter_is_the_newest_complete_run_folder_not_whatever_a_link_names(tmp_path: Path) -> None:
    """Like the pipeline's own hand-over (`run_folders.latest_complete`): an unsealed newer folder (a killed run)
    is passed over, and a missing `latest` link does not hide the sealed one."""
    settings = load_settings({"SKINR1_HOME": str(tmp_path), "SKINR1_PROFILE": "demo"})
    base, sft = (
        open_run_folder(tmp_path / "models" / "base", "run-1"),
        open_run_folder(tmp_path / "models" / "sft", "run-1"),
    )
    tiny_base_and_adapter(base, sft / "adapter")
    mark_complete(base, "run-1"), mark_complete(sft, "run-1")
    killed = open_run_folder(tmp_path / "models" / "sft", "run-2")
    shutil.copytree(sft / "adapter", killed / "adapter")
    (tmp_path / "models" / "sft" / "latest").unlink()
    source = resolve_model(None, settings)
    assert (source.base_dir, source.adapter_dir) == (base, sft / "adapter")


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow  # generates with a tiny model through the CLI, twice
def test_cli_diagnoses_with_the_home_adapter_and_the_registered_model(home_env: Path, capsys) -> None:
    image = str(home_env / "lesion.jpg")
    code, out, _ = _run(["diagnose", image, "--max-new-tokens", "8"], capsys)
    assert f"sft adapter {home_env / 'models' / 'sft' / 'run-1' / 'adapter'}" in out
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
        info = log_skinr1_model(
            home_env / "models" / "base" / "latest",
            home_env / "models" / "sft" / "latest" / "adapter",
            name="m",
            input_example_image_path=image,
            model_config={"max_new_tokens": 4, "device": "cpu"},
        )
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


def _header_only_png(path: Path, width: int, height: int) -> Path:
    """A PNG claiming `width`x`height` and carrying no pixels (valid CRCs): decoding it fails, refusing it is cheap."""
    import struct
    import zlib

    def chunk(ctype: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + ctype + payload + struct.pack(">I", zlib.crc32(ctype + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width,height", [(8_000, 7_000), (20_000, 20_000)])
def test_cli_refuses_a_decompression_bomb_naming_file_pixels_and_limit(home_env: Path, capsys, width, height) -> None:
    """20000x20000 used to escape as an uncaught DecompressionBombError (Pillow's own limit), 8000x7000 to be
    decoded; both are now refused from the header with the file, its pixels and the limit."""
    bomb = _header_only_png(home_env / f"bomb_{width}.png", width, height)
    code, _, err = _run(["diagnose", str(bomb)], capsys)
    assert code == 2 and str(bomb) in err
    assert f"{width * height:,} pixels" in err and "limit of 50,000,000" in err  # the data layer's default


# ----------------------------------------------------------------------------------- registry downloads


def _write_mlmodel(folder: Path, base: str, adapter: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "MLmodel").write_text(
        "flavors:\n  python_function:\n    artifacts:\n"
        f"      base_model: {{path: '{base}'}}\n      adapter: {{path: '{adapter}'}}\n",
        "utf-8",
    )


def _complete_download(folder: Path) -> None:
    _write_mlmodel(folder, "artifacts/base", "artifacts/adapter")
    for name in ("base", "adapter"):
        (folder / "artifacts" / name).mkdir(parents=True)
        (folder / "artifacts" / name / "weights.bin").write_bytes(b"w")


@pytest.fixture()
def fake_registry(tmp_path: Path, monkeypatch):
    """The MLflow calls `_from_registry` makes, faked: each download runs the test's writer into the given folder."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    from types import SimpleNamespace

    state = {"writer": _complete_download, "calls": []}
    monkeypatch.setattr(mlflow.models, "get_model_info", lambda uri: SimpleNamespace(model_uuid="uuid-1"))

    def download(artifact_uri: str, dst_path: str) -> str:
        state["calls"].append(dst_path)
        state["writer"](Path(dst_path))
        return dst_path

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download)
    yield state, load_settings({"SKINR1_HOME": str(tmp_path / "home")})
    mlflow.set_tracking_uri(saved)


@pytest.mark.parametrize("bad", ["../../../victim", "artifacts/../../../victim", "ABSOLUTE", "artifacts/link"])
def test_registry_artifact_path_leaving_the_download_is_refused(fake_registry, tmp_path: Path, bad: str) -> None:
    state, settings = fake_registry
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "config.json").write_text("{}")
    path = str(victim) if bad == "ABSOLUTE" else bad

    def crafted(folder: Path) -> None:
        _complete_download(folder)
        os.symlink(victim, folder / "artifacts" / "link")
        _write_mlmodel(folder, path, "artifacts/adapter")

    state["writer"] = crafted
    with pytest.raises(DiagnoseError, match="'base_model' path .* leads outside the downloaded model folder"):
        resolve_model("models:/skinr1-grpo@champion", settings)


def test_registry_artifacts_inside_the_download_resolve(fake_registry) -> None:
    state, settings = fake_registry
    source = resolve_model("champion", settings)
    cache = (settings.home / "registry_cache" / "uuid-1").resolve()
    assert source.base_dir == cache / "artifacts" / "base" and source.adapter_dir == cache / "artifacts" / "adapter"
    assert (source.base_dir / "weights.bin").is_file()


def test_registry_cache_counts_only_a_finished_download(fake_registry) -> None:
    """A cache folder used to count as complete once MLmodel existed, the first file a download writes."""
    state, settings = fake_registry
    cache = settings.home / "registry_cache" / "uuid-1"
    _write_mlmodel(cache, "artifacts/base", "artifacts/adapter")  # what a killed download left: no weights
    source = resolve_model("champion", settings)
    assert len(state["calls"]) == 1 and (source.base_dir / "weights.bin").is_file()
    resolve_model("champion", settings)
    assert len(state["calls"]) == 1  # finished (marked) downloads are reused

    def killed(folder: Path) -> None:
        _write_mlmodel(folder, "artifacts/base", "artifacts/adapter")
        raise KeyboardInterrupt  # the user stops it half-way

    shutil.rmtree(cache)
    state["writer"] = killed
    with pytest.raises(KeyboardInterrupt):
        resolve_model("champion", settings)
    assert not cache.exists() and list(cache.parent.iterdir()) == []  # nothing that could pass for a download
    state["writer"] = _complete_download
    assert (resolve_model("champion", settings).base_dir / "weights.bin").is_file()
