"""`flowscale inspect URI`: what a run holds. Counts, status, reward statistics and a contact sheet of the best
samples, read from the committed shards only (a run still in progress, or killed, can be inspected too)."""

from __future__ import annotations

import contextlib
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from flowscale_ray.config import ConfigError, StorageConfig
from flowscale_ray.io.schema import STATUSES
from flowscale_ray.io.storage import Redactor, open_filesystem
from flowscale_ray.io.writer import DATA, RUN_FILE, committed_shards, find_layout, read_record, shard_file

STAT_COLUMNS = ["prompt_id", "prompt", "rank", "status", "reward", "held_out", "nfe"]


@dataclass
class RunSummary:
    uri: str
    run_id: str
    config_hash: str
    complete: bool
    shards_committed: int
    shards_total: int
    prompts_total: int
    prompts_committed: int
    rows: int
    status: dict[str, int]
    reward: dict[str, float] = field(default_factory=dict)
    held_out: dict[str, float] = field(default_factory=dict)
    nfe_per_prompt: float | None = None
    best: list[dict[str, Any]] = field(default_factory=list)  # prompt_id, rank, prompt, reward, held_out
    config: dict[str, Any] = field(default_factory=dict)


def _stats(values: list[float]) -> dict[str, float]:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {}
    ordered = sorted(values)
    return {
        "count": len(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": ordered[0],
        "median": statistics.median(ordered),
        "max": ordered[-1],
    }


def summarize(uri: str, storage: StorageConfig | None = None, top: int = 16) -> tuple[RunSummary, Any, list[str]]:
    """(summary, filesystem, committed data paths) of the run at `uri` (its folder, `<output>/<run_id>`)."""
    redact = Redactor.for_storage(storage)
    fs, root = open_filesystem(uri, storage)
    root = root.rstrip("/")
    layout = find_layout(fs, root)
    if layout is None:
        raise ConfigError("inspect", f"{redact(uri)}: not a flowscale run (no {RUN_FILE})")
    fix = "it records the run there: restore it to inspect the run (its data files are read as they are)"
    run = read_record(fs.cat_file(f"{root}/{layout.run_file}"), f"{redact(root)}/{layout.run_file}", fix, "inspect")
    shards = committed_shards(fs, root)
    paths = [f"{root}/{DATA}/{shard_file(i)}" for i in shards]
    table = (
        ds.dataset(paths, filesystem=fs, format="parquet").to_table(columns=STAT_COLUMNS)
        if paths
        else pa.table({c: pa.array([], pa.null()) for c in STAT_COLUMNS})
    )
    rows = table.to_pylist()
    status = dict.fromkeys(STATUSES, 0)
    for r in rows:
        status[r["status"]] = status.get(r["status"], 0) + 1
    best_rows = [r for r in rows if r["status"] == "ok" and r["rank"] == 0]
    nfe_by_prompt = {r["prompt_id"]: r["nfe"] for r in rows if r["nfe"] is not None}
    complete = fs.exists(f"{root}/{layout.success}")
    config = run.get("config", {})
    if complete:
        with contextlib.suppress(FileNotFoundError, ValueError):  # a damaged manifest: the run record's config
            config = json.loads(fs.cat_file(f"{root}/{layout.manifest}")).get("config", config)
    num_prompts = int(run.get("num_prompts", 0))
    shard_size = int(run.get("shard_size", 1))
    ok = sorted((r for r in rows if r["status"] == "ok"), key=lambda r: -r["reward"])
    summary = RunSummary(
        uri=redact(uri),
        run_id=run.get("run_id", "?"),
        config_hash=run.get("config_hash", "?"),
        complete=complete,
        shards_committed=len(shards),
        shards_total=-(-num_prompts // shard_size) if num_prompts else 0,
        prompts_total=num_prompts,
        prompts_committed=len({r["prompt_id"] for r in rows}),
        rows=len(rows),
        status=status,
        reward=_stats([r["reward"] for r in best_rows]),
        held_out=_stats([r["held_out"] for r in best_rows]),
        nfe_per_prompt=statistics.fmean(nfe_by_prompt.values()) if nfe_by_prompt else None,
        best=[{k: r[k] for k in ("prompt_id", "rank", "prompt", "reward", "held_out")} for r in ok[:top]],
        config=config,
    )
    return summary, fs, paths


def format_summary(s: RunSummary) -> str:
    state = "complete" if s.complete else f"incomplete: {s.shards_committed} of {s.shards_total} shards committed"
    method = s.config.get("method", {})
    lines = [
        f"run {s.run_id} at {s.uri}: {state}",
        f"  config hash {s.config_hash}; model {s.config.get('model', {}).get('name', '?')}, "
        f"method {method.get('name', '?')}, reward {s.config.get('reward', {}).get('name', '?')}",
        f"  prompts {s.prompts_committed} of {s.prompts_total} committed; rows {s.rows}: "
        + ", ".join(f"{k} {v}" for k, v in s.status.items()),
    ]
    if s.nfe_per_prompt is not None:
        lines.append(f"  NFE per prompt {s.nfe_per_prompt:.1f}")
    for label, st in (("reward", s.reward), ("held-out", s.held_out)):
        if st:
            lines.append(
                f"  {label:<8} (best per prompt, n={st['count']}): mean {st['mean']:.4g} ± {st['std']:.3g}, "
                f"min {st['min']:.4g}, median {st['median']:.4g}, max {st['max']:.4g}"
            )
    if s.best:
        lines.append(f"  best {len(s.best)} samples:")
        for i, b in enumerate(s.best):
            held = f"  held-out {b['held_out']:.4g}" if b["held_out"] is not None else ""
            text = b["prompt"] if len(b["prompt"]) <= 50 else b["prompt"][:47] + "..."
            lines.append(f"    {i + 1:>3}. {b['prompt_id']} #{b['rank']}  reward {b['reward']:.4g}{held}  {text}")
    return "\n".join(lines)


def contact_sheet_of_best(fs: Any, paths: list[str], best: list[dict[str, Any]], out: Path) -> int:
    """Write a contact sheet (PNG) of the best rows' images, best first; returns how many it holds."""
    import numpy as np
    import torch
    from PIL import Image

    from flowscale_ray.images import contact_sheet, save_png

    if not best or not paths:
        return 0
    ids = pa.array(sorted({b["prompt_id"] for b in best}))
    table = ds.dataset(paths, filesystem=fs, format="parquet").to_table(
        columns=["prompt_id", "rank", "image"], filter=pc.field("prompt_id").isin(ids) & pc.field("image").is_valid()
    )
    images = {(r["prompt_id"], r["rank"]): r["image"] for r in table.to_pylist()}
    tensors = []
    for b in best:
        image = images.get((b["prompt_id"], b["rank"]))
        if image is None or image.get("bytes") is None:
            continue
        opened = Image.open(io.BytesIO(image["bytes"]))
        pil = opened.convert("L" if opened.mode in ("L", "1", "I", "F") else "RGB")
        arr = torch.from_numpy(np.asarray(pil, dtype=np.float32) / 255.0)
        tensors.append(arr[None] if arr.ndim == 2 else arr.permute(2, 0, 1))
    if not tensors:
        return 0
    channels = max(t.shape[0] for t in tensors)
    tensors = [t.expand(channels, -1, -1) if t.shape[0] != channels else t for t in tensors]
    if len({tuple(t.shape) for t in tensors}) > 1:  # mixed sizes: keep those of the best one's size
        tensors = [t for t in tensors if t.shape == tensors[0].shape]
    sheet = contact_sheet(tensors)
    scale = max(1, 256 // max(tensors[0].shape[1:]))
    out.parent.mkdir(parents=True, exist_ok=True)
    save_png(sheet, out, scale=min(scale, 8))
    return len(tensors)
