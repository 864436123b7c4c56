"""`flowscale report URI`: a self-contained report of a run (being built; see issue 6)."""

from __future__ import annotations

import argparse
import sys


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("uri", help="the run folder, e.g. results/demo or s3://bucket/prefix/demo")


def run(args: argparse.Namespace) -> int:
    print("flowscale: error: report is not available yet", file=sys.stderr)
    return 2
