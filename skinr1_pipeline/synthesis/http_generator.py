"""A `Generator` over any OpenAI-compatible chat-completions server (OpenAI, a `vllm serve` host, a gateway).

Why these mechanics: a teacher run is hours of remote calls, so it must survive what remote calls do.
* Bounded concurrency (a thread pool of `concurrency` workers): throughput without tripping rate limits.
* Retries with exponential backoff and jitter on timeouts, connection errors, 5xx and 429 (honouring a numeric
  `Retry-After`, capped at `max_backoff`); other 4xx are the caller's bug and are not retried.
* `timeout` is a total deadline per attempt (connect + send + headers + body), not per socket read: a server that
  trickles bytes cannot hold a worker past it. A watchdog shuts the socket down at the deadline.
* Bodies are read in chunks and capped at `max_response_bytes` (`too_large`, not retried): a runaway or hostile
  server cannot exhaust memory.
* Redirects are refused (`redirect`, naming the Location, not retried): following one would carry the bearer token
  to whatever origin the server names. An API key over plain http is refused unless the host is loopback.
* Circuit breaker: after `max_consecutive_failures` requests in a row exhaust their retries (server down, gateway
  answering 502), `generate` raises `TeacherUnavailable` instead of spending retries on every remaining request.
* Resumable progress: every answered request is appended (flushed) to a JSONL the moment it arrives, keyed by
  (request_id, base_url, model, sha256 of the request body); a rerun reuses only records whose key matches, so
  switching the model, endpoint, prompt, images, sampling or `extra_body` re-requests instead of reusing old texts.
  Records of the older id-only format are ignored (counted). Transport failures are not written (a rerun retries
  them); truncated completions are written (same request, same seed: same truncation) and replayed as truncated.
* Per-request outcomes: `failed_requests` maps each request of the last `generate` call that produced no usable
  text to a `RequestFailure(kind, detail, text)` - transport kinds (`timeout`, `connection`, `http_<code>`,
  `too_large`, `redirect`, `malformed_response`, ...) and `truncated` (`finish_reason == "length"`; its partial
  text is kept there, never returned). `synthesize` reports these apart from verifier rejections.
A malformed response (not JSON, no `choices[0].message.content` string) is not retried: a server that answers
garbage once usually answers garbage again. Images (a path or PIL image in a content part, or the request's
`image_path`) are sent as base64 data URLs. Stdlib `http.client` only (no dependency); environment proxy variables
are not used: the endpoint is reached directly.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import ipaddress
import json
import random
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from PIL import Image

from skinr1_pipeline.synthesis.generators import request_seed
from skinr1_pipeline.synthesis.trajectories import GenerationRequest

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}
_CHUNK = 64 * 1024
_ERROR_SNIPPET = 512
#: Body keys `extra_body` may not set: they would break the request/response contract or per-request seeding.
RESERVED_BODY_KEYS = frozenset({"model", "messages", "stream", "seed"})


class RetryableError(Exception):
    """Timeout, connection failure, 5xx or 429: worth another attempt after a pause."""

    def __init__(self, reason: str, retry_after: float | None = None, detail: str = "") -> None:
        super().__init__(reason)
        self.reason, self.retry_after, self.detail = reason, retry_after, detail


class RequestFailed(Exception):
    """Not worth retrying: a 4xx other than 429, a redirect, an oversized or malformed response, retries spent."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason, self.detail = reason, detail


class TeacherUnavailable(RuntimeError):
    """The circuit breaker tripped: the endpoint failed too many requests in a row for the rest to be worth trying.

    Everything answered before it tripped is already in the progress file, so a rerun resumes from there."""

    def __init__(self, message: str, consecutive: int) -> None:
        super().__init__(message)
        self.consecutive = consecutive


class _Cancelled(Exception):
    """The breaker tripped while this request waited to retry: stop without counting it as a failure."""


class RequestFailure(NamedTuple):
    """Why a request yielded no text: `kind` (see the module docstring), a human `detail`, partial `text`."""

    kind: str
    detail: str
    text: str = ""


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1: traffic that never leaves the machine, so plain http cannot leak a key."""
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def redact_url(url: str) -> str:
    """The URL fit for logs and params: no user:password@, every query value replaced, no fragment."""
    try:
        parts = urlsplit(str(url))
        port = parts.port
    except ValueError:
        return "<unparseable url>"
    host = parts.hostname or ""
    netloc = (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")
    query = "&".join(f"{key}=REDACTED" for key, _ in parse_qsl(parts.query, keep_blank_values=True))
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def image_data_url(image: Any) -> str:
    """Base64 data URL; JPEG/PNG/WebP/GIF files are sent as stored, anything else re-encoded as PNG."""
    if isinstance(image, Image.Image):
        buf = io.BytesIO()
        image.convert("RGB").save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
    path = Path(str(image))
    payload = path.read_bytes()
    with Image.open(io.BytesIO(payload)) as img:
        mime = _MIME.get(img.format or "")
        if mime is None:
            buf = io.BytesIO()
            img.convert("RGB").save(buf, format="PNG")
            payload, mime = buf.getvalue(), "image/png"
    return f"data:{mime};base64," + base64.b64encode(payload).decode("ascii")


def openai_messages(request: GenerationRequest) -> list[dict[str, Any]]:
    """The request's chat messages in OpenAI wire format (image parts become `image_url` data URLs)."""
    out = []
    for message in request.messages:
        content = message.get("content")
        if not isinstance(content, list):
            out.append({"role": message["role"], "content": content})
            continue
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                parts.append(part)
            elif isinstance(part, dict) and (part.get("type") == "image" or "image" in part):
                source = (
                    part.get("image") if isinstance(part.get("image"), (str, Path, Image.Image)) else request.image_path
                )
                if source is None:
                    raise RequestFailed("image_missing", "an image part without an image or request.image_path")
                parts.append({"type": "image_url", "image_url": {"url": image_data_url(source)}})
            else:
                parts.append(
                    {"type": "text", "text": part.get("text", "")}
                    if isinstance(part, dict)
                    else {"type": "text", "text": str(part)}
                )
        out.append({"role": message["role"], "content": parts})
    return out


def load_progress_records(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """request_id -> its records in a progress JSONL, oldest first (one per endpoint/model/body that answered it);
    a torn line (crash mid-write) is ignored."""
    done: dict[str, list[dict[str, Any]]] = {}
    p = Path(path)
    if not p.is_file():
        return done
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("request_id"), str) and isinstance(rec.get("text"), str):
            done.setdefault(rec["request_id"], []).append(rec)
    return done


def load_progress(path: str | Path) -> dict[str, str]:
    """request_id -> latest text in a progress JSONL, whatever endpoint/model wrote it (for inspection and tests)."""
    return {rid: recs[-1]["text"] for rid, recs in load_progress_records(path).items()}


class OpenAICompatibleGenerator:
    """Chat completions over HTTP, concurrent, retried, bounded and resumable (see the module docstring)."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        concurrency: int = 8,
        progress_path: str | Path | None = None,
        extra_body: dict[str, Any] | None = None,
        send_seed: bool = True,
        name: str | None = None,
        max_response_bytes: int = 8 * 2**20,
        max_consecutive_failures: int = 8,
        progress: Callable[[int, int], None] | None = None,
        sleep: Callable[[float], Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if concurrency < 1 or max_retries < 0 or timeout <= 0 or max_response_bytes < 1 or max_consecutive_failures < 1:
            raise ValueError(
                "concurrency, max_response_bytes and max_consecutive_failures must be >= 1, "
                "max_retries >= 0 and timeout > 0"
            )
        reserved = sorted(RESERVED_BODY_KEYS & set(extra_body or {}))
        if reserved:
            raise ValueError(f"extra_body may not set {reserved}: the generator owns them")
        self._scheme, self._host, self._port, self._target = _endpoint(base_url)
        if api_key and self._scheme == "http" and not is_loopback_host(self._host):
            raise ValueError(
                f"refusing to send an API key over plain http to {self._host}: use https "
                "(plain http is allowed only for a loopback host: localhost, 127.0.0.0/8, ::1)"
            )
        self._tls = ssl.create_default_context() if self._scheme == "https" else None
        self.url = f"{self._scheme}://{_netloc(self._host, self._port)}{self._target}"
        self.safe_url = redact_url(self.url)
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.concurrency, self.extra_body, self.send_seed = concurrency, dict(extra_body or {}), send_seed
        self.max_response_bytes, self.max_consecutive_failures = max_response_bytes, max_consecutive_failures
        self.progress_path = Path(progress_path) if progress_path else None
        self.name = name or f"openai:{model}"
        self.progress = progress
        self._stop = threading.Event()
        self._sleep = sleep if sleep is not None else self._stop.wait  # a tripped breaker cuts backoff short
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self._consecutive = 0
        self._last_failure = ""
        self.stats: Counter[str] = Counter()
        self.failed_requests: dict[str, RequestFailure] = {}

    def __repr__(self) -> str:  # never the key
        key = "set" if self.api_key else None
        return f"OpenAICompatibleGenerator({self.safe_url!r}, {self.model!r}, api_key={key})"

    # ---- one request -------------------------------------------------------------------------------------------

    def payload(self, request: GenerationRequest) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.model,
            "messages": openai_messages(request),
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_tokens,
        }
        if self.send_seed:
            body["seed"] = request_seed(request)
        body.update(self.extra_body)
        return body

    def _post(self, body: bytes, request_id: str) -> tuple[str, str | None]:
        """One attempt: (text, finish_reason), or RetryableError / RequestFailed."""
        headers = {"Content-Type": "application/json", "Accept": "application/json", "X-Request-Id": request_id}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        deadline = time.monotonic() + self.timeout
        if self._tls is not None:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        expired = threading.Event()
        sockets: list[socket.socket] = []

        def expire() -> None:  # unblocks a read that a trickling server keeps alive past the deadline
            expired.set()
            for sock in sockets:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        watchdog = threading.Timer(self.timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            conn.connect()
            sockets.append(conn.sock)  # kept: http.client drops conn.sock once a `Connection: close` reply starts
            if expired.is_set():
                raise RetryableError("timeout", detail=f"no reply within {self.timeout:g}s")
            conn.request("POST", self._target, body=body, headers=headers)
            resp = conn.getresponse()
            status = resp.status
            if 300 <= status < 400:
                location = redact_url(resp.getheader("Location") or "") or "(no Location)"
                raise RequestFailed(
                    "redirect",
                    f"HTTP {status} redirect to {location} refused: redirects are not "
                    "followed (the API key must not reach another origin); set base_url to the "
                    "final URL",
                )
            if status < 200 or status >= 300:
                snippet = self._read(resp, sockets[0], deadline, _ERROR_SNIPPET, strict=False)
                detail = f"HTTP {status}: {snippet.decode('utf-8', 'replace').strip()}"
                if status == 429 or status >= 500:
                    raise RetryableError(f"http_{status}", _retry_after(resp.getheader("Retry-After")), detail)
                raise RequestFailed(f"http_{status}", detail)
            raw = self._read(resp, sockets[0], deadline, self.max_response_bytes, strict=True)
        except RequestFailed:
            raise
        except RetryableError:
            if expired.is_set():  # the watchdog's shutdown reads as a short body: it was the deadline
                raise RetryableError("timeout", detail=f"no complete reply within {self.timeout:g}s") from None
            raise
        except ssl.SSLCertVerificationError as exc:  # retrying cannot fix a certificate
            raise RequestFailed("tls", str(exc)) from None
        except (OSError, http.client.HTTPException) as exc:  # socket.timeout is an OSError
            if expired.is_set() or time.monotonic() >= deadline or isinstance(exc, TimeoutError):
                raise RetryableError("timeout", detail=f"no complete reply within {self.timeout:g}s") from None
            raise RetryableError("connection", detail=f"{type(exc).__name__}: {exc}") from None
        finally:
            watchdog.cancel()
            conn.close()
        if expired.is_set():  # the watchdog may have cut a read that then looked like a clean end of body
            raise RetryableError("timeout", detail=f"no complete reply within {self.timeout:g}s")
        return _content(raw)

    def _read(
        self, resp: http.client.HTTPResponse, sock: socket.socket, deadline: float, cap: int, *, strict: bool
    ) -> bytes:
        """The body in chunks, each socket wait bounded by what is left of the deadline; at most `cap` bytes
        (strict: more is `too_large`, reading stops there; else the body is cut at `cap`)."""
        declared = resp.getheader("Content-Length")
        if strict and declared and declared.strip().isdigit() and int(declared) > cap:
            raise RequestFailed("too_large", f"Content-Length {declared.strip()} > max_response_bytes {cap}")
        chunks, total = [], 0
        while total <= cap:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RetryableError("timeout", detail=f"body not complete within {self.timeout:g}s")
            sock.settimeout(remaining)
            chunk = resp.read1(min(_CHUNK, cap + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > cap:
            if strict:
                raise RequestFailed("too_large", f"body exceeds max_response_bytes {cap}")
            return b"".join(chunks)[:cap]
        if strict and resp.length:  # the server closed before sending the Content-Length it announced
            raise RetryableError("connection", detail=f"body ended {resp.length} bytes early")
        return b"".join(chunks)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with "equal jitter": half the step fixed, half random; Retry-After as a floor."""
        step = min(self.max_backoff, self.backoff * 2**attempt)
        delay = step / 2 + self._rng.uniform(0, step / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay

    def _fetch(self, body: bytes, request_id: str) -> tuple[str, str | None]:
        """(text, finish_reason) within the retry budget; RequestFailed("gave_up:<reason>") when it is spent."""
        for attempt in range(self.max_retries + 1):
            if self._stop.is_set():
                raise _Cancelled()
            try:
                return self._post(body, request_id)
            except RetryableError as exc:
                self._count(f"retryable:{exc.reason}")
                if attempt == self.max_retries:
                    raise RequestFailed(
                        f"gave_up:{exc.reason}", f"{self.max_retries + 1} attempts; last: {exc.detail or exc.reason}"
                    ) from None
                self._count("retries")
                self._sleep(self._delay(attempt, exc.retry_after))
        raise AssertionError("unreachable")

    def complete(self, request: GenerationRequest) -> str:
        """Text for one request; raises RequestFailed when it cannot be obtained (or was truncated)."""
        text, finish = self._fetch(_encode(self.payload(request)), request.request_id)
        if finish == "length":
            raise RequestFailed("truncated", f"finish_reason=length at max_tokens={request.sampling.max_tokens}")
        return text

    # ---- a batch -----------------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """One text per request ("" when none; why is in `failed_requests`), reusing matching progress records.

        Raises TeacherUnavailable when the circuit breaker trips. An exception raised inside the run (e.g. by the
        `progress` callback, or KeyboardInterrupt) stops it too: queued requests are cancelled and everything
        answered so far is already on disk.
        """
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request_ids must be unique within a call (they key the progress file)")
        self._stop.clear()
        self._consecutive = 0
        self.failed_requests = {}
        done = load_progress_records(self.progress_path) if self.progress_path else {}
        for rid in set(ids) & set(done):
            keyed = [rec for rec in done[rid] if {"base_url", "model", "body_sha256"} <= set(rec)]
            if len(keyed) < len(done[rid]):
                self._count("progress_ignored:old_format")  # written before records carried their key
            done[rid] = keyed
        results: dict[str, str] = {}
        sink = None
        if self.progress_path is not None:
            self.progress_path.parent.mkdir(parents=True, exist_ok=True)
            sink = self.progress_path.open("a", encoding="utf-8")
            if _ends_torn(self.progress_path):  # a crash mid-write left half a line: never glue a record onto it
                sink.write("\n")
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai-gen")
        try:
            futures = {pool.submit(self._run_one, r, sink, done.get(r.request_id)): r.request_id for r in requests}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()  # re-raises a crash in a worker
                if self._stop.is_set():
                    raise TeacherUnavailable(self._trip_message(len(results), len(ids)), self._consecutive)
                if self.progress is not None:
                    self.progress(len(results), len(ids))
        finally:
            self._stop.set()  # workers still backing off give up at once
            pool.shutdown(wait=True, cancel_futures=True)
            self._stop.clear()  # all workers are done: `complete` may be called on its own again
            if sink is not None:
                sink.close()
        return [results.get(i, "") for i in ids]

    def _trip_message(self, finished: int, total: int) -> str:
        kept = f"; answers so far are kept in {self.progress_path}, a rerun resumes" if self.progress_path else ""
        return (
            f"teacher endpoint {self.safe_url} looks unavailable: {self._consecutive} consecutive requests "
            f"failed after {self.max_retries + 1} attempts each (last: {self._last_failure}); stopped after "
            f"{finished} of {total} requests{kept}"
        )

    def _run_one(self, request: GenerationRequest, sink, records: list[dict[str, Any]] | None) -> str:
        try:
            body = _encode(self.payload(request))
        except RequestFailed as exc:
            return self._fail(request, exc.reason, exc.detail)
        except (OSError, ValueError) as exc:  # unreadable image and the like: this request only
            return self._fail(request, type(exc).__name__, str(exc))
        key = (self.safe_url, self.model, hashlib.sha256(body).hexdigest())
        record = next(
            (r for r in reversed(records or []) if (r["base_url"], r["model"], r["body_sha256"]) == key), None
        )
        if record is not None:
            self._count("resumed")
            text, finish = record["text"], record.get("finish_reason")
        else:
            if records:
                self._count("progress_ignored:key_mismatch")  # another endpoint, model or request body
            try:
                text, finish = self._fetch(body, request.request_id)
            except _Cancelled:
                return ""
            except RequestFailed as exc:
                self._breaker(exc.reason)
                return self._fail(request, exc.reason, exc.detail)
            self._breaker(None)
            if sink is not None:
                line = json.dumps(
                    {
                        "request_id": request.request_id,
                        "text": text,
                        "finish_reason": finish,
                        "model": self.model,
                        "base_url": self.safe_url,
                        "body_sha256": key[2],
                    },
                    ensure_ascii=False,
                )
                with self._lock:
                    sink.write(line + "\n")
                    sink.flush()
        if finish == "length":
            return self._fail(
                request, "truncated", f"finish_reason=length at max_tokens={request.sampling.max_tokens}", text
            )
        self._count("ok")
        return text

    def _breaker(self, reason: str | None) -> None:
        """Count requests that spent every retry in a row; any answer from the server resets the count."""
        with self._lock:
            if reason is None or not reason.startswith("gave_up:"):
                self._consecutive = 0
                return
            self._consecutive += 1
            self._last_failure = reason.removeprefix("gave_up:")
            if self._consecutive >= self.max_consecutive_failures:
                self._stop.set()

    def _fail(self, request: GenerationRequest, reason: str, detail: str, text: str = "") -> str:
        self._count(f"failed:{reason}")
        with self._lock:
            self.failed_requests[request.request_id] = RequestFailure(reason.removeprefix("gave_up:"), detail, text)
        return ""

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1


def _endpoint(base_url: str) -> tuple[str, str, int | None, str]:
    """(scheme, host, port, path?query) of the chat-completions endpoint under `base_url`."""
    try:
        parts = urlsplit(str(base_url).strip())
        port = parts.port
    except ValueError:
        raise ValueError(f"base_url is not a URL: {redact_url(base_url)!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"base_url must be an http(s) URL with a host, got {redact_url(base_url)!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"base_url must not carry credentials (user:password@): pass api_key instead ({redact_url(base_url)})"
        )
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    return parts.scheme, parts.hostname, port, path + (f"?{parts.query}" if parts.query else "")


def _netloc(host: str, port: int | None) -> str:
    return (f"[{host}]" if ":" in host else host) + (f":{port}" if port is not None else "")


def _encode(payload: dict[str, Any]) -> bytes:
    """Canonical JSON (sorted keys): the bytes sent are the bytes hashed into the resume key."""
    return json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")


def _ends_torn(path: Path) -> bool:
    with path.open("rb") as fh:
        fh.seek(0, 2)
        if fh.tell() == 0:
            return False
        fh.seek(-1, 2)
        return fh.read(1) != b"\n"


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _content(raw: bytes) -> tuple[str, str | None]:
    try:
        choice = json.loads(raw)["choices"][0]
        content = choice["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise RequestFailed("malformed_response", "no choices[0].message.content in the reply") from None
    if not isinstance(content, str):
        raise RequestFailed("malformed_response", "choices[0].message.content is not a string")
    finish = choice.get("finish_reason") if isinstance(choice, dict) else None
    return content, finish if isinstance(finish, str) else None
