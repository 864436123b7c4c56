"""`flowscale bench`: runtime overhead and scaling against a Ray cluster (being built; see issue 4)."""

from __future__ import annotations

import argparse
import sys


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address")


def run(args: argparse.Namespace) -> int:
    print("flowscale: error: bench is not available yet", file=sys.stderr)
    return 2
