"""The Dagster and MLflow UIs, driven in a real browser the way an operator uses them: `dagster dev` on the demo,
Debian's Chromium under Playwright (no browser download), screenshots kept as test artifacts.

CI sets SKINR1_REQUIRE_BROWSER=1 (and installs chromium), so a missing browser fails there instead of skipping.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("SKINR1_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(os.environ.get("SKINR1_TEST_ARTIFACTS") or PROJECT_ROOT / ".skinr1" / "test-artifacts")
# Without the background-networking flags Chromium keeps dialling Google hosts this closed network refuses.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
BIN = Path(sys.executable).parent
UI_TIMEOUT_MS = 240_000


def _browser_missing() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not Path(CHROMIUM).is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SKINR1_CHROMIUM)"
    return None


_missing = _browser_missing()
if _missing and os.environ.get("SKINR1_REQUIRE_BROWSER") == "1":
    raise RuntimeError(f"SKINR1_REQUIRE_BROWSER=1 but {_missing}")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.browser,
    pytest.mark.daemon,
    pytest.mark.skipif(_missing is not None, reason=_missing or ""),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Service:
    """A server started in its own process group, so stopping it also stops the daemon and run workers."""

    def __init__(self, name: str, argv: list[str], *, cwd: Path, env: dict[str, str], health_url: str):
        self.name, self.health_url = name, health_url
        self.log_path = cwd / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_healthy(self, timeout_s: float = 180) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.health_url, timeout=5) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise AssertionError(f"{self.name} not healthy at {self.health_url} after {timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text("utf-8", errors="replace")[-chars:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A copy of the project's own dagster.yaml/workspace.yaml, so the test exercises the files users run."""
    root = tmp_path_factory.mktemp("ui")
    for name in ("dagster.yaml", "workspace.yaml"):
        shutil.copy(PROJECT_ROOT / name, root / name)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return root


@pytest.fixture(scope="module")
def env(workdir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "DAGSTER_HOME": str(workdir),
        "SKINR1_HOME": str(workdir / ".skinr1"),
        "SKINR1_PROFILE": "demo",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.fixture(scope="module")
def dagster_ui(workdir: Path, env: dict[str, str]):
    port = _free_port()
    service = Service(
        "dagster_dev",
        [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=workdir,
        env=env,
        health_url=f"http://127.0.0.1:{port}/server_info",
    )
    try:
        service.wait_healthy()
        yield f"http://127.0.0.1:{port}", service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture()
def page(browser):
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.set_default_timeout(60_000)
    page = context.new_page()
    yield page
    context.close()


def _dismiss_onboarding(page) -> None:
    """Dagster's first-visit newsletter dialog covers the page; it only appears on a fresh instance."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(state="visible", timeout=5_000)
        skip.click()
    except Exception:  # noqa: BLE001 - not shown: nothing to dismiss
        pass


def _shown(name: str, labels: list[str]) -> bool:
    """The graph middle-truncates long names ("skin…_trajectories"); match those by their two ends."""
    for label in labels:
        label = label.strip()
        if label == name:
            return True
        if "…" in label:
            head, tail = label.split("…", 1)
            if name.startswith(head) and name.endswith(tail) and len(head) + len(tail) < len(name):
                return True
    return False


def _asset_names() -> list[str]:
    from skinr1_pipeline.definitions import build_definitions
    from skinr1_pipeline.settings import load_settings

    graph = build_definitions(load_settings({"SKINR1_PROFILE": "demo"})).resolve_asset_graph()
    return sorted(key.to_user_string() for key in graph.get_all_asset_keys())


def test_asset_graph_shows_every_stage(dagster_ui, page):
    url, _ = dagster_ui
    # Tall enough that the laid-out graph (asset checks with extra inputs add edges and height) fits on screen: the
    # graph draws only the nodes inside the viewport.
    page.set_viewport_size({"width": 1600, "height": 1800})
    page.goto(f"{url}/asset-groups")
    _dismiss_onboarding(page)
    labels = page.locator('[class*="assetName"]')
    page.get_by_text("knowledge", exact=True).first.wait_for(timeout=UI_TIMEOUT_MS)
    page.keyboard.press("Alt+KeyE")  # the graph's own shortcut: expand every group
    page.get_by_text("taxonomy_graph", exact=True).first.wait_for()
    expected = _asset_names()
    assert {
        "raw_datasets",
        "skin_rationale_trajectories",
        "sft_checkpoint",
        "grpo_checkpoint",
        "evaluation_reports",
    } <= set(expected)
    deadline = time.monotonic() + 60
    while True:  # the graph lays groups out progressively after expanding: poll until complete or out of time
        shown = labels.all_inner_texts()
        missing = [name for name in expected if not _shown(name, shown)]
        if not missing or time.monotonic() > deadline:
            break
        page.wait_for_timeout(1_000)
    page.screenshot(path=str(ARTIFACTS / "dagster_asset_graph.png"))
    assert not missing, f"asset graph lacks {missing}; nodes shown: {shown}"


@pytest.fixture(scope="module")
def ui_materialization(dagster_ui, browser) -> str:
    """Materialize taxonomy_graph with the asset page's own button; returns the launched run's id prefix."""
    url, service = dagster_ui
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    page = context.new_page()
    try:
        page.goto(f"{url}/assets/taxonomy_graph")
        _dismiss_onboarding(page)
        page.locator("button").filter(has_text=re.compile(r"^Materialize$")).first.click(timeout=UI_TIMEOUT_MS)
        toast = page.get_by_text(re.compile(r"Launched run [0-9a-f]{8}")).first
        toast.wait_for(timeout=60_000)
        run_id = re.search(r"[0-9a-f]{8}", toast.inner_text()).group(0)
        page.goto(f"{url}/runs")
        row = page.locator("div[data-index]").filter(has_text=run_id)  # the runs feed is a virtualized div table
        deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
        while time.monotonic() < deadline:
            status = row.first.inner_text(timeout=60_000)
            if "Success" in status or "Failure" in status or "Canceled" in status:
                break
            page.wait_for_timeout(3_000)
            page.reload()
        assert "Success" in status, f"run {run_id} from the UI: {status}\n{service.log_tail()}"
        return run_id
    finally:
        context.close()


def test_materialization_from_ui_renders_metadata(dagster_ui, ui_materialization, page):
    from playwright.sync_api import expect

    url, _ = dagster_ui
    page.goto(f"{url}/assets/taxonomy_graph")
    metadata = page.locator("table").filter(has_text="nodes_per_level").first
    metadata.wait_for(timeout=UI_TIMEOUT_MS)
    # Markdown metadata renders as real tables nested in the metadata table, numbers included. The UI renders them
    # after the row appears, so wait (with Playwright's retrying waits) instead of counting once.
    per_level = metadata.locator("table").filter(has_text="level").first
    per_level.locator("tr").nth(6).wait_for(timeout=60_000)  # levels 0..6 of the taxonomy
    expect(metadata).to_contain_text("malignant")
    page.screenshot(path=str(ARTIFACTS / "dagster_asset_metadata.png"), full_page=True)
    page.locator("button").filter(has_text=re.compile(r"^Plots$")).first.click()
    chart = page.locator("canvas").first
    chart.wait_for(timeout=60_000)
    assert chart.bounding_box()["width"] > 50
    page.screenshot(path=str(ARTIFACTS / "dagster_asset_plots.png"), full_page=True)


@pytest.fixture(scope="module")
def mlflow_ui(workdir: Path, env: dict[str, str], ui_materialization):
    port = _free_port()
    store = workdir / ".skinr1" / "mlflow" / "mlflow.db"
    assert store.is_file(), f"the UI-launched run left no MLflow store at {store}"
    service = Service(
        "mlflow_ui",
        [
            str(BIN / "mlflow"),
            "ui",
            "--backend-store-uri",
            f"sqlite:///{store}",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        cwd=workdir,
        env=env,
        health_url=f"http://127.0.0.1:{port}/health",
    )
    try:
        service.wait_healthy()
        yield f"http://127.0.0.1:{port}"
    finally:
        service.stop()


def test_mlflow_ui_lists_parent_run_with_nested_stage_runs(mlflow_ui, ui_materialization, page):
    page.goto(f"{mlflow_ui}/#/experiments")
    experiment = page.get_by_role("link", name="skinr1-pipeline", exact=True).first
    experiment.wait_for(timeout=UI_TIMEOUT_MS)
    # MLflow 3 opens an experiment on its GenAI overview; the training-runs table is the page an operator wants.
    page.goto(f"{mlflow_ui}/{experiment.get_attribute('href').lstrip('/')}/runs")
    parent_name = f"__ASSET_JOB {ui_materialization}"
    parent = page.locator('[role="row"]').filter(has_text=parent_name).first
    parent.wait_for(timeout=UI_TIMEOUT_MS)
    # The child is hidden until its parent row is expanded with the run-name cell's toggle.
    assert page.locator('[role="row"]').filter(has_text="taxonomy_graph").count() == 0
    parent.get_by_role("gridcell").filter(has_text=parent_name).locator("button").first.click()
    child = page.locator('[role="row"]').filter(has_text="taxonomy_graph")
    child.first.wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "mlflow_nested_runs.png"))


@pytest.fixture(scope="module")
def lineage_report(workdir: Path, mlflow_ui) -> tuple[str, dict[str, str], dict[str, str]]:
    """A report run and the chain of runs it descends from, in the store the UI serves, logged as the pipeline logs
    them (nested runs with `skinr1.upstream.*` tags, dataset inputs with digests, and the report's own
    `_log_lineage`); test_mlflow_lineage.py shows the pipeline writes exactly these. (experiment id, asset -> run
    id, dataset -> digest)"""
    import pandas as pd

    from skinr1_pipeline.defs.evaluation_assets import _log_lineage
    from skinr1_pipeline.tracking import mlflow_runs

    uri = f"sqlite:///{workdir / '.skinr1' / 'mlflow' / 'mlflow.db'}"
    experiment = "skinr1-lineage-view"
    parent = mlflow_runs.ensure_parent_run(uri, experiment, "lineage-view", "lineage view")
    runs: dict[str, str] = {}
    digests: dict[str, str] = {}
    chain = [
        ("raw_datasets", "ham10000", {}, [("raw_ham10000", "ingest")]),
        ("unified_samples", "", {"raw_datasets.ham10000": "raw_datasets"}, [("unified_train", "train")]),
        (
            "skin_rationale_trajectories",
            "",
            {"unified_samples": "unified_samples"},
            [("skin_rationale_trajectories", "sft")],
        ),
        (
            "sft_checkpoint",
            "",
            {"skin_rationale_trajectories": "skin_rationale_trajectories"},
            [("skin_rationale_trajectories", "training")],
        ),
        ("grpo_checkpoint", "", {"sft_checkpoint": "sft_checkpoint"}, [("rl_mcq_train", "grpo")]),
        ("variant_evaluations", "sft_grpo", {"grpo_checkpoint": "grpo_checkpoint"}, [("eval_suites", "evaluation")]),
        (
            "evaluation_reports",
            "",
            {"variant_evaluations.sft_grpo": "variant_evaluations"},
            [("eval_suites", "evaluation"), ("scored_sft_grpo", "scored")],
        ),
    ]
    for asset, partition, upstream, datasets in chain:
        tags = {
            "dagster.asset_key": asset,
            "dagster.partition": partition,
            **mlflow_runs.lineage_tags("0f1e2d3c4b5a6978", {k: runs[v] for k, v in upstream.items()}, {}),
        }
        name = f"{asset}[{partition}]" if partition else asset
        with mlflow_runs.nested_run(uri, experiment, parent, name, tags=tags) as run:
            for dataset, usage in datasets:
                frame = pd.DataFrame({"sample_id": [f"{dataset}-{i}" for i in range(3)], "split": ["train"] * 3})
                digests[dataset] = mlflow_runs.log_dataframe_input(frame, dataset, f"/data/{dataset}.parquet", usage)
            if asset == "evaluation_reports":
                _log_lineage(uri, run.info.run_id)
            runs[asset] = run.info.run_id
    mlflow_runs.finish_parent_run(uri, parent)
    return run.info.experiment_id, runs, digests


def test_mlflow_ui_report_run_shows_its_datasets_and_links_to_its_training_runs(mlflow_ui, lineage_report, page):
    from playwright.sync_api import expect

    experiment_id, runs, digests = lineage_report
    page.set_viewport_size({"width": 1600, "height": 1600})  # datasets, tags and description on one screen
    page.goto(f"{mlflow_ui}/#/experiments/{experiment_id}/runs/{runs['evaluation_reports']}")
    page.get_by_text(f"eval_suites ({digests['eval_suites']})").first.wait_for(timeout=UI_TIMEOUT_MS)
    more = page.get_by_text("Show more", exact=True)
    if more.count():
        more.first.click()
    links = {
        name: page.get_by_role("link", name=name, exact=True).first for name in ("sft_checkpoint", "grpo_checkpoint")
    }
    for name, link in links.items():
        link.wait_for()
        assert link.get_attribute("href").endswith(f"/runs/{runs[name]}"), name
    page.screenshot(path=str(ARTIFACTS / "mlflow_report_lineage.png"), full_page=True)
    with page.context.expect_page() as opened:  # the description's links open a new tab
        links["sft_checkpoint"].click()  # what a person does: follow the chain to the run that trained the adapter
    sft = opened.value
    expect(sft).to_have_url(re.compile(rf".*/runs/{runs['sft_checkpoint']}$"))
    sft.get_by_text(f"skin_rationale_trajectories ({digests['skin_rationale_trajectories']})").first.wait_for()
    sft.screenshot(path=str(ARTIFACTS / "mlflow_sft_run_datasets.png"), full_page=True)
