"""Progress for people at a terminal: a tqdm bar on an interactive terminal, plain periodic log lines otherwise
(CI, Ray job logs, files).

    [############            ] 12/50 prompts  3400 NFE/s  ETA 1m20s  best 0.931
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

from flowscale_ray.logs import get_logger

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
    """A tqdm bar over the prompts, with the NFE rate, the NFE-based ETA and the best reward after it.
    Log lines go through tqdm.write (flowscale_ray.logs), which clears the bar first and redraws it after."""

    def __init__(self, stream: TextIO, min_interval_s: float = 0.2, clock: Callable[[], float] = time.monotonic):
        from tqdm import tqdm

        self.clock = clock
        self.min_interval = min_interval_s
        self._last = -math.inf
        self.bar = tqdm(
            total=0,
            file=stream,
            unit="prompt",
            bar_format="[{bar:24}] {n_fmt}/{total_fmt} prompts{desc}",  # desc: our own figures, as is
            ascii=".#",
            mininterval=0,
            dynamic_ncols=False,
            ncols=120,
            leave=True,
        )

    @staticmethod
    def figures(totals: Any, elapsed: float) -> str:
        rate, eta, best = _figures(totals, elapsed)
        failed = f" ({totals.failed} failed)" if totals.failed else ""
        return f"{failed}  {rate:.0f} NFE/s  ETA {format_duration(eta)}  best {best}"

    def _draw(self, totals: Any, elapsed: float) -> None:
        self.bar.total = totals.prompts
        self.bar.n = totals.done
        self.bar.desc = self.figures(totals, elapsed)
        self.bar.refresh()

    def update(self, totals: Any, elapsed: float) -> None:
        now = self.clock()
        if now - self._last < self.min_interval:
            return
        self._last = now
        self._draw(totals, elapsed)

    def close(self, totals: Any, elapsed: float) -> None:
        self._draw(totals, elapsed)
        self.bar.close()


class LogProgress:
    """A plain line through `log` (default: the package's logger) every `interval_s` seconds (none for runs
    shorter than that)."""

    def __init__(
        self, log: Callable[[str], None] | None, interval_s: float, clock: Callable[[], float] = time.monotonic
    ):
        self.log = log if log is not None else get_logger(__name__).info
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
    mode: str, interval_s: float, stream: TextIO | None = None, log: Callable[[str], None] | None = None
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
