"""The `flowscale` command line.

    flowscale run JOB.yaml [--set key.path=value ...]   run a job
    flowscale validate JOB.yaml [--set ...]              check a job file and print what it would run
    flowscale methods                                    list the search methods and their settings

Bad input exits with code 2 and one line on stderr naming the field and what is allowed.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path

from flowscale_ray.config import ConfigError, read_job_file


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="flowscale",
        description="Inference-time scaling (RBF, SMC, SVDD, CoDe, SoP, Best-of-N) for flow models.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def job_command(name: str, help_text: str) -> argparse.ArgumentParser:
        cp = sub.add_parser(name, help=help_text, description=help_text)
        cp.add_argument("job", help="job file (YAML)")
        cp.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a job field, e.g. --set method.nfe_budget=100 (repeatable; VALUE is YAML)",
        )
        return cp

    job_command("run", "Run a job file.")
    job_command("validate", "Validate a job file and print the resolved configuration.")
    sub.add_parser("methods", help="List search methods and their settings.", description="List search methods.")
    return p


def _error(message: str) -> int:
    print(f"flowscale: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "methods":
        from flowscale_ray.search import METHODS

        for name, cls in METHODS.items():
            fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Config))
            print(f"{name:<6} {fields}")
        return 0
    job_path = args.job
    try:
        job = read_job_file(args.job, args.overrides)
        if args.command == "validate":
            from flowscale_ray.job import build_components, load_prompts

            prompts = load_prompts(job.prompts, Path(args.job).resolve().parent)
            build_components(job)
            print(f"{args.job}: ok ({len(prompts)} prompts)")
            print(f"  method  {job.method.name} {dataclasses.asdict(job.method.settings)}")
            print(f"  sampler {dataclasses.asdict(job.sampler)}")
            return 0
        from flowscale_ray.job import run_job

        run_job(job, base_dir=Path(args.job).resolve().parent)
        return 0
    except ConfigError as exc:
        msg = str(exc)
        return _error(msg if msg.startswith(f"{job_path}:") else f"{job_path}: {msg}")
    except KeyboardInterrupt:
        return _error("interrupted")


if __name__ == "__main__":
    sys.exit(main())
