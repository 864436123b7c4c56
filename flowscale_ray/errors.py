"""The package's error base class and the one helper that turns an exception into one line.

Every error a user can cause is a `FlowscaleError` whose str() is one line (the command line prints it and
exits 2): `ConfigError` (a bad job file, prompt file, model folder or output location) and its subclasses.
Faults of the machinery (a replica that keeps dying) are `RuntimeFailure` in the runtime.
"""

from __future__ import annotations


class FlowscaleError(Exception):
    """Base class of flowscale_ray's own errors."""


def first_line(exc: BaseException, typed: bool = True) -> str:
    """The first non-empty line of `exc`'s message, after its type name when `typed` ('ValueError: ...');
    the type name alone when the message is empty."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0].strip()}" if typed else lines[0].strip()
