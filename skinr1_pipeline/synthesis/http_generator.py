"""A `Generator` over any OpenAI-compatible chat-completions server (OpenAI, a `vllm serve` host, a gateway).

Why these mechanics: a teacher run is hours of remote calls, so it must survive what remote calls do.
* Bounded concurrency (a thread pool of `concurrency` workers): throughput without tripping rate limits.
* Retries with exponential backoff and jitter on timeouts, connection errors, 5xx and 429 (honouring a numeric
  `Retry-After`, capped at `max_backoff`); other 4xx are the caller's bug and are not retried.
* Resumable progress: every successful text is appended (flushed) to a JSONL keyed by `request_id` the moment it
  arrives; a rerun reads that file and requests only ids missing from it, so a crash at item 9,000 of 10,000 costs
  the in-flight requests, not 9,000. Failed requests are *not* written, so a rerun retries them.
* A malformed response (not JSON, no `choices[0].message.content` string) counts as a failure ("" per the
  Generator contract) and is not retried: a server that answers garbage once usually answers garbage again.
Images (a path or PIL image in a content part, or the request's `image_path`) are sent as base64 data URLs.
Stdlib `urllib` only, so the generator adds no dependency.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import random
import socket
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any, Callable, Sequence

from PIL import Image

from skinr1_pipeline.synthesis.generators import request_seed
from skinr1_pipeline.synthesis.trajectories import GenerationRequest

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif"}


class RetryableError(Exception):
    """Timeout, connection failure, 5xx or 429: worth another attempt after a pause."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason, self.retry_after = reason, retry_after


class RequestFailed(Exception):
    """Not worth retrying: a 4xx other than 429, or a malformed response body."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
                source = part.get("image") if isinstance(part.get("image"), (str, Path, Image.Image)) \
                    else request.image_path
                if source is None:
                    raise RequestFailed("image_missing")
                parts.append({"type": "image_url", "image_url": {"url": image_data_url(source)}})
            else:
                parts.append({"type": "text", "text": part.get("text", "")} if isinstance(part, dict)
                             else {"type": "text", "text": str(part)})
        out.append({"role": message["role"], "content": parts})
    return out


def load_progress(path: str | Path) -> dict[str, str]:
    """request_id -> text from a progress JSONL; a torn last line (crash mid-write) is ignored."""
    done: dict[str, str] = {}
    p = Path(path)
    if not p.is_file():
        return done
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("request_id"), str) and isinstance(rec.get("text"), str):
            done[rec["request_id"]] = rec["text"]
    return done


class OpenAICompatibleGenerator:
    """Chat completions over HTTP, concurrent, retried and resumable (see the module docstring)."""

    def __init__(self, base_url: str, model: str, *, api_key: str | None = None, timeout: float = 120.0,
                 max_retries: int = 5, backoff: float = 1.0, max_backoff: float = 60.0, concurrency: int = 8,
                 progress_path: str | Path | None = None, extra_body: dict[str, Any] | None = None,
                 send_seed: bool = True, name: str | None = None,
                 progress: Callable[[int, int], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep, rng: random.Random | None = None) -> None:
        if concurrency < 1 or max_retries < 0:
            raise ValueError("concurrency must be >= 1 and max_retries >= 0")
        self.url = base_url.rstrip("/") + ("" if base_url.rstrip("/").endswith("/chat/completions")
                                           else "/chat/completions")
        self.model, self.api_key, self.timeout = model, api_key, timeout
        self.max_retries, self.backoff, self.max_backoff = max_retries, backoff, max_backoff
        self.concurrency, self.extra_body, self.send_seed = concurrency, dict(extra_body or {}), send_seed
        self.progress_path = Path(progress_path) if progress_path else None
        self.name = name or f"openai:{model}"
        self.progress, self._sleep = progress, sleep
        self._rng = rng or random.Random()
        self._lock = threading.Lock()
        self.stats: Counter[str] = Counter()

    # ---- one request -------------------------------------------------------------------------------------------

    def payload(self, request: GenerationRequest) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {"model": self.model, "messages": openai_messages(request),
                                "temperature": s.temperature, "top_p": s.top_p, "max_tokens": s.max_tokens}
        if self.send_seed:
            body["seed"] = request_seed(request)
        body.update(self.extra_body)
        return body

    def _post(self, body: bytes, request_id: str) -> str:
        headers = {"Content-Type": "application/json", "X-Request-Id": request_id}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code == 429 or exc.code >= 500:
                raise RetryableError(f"http_{exc.code}", _retry_after(exc.headers.get("Retry-After"))) from None
            raise RequestFailed(f"http_{exc.code}") from None
        except (TimeoutError, socket.timeout):
            raise RetryableError("timeout") from None
        except urllib.error.URLError as exc:
            reason = "timeout" if isinstance(exc.reason, (TimeoutError, socket.timeout)) else "connection"
            raise RetryableError(reason) from None
        except (ConnectionError, http.client.HTTPException):
            raise RetryableError("connection") from None
        return _content(raw)

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with "equal jitter": half the step fixed, half random; Retry-After as a floor."""
        step = min(self.max_backoff, self.backoff * 2 ** attempt)
        delay = step / 2 + self._rng.uniform(0, step / 2)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_backoff))
        return delay

    def complete(self, request: GenerationRequest) -> str:
        """Text for one request; raises RequestFailed when it cannot be obtained within the retry budget."""
        body = json.dumps(self.payload(request)).encode("utf-8")
        for attempt in range(self.max_retries + 1):
            try:
                return self._post(body, request.request_id)
            except RetryableError as exc:
                self._count(f"retryable:{exc.reason}")
                if attempt == self.max_retries:
                    raise RequestFailed(f"gave_up:{exc.reason}") from None
                self._count("retries")
                self._sleep(self._delay(attempt, exc.retry_after))
        raise AssertionError("unreachable")

    # ---- a batch -----------------------------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest]) -> list[str]:
        """One text per request ("" on failure), skipping ids already in `progress_path`.

        An exception raised inside the run (e.g. by the `progress` callback, or KeyboardInterrupt) stops it: queued
        requests are cancelled and everything finished so far is already on disk.
        """
        ids = [r.request_id for r in requests]
        if len(set(ids)) != len(ids):
            raise ValueError("request_ids must be unique within a call (they key the progress file)")
        done = load_progress(self.progress_path) if self.progress_path else {}
        self.stats["resumed"] += sum(1 for i in ids if i in done)
        todo = [r for r in requests if r.request_id not in done]
        results: dict[str, str] = {i: done[i] for i in ids if i in done}
        sink = None
        if self.progress_path is not None:
            self.progress_path.parent.mkdir(parents=True, exist_ok=True)
            sink = self.progress_path.open("a", encoding="utf-8")
            if _ends_torn(self.progress_path):  # a crash mid-write left half a line: never glue a record onto it
                sink.write("\n")
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="openai-gen")
        try:
            futures = {pool.submit(self._run_one, r, sink): r.request_id for r in todo}
            for fut in as_completed(futures):
                results[futures[fut]] = fut.result()  # re-raises a crash in a worker
                if self.progress is not None:
                    self.progress(len(results), len(ids))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if sink is not None:
                sink.close()
        return [results.get(i, "") for i in ids]

    def _run_one(self, request: GenerationRequest, sink) -> str:
        try:
            text = self.complete(request)
        except RequestFailed as exc:
            self._count(f"failed:{exc.reason}")
            return ""
        except (OSError, ValueError) as exc:  # unreadable image and the like: this request only
            self._count(f"failed:{type(exc).__name__}")
            return ""
        self._count("ok")
        if sink is not None:
            line = json.dumps({"request_id": request.request_id, "text": text, "model": self.model},
                              ensure_ascii=False)
            with self._lock:
                sink.write(line + "\n")
                sink.flush()
        return text

    def _count(self, key: str) -> None:
        with self._lock:
            self.stats[key] += 1


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


def _content(raw: bytes) -> str:
    try:
        data = json.loads(raw)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise RequestFailed("malformed_response") from None
    if not isinstance(content, str):
        raise RequestFailed("malformed_response")
    return content
