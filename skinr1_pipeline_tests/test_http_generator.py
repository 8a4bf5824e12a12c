"""OpenAICompatibleGenerator against a REAL local HTTP server (stdlib, 127.0.0.1, own thread) that fails on demand.

The server answers POST /v1/chat/completions. Per request id (sent as X-Request-Id) a script lists what successive
attempts get: "ok", "timeout" (sleep past the client timeout), "500"/"503"/"429"/"400", "307" (a redirect to
`server.location`), "length" (finish_reason length), "trickle_body"/"trickle_headers" (one byte per 0.2 s),
"huge_stream"/"huge_declared" (a body far over any cap), or a malformed body; `server.policy(rid)` picks the action of
ids without a script. It logs every call and the peak number of requests in flight, so retries, the concurrency
bound and resume are observable.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from skinr1_pipeline.synthesis.http_generator import (
    OpenAICompatibleGenerator,
    RequestFailed,
    TeacherUnavailable,
    load_progress,
    redact_url,
)
from skinr1_pipeline.synthesis.trajectories import GenerationRequest, SamplingParams

CLIENT_TIMEOUT = 0.3
HUGE = 64 * 2**20  # what the "huge" actions offer: far more than the socket buffers between client and server hold


class FakeServer:
    def __init__(self) -> None:
        self.script: dict[str, list[str]] = {}
        self.delay = 0.0
        self.calls: list[str] = []
        self.bodies: list[dict] = []
        self.headers: list[dict] = []
        self.in_flight = self.peak = 0
        self.location = ""
        self.policy = lambda rid: "ok"
        self.sent: list[int] = []  # body bytes written per "huge"/"trickle" reply before the client hung up
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):  # only a followed 301/302/303 arrives as a GET
                with server.lock:
                    server.calls.append("GET " + self.path)
                    server.headers.append(dict(self.headers))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                rid = self.headers.get("X-Request-Id", "")
                with server.lock:
                    server.calls.append(rid)
                    server.bodies.append(body)
                    server.headers.append(dict(self.headers))
                    steps = server.script.get(rid, [])
                    action = steps.pop(0) if steps else server.policy(rid)
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
                    pass  # the client gave up (timeout, size cap)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def respond(self, handler: BaseHTTPRequestHandler, action: str, rid: str, body: dict) -> None:
        if action == "drop":  # the connection closes without a reply, as when the endpoint goes down
            handler.close_connection = True
            return
        if action == "timeout":
            time.sleep(CLIENT_TIMEOUT * 3)
            action = "ok"
        if action.isdigit():
            handler.send_response(int(action))
            if action == "429":
                handler.send_header("Retry-After", "0.05")
            if action.startswith("3"):
                handler.send_header("Location", self.location)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        if action == "trickle_headers":  # the status line itself arrives one byte per 0.2 s, for 20 s
            self._dribble(handler, b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n" + b"X-Pad: " + b"x" * 100)
            return
        if action.startswith("trickle") or action.startswith("huge"):
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            if action != "huge_stream":  # huge_stream: no length, the body ends when the connection closes
                handler.send_header("Content-Length", str(HUGE if action.startswith("huge") else 100))
            handler.end_headers()
            if action == "trickle_body":
                self._dribble(handler, b"x" * 100)
            elif action == "huge_stream":
                sent, block = 0, b"x" * 2**16
                try:
                    while sent < HUGE:
                        handler.wfile.write(block)
                        sent += len(block)
                finally:
                    self.sent.append(sent)
            return
        images = sum(
            1
            for m in body["messages"]
            if isinstance(m["content"], list)
            for p in m["content"]
            if p.get("type") == "image_url"
        )
        payload = {
            "ok": {"choices": [{"message": {"role": "assistant", "content": f"text:{rid}:{images}"}}]},
            "length": {
                "choices": [{"message": {"role": "assistant", "content": f"cut:{rid}"}, "finish_reason": "length"}]
            },
            "null_content": {"choices": [{"message": {"role": "assistant", "content": None}}]},
            "no_choices": {"choices": []},
        }.get(action)
        raw = b"{not json" if payload is None else json.dumps(payload).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)

    def _dribble(self, handler: BaseHTTPRequestHandler, data: bytes) -> None:
        sent = 0
        try:
            for i in range(len(data)):
                handler.wfile.write(data[i : i + 1])
                sent += 1
                time.sleep(0.2)
        finally:
            self.sent.append(sent)


def _serving():
    srv = FakeServer()
    srv.thread.start()
    yield srv

    def stop() -> None:
        srv.httpd.shutdown()
        srv.httpd.server_close()

    # In the background: shutdown() waits for serve_forever's next poll (0.5 s), which every test would pay. The
    # server listens on a port of its own, so the next test does not wait for it.
    threading.Thread(target=stop, daemon=True).start()


@pytest.fixture
def server():
    yield from _serving()


@pytest.fixture(scope="module")
def image_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("http_img") / "lesion.png"
    Image.new("RGB", (32, 24), (150, 80, 60)).save(path)
    return path


def request(rid: str, image: Path | None = None, max_tokens: int = 64) -> GenerationRequest:
    """A real GenerationRequest whose messages are overridden (they are a cached property of the context)."""
    req = GenerationRequest(
        request_id=rid,
        sample_id=rid,
        trajectory_type="hierarchy",
        prompt="q",
        options=(),
        sampling=SamplingParams(temperature=0.5, top_p=0.9, max_tokens=max_tokens, seed=1),
        context=None,
        image_path=str(image) if image else None,
    )  # type: ignore[arg-type]
    user = ([{"type": "image", "image": str(image)}] if image else []) + [{"type": "text", "text": f"describe {rid}"}]
    req.__dict__["messages"] = ({"role": "system", "content": "teacher"}, {"role": "user", "content": user})
    return req


def make(server: FakeServer, **kw) -> OpenAICompatibleGenerator:
    delays: list[float] = []
    kw = {"timeout": CLIENT_TIMEOUT, "backoff": 0.1, "max_retries": 3, "concurrency": 4, "sleep": delays.append, **kw}
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
    assert make(server, max_retries=0, progress_path=progress).generate([request("flaky"), request("ok")]) == [
        "",
        "text:ok:0",
    ]
    assert set(load_progress(progress)) == {"ok"}
    server.calls.clear()
    assert make(server, progress_path=progress).generate([request("flaky"), request("ok")]) == [
        "text:flaky:0",
        "text:ok:0",
    ]
    assert server.calls == ["flaky"]


def test_duplicate_request_ids_are_rejected(server):
    with pytest.raises(ValueError, match="unique"):
        make(server).generate([request("a"), request("a")])


# ---- hardening (issue 15): redirects, plain-http keys, deadline, size cap, resume key, breaker, truncation ------


@pytest.fixture
def other_server():
    """A second origin, for redirects."""
    yield from _serving()


@pytest.mark.parametrize("status", ["302", "307"])
def test_redirect_is_refused_and_the_token_never_reaches_the_other_origin(server, other_server, status):
    """urllib followed a 302 to another origin (as a GET) with the Authorization header still attached."""
    server.location = other_server.url + "/chat/completions?sig=leaky"
    server.script = {"a": [status]}
    gen = make(server, api_key="sk-secret")
    assert gen.generate([request("a")]) == [""]
    assert other_server.calls == [] and other_server.headers == []  # not followed
    assert server.calls == ["a"]  # nor retried
    failure = gen.failed_requests["a"]
    assert failure.kind == "redirect" and other_server.url.split("//")[1] in failure.detail
    assert "leaky" not in failure.detail and "sk-secret" not in failure.detail


@pytest.mark.parametrize(
    "url, ok",
    [
        ("http://teacher.example.com/v1", False),
        ("http://10.1.2.3:8000/v1", False),
        ("http://127.1.foo/v1", False),
        ("https://teacher.example.com/v1", True),
        ("http://localhost:8000/v1", True),
        ("http://127.0.0.2:8000/v1", True),
        ("http://[::1]:8000/v1", True),
    ],
)
def test_an_api_key_needs_https_unless_the_host_is_loopback(url, ok):
    if ok:
        OpenAICompatibleGenerator(url, "m", api_key="sk-secret")
    else:
        with pytest.raises(ValueError, match="plain http") as err:
            OpenAICompatibleGenerator(url, "m", api_key="sk-secret")
        assert "sk-secret" not in str(err.value)
    OpenAICompatibleGenerator(url, "m")  # without a key any host may be plain http


def test_credentials_in_base_url_are_refused_without_echoing_them():
    with pytest.raises(ValueError, match="credentials") as err:
        OpenAICompatibleGenerator("https://user:hunter2@teacher.example.com/v1", "m")
    assert "hunter2" not in str(err.value)


@pytest.mark.parametrize(
    "url, expected",
    [
        (
            "https://user:pw@api.example.com:8443/v1?key=abc&x=1#frag",
            "https://api.example.com:8443/v1?key=REDACTED&x=REDACTED",
        ),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
        ("http://[::1]:9/v1?token", "http://[::1]:9/v1?token=REDACTED"),
        ("http://host:notaport/v1", "<unparseable url>"),
    ],
)
def test_redact_url_removes_userinfo_and_query_values(url, expected):
    assert redact_url(url) == expected


@pytest.mark.parametrize("action", ["trickle_body", "trickle_headers"])
def test_timeout_is_a_total_deadline_not_per_read(server, action):
    """Before: timeout 1 s against one byte per 0.5 s took 22 s. The trickle here would last 20 s."""
    server.script = {"slow": [action]}
    gen = make(server, timeout=1.0, max_retries=0)
    start = time.monotonic()
    assert gen.generate([request("slow")]) == [""]
    elapsed = time.monotonic() - start
    assert elapsed < 5.0, f"request held {elapsed:.1f}s past a 1 s deadline"
    assert gen.failed_requests["slow"].kind == "timeout" and gen.stats["retryable:timeout"] == 1


@pytest.mark.parametrize("action", ["huge_stream", "huge_declared"])
def test_response_body_is_capped(server, action):
    server.script = {"big": [action]}
    gen = make(server, timeout=20.0, max_response_bytes=64 * 1024)
    assert gen.generate([request("big"), request("fine")]) == ["", "text:fine:0"]
    assert gen.failed_requests["big"].kind == "too_large" and server.calls.count("big") == 1  # not retried
    deadline = time.monotonic() + 5
    while len(server.sent) < 1 and action == "huge_stream" and time.monotonic() < deadline:
        time.sleep(0.05)
    if action == "huge_stream":  # the client hung up at the cap instead of draining 64 MiB
        assert server.sent and server.sent[0] < HUGE


def test_resume_is_keyed_by_endpoint_model_and_request_body(server, tmp_path):
    progress = tmp_path / "progress.jsonl"
    reqs = [request(f"id{i}") for i in range(4)]
    make(server, progress_path=progress).generate(reqs)
    assert len(server.calls) == 4
    server.calls.clear()
    make(server, progress_path=progress).generate(reqs)
    assert server.calls == []  # same endpoint, model and bodies: reused
    other = make(server, progress_path=progress)
    other.model = "another-teacher"
    other.generate(reqs)
    assert sorted(server.calls) == sorted(r.request_id for r in reqs)  # another model: nothing reused
    assert other.stats["progress_ignored:key_mismatch"] == 4 and other.stats["resumed"] == 0
    server.calls.clear()
    changed = make(server, progress_path=progress)
    changed.generate([request("id0", max_tokens=32), *reqs[1:]])
    assert server.calls == ["id0"]  # the first model's records still match; a changed body is re-requested
    server.calls.clear()
    with progress.open("a", encoding="utf-8") as fh:  # the id-only format of before this change
        fh.write(json.dumps({"request_id": "legacy", "text": "old text", "model": "teacher-model"}) + "\n")
    gen = make(server, progress_path=progress)
    assert gen.generate([request("legacy")]) == ["text:legacy:0"]
    assert server.calls == ["legacy"] and gen.stats["progress_ignored:old_format"] == 1


def test_truncated_completions_are_counted_and_kept_from_the_verifier(server, tmp_path):
    progress = tmp_path / "p.jsonl"
    server.script = {"long": ["length"]}
    gen = make(server, progress_path=progress)
    assert gen.generate([request("long"), request("ok")]) == ["", "text:ok:0"]
    assert gen.failed_requests["long"] == ("truncated", "finish_reason=length at max_tokens=64", "cut:long")
    assert gen.stats["failed:truncated"] == 1 and gen.stats["ok"] == 1
    server.calls.clear()
    again = make(server, progress_path=progress)  # same request and seed: replayed from progress, still truncated
    assert again.generate([request("long")]) == [""] and server.calls == []
    assert again.failed_requests["long"].kind == "truncated"


def test_circuit_breaker_stops_a_dead_endpoint_early(tmp_path):
    """Before: every request spent all its retries (an hour for 925 requests against a server that was down)."""
    gen = OpenAICompatibleGenerator(
        "http://127.0.0.1:9/v1",
        "m",
        timeout=1.0,
        max_retries=1,
        concurrency=2,
        max_consecutive_failures=3,
        sleep=lambda s: None,
    )
    with pytest.raises(TeacherUnavailable, match=r"http://127\.0\.0\.1:9/v1/chat/completions") as err:
        gen.generate([request(f"r{i}") for i in range(200)])
    assert err.value.consecutive >= 3 and f"{err.value.consecutive} consecutive" in str(err.value)
    assert gen.stats["retryable:connection"] < 20  # a few requests' attempts, not 200 x 2
    with pytest.raises(RequestFailed, match="gave_up:connection"):  # the tripped breaker does not outlive the call
        gen.complete(request("later"))


def test_circuit_breaker_keeps_progress_and_a_rerun_resumes(server, tmp_path):
    """The endpoint goes down after five answers (every later connection closes without a reply): the breaker
    stops after three exhausted requests, the five answers are kept, and a rerun asks only for the rest. Why a
    policy and not a server shut down from the progress callback: the client may send its next request while that
    callback runs, so whether it was answered depended on how long the shutdown took."""
    progress = tmp_path / "p.jsonl"
    reqs = [request(f"id{i}") for i in range(30)]
    server.policy = lambda rid: "ok" if int(rid[2:]) < 5 else "drop"
    gen = make(server, concurrency=1, max_retries=1, max_consecutive_failures=3, progress_path=progress)
    with pytest.raises(TeacherUnavailable, match="3 consecutive") as err:
        gen.generate(reqs)
    assert str(progress) in str(err.value)
    saved = load_progress(progress)
    assert set(saved) == {f"id{i}" for i in range(5)}
    assert gen.stats["failed:gave_up:connection"] == 3  # then it stopped: 22 requests never attempted
    assert len(server.calls) == 5 + 3 * 2  # five answers, three requests tried twice (max_retries=1)
    server.policy = lambda rid: "ok"  # the endpoint is back: the rerun asks only for the rest
    server.calls.clear()
    rerun = make(server, progress_path=progress)
    assert rerun.generate(reqs) == [f"text:id{i}:0" for i in range(30)]
    assert sorted(server.calls) == sorted(f"id{i}" for i in range(5, 30)) and rerun.stats["resumed"] == 5


def test_breaker_counts_only_consecutive_exhausted_requests(server):
    """Failures interleaved with answers never trip it: the server is up, some requests are unlucky."""
    server.policy = lambda rid: "500" if int(rid[1:]) % 2 else "ok"
    gen = make(server, concurrency=1, max_retries=0, max_consecutive_failures=2)
    out = gen.generate([request(f"r{i}") for i in range(10)])
    assert out == [("" if i % 2 else f"text:r{i}:0") for i in range(10)]
    assert gen.stats["failed:gave_up:http_500"] == 5


def test_extra_body_is_merged_but_may_not_replace_what_the_generator_owns(server):
    gen = make(server, extra_body={"top_k": 20, "chat_template_kwargs": {"enable_thinking": False}})
    gen.generate([request("a")])
    assert server.bodies[0]["top_k"] == 20 and server.bodies[0]["chat_template_kwargs"] == {"enable_thinking": False}
    with pytest.raises(ValueError, match="seed"):
        make(server, extra_body={"seed": 1})


# ---- through synthesize() and the Dagster asset ------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthesis_world(tmp_path_factory, tax, ddx, kb):
    """A demo home (one image per class), the knowledge world, and what a verifiable teacher answers per request id:
    the template's own text, which passes verification, so any loss is the transport's."""
    from skinr1_pipeline.data.demo.generate import generate_demo_data
    from skinr1_pipeline.data.holdout import training_rows
    from skinr1_pipeline.defs.synthesis_assets import _demo_features
    from skinr1_pipeline.settings import load_settings
    from skinr1_pipeline.synthesis.generators import CallableGenerator, TemplateGenerator
    from skinr1_pipeline.synthesis.pipeline import demo_samples, synthesize
    from skinr1_pipeline.training.recipes import recipe_choices

    home = tmp_path_factory.mktemp("synthesis_home")
    settings = load_settings({"SKINR1_HOME": str(home)})
    generate_demo_data(settings.demo_dir, seed=0, n_per_class=1, image_size=(96, 72), include_broken=False)
    samples = demo_samples(settings.demo_dir, tax)[0]
    texts: dict[str, str] = {}

    def template(reqs):
        out = TemplateGenerator().generate(reqs)
        texts.update({r.request_id: t for r, t in zip(reqs, out)})
        return out

    train = training_rows(samples, settings.ood_modalities, settings.ood_sources)
    recipe = recipe_choices(settings.training_recipe)
    check = synthesize(
        train,
        tax,
        ddx,
        kb,
        CallableGenerator(template),
        types=("hierarchy",),
        image_features=_demo_features(settings),
        style=recipe.rationale_style,  # as the asset builds its requests: the profile's recipe decides
        mcq_construction=recipe.mcq_construction,
    )
    assert check.counts["rejected"] == 0 and len(texts) >= 8
    return {
        "settings": settings,
        "tax": tax,
        "ddx": ddx,
        "kb": kb,
        "samples": samples,
        "train": train,
        "texts": texts,
        "choices": {"style": recipe.rationale_style, "mcq_construction": recipe.mcq_construction},
    }


def _serve_template_texts(server: FakeServer, texts: dict[str, str]) -> None:
    original = server.respond

    def respond(handler, action, rid, body):
        if action != "ok" or rid not in texts:
            return original(handler, action, rid, body)
        raw = json.dumps({"choices": [{"message": {"content": texts[rid]}, "finish_reason": "stop"}]}).encode()
        handler.send_response(200)
        handler.send_header("Content-Length", str(len(raw)))
        handler.end_headers()
        handler.wfile.write(raw)

    server.respond = respond  # type: ignore[method-assign]


def _policy(rid: str) -> str:
    """A stable mix: about 1 in 4 requests gets a 503 (retries exhausted), 1 in 5 a truncated completion."""
    bucket = zlib.crc32(rid.encode()) % 20
    return "503" if bucket < 5 else "length" if bucket < 9 else "ok"


def test_synthesize_counts_transport_failures_apart_from_verifier_rejections(server, synthesis_world):
    """Before: a dead request returned "" and was reported as the verifier's bad_format."""
    from skinr1_pipeline.synthesis.pipeline import synthesize
    from skinr1_pipeline.synthesis.verify import REASONS

    w = synthesis_world
    _serve_template_texts(server, w["texts"])
    server.policy = _policy
    gen = make(server, max_retries=0, max_consecutive_failures=1000)
    result = synthesize(w["train"], w["tax"], w["ddx"], w["kb"], gen, types=("hierarchy",), **w["choices"])
    expected = {"http_503": 0, "truncated": 0}
    for rid in w["texts"]:
        action = _policy(rid)
        if action != "ok":
            expected["http_503" if action == "503" else "truncated"] += 1
    counts = result.counts
    assert all(expected.values()) and counts["transport_failures"] == expected
    assert counts["rejected"] == 0 and counts["rejections"] == {}  # nothing blamed on the verifier
    assert counts["accepted"] + counts["transport_failed"] == counts["requests"]
    reasons = set(result.rejections["reason"])
    assert reasons == {"transport:http_503", "truncated"} and not reasons & set(REASONS)
    cut = result.rejections[result.rejections["reason"] == "truncated"]
    assert (cut["text"].str.startswith("cut:")).all()  # the partial text is kept for inspection
    assert counts["generator_stats"]["failed:truncated"] == expected["truncated"]


def _materialize(w: dict, config: dict, *, mlflow_enabled: bool):
    import dagster as dg

    from skinr1_pipeline.defs.resources import MlflowTracking, PipelineHome, TrainingRecipe
    from skinr1_pipeline.defs.synthesis_assets import build_synthesis_defs

    upstream = {
        "unified_samples": w["samples"],
        "taxonomy_graph": w["tax"],
        "ddx_graph": w["ddx"],
        "knowledge_base": w["kb"],
    }

    class Upstream(dg.IOManager):
        def handle_output(self, context, obj):
            pass

        def load_input(self, context):
            return upstream[context.asset_key.path[-1]]

    settings = w["settings"]
    trajectories = build_synthesis_defs(settings).assets[1]
    return dg.materialize(
        [trajectories, *(dg.AssetSpec(key) for key in upstream)],
        resources={
            "home": PipelineHome(home=str(settings.home)),
            "io_manager": Upstream(),
            "mlflow": MlflowTracking(
                tracking_uri=settings.mlflow_tracking_uri,
                enabled=mlflow_enabled,
                experiment_name=settings.mlflow_experiment,
            ),
            "training_recipe": TrainingRecipe(recipe=settings.training_recipe),
        },
        run_config={"ops": {"skin_rationale_trajectories": {"config": config}}},
        raise_on_error=False,
    )


@pytest.mark.slow  # materializes the synthesis asset with MLflow on
def test_asset_takes_the_key_from_an_env_var_and_never_logs_it(server, synthesis_world, monkeypatch):
    import mlflow

    w = synthesis_world
    secret = "sk-from-env-3f9a"
    monkeypatch.setenv("SKINR1_TEACHER_API_KEY", secret)
    _serve_template_texts(server, w["texts"])
    server.policy = _policy
    config = {
        "generator": "openai",
        "base_url": server.url + "?tenant=t0p-s3cret",
        "api_model": "teacher-model",
        "api_key": {"env": "SKINR1_TEACHER_API_KEY"},
        "types": ["hierarchy"],
        "max_retries": 0,
        "timeout": 5.0,
        "concurrency": 3,
        "extra_body": {"top_k": 20},
    }
    result = _materialize(w, config, mlflow_enabled=True)
    assert result.success
    assert {h.get("Authorization") for h in server.headers} == {f"Bearer {secret}"}
    assert all(b["top_k"] == 20 for b in server.bodies)
    assert secret not in json.dumps(result.dagster_run.run_config)  # Dagster stores the variable's name only
    meta = {
        k: v.value for k, v in result.asset_materializations_for_node("skin_rationale_trajectories")[0].metadata.items()
    }
    assert meta["transport_failed"] > 0 and meta["rejected"] == 0
    assert "http_503" in meta["transport_failures"] and "truncated" in meta["transport_failures"]
    assert "http_503" not in meta["rejections_by_reason"] and "t0p-s3cret" not in meta["teacher_endpoint"]
    client = mlflow.MlflowClient(tracking_uri=w["settings"].mlflow_tracking_uri)
    run = client.search_runs(
        [client.get_experiment_by_name(w["settings"].mlflow_experiment).experiment_id],
        filter_string="tags.`dagster.asset_key` = 'skin_rationale_trajectories'",
    )[0]
    logged = json.dumps(run.data.params) + json.dumps(run.data.metrics)
    assert secret not in logged and "t0p-s3cret" not in logged and run.data.params["api_key_set"].lower() == "true"
    assert run.data.params["base_url"].endswith("/v1?tenant=REDACTED")
    assert (
        run.data.metrics["transport_failed"] == meta["transport_failed"]
        and "transport_failures/truncated" in run.data.metrics
    )


def test_asset_fails_fast_and_clearly_when_the_teacher_is_down(server, synthesis_world):
    w = synthesis_world
    server.policy = lambda rid: "503"
    config = {
        "generator": "openai",
        "base_url": server.url,
        "api_model": "down-model",
        "types": ["hierarchy"],
        "max_retries": 0,
        "max_consecutive_failures": 3,
        "concurrency": 1,
    }
    result = _materialize(w, config, mlflow_enabled=False)
    assert not result.success
    failure = result.failure_data_for_node("skin_rationale_trajectories")
    message = failure.user_failure_data.description
    assert "3 consecutive requests failed" in message and server.url in message
    assert len(server.calls) == 3 < len(w["texts"])


def test_synthesis_config_validates_transport_settings():
    from pydantic import ValidationError

    from skinr1_pipeline.defs.synthesis_assets import SynthesisConfig, config_params

    for bad in (
        {"concurrency": 0},
        {"timeout": 0},
        {"max_retries": -1},
        {"max_response_bytes": 10},
        {"max_consecutive_failures": 0},
        {"extra_body": {"model": "x"}},
    ):
        with pytest.raises(ValidationError, match=next(iter(bad))):
            SynthesisConfig(**bad)
    config = SynthesisConfig(api_key="sk-literal", base_url="https://u:p@api.example.com/v1?key=k")
    assert "sk-literal" not in repr(config)
    params = config_params(config)
    assert "api_key" not in params and params["api_key_set"] is True
    assert params["base_url"] == "https://api.example.com/v1?key=REDACTED"
