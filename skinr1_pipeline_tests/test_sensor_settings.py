"""Folder fingerprints, the dataset-change sensor and profile settings."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest

from skinr1_pipeline.data.fingerprint import folder_fingerprint
from skinr1_pipeline.defs.sensors import build_dataset_change_sensor
from skinr1_pipeline.settings import Settings, SettingsError, load_settings


def write(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_fingerprint_changes_on_add_remove_and_rewrite(tmp_path):
    write(tmp_path / "a" / "img1.jpg", b"one")
    first = folder_fingerprint(tmp_path)
    assert first == folder_fingerprint(tmp_path)
    write(tmp_path / "a" / "img2.jpg", b"two")
    second = folder_fingerprint(tmp_path)
    assert second != first
    stat = (tmp_path / "a" / "img2.jpg").stat()
    write(tmp_path / "a" / "img2.jpg", b"TWO")  # same size, new content
    os.utime(tmp_path / "a" / "img2.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert folder_fingerprint(tmp_path) == second  # shallow mode trusts size + mtime
    (tmp_path / "a" / "img1.jpg").unlink()
    assert folder_fingerprint(tmp_path) not in {first, second}
    assert folder_fingerprint(tmp_path / "missing") is None


def test_deep_fingerprint_sees_same_size_rewrites(tmp_path):
    write(tmp_path / "x.png", b"abc")
    before = folder_fingerprint(tmp_path, deep=True)
    stat = (tmp_path / "x.png").stat()
    write(tmp_path / "x.png", b"abd")
    os.utime(tmp_path / "x.png", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert folder_fingerprint(tmp_path, deep=True) != before


def test_sensor_requests_only_changed_partitions(tmp_path):
    roots = {"ham10000": tmp_path / "ham", "pad_ufes_20": tmp_path / "pad", "derm7pt": tmp_path / "d7"}
    write(roots["ham10000"] / "m.csv")
    write(roots["pad_ufes_20"] / "m.csv")
    settings = Settings(profile="gpu", home=tmp_path / "home", dataset_roots=roots)
    sensor = build_dataset_change_sensor(settings, dg.AssetKey("raw_datasets"))

    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(list(roots)))
    def raw_datasets() -> None: ...

    defs = dg.Definitions(assets=[raw_datasets], sensors=[sensor])

    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor=None):
        return sensor.evaluate_tick(dg.build_sensor_context(cursor=cursor, definitions=defs, instance=instance))

    first = tick()
    assert sorted(r.partition_key for r in first.run_requests) == ["ham10000", "pad_ufes_20"]
    cursor = first.cursor
    assert set(json.loads(cursor)) == {"ham10000", "pad_ufes_20"}  # derm7pt folder does not exist yet

    quiet = tick(cursor)
    assert not quiet.run_requests
    assert "derm7pt" in quiet.skip_message

    time.sleep(0.01)
    write(roots["pad_ufes_20"] / "images" / "new.png", b"new")
    changed = tick(quiet.cursor)
    assert [r.partition_key for r in changed.run_requests] == ["pad_ufes_20"]
    assert changed.run_requests[0].tags["skinr1/trigger"] == "dataset_change"


def test_settings_reject_unknown_profile_and_name_allowed_values():
    with pytest.raises(SettingsError, match="allowed: demo, gpu"):
        load_settings({"SKINR1_PROFILE": "tpu"})


def test_gpu_profile_requires_a_config_file():
    with pytest.raises(SettingsError, match="SKINR1_CONFIG"):
        load_settings({"SKINR1_PROFILE": "gpu"})


def test_config_file_with_unknown_dataset_names_the_field(tmp_path):
    config = tmp_path / "skinr1.yaml"
    config.write_text("datasets:\n  ham10000: /data/ham\n  imagenet: /data/imagenet\n")
    with pytest.raises(SettingsError, match=r"datasets\.imagenet .*allowed: .*ham10000"):
        load_settings({"SKINR1_PROFILE": "gpu", "SKINR1_CONFIG": str(config)})


def test_gpu_settings_read_dataset_roots_and_default_tracking_store(tmp_path):
    config = tmp_path / "skinr1.yaml"
    config.write_text(
        f"datasets:\n  pad_ufes_20: {tmp_path / 'pad'}\n  ham10000: {tmp_path / 'ham'}\n"
        f"model_dir: {tmp_path / 'qwen'}\nood:\n  sources: [pad_ufes_20]\nlauncher: accelerate\n"
    )
    settings = load_settings(
        {"SKINR1_PROFILE": "gpu", "SKINR1_CONFIG": str(config), "SKINR1_HOME": str(tmp_path / "h")}
    )
    assert settings.datasets == ("ham10000", "pad_ufes_20")
    assert settings.base_model_dir == tmp_path / "qwen" and settings.ood_sources == ("pad_ufes_20",)
    assert settings.ood_modalities == () and settings.compute.launcher == "accelerate"
    assert settings.dataset_root("ham10000") == tmp_path / "ham"
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path / 'h' / 'mlflow' / 'mlflow.db'}"
    with pytest.raises(SettingsError, match="derm7pt"):
        settings.dataset_root("derm7pt")


@pytest.mark.parametrize(
    "body, field",
    [
        ("datasets: {}\n", "model_dir"),
        ("model_dir: /m\nlauncher: mpirun\n", "launcher"),
        ("model_dir: /m\ncompute:\n  kind: slurm\n", "compute.kind"),
        ("model_dir: /m\ncompute:\n  kind: ray\n", "compute.address"),
        ("model_dir: /m\ncompute:\n  gpus: 8\n", "compute.gpus"),
        ("model_dir: /m\ncompute:\n  processes: 4\n", "launcher=python"),
        ("model_dir: /m\nood:\n  modalities: clinical\n", "ood.modalities"),
        ("model_dir: /m\nteacher:\n  generator: gpt\n", "teacher.generator"),
        ("model_dir: /m\nteacher:\n  generator: openai\n", "teacher.base_url"),
        ("model_dir: /m\nteacher:\n  temperature: 0\n", "teacher.temperature"),
    ],
)
def test_gpu_settings_name_the_bad_field(tmp_path, body, field):
    config = tmp_path / "skinr1.yaml"
    config.write_text(body)
    with pytest.raises(SettingsError, match=field.replace(".", r"\.")):
        load_settings({"SKINR1_PROFILE": "gpu", "SKINR1_CONFIG": str(config), "SKINR1_HOME": str(tmp_path)})


def test_teacher_follows_the_profile_unless_the_config_names_one(tmp_path):
    """The authors' rationales come from an LLM teacher: gpu defaults to the base model through vLLM, demo to the
    template; an OpenAI-compatible endpoint (e.g. a hosted model) is a config entry away."""
    from skinr1_pipeline.defs.synthesis_assets import SynthesisConfig, teacher_choice

    demo = load_settings({"SKINR1_HOME": str(tmp_path)}).teacher
    assert (demo.generator, demo.model_dir) == ("template", "")
    config = tmp_path / "skinr1.yaml"
    config.write_text(f"model_dir: {tmp_path / 'qwen'}\n")
    gpu = load_settings({"SKINR1_PROFILE": "gpu", "SKINR1_CONFIG": str(config), "SKINR1_HOME": str(tmp_path)}).teacher
    assert (gpu.generator, gpu.model_dir) == ("vllm", str(tmp_path / "qwen"))
    config.write_text(
        f"model_dir: {tmp_path / 'qwen'}\nteacher:\n  generator: openai\n"
        "  base_url: http://127.0.0.1:8000/v1\n  api_model: teacher-72b\n"
    )
    hosted = load_settings({"SKINR1_PROFILE": "gpu", "SKINR1_CONFIG": str(config), "SKINR1_HOME": str(tmp_path)})
    assert (hosted.teacher.generator, hosted.teacher.api_model, hosted.teacher.model_dir) == (
        "openai",
        "teacher-72b",
        "",
    )
    # The asset config wins field by field; switching generator does not inherit the other generator's fields.
    assert teacher_choice(SynthesisConfig(), gpu) == gpu
    assert teacher_choice(SynthesisConfig(generator="template"), gpu).model_dir == ""
    assert teacher_choice(SynthesisConfig(teacher_model_dir="/other"), gpu).model_dir == "/other"
    assert teacher_choice(SynthesisConfig(api_model="small"), hosted.teacher).base_url == "http://127.0.0.1:8000/v1"


def test_demo_settings_cover_three_real_formats(tmp_path):
    settings = load_settings({"SKINR1_HOME": str(tmp_path)})
    assert settings.profile == "demo"
    assert settings.datasets == ("ham10000", "pad_ufes_20", "derm7pt")
    assert settings.dataset_root("pad_ufes_20") == tmp_path / "demo_sources" / "PAD-UFES-20"
    assert settings.ood_modalities == ("clinical",) and settings.base_model_dir is None
    with pytest.raises(SettingsError, match="integer"):
        load_settings({"SKINR1_DEMO_SEED": "abc"})


def test_sensor_first_look_skips_folders_ingested_since_they_last_changed(tmp_path):
    """A fresh cursor (new instance, `make ui` after `make demo`) re-ingests only folders changed after their last
    ingest, or ingested by another code version."""
    roots = {"ham10000": tmp_path / "ham", "pad_ufes_20": tmp_path / "pad", "derm7pt": tmp_path / "d7"}
    for root in roots.values():
        write(root / "m.csv")
    settings = Settings(profile="gpu", home=tmp_path / "home", dataset_roots=roots)

    def definitions(code_version: str):
        @dg.asset(partitions_def=dg.StaticPartitionsDefinition(list(roots)), code_version=code_version)
        def raw_datasets() -> None: ...

        sensor = build_dataset_change_sensor(settings, dg.AssetKey("raw_datasets"))
        return dg.Definitions(assets=[raw_datasets], sensors=[sensor]), raw_datasets, sensor

    defs, asset, sensor = definitions("v1")
    with dg.instance_for_test() as instance:
        for dataset in ("ham10000", "pad_ufes_20"):
            assert dg.materialize([asset], instance=instance, partition_key=dataset).success
        later = time.time() + 5
        os.utime(roots["pad_ufes_20"] / "m.csv", (later, later))  # changed after its ingest
        first = sensor.evaluate_tick(dg.build_sensor_context(definitions=defs, instance=instance))
        assert sorted(r.partition_key for r in first.run_requests) == ["derm7pt", "pad_ufes_20"]
        assert set(json.loads(first.cursor)) == set(roots)

        defs, _, sensor = definitions("v2")  # new ingest code: every folder again
        context = dg.build_sensor_context(cursor=first.cursor, definitions=defs, instance=instance)
        again = sensor.evaluate_tick(context)
        assert sorted(r.partition_key for r in again.run_requests) == sorted(roots)
