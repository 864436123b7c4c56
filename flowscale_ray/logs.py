"""Logging: the package logs through stdlib `logging` under the `flowscale_ray` logger and never prints.

The command line installs a console handler (`configure_console`) that writes each message as a plain line on
stdout through `tqdm.write`, so a progress bar on the terminal is cleared before the line and redrawn after it.
A library user gets nothing unless they configure logging themselves (INFO under `flowscale_ray`).

Credentials never reach a log: a run adds a `RedactingFilter` built from its storage settings
(`redacting(redact)`), which rewrites every record of the package before any handler sees it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

ROOT = "flowscale_ray"
_active: list[logging.Filter] = []  # redaction filters of the runs in progress


def get_logger(name: str) -> logging.Logger:
    """The package's logger for a module (`get_logger(__name__)`); a logger made during a run gets the run's
    redaction filters too."""
    logger = logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")
    for flt in _active:
        if flt not in logger.filters:
            logger.addFilter(flt)
    return logger


class RedactingFilter(logging.Filter):
    """Rewrites a record's message with `redact` (secret values become '<redacted>')."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


@contextlib.contextmanager
def redacting(redact: Callable[[str], str]) -> Iterator[None]:
    """Within the block, every record logged under `flowscale_ray` (or its children) is redacted first."""
    flt = RedactingFilter(redact)
    # A logger's filters see only the records logged on that very logger: attach to every logger of the package
    # (get_logger attaches it to those made later in the block).
    loggers = [logging.getLogger(ROOT)]
    loggers += [
        lg
        for name, lg in logging.Logger.manager.loggerDict.items()
        if name.startswith(ROOT + ".") and isinstance(lg, logging.Logger)
    ]
    for lg in loggers:
        lg.addFilter(flt)
    _active.append(flt)
    try:
        yield
    finally:
        _active.remove(flt)
        for each in [logging.getLogger(ROOT), *logging.Logger.manager.loggerDict.values()]:
            if isinstance(each, logging.Logger):
                each.removeFilter(flt)


class ConsoleHandler(logging.Handler):
    """Plain lines on stdout (looked up at each record, so redirection works), through tqdm so that a progress
    bar is cleared first and redrawn after."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            from tqdm import tqdm

            tqdm.write(message, file=sys.stdout)
        except Exception:  # a logging handler never raises (the logging module's convention)
            self.handleError(record)


def configure_console(level: int = logging.INFO) -> None:
    """Log the package's INFO lines to the console, once per process (the `flowscale` command calls it)."""
    logger = logging.getLogger(ROOT)
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        logger.addHandler(ConsoleHandler())
    logger.setLevel(level)
    logger.propagate = False
