"""The `flowscale` command line.

    flowscale run JOB.yaml [--set key.path=value ...] [--run-id ID]   run (or resume) a job
    flowscale validate JOB.yaml [--set ...]              check a job file and print what it would run
    flowscale methods                                    list the search methods and their settings
    flowscale inspect URI [--top N] [--sheet PNG]        counts, rewards and the best samples of a run
    flowscale report URI [--out FILE]                    an HTML/Markdown report with plots of a finished run
    flowscale bench [--address ADDR] [...]               overhead and scaling benchmark of a Ray cluster

Bad input exits with code 2 and one line on stderr naming the field and what is allowed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from flowscale_ray.config import ConfigError, read_job_file
from flowscale_ray.errors import first_line
from flowscale_ray.logs import configure_console


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

    run = job_command("run", "Run a job file; running it again resumes it (committed shards are skipped).")
    run.add_argument(
        "--run-id",
        metavar="ID",
        help="write to <output.dir>/ID (default: output.run_id, else the job name); a new id starts a new run",
    )
    run.add_argument(
        "--address",
        metavar="ADDR",
        help="run on the Ray cluster at ADDR ('auto' inside a Ray job, ray://HOST:10001, HOST:6379); "
        "same as --set executor.kind=ray --set executor.address=ADDR",
    )
    job_command("validate", "Validate a job file and print the resolved configuration.")
    sub.add_parser("methods", help="List search methods and their settings.", description="List search methods.")
    ip = sub.add_parser(
        "inspect",
        help="Summarize a run: counts, status, reward statistics, a contact sheet of the best samples.",
        description="Summarize a run folder (<output.dir>/<run_id>, any fsspec URI; S3 settings from --job or "
        "the AWS environment variables): counts, status, reward statistics, a contact sheet of the best samples.",
    )
    ip.add_argument("uri", help="the run folder, e.g. results/demo or s3://bucket/prefix/demo")
    ip.add_argument("--top", type=int, default=16, metavar="N", help="best samples to list and tile (default 16)")
    ip.add_argument("--sheet", metavar="PNG", help="contact sheet path (default: <run_id>-best.png here)")
    ip.add_argument("--no-sheet", action="store_true", help="do not write a contact sheet")
    ip.add_argument("--job", metavar="JOB", help="take the storage settings (S3 endpoint, ...) from this job file")
    for name, (module, help_text) in _MODULE_COMMANDS.items():
        # Each module owns its arguments: configure_parser(parser) and run(args) -> exit code.
        importlib.import_module(module).configure_parser(sub.add_parser(name, help=help_text, description=help_text))
    return p


# Commands implemented in their own modules (kept light to import: heavy imports happen inside run()).
_MODULE_COMMANDS = {
    "report": ("flowscale_ray.observe.report", "Write a self-contained HTML (or Markdown) report with plots of a run."),
    "schema": ("flowscale_ray.schema_command", "Print the JSON Schema of job files (for editors; --out FILE)."),
    "bench": (
        "flowscale_ray.benchmark.command",
        "Benchmark the runtime's overhead and scaling on a Ray cluster; JSON report.",
    ),
}


def _error(message: str) -> int:
    print(f"flowscale: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_console()
    try:
        return _main(args)
    except BrokenPipeError:  # `flowscale inspect RUN | head -1`: the reader is gone, which is not an error
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # Python's flush at exit would raise again
        return 0


def _main(args: argparse.Namespace) -> int:
    if args.command == "methods":
        from flowscale_ray.search import METHODS

        for name, cls in METHODS.items():
            fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(cls.Config))
            print(f"{name:<6} {fields}")
        return 0
    if args.command == "inspect":
        return _inspect(args)
    if args.command in _MODULE_COMMANDS:
        return importlib.import_module(_MODULE_COMMANDS[args.command][0]).run(args)
    job_path = args.job
    stop: _StopOnSigterm | None = None
    job = None
    try:
        overrides = list(args.overrides)
        if getattr(args, "run_id", None) is not None:
            overrides.append(f"output.run_id={json.dumps(args.run_id)}")
        if getattr(args, "address", None) is not None:
            overrides += ["executor.kind=ray", f"executor.address={json.dumps(args.address)}"]
        job = read_job_file(args.job, overrides)
        if job.output.run_id is None:  # neither --run-id nor output.run_id: inside a Ray job, its submission id
            job = _with_submission_run_id(job)
        if args.command == "validate":
            from flowscale_ray.run import validate_job

            for line in validate_job(job, Path(args.job).resolve().parent, source=args.job):
                print(line)
            return 0
        from flowscale_ray.run import run_with_baselines

        with _StopOnSigterm() as stop:
            run_with_baselines(job, base_dir=Path(args.job).resolve().parent)
        return 0
    except ConfigError as exc:
        msg = str(exc)
        return _error(msg if msg.startswith(f"{job_path}:") else f"{job_path}: {msg}")
    except KeyboardInterrupt:
        if stop is not None and stop.signum is not None:
            print(
                f"flowscale: error: {job_path}: stopped by {signal.Signals(stop.signum).name}; committed shards are "
                "kept: run the job again with the same run id to resume",
                file=sys.stderr,
            )
            return 128 + stop.signum
        return _error("interrupted")
    except (OSError, RuntimeError) as exc:  # storage failing after its retries, a broken model: resumable
        from flowscale_ray.io.storage import Redactor

        message = Redactor.for_storage(job.storage if job is not None else None)(first_line(exc))
        print(f"flowscale: error: {job_path}: {message}", file=sys.stderr)
        return 1


# Inside a Ray job the entrypoint learns its submission id only from the job config Ray passes it as JSON
# (ray/dashboard/modules/job/job_supervisor.py: RAY_JOB_CONFIG_JSON_ENV_VAR, metadata.job_submission_id).
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
GENERATED_SUBMISSION_PREFIX = "raysubmit_"  # ids Ray makes up when --submission-id is not given
RETRY_SUFFIX = re.compile(r"-retry\d+$")  # `NAME-retry2` resumes run NAME (Ray refuses a submission id twice)


def ray_submission_id() -> str | None:
    """The submission id of the Ray job whose entrypoint this process is, else None."""
    raw = os.environ.get(RAY_JOB_CONFIG_ENV)
    if not raw:
        return None
    try:
        metadata = json.loads(raw).get("metadata") or {}
    except (ValueError, AttributeError):
        return None
    sid = metadata.get("job_submission_id") if isinstance(metadata, dict) else None
    return sid if isinstance(sid, str) and sid else None


def run_id_for_submission(submission_id: str) -> str | None:
    """The run id a submission id names: the id without a `-retryN` suffix; None for an id Ray generated (a new
    one every time, so it would never resume: the job name is the run id then)."""
    if submission_id.startswith(GENERATED_SUBMISSION_PREFIX):
        return None
    return RETRY_SUFFIX.sub("", submission_id) or submission_id


def _with_submission_run_id(job):
    sid = ray_submission_id()
    run_id = run_id_for_submission(sid) if sid else None
    if sid and run_id is None:
        print(f"flowscale: Ray generated submission id {sid}; run id {job.run_id} (the job name)", file=sys.stderr)
    if run_id is None:
        return job
    try:
        output = dataclasses.replace(job.output, run_id=run_id)
    except ValueError as exc:
        raise ConfigError(
            "--submission-id", f"{sid!r} cannot name a run ({exc}); pass --run-id ID to flowscale run"
        ) from None
    print(f"flowscale: run id {run_id} from the Ray submission id {sid}", file=sys.stderr)
    return dataclasses.replace(job, output=output)


class _StopOnSigterm(contextlib.AbstractContextManager):
    """SIGTERM (`ray job stop`, `kill`, a pod being evicted) becomes KeyboardInterrupt: the one exception that
    Ray's blocking calls let through at once (a different one surfaces only when the call returns). The run
    unwinds: replicas are killed, a Ray started here is shut down, and the shards already committed stay (the
    writer publishes whole shards only). Later signals are ignored while that cleanup runs."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            self.signum = signum
            raise KeyboardInterrupt

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
        return None


def _inspect(args: argparse.Namespace) -> int:
    from flowscale_ray.io.inspect import contact_sheet_of_best, format_summary, summarize
    from flowscale_ray.io.storage import Redactor

    storage = None
    try:
        if args.job is not None:
            storage = read_job_file(args.job).storage
        if args.top < 0:
            raise ConfigError("--top", f"must be >= 0, got {args.top}")
        summary, fs, paths = summarize(args.uri, storage, top=args.top)
    except ConfigError as exc:
        return _error(str(exc))
    except (OSError, ValueError) as exc:
        redact = Redactor.for_storage(storage)
        first = first_line(exc, typed=False)
        return _error(f"{redact(args.uri)}: cannot read: {redact(first)}")
    print(format_summary(summary))
    if not args.no_sheet and summary.best:
        out = Path(args.sheet or f"{summary.run_id}-best.png")
        count = contact_sheet_of_best(fs, paths, summary.best, out)
        print(f"  contact sheet: {out} ({count} images)" if count else "  contact sheet: none (no images in this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
