"""The `automation:` and `scale:` settings, the conditions and sensors they turn into, and code versions derived from
source (test_daemon_automation.py runs all of it under the real daemon)."""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap

import dagster as dg
import pytest

from skinr1_pipeline.definitions import build_definitions
from skinr1_pipeline.defs import code_versions
from skinr1_pipeline.defs.automation import PresetAutomationSensor, follows_inputs, trigger_ignores
from skinr1_pipeline.settings import AutomationSettings, SettingsError, load_settings

TRAINING = {
    "skin_rationale_trajectories",
    "rl_mcq_dataset",
    "base_model",
    "sft_checkpoint",
    "grpo_checkpoint",
    "rl_only_checkpoint",
}
EVALUATION = {"eval_suites", "variant_evaluations", "ablation_table", "evaluation_reports"}
INGEST = {"taxonomy_graph", "ddx_graph", "label_mapping", "knowledge_base", "unified_samples"}


def gpu_settings(tmp_path, body: str = ""):
    config = tmp_path / "skinr1.yaml"
    config.write_text(f"model_dir: {tmp_path / 'qwen'}\ndatasets:\n  ham10000: {tmp_path / 'ham'}\n{body}")
    return load_settings({"SKINR1_PROFILE": "gpu", "SKINR1_CONFIG": str(config), "SKINR1_HOME": str(tmp_path / "h")})


def demo_settings(tmp_path, body: str = ""):
    env = {"SKINR1_HOME": str(tmp_path / "h")}
    if body:
        (tmp_path / "demo.yaml").write_text(body)
        env["SKINR1_CONFIG"] = str(tmp_path / "demo.yaml")
    return load_settings(env)


def conditions(defs: dg.Definitions) -> dict[str, str | None]:
    graph = defs.resolve_asset_graph()
    return {
        k.to_user_string(): (
            graph.get(k).automation_condition.get_label() if graph.get(k).automation_condition else None
        )
        for k in graph.get_all_asset_keys()
    }


def sensors(defs: dg.Definitions) -> dict[str, dg.DefaultSensorStatus]:
    return {s.name: s.default_status for s in defs.get_repository_def().sensor_defs}


def test_profile_defaults_demo_follows_everything_gpu_trains_on_approval(tmp_path):
    assert demo_settings(tmp_path).automation == AutomationSettings(ingest=True, training=True, evaluation=True)
    assert gpu_settings(tmp_path).automation == AutomationSettings(ingest=True, training=False, evaluation=True)
    assert gpu_settings(
        tmp_path, "automation:\n  training: true\n  interval_seconds: 5\n"
    ).automation == AutomationSettings(training=True, interval_seconds=5)
    assert demo_settings(tmp_path, "scale: toy\n").scale == "toy" and demo_settings(tmp_path).scale == "full"


@pytest.mark.parametrize(
    "body, message",
    [
        ("automation:\n  retrain: true\n", r"automation\.retrain is not an automation setting; allowed: .*training"),
        ("automation:\n  training: 'no'\n", r"automation\.training must be true or false"),
        ("automation:\n  interval_seconds: 0\n", r"automation\.interval_seconds=0 must be an integer >= 1"),
        ("automation: [ingest]\n", r"automation must be a mapping"),
        ("scale: tiny\n", r"scale='tiny' is not allowed; allowed: full, toy"),
    ],
)
def test_automation_and_scale_settings_name_the_bad_key(tmp_path, body, message):
    with pytest.raises(SettingsError, match=message):
        demo_settings(tmp_path, body)


def test_scale_is_a_demo_setting(tmp_path):
    with pytest.raises(SettingsError, match="scale is read on the demo profile only"):
        gpu_settings(tmp_path, "scale: toy\n")


def test_demo_definitions_automate_every_stage_with_both_sensors_running(tmp_path):
    defs = build_definitions(demo_settings(tmp_path))
    by_asset = conditions(defs)
    assert {k for k, v in by_asset.items() if v == "follows_inputs"} == INGEST | TRAINING | EVALUATION
    # The generator would overwrite edited folders; raw_datasets belongs to the dataset sensor alone.
    assert by_asset["demo_source_data"] is None and by_asset["raw_datasets"] is None
    assert sensors(defs) == {
        "dataset_folder_changes": dg.DefaultSensorStatus.RUNNING,
        "pipeline_automation": dg.DefaultSensorStatus.RUNNING,
    }
    automation = next(s for s in defs.get_repository_def().sensor_defs if s.name == "pipeline_automation")
    assert isinstance(automation, PresetAutomationSensor)  # survives Definitions' copies (with_attributes)
    targeted = automation.asset_selection.resolve(defs.resolve_asset_graph())
    assert {k.to_user_string() for k in targeted} == INGEST | TRAINING | EVALUATION


def test_gpu_definitions_leave_training_to_a_person_and_switches_turn_sensors_off(tmp_path):
    by_asset = conditions(build_definitions(gpu_settings(tmp_path)))
    assert all(by_asset[name] is None for name in TRAINING)
    assert all(by_asset[name] == "follows_inputs" for name in INGEST | EVALUATION)
    quiet = build_definitions(gpu_settings(tmp_path, "automation:\n  ingest: false\n  evaluation: false\n"))
    assert all(v is None for v in conditions(quiet).values())
    assert sensors(quiet) == {"dataset_folder_changes": dg.DefaultSensorStatus.STOPPED}


def reacts_to(settings) -> dict[str, set[str]]:
    """Per automated asset, the inputs whose changes trigger it (the rest reach it through another input)."""
    graph = build_definitions(settings).resolve_asset_graph()
    parents = {k: set(graph.get(k).parent_keys) for k in graph.get_all_asset_keys()}
    automated = {k for k in parents if graph.get(k).automation_condition is not None}
    ignores = trigger_ignores(parents, automated)
    return {k.to_user_string(): {p.to_user_string() for p in parents[k] - ignores[k]} for k in automated}


def test_each_asset_waits_for_the_last_of_its_inputs(tmp_path):
    """Reacting to an input that also feeds another input would run the asset twice (before and after the other
    input re-ran); across the variant partitions that is what `eager()` does to the ablation table and report."""
    demo = reacts_to(demo_settings(tmp_path))
    assert demo["ablation_table"] == {"variant_evaluations"}
    assert demo["evaluation_reports"] == {"ablation_table"}
    assert demo["variant_evaluations"] == {"eval_suites", "grpo_checkpoint", "rl_only_checkpoint"}
    assert demo["grpo_checkpoint"] == {"sft_checkpoint"}
    # Training waits for a person on gpu: a new SFT adapter reaches the evaluation directly, not through GRPO.
    gpu = reacts_to(gpu_settings(tmp_path))
    assert {"sft_checkpoint", "base_model", "grpo_checkpoint"} <= gpu["variant_evaluations"]


@pytest.mark.slow  # materializes Dagster assets four times
def test_follows_inputs_reruns_on_new_data_not_on_a_rematerialization_with_the_same_data():
    """The touch case at condition level: upstream re-materialized with an unchanged data version requests
    nothing; a new data version requests the downstream asset once."""
    version = {"value": "a"}

    @dg.asset
    def upstream() -> dg.Output:
        return dg.Output(1, data_version=dg.DataVersion(version["value"]))

    @dg.asset(code_version="1", automation_condition=follows_inputs())
    def downstream(upstream: int) -> int:
        return upstream + 1

    with dg.instance_for_test() as instance:

        def tick(cursor):
            result = dg.evaluate_automation_conditions(defs=[upstream, downstream], instance=instance, cursor=cursor)
            return result.get_num_requested(downstream.key), result.cursor

        requested, cursor = tick(None)
        assert requested == 0  # its input is missing
        dg.materialize([upstream], instance=instance)
        requested, cursor = tick(cursor)
        assert requested == 1  # missing, input present
        dg.materialize([upstream, downstream], instance=instance, selection=[downstream])
        assert tick(cursor)[0] == 0
        dg.materialize([upstream], instance=instance)  # same data version: a touch, a no-op re-ingest
        requested, cursor = tick(cursor)
        assert requested == 0
        version["value"] = "b"
        dg.materialize([upstream], instance=instance)
        requested, cursor = tick(cursor)
        assert requested == 1
        assert tick(cursor)[0] == 0  # handled: requested once, not on every tick


def test_preset_sensor_gives_each_run_only_its_own_assets_config():
    @dg.asset(automation_condition=dg.AutomationCondition.missing() & ~dg.AutomationCondition.in_progress())
    def eval_suites() -> int:
        return 1

    @dg.asset(automation_condition=dg.AutomationCondition.missing() & ~dg.AutomationCondition.in_progress())
    def other() -> int:
        return 2

    sensor = PresetAutomationSensor("auto", scale="toy", target=dg.AssetSelection.all())
    defs = dg.Definitions(assets=[eval_suites, other], sensors=[sensor])
    with dg.instance_for_test() as instance:
        context = dg.build_sensor_context(instance=instance, definitions=defs)
        data = defs.get_sensor_def("auto").evaluate_tick(context)
    assert data.run_requests
    for request in data.run_requests:
        names = {k.to_user_string() for k in request.asset_selection}
        assert set(request.run_config.get("ops", {})) == names & {"eval_suites"}
        assert request.run_config["execution"] == {"config": {"in_process": {}}}
    assert any(
        r.run_config["ops"].get("eval_suites") == {"config": {"per_suite_limit": 3}}
        for r in data.run_requests
        if "ops" in r.run_config
    )


# --- code versions --------------------------------------------------------------------------------------------


def fake_package(tmp_path, monkeypatch):
    """A stand-in for the package folder: a.py imports b.py (function level), c.py is unrelated."""
    root = tmp_path / "pkg"
    (root / "data").mkdir(parents=True)
    (root / "defs").mkdir()
    (root / "data" / "a.py").write_text("def f():\n    from skinr1_pipeline.data.b import g\n    return g()\n")
    (root / "data" / "b.py").write_text("def g():\n    return 1\n")
    (root / "data" / "c.py").write_text("X = 1\n")
    (root / "defs" / "assets.py").write_text("A = 1\n")
    (root / "table.yaml").write_text("a: 1\n")
    monkeypatch.setattr(code_versions, "ROOT", root)
    for cached in (code_versions._module_path, code_versions._file_digest, code_versions._imports):
        cached.cache_clear()
    return root


def version(*args, **kwargs):
    for cached in (code_versions._module_path, code_versions._file_digest, code_versions._imports):
        cached.cache_clear()
    return code_versions.code_version_of(*args, **kwargs)


def test_code_version_follows_the_modules_an_asset_calls_and_what_they_import(tmp_path, monkeypatch):
    root = fake_package(tmp_path, monkeypatch)
    defining = "skinr1_pipeline.defs.assets"
    before = version(defining, "data.a", data=("table.yaml",))
    assert before == version(defining, "skinr1_pipeline.data.a", data=("table.yaml",))  # same, spelled absolute
    assert code_versions.covered_modules(before) == {defining, "skinr1_pipeline.data.a", "skinr1_pipeline.data.b"}
    (root / "data" / "c.py").write_text("X = 2\n")
    assert version(defining, "data.a", data=("table.yaml",)) == before  # not called: not stale
    (root / "data" / "b.py").write_text("def g():\n    return 2\n")
    changed = version(defining, "data.a", data=("table.yaml",))
    assert changed != before  # imported by what the asset calls: stale
    (root / "table.yaml").write_text("a: 2\n")
    assert version(defining, "data.a", data=("table.yaml",)) != changed  # packaged data it reads: stale
    with pytest.raises(ModuleNotFoundError):
        version(defining, "data.missing")


PLUMBING = (
    "skinr1_pipeline.defs",
    "skinr1_pipeline.settings",
    "skinr1_pipeline.progress",
    "skinr1_pipeline.storage",
    "skinr1_pipeline.tracking.mlflow_runs",
)


def source(module: str, name: str) -> str:
    """The module `from module import name` reads: the submodule when `name` is one."""
    return f"{module}.{name}" if code_versions._is_module(f"{module}.{name}") else module


def modules_reached(fn) -> set[str]:
    """Package modules an asset body reaches: its own imports, names it uses from the defining module's imports,
    and the same for the module-level helpers it calls. Plumbing (run folders, logging, settings) is left out."""
    tree = ast.parse(inspect.getsource(sys.modules[fn.__module__]))
    imported = {
        alias.asname or alias.name: source(node.module, alias.name)
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("skinr1_pipeline")
        for alias in node.names
    }
    helpers = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    body = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    found: set[str] = set()
    pending, seen = [body], set()
    while pending:  # statements only: decorators and type annotations run no code of the asset
        for node in (n for statement in pending.pop().body for n in ast.walk(statement)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("skinr1_pipeline"):
                found.update(source(node.module, alias.name) for alias in node.names)
            elif isinstance(node, ast.Name) and node.id in imported:
                found.add(imported[node.id])
            elif isinstance(node, ast.Name) and node.id in helpers and node.id not in seen:
                seen.add(node.id)
                pending.append(helpers[node.id])
    return {m for m in found if not m.startswith(PLUMBING)}


def test_every_asset_declares_the_code_it_runs(tmp_path):
    """A derived version covers every module the asset body reaches; none is a hand-written "1"."""
    defs = build_definitions(demo_settings(tmp_path))
    for asset in defs.assets:
        version_ = asset.code_versions_by_key[asset.key]
        assert len(version_) == code_versions.DIGEST_CHARS, (asset.key, version_)
        covered = code_versions.covered_modules(version_)
        missing = modules_reached(asset.op.compute_fn.decorated_fn) - covered
        assert not missing, f"{asset.key.to_user_string()} calls {sorted(missing)}; declare them in its code_version"
