"""A Pipes message reader that never parses half a line.

Why not Dagster's temp-file reader: it tails the message file with `readline()`, and at the end of the file that
returns whatever the training process has appended so far. When the read lands inside a write (two busy cores, a
progress line every few seconds), it hands half a JSON message to `json.loads`; the reader thread dies and every
later message, the final materialization included, is lost. This reader keeps the partial line until its newline
arrives, and drains the file once more after the process has exited, so the last messages are read too.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

import dagster as dg

FILE_PATH_KEY = "path"  # the parameter `dagster_pipes.PipesDefaultMessageWriter` opens a file channel on
POLL_SECONDS = 0.01


class CompleteLineReader:
    """Splits text read from a growing file into complete lines; a partial last line waits for its newline."""

    def __init__(self) -> None:
        self._partial = ""

    def feed(self, text: str) -> list[str]:
        text = self._partial + text
        *lines, self._partial = text.split("\n")
        return [line for line in lines if line.strip()]

    def finish(self) -> list[str]:
        """The unterminated rest, once the writer is gone (a message written without its newline)."""
        rest, self._partial = self._partial, ""
        return [rest] if rest.strip() else []


class LineSafeFileMessageReader(dg.PipesMessageReader):
    """Reads Pipes messages from a temporary file, one complete line at a time (module docstring)."""

    @contextmanager
    def read_messages(self, handler: Any) -> Iterator[dict[str, Any]]:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "messages.jsonl")
            open(path, "w", encoding="utf-8").close()
            closed = threading.Event()
            thread = threading.Thread(target=self._read, args=(path, handler, closed), daemon=True)
            thread.start()
            try:
                yield {FILE_PATH_KEY: path}
            finally:
                closed.set()
                thread.join()

    def _read(self, path: str, handler: Any, closed: threading.Event) -> None:
        def emit(line: str) -> None:
            try:
                message = json.loads(line)
            except json.JSONDecodeError:  # a stray write, not ours: say so in the run and keep reading the rest
                handler.report_pipes_framework_exception(
                    f"{type(self).__name__}: unreadable Pipes message line {line[:200]!r}", sys.exc_info()
                )
                return
            handler.handle_message(message)

        try:
            with open(path, encoding="utf-8") as stream:
                follow(stream, closed.is_set, emit)
        except Exception:
            handler.report_pipes_framework_exception(f"{type(self).__name__} reader thread", sys.exc_info())
            raise

    def no_messages_debug_text(self) -> str:
        return "Attempted to read messages from a local temporary file (skinr1 line-safe reader)."


def follow(stream: TextIO, stopped: Any, emit: Any, *, poll_seconds: float = POLL_SECONDS) -> None:
    """Call `emit(line)` for each complete line appended to `stream` until `stopped()`, then drain what is left.

    `stopped` is checked before the read that follows it, so text written just before the stop is still read.
    """
    lines = CompleteLineReader()
    while True:
        done = stopped()
        chunk = stream.read()
        for line in lines.feed(chunk):
            emit(line)
        if done:
            break
        if not chunk:
            time.sleep(poll_seconds)
    for line in lines.finish():
        emit(line)
