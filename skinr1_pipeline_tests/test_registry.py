"""Registry promotion rule against a real local (sqlite) registry, and the Skin-R1 pyfunc logged, loaded and run."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

mlflow = pytest.importorskip("mlflow")

from skinr1_pipeline.modeling.prompt_format import build_mcq_prompt, build_open_prompt  # noqa: E402
from skinr1_pipeline.tracking.pyfunc_model import (  # noqa: E402
    BASE_DIR_CONFIG,
    BASE_REF_FILE,
    OUTPUT_COLUMNS,
    BaseModelError,
    base_model_digest,
    completion_row,
    decode_image,
    log_skinr1_model,
    read_base_reference,
)
from skinr1_pipeline.tracking.registry import (  # noqa: E402
    CANDIDATE,
    CHAMPION,
    PREVIOUS_CHAMPION,
    decide_and_promote,
    promote,
    promotion_decision,
    register_candidate,
)
from skinr1_pipeline_tests.tiny_models import tiny_base_and_adapter  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def _restore_tracking_uri():
    """register_candidate / the pyfunc test point the process at a tmp store; put the caller's setting back."""
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    mlflow.set_tracking_uri(saved)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> tuple[str, str, str]:
    """(tracking uri, experiment id, root) of a fresh sqlite store with artifacts under the same tmp dir."""
    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root}/mlflow.db"
    client = mlflow.MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("registry-test", artifact_location=(root / "artifacts").as_uri())
    return uri, exp, str(root)


def _model_run(store, metrics: dict[str, float] | None = None) -> str:
    """A run holding a stand-in model directory (an MLmodel file is all registration needs); returns runs:/ uri."""
    uri, exp, _ = store
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = client.create_run(exp).info.run_id
    client.log_text(run_id, "flavors: {}\n", "model/MLmodel")
    for key, value in (metrics or {}).items():
        client.log_metric(run_id, key, value)
    client.set_terminated(run_id)
    return f"runs:/{run_id}/model"


def _candidate(store, name: str, accuracy: float | None) -> str:
    tags = {"stage": "rl"} if accuracy is None else {"in_domain_accuracy": accuracy, "stage": "rl"}
    return register_candidate(_model_run(store), name, tags=tags, tracking_uri=store[0])


@pytest.mark.slow  # a real MLflow (sqlite) registry
def test_promotion_rule_no_champion_worse_better_tie(store) -> None:
    uri = store[0]
    client = mlflow.MlflowClient(tracking_uri=uri)
    name = "skinr1-rule"

    v1 = _candidate(store, name, 0.60)
    assert str(client.get_model_version_by_alias(name, CANDIDATE).version) == v1
    first = decide_and_promote(client, name, v1)
    assert first.promote and first.champion_version is None and "no champion" in first.reason
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == v1

    v2 = _candidate(store, name, 0.55)  # worse
    assert str(client.get_model_version_by_alias(name, CANDIDATE).version) == v2
    worse = decide_and_promote(client, name, v2)
    assert not worse.promote and worse.champion_version == v1 and worse.champion_value == pytest.approx(0.60)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == v1
    assert client.get_model_version(name, v2).tags["promotion_decision"] == "kept champion"

    v3 = _candidate(store, name, 0.60)  # tie
    tie = decide_and_promote(client, name, v3)
    assert not tie.promote and "tied" in tie.reason
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == v1

    v4 = _candidate(store, name, 0.65)  # better
    assert not promotion_decision(client, name, v4, min_delta=0.1).promote  # not better by enough
    better = decide_and_promote(client, name, v4)
    assert better.promote and better.candidate_value == pytest.approx(0.65)
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == v4
    assert str(client.get_model_version_by_alias(name, PREVIOUS_CHAMPION).version) == v1
    assert promotion_decision(client, name, v4).reason == "the candidate already is the champion"


@pytest.mark.slow  # a real MLflow (sqlite) registry
def test_required_evidence_blocks_promotion_even_without_a_champion(store) -> None:
    """A first model at 0.32 in-domain used to become champion although a blind guess scored 0.43."""
    uri = store[0]
    client = mlflow.MlflowClient(tracking_uri=uri)
    name = "skinr1-evidence"
    required = ("beats_blind_guessers", "beats_shuffled_image")
    blind = register_candidate(
        _model_run(store),
        name,
        tracking_uri=uri,
        tags={"in_domain_accuracy": 0.32, "beats_blind_guessers": False, "beats_shuffled_image": True},
    )
    decision = decide_and_promote(client, name, blind, required_tags=required)
    assert not decision.promote and "beats_blind_guessers" in decision.reason
    assert "beats_shuffled_image" not in decision.reason.split("evidence:")[1]
    assert client.get_model_version(name, blind).tags["promotion_decision"] == "kept champion"
    untagged = _candidate(store, name, 0.9)  # no evidence recorded at all
    assert "missing" in promotion_decision(client, name, untagged, required_tags=required).reason
    honest = register_candidate(
        _model_run(store),
        name,
        tracking_uri=uri,
        tags={"in_domain_accuracy": 0.5, "beats_blind_guessers": True, "beats_shuffled_image": True},
    )
    assert decide_and_promote(client, name, honest, required_tags=required).promote
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == honest


@pytest.mark.slow  # a real MLflow (sqlite) registry
def test_metric_from_source_run_and_missing_metric(store) -> None:
    uri = store[0]
    client = mlflow.MlflowClient(tracking_uri=uri)
    name = "skinr1-run-metric"
    v1 = register_candidate(
        _model_run(store, {"in_domain_accuracy": 0.4, "malignant_miss_rate": 0.3}), name, tracking_uri=uri
    )
    decision = promotion_decision(client, name, v1)
    assert decision.promote and decision.candidate_value == pytest.approx(0.4) and "source run" in decision.reason
    promote(client, name, v1)

    v2 = _candidate(store, name, None)  # no metric anywhere: never promoted
    missing = promotion_decision(client, name, v2)
    assert not missing.promote and "has no in_domain_accuracy" in missing.reason

    v3 = register_candidate(_model_run(store, {"malignant_miss_rate": 0.2}), name, tracking_uri=uri)
    lower = promotion_decision(client, name, v3, "malignant_miss_rate", higher_is_better=False)
    assert lower.promote and lower.champion_value == pytest.approx(0.3)


# ---- pyfunc ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_with_adapter(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(base dir, adapter dir, example image) for a tiny random Qwen2.5-VL with a LoRA on q_proj/v_proj."""
    root = tmp_path_factory.mktemp("tiny")
    base, adapter = tiny_base_and_adapter(root / "base", root / "adapter")
    image = root / "lesion.jpg"
    Image.new("RGB", (300, 200), (150, 90, 70)).save(image)
    return base, adapter, image


def _b64(color: tuple[int, int, int], fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", (80, 60), color).save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def test_decode_image_accepts_paths_base64_and_data_uris(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.new("RGB", (10, 12), (1, 2, 3)).save(path)
    assert decode_image(str(path)).size == (10, 12)
    assert decode_image(_b64((9, 9, 9), "JPEG")).size == (80, 60)
    assert decode_image("data:image/png;base64," + _b64((9, 9, 9))).mode == "RGB"
    with pytest.raises(ValueError, match="base64"):
        decode_image("not an image!")
    with pytest.raises(ValueError, match="could not be decoded"):
        decode_image(base64.b64encode(b"plain text").decode())


def test_completion_row_parses_mcq_from_prompt_options() -> None:
    prompt = build_mcq_prompt("Q?", ["melanoma", "melanocytic nevus"])
    row = completion_row("<thinking>blue-white veil</thinking><diagnosis>A; status: malignant</diagnosis>", prompt)
    assert row["format_ok"] and row["option_letter"] == "A" and row["status"] == "malignant"
    assert row["rationale"] == "blue-white veil"
    bad = completion_row("just text", build_open_prompt())
    assert not bad["format_ok"] and bad["parse_error"] and bad["diagnosis"] is None


@pytest.mark.slow  # logs, loads and runs a tiny model through MLflow
def test_pyfunc_log_load_predict_and_register(store, tiny_with_adapter) -> None:
    uri, exp, _ = store
    base, adapter, image = tiny_with_adapter
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=exp):
        info = log_skinr1_model(
            base,
            adapter,
            name="skinr1",
            input_example_image_path=image,
            model_config={"max_new_tokens": 4, "device": "cpu"},
        )
    assert info.signature is not None
    assert [c.name for c in info.signature.inputs.inputs] == ["image", "prompt"]
    outputs = {c.name: c.type.name for c in info.signature.outputs.inputs}
    assert outputs == {**{c: "string" for c in OUTPUT_COLUMNS}, "format_ok": "boolean"}
    assert info.signature.params is not None and info.signature.params.to_dict()[0]["name"] == "max_new_tokens"
    assert info.saved_input_example_info is not None

    loaded = mlflow.pyfunc.load_model(info.model_uri)
    frame = pd.DataFrame(
        {
            "image": [str(image), _b64((200, 180, 160))],
            "prompt": [build_open_prompt(), build_mcq_prompt("Q?", ["melanoma", "melanocytic nevus"])],
        }
    )
    out = loaded.predict(frame, params={"max_new_tokens": 3})
    assert list(out.columns) == list(OUTPUT_COLUMNS) and len(out) == 2
    assert out["completion"].map(lambda c: isinstance(c, str)).all()
    assert out["format_ok"].map(lambda v: isinstance(v, bool)).all()  # random weights: content is noise

    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    assert len(list(local.glob("artifacts/*/adapter_config.json"))) == 1  # copied under the source dir's name
    assert not list(local.rglob("config.json"))  # the base is referenced, not copied
    assert read_base_reference(local / "artifacts" / BASE_REF_FILE)["path"] == str(base.resolve())
    assert not list(local.glob("code/**/__pycache__"))
    assert (local / "code" / "skinr1_pipeline" / "tracking" / "pyfunc_model.py").is_file()
    requirements = (local / "requirements.txt").read_text()
    assert "transformers==" in requirements and "peft==" in requirements

    version = register_candidate(info.model_uri, "skinr1-pyfunc", tags={"in_domain_accuracy": 0.1}, tracking_uri=uri)
    client = mlflow.MlflowClient(tracking_uri=uri)
    assert str(client.get_model_version_by_alias("skinr1-pyfunc", CANDIDATE).version) == version
    again = mlflow.pyfunc.load_model(f"models:/skinr1-pyfunc@{CANDIDATE}")
    assert len(again.predict(frame.iloc[:1])) == 1


# ---- base model referenced, not copied ------------------------------------------------------------------------


def test_base_digest_samples_large_files_and_ignores_markers(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "qwen2_5_vl"}')
    weights = model / "model.safetensors"
    weights.write_bytes(bytes(8 << 20))  # 8 MiB: hashed from three 1 MiB samples, not read whole
    first = base_model_digest(model)
    assert first["files"] == 2 and first["bytes"] == (8 << 20) + len((model / "config.json").read_bytes())
    (model / ".complete").write_text("run marker")  # run-folder markers are not part of the model
    (model / "notes.md").write_text("a person's notes")
    assert base_model_digest(model) == first
    with weights.open("r+b") as fh:  # a retrained model: the middle of the weights changed
        fh.seek(4 << 20)
        fh.write(b"\x01")
    assert base_model_digest(model)["digest"] != first["digest"]


@pytest.mark.slow  # a tiny model through a real MLflow registry
def test_registered_model_resolves_its_referenced_base_and_refuses_a_missing_or_different_one(
    store, tmp_path: Path
) -> None:
    """Registration used to copy the whole base model into the artifacts (about 15 GB for the 7B model)."""
    uri, exp, _ = store
    base, adapter = tiny_base_and_adapter(tmp_path / "base", tmp_path / "adapter")
    image = tmp_path / "lesion.png"
    Image.new("RGB", (64, 48), (150, 90, 70)).save(image)
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run(experiment_id=exp):
        info = log_skinr1_model(
            base,
            adapter,
            name="referenced",
            input_example_image_path=image,
            model_config={"max_new_tokens": 2, "device": "cpu"},
        )
    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    stored = sum(p.stat().st_size for p in (local / "artifacts").rglob("*") if p.is_file())
    adapter_bytes = sum(p.stat().st_size for p in adapter.rglob("*") if p.is_file())
    assert stored < adapter_bytes + 4096 < base_model_digest(base)["bytes"]  # adapter + a small reference file
    reference = info.metadata["skinr1_base_model"]
    assert reference["digest"] == base_model_digest(base)["digest"] and reference["uri"] == base.resolve().as_uri()

    copy = tmp_path / "moved_base"
    shutil.copytree(base, copy)
    shutil.move(str(base), str(tmp_path / "elsewhere"))  # the recorded base is gone
    with pytest.raises(BaseModelError, match="missing: no config.json in .*base.*expected digest sha256:"):
        mlflow.pyfunc.load_model(info.model_uri)
    frame = pd.DataFrame({"image": [str(image)], "prompt": [build_open_prompt()]})
    moved = mlflow.pyfunc.load_model(info.model_uri, model_config={BASE_DIR_CONFIG: str(copy)})
    assert len(moved.predict(frame, params={"max_new_tokens": 2})) == 1  # an identical copy elsewhere serves

    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "rope_theta": 1.0}))  # a different base
    with pytest.raises(BaseModelError, match="not the one this adapter was trained on: digest sha256:"):
        mlflow.pyfunc.load_model(info.model_uri, model_config={BASE_DIR_CONFIG: str(copy)})


def test_diagnose_reads_the_reference_inside_the_download_and_checks_the_base(tmp_path: Path) -> None:
    from skinr1_pipeline.diagnose import DiagnoseError, model_source

    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    download = tmp_path / "download"
    (download / "artifacts" / "adapter").mkdir(parents=True)
    reference = {"path": str(base), "digest": base_model_digest(base)["digest"]}
    (download / "artifacts" / BASE_REF_FILE).write_text(json.dumps(reference))
    (download / "MLmodel").write_text(
        "flavors:\n  python_function:\n    artifacts:\n"
        f"      base_model_ref: {{path: 'artifacts/{BASE_REF_FILE}'}}\n      adapter: {{path: 'artifacts/adapter'}}\n"
    )
    source = model_source(download, "models:/m@champion", "m")
    assert source.base_dir == base and source.adapter_dir == (download / "artifacts" / "adapter").resolve()
    (base / "config.json").write_text('{"changed": true}')
    with pytest.raises(DiagnoseError, match="models:/m@champion: the base model at .* is not the one"):
        model_source(download, "models:/m@champion", "m")
    restored = tmp_path / "restored"
    restored.mkdir()
    (restored / "config.json").write_text("{}")
    assert model_source(download, "u", "m", base_override=restored).base_dir == restored
