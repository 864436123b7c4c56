"""`flowscale schema [--out FILE]`: the JSON Schema (draft 2020-12) of job files.

It is generated from the one definition of the job (`flowscale_ray.config.JobConfig`, through pydantic), so it
lists exactly the keys `flowscale validate` accepts: each section's fields with their types, defaults, ranges and
descriptions; `sampler.preset`; and `method` as one object per registered search method, told apart by `name`
(`oneOf`). A copy is committed at docs/job-schema.json (a test keeps it equal to this command's output).

Editors use it for completion, hover docs and red squiggles while you write a job file. With the YAML language
server (VS Code's YAML extension, Neovim, Helix, ...), put this line at the top of the job file:

    # yaml-language-server: $schema=../docs/job-schema.json

(a path relative to the job file, or a URL), or map a glob to it in the editor settings, e.g. VS Code:
`"yaml.schemas": {"docs/job-schema.json": "jobs/*.yaml"}`. The schema checks the shape of a file; what needs
the files, models or the cluster (a prompt file exists, a model name is registered) `flowscale validate` checks.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DRAFT = "https://json-schema.org/draft/2020-12/schema"


def job_schema() -> dict[str, Any]:
    """The job file's JSON Schema as a dict."""
    from pydantic.json_schema import GenerateJsonSchema

    from flowscale_ray.config import job_adapter

    class _Generator(GenerateJsonSchema):
        def field_title_should_be_set(self, schema: Any) -> bool:
            return False  # 'title: In Flight' on every field is noise; the key is the title

    body = job_adapter().json_schema(schema_generator=_Generator)
    body.pop("title", None)
    return {"$schema": DRAFT, "title": "flowscale job file", **body}


def render() -> str:
    return json.dumps(job_schema(), indent=2) + "\n"


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="FILE", help="write the schema to FILE instead of printing it")


def run(args: argparse.Namespace) -> int:
    text = render()
    if args.out:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
