"""Progress for people at a terminal: a one-line bar redrawn in place on an interactive terminal, plain
periodic log lines otherwise (CI, Ray job logs, files).

    [##########..........] 12/50 prompts  3400 NFE/s  ETA 1m20s  best 0.931
    progress: 12/50 prompts (0 failed), 40800 NFE, 3400 NFE/s, ETA 1m20s, best reward 0.931

The ETA comes from the NFE still planned (the methods' planned NFE per prompt) at the NFE rate so far, so it
moves while long prompts run, not only when they finish.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

BAR_WIDTH = 24
MODES = ("auto", "bar", "log", "off")


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def _figures(totals: Any, elapsed: float) -> tuple[float, float, str]:
    rate = totals.nfe / elapsed if elapsed > 0 else 0.0
    remaining = max(0, totals.planned_nfe - totals.nfe)
    if totals.done >= totals.prompts:
        eta = 0.0
    elif rate > 0:
        eta = remaining / rate
    else:
        eta = math.inf
    best = f"{totals.best_reward:.4g}" if math.isfinite(totals.best_reward) else "-"
    return rate, eta, best


class BarProgress:
    """Redraws one line with '\\r' at most every `min_interval_s` (and at the end)."""

    def __init__(self, stream: TextIO, min_interval_s: float = 0.2, clock: Callable[[], float] = time.monotonic):
        self.stream = stream
        self.min_interval = min_interval_s
        self.clock = clock
        self._last = -math.inf
        self._width = 0

    def line(self, totals: Any, elapsed: float) -> str:
        rate, eta, best = _figures(totals, elapsed)
        frac = totals.done / totals.prompts if totals.prompts else 1.0
        filled = round(frac * BAR_WIDTH)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        failed = f" ({totals.failed} failed)" if totals.failed else ""
        return (
            f"[{bar}] {totals.done}/{totals.prompts} prompts{failed}  {rate:.0f} NFE/s  "
            f"ETA {format_duration(eta)}  best {best}"
        )

    def _draw(self, text: str) -> None:
        pad = " " * max(0, self._width - len(text))
        self.stream.write("\r" + text + pad)
        self.stream.flush()
        self._width = len(text)

    def wrap_log(self, log: Callable[[str], None]) -> Callable[[str], None]:
        """`log`, clearing the bar first so that a log line never lands in the middle of it (redrawn on the
        next update)."""

        def clearing(message: str) -> None:
            if self._width:
                self.stream.write("\r" + " " * self._width + "\r")
                self.stream.flush()
                self._width = 0
                self._last = -math.inf
            log(message)

        return clearing

    def update(self, totals: Any, elapsed: float) -> None:
        now = self.clock()
        if now - self._last < self.min_interval:
            return
        self._last = now
        self._draw(self.line(totals, elapsed))

    def close(self, totals: Any, elapsed: float) -> None:
        self._draw(self.line(totals, elapsed))
        self.stream.write("\n")
        self.stream.flush()


class LogProgress:
    """A plain line through `log` every `interval_s` seconds (none for runs shorter than that)."""

    def __init__(self, log: Callable[[str], None], interval_s: float, clock: Callable[[], float] = time.monotonic):
        self.log = log
        self.interval = interval_s
        self.clock = clock
        self._next = clock() + interval_s

    def line(self, totals: Any, elapsed: float) -> str:
        rate, eta, best = _figures(totals, elapsed)
        return (
            f"progress: {totals.done}/{totals.prompts} prompts ({totals.failed} failed), {totals.nfe} NFE, "
            f"{rate:.0f} NFE/s, ETA {format_duration(eta)}, best reward {best}"
        )

    def update(self, totals: Any, elapsed: float) -> None:
        now = self.clock()
        if now < self._next:
            return
        self._next = now + self.interval
        self.log(self.line(totals, elapsed))

    def close(self, totals: Any, elapsed: float) -> None:
        pass  # the run's own summary line follows


def make_progress(
    mode: str, log: Callable[[str], None], interval_s: float, stream: TextIO | None = None
) -> BarProgress | LogProgress | None:
    """'auto': a bar when `stream` (default stderr) is an interactive terminal, else log lines; 'bar', 'log',
    'off' force one."""
    if mode not in MODES:
        raise ValueError(f"progress: must be one of {', '.join(MODES)}; got {mode!r}")
    stream = stream if stream is not None else sys.stderr
    if mode == "auto":
        isatty = getattr(stream, "isatty", None)
        mode = "bar" if isatty is not None and isatty() else "log"
    if mode == "bar":
        return BarProgress(stream)
    if mode == "log":
        return LogProgress(log, interval_s)
    return None
