"""OpenAICompatibleGenerator against a REAL local HTTP server (stdlib, 127.0.0.1, own thread) that fails on demand.

The server answers POST /v1/chat/completions. Per request id (sent as X-Request-Id) a script lists what successive
attempts get: "ok", "timeout" (sleep past the client timeout), "500"/"503"/"429"/"400", or a malformed body. It logs
every call and the peak number of requests in flight, so retries, the concurrency bound and resume are observable.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from skinr1_pipeline.synthesis.http_generator import OpenAICompatibleGenerator, load_progress
from skinr1_pipeline.synthesis.trajectories import GenerationRequest, SamplingParams

CLIENT_TIMEOUT = 0.3


class FakeServer:
    def __init__(self) -> None:
        self.script: dict[str, list[str]] = {}
        self.delay = 0.0
        self.calls: list[str] = []
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.peak = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                rid = self.headers.get("X-Request-Id", "")
                with server.lock:
                    server.calls.append(rid)
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    steps = server.script.get(rid, [])
                    action = steps.pop(0) if steps else "ok"
                    server.in_flight += 1
                    server.peak = max(server.peak, server.in_flight)
                try:
                    time.sleep(server.delay)
                finally:
                    # Out of flight before the reply: the client may send its next request the moment it reads it,
                    # and counting that one before this thread decremented read as concurrency + 1 under load.
                    with server.lock:
                        server.in_flight -= 1
                try:
                    server.respond(self, action, rid, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @staticmethod
    def respond(handler: BaseHTTPRequestHandler, action: str, rid: str, body: dict) -> None:
        if action == "timeout":
            time.sleep(CLIENT_TIMEOUT * 3)
            action = "ok"
        if action.isdigit():
            handler.send_response(int(action))
            if action == "429":
                handler.send_header("Retry-After", "0.05")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        images = sum(1 for m in body["messages"] if isinstance(m["content"], list)
                     for p in m["content"] if p.get("type") == "image_url")
        payload = {
            "ok": {"choices": [{"message": {"role": "assistant", "content": f"text:{rid}:{images}"}}]},
            "null_content": {"choices": [{"message": {"role": "assistant", "content": None}}]},
            "no_choices": {"choices": []},
        }.get(action)
        raw = b"{not json" if payload is None else json.dumps(payload).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)


@pytest.fixture
def server():
    srv = FakeServer()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("http_img") / "lesion.png"
    Image.new("RGB", (32, 24), (150, 80, 60)).save(path)
    return path


def request(rid: str, image: Path | None = None, max_tokens: int = 64) -> GenerationRequest:
    """A real GenerationRequest whose messages are overridden (they are a cached property of the context)."""
    req = GenerationRequest(request_id=rid, sample_id=rid, trajectory_type="hierarchy", prompt="q", options=(),
                            sampling=SamplingParams(temperature=0.5, top_p=0.9, max_tokens=max_tokens, seed=1),
                            context=None, image_path=str(image) if image else None)  # type: ignore[arg-type]
    user = ([{"type": "image", "image": str(image)}] if image else []) + [{"type": "text", "text": f"describe {rid}"}]
    req.__dict__["messages"] = ({"role": "system", "content": "teacher"}, {"role": "user", "content": user})
    return req


def make(server: FakeServer, **kw) -> OpenAICompatibleGenerator:
    delays: list[float] = []
    kw = {"timeout": CLIENT_TIMEOUT, "backoff": 0.1, "max_retries": 3, "concurrency": 4,
          "sleep": delays.append, **kw}
    gen = OpenAICompatibleGenerator(server.url, "teacher-model", **kw)
    gen.delays = delays  # type: ignore[attr-defined]
    return gen


def test_payload_images_and_order(server, image_path):
    gen = make(server, api_key="sk-test")
    reqs = [request("a", image_path), request("b"), request("c", image_path)]
    assert gen.generate(reqs) == ["text:a:1", "text:b:0", "text:c:1"]
    body = server.bodies[server.calls.index("a")]
    assert body["model"] == "teacher-model" and body["max_tokens"] == 64 and body["temperature"] == 0.5
    assert isinstance(body["seed"], int) and body["messages"][0] == {"role": "system", "content": "teacher"}
    url = body["messages"][1]["content"][0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.split(",", 1)[1]) == image_path.read_bytes()
    assert server.headers[0]["Authorization"] == "Bearer sk-test"
    assert gen.stats["ok"] == 3 and not gen.delays


def test_retries_timeouts_5xx_and_429_with_backoff(server):
    server.script = {"t": ["timeout", "ok"], "s": ["500", "503", "ok"], "r": ["429", "ok"]}
    gen = make(server)
    assert gen.generate([request("t"), request("s"), request("r")]) == ["text:t:0", "text:s:0", "text:r:0"]
    assert server.calls.count("t") == 2 and server.calls.count("s") == 3 and server.calls.count("r") == 2
    assert gen.stats["retryable:timeout"] == 1 and gen.stats["retryable:http_500"] == 1
    assert gen.stats["retryable:http_429"] == 1 and gen.stats["retries"] == 4
    # attempt k waits within [b*2^k/2, b*2^k] (equal jitter); 429's Retry-After (0.05) is a floor
    assert len(gen.delays) == 4 and all(0.05 - 1e-9 <= d <= 0.2 + 1e-9 for d in gen.delays)
    assert max(gen.delays) > 0.1  # the second retry of "s" backed off further than any first retry can


def test_backoff_grows_exponentially_and_is_capped():
    gen = OpenAICompatibleGenerator("http://127.0.0.1:9/v1", "m", backoff=1.0, max_backoff=8.0)
    for attempt, (low, high) in enumerate([(0.5, 1), (1, 2), (2, 4), (4, 8), (4, 8), (4, 8)]):
        delays = [gen._delay(attempt, None) for _ in range(50)]
        assert all(low <= d <= high for d in delays) and len(set(delays)) > 1  # jittered
    assert gen._delay(0, retry_after=5.0) == 5.0 and gen._delay(0, retry_after=100.0) == 8.0


def test_gives_up_and_does_not_retry_client_errors(server):
    server.script = {"dead": ["500"] * 10, "bad": ["400"]}
    gen = make(server, max_retries=2)
    assert gen.generate([request("dead"), request("bad"), request("fine")]) == ["", "", "text:fine:0"]
    assert server.calls.count("dead") == 3 and server.calls.count("bad") == 1
    assert gen.stats["failed:gave_up:http_500"] == 1 and gen.stats["failed:http_400"] == 1


def test_connection_refused_is_retried_then_fails():
    gen = OpenAICompatibleGenerator("http://127.0.0.1:9/v1", "m", timeout=0.5, max_retries=1, sleep=lambda s: None)
    assert gen.generate([request("x")]) == [""]
    assert gen.stats["retryable:connection"] == 2 and gen.stats["failed:gave_up:connection"] == 1


def test_malformed_responses_count_as_failures(server):
    server.script = {"j": ["garbage"], "n": ["null_content"], "c": ["no_choices"]}
    gen = make(server)
    assert gen.generate([request("j"), request("n"), request("c"), request("ok")]) == ["", "", "", "text:ok:0"]
    assert gen.stats["failed:malformed_response"] == 3 and len(server.calls) == 4  # not retried


def test_concurrency_is_bounded(server):
    server.delay = 0.1
    gen = make(server, concurrency=3)
    out = gen.generate([request(f"r{i}") for i in range(12)])
    assert out == [f"text:r{i}:0" for i in range(12)]
    assert server.peak == 3


def test_resume_after_crash_requests_only_missing_ids(server, tmp_path):
    progress = tmp_path / "progress" / "teacher.jsonl"
    reqs = [request(f"id{i}") for i in range(10)]
    server.delay = 0.02

    def crash_after_4(done: int, total: int) -> None:
        if done >= 4:
            raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        make(server, concurrency=2, progress_path=progress, progress=crash_after_4).generate(reqs)
    saved = load_progress(progress)
    assert 4 <= len(saved) < 10 and all(saved[k] == f"text:{k}:0" for k in saved)
    first_calls = list(server.calls)
    with progress.open("a", encoding="utf-8") as fh:
        fh.write('{"request_id": "id9", "te')  # torn line from the crash: ignored, id9 not counted as done
    server.calls.clear()
    gen = make(server, concurrency=2, progress_path=progress)
    out = gen.generate(reqs)
    assert out == [f"text:id{i}:0" for i in range(10)]
    assert sorted(server.calls) == sorted(r.request_id for r in reqs if r.request_id not in saved)
    assert not set(server.calls) & set(saved) and len(first_calls) < 10
    assert gen.stats["resumed"] == len(saved) and set(load_progress(progress)) == {r.request_id for r in reqs}
    server.calls.clear()
    assert gen.generate(reqs) == out and server.calls == []  # everything done: no request at all


def test_failures_are_not_persisted_so_a_rerun_retries_them(server, tmp_path):
    progress = tmp_path / "p.jsonl"
    server.script = {"flaky": ["500"]}
    assert make(server, max_retries=0, progress_path=progress).generate([request("flaky"), request("ok")]) == \
        ["", "text:ok:0"]
    assert set(load_progress(progress)) == {"ok"}
    server.calls.clear()
    assert make(server, progress_path=progress).generate([request("flaky"), request("ok")]) == \
        ["text:flaky:0", "text:ok:0"]
    assert server.calls == ["flaky"]


def test_duplicate_request_ids_are_rejected(server):
    with pytest.raises(ValueError, match="unique"):
        make(server).generate([request("a"), request("a")])
