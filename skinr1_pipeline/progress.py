"""Progress of long steps as a text bar with rate and ETA, throttled to one line every few seconds.

Why text lines and not a terminal bar: inside Dagster (and under Pipes) the output people watch is the run log in
the UI, which shows log records, not a redrawn terminal line. One bar per `every_s` keeps the log readable while a
step of minutes still shows it is moving.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def text_bar(done: int, total: int, elapsed_s: float, *, unit: str = "it", width: int = 20) -> str:
    """`[########............] 40/100 (40%) 12.5 it/s, 3s elapsed, ETA 5s`."""
    frac = min(max(done / total, 0.0), 1.0) if total > 0 else 1.0
    filled = int(frac * width)
    rate = done / elapsed_s if elapsed_s > 0 else None
    eta = (total - done) / rate if rate and total > done else (0.0 if done >= total else None)
    speed = f"{rate:,.1f} {unit}/s" if rate is not None else f"? {unit}/s"
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {done:,}/{total:,} ({frac:.0%}) {speed}, "
        f"{_duration(elapsed_s)} elapsed, ETA {_duration(eta)}"
    )


class LogProgress:
    """A `progress(done, total)` callback that logs `label [bar]` on the first call, the last, and every `every_s`."""

    def __init__(
        self,
        label: str,
        log: Callable[[str], None],
        *,
        unit: str = "it",
        every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.label, self.log, self.unit, self.every_s, self.clock = label, log, unit, every_s, clock
        self.start = clock()
        self.last: float | None = None

    def __call__(self, done: int, total: int, detail: str = "") -> None:
        now = self.clock()
        if self.last is None or done >= total or now - self.last >= self.every_s:
            self.last = now
            line = f"{self.label} {text_bar(done, total, now - self.start, unit=self.unit)}"
            self.log(f"{line} {detail}" if detail else line)
