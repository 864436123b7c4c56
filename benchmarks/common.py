"""Shared benchmark plumbing: where figures go and how they are saved."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def run_counting(model, spec, reward, held, method_name: str, settings: dict[str, Any], tasks) -> tuple[list, Any]:
    """Run one method on the built-in counting task in process, all `tasks` ((Prompt, seed) pairs) in flight.
    Returns the TaskResults sorted by prompt id and their exact-count accuracy (a tensor, one value per result)."""
    from flowscale_ray.builtin import counting
    from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
    from flowscale_ray.search import METHODS

    method = METHODS[method_name](METHODS[method_name].Config(**settings))
    ex = InProcessExecutor(ParticleEngine(model, spec), reward, held, in_flight=len(tasks))
    results = sorted(ex.run([SearchTask(p, method, seed) for p, seed in tasks]), key=lambda r: r.prompt.id)
    accuracy = counting.accuracy(torch.stack([r.image for r in results]), [r.prompt for r in results])
    return results, accuracy


def machine() -> dict[str, Any]:
    import os

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def save(name: str, data: dict[str, Any], markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps({"machine": machine(), **data}, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(markdown + "\n")
    print(markdown)
    print(f"\nsaved {RESULTS / name}.json and .md")


def bench_report(args) -> dict[str, Any]:
    """Run `flowscale bench` with parsed `args` on a local Ray and return its JSON report (exit 2 on failure)."""
    import os
    import tempfile

    from flowscale_ray.benchmark.command import run as bench

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with tempfile.TemporaryDirectory() as tmp:
        args.out = str(Path(tmp) / "bench.json")
        if bench(args) != 0:
            raise SystemExit(2)
        return json.loads(Path(args.out).read_text())


def mean_se(values, single: float = 0.0) -> tuple[float, float]:
    """Mean and standard error (unbiased std / sqrt(n)) of `values`; the error of a single value is `single`."""
    t = torch.as_tensor(list(values), dtype=torch.float64)
    return t.mean().item(), (t.std() / len(t) ** 0.5).item() if len(t) > 1 else single
