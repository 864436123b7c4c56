"""The output dataset's Arrow schema: the one place that defines it (the README's table is generated from
`COLUMNS`, and a test keeps the two in step).

One row per kept sample (`status = "ok"`, `rank` 0 is the prompt's best), or one row per prompt that kept
nothing (`status = "filtered"`: `error` says why, the image is null, the metrics are the best sample's) or
whose search raised (`status = "failed"`: `error` holds the message). The `image` column is
`struct<bytes: binary, path: string>` holding a PNG, and the schema carries Hugging Face `datasets` metadata
that declares it an `Image` feature, so `load_dataset("parquet", ...)` decodes it.

`lineage` lists the requests from the root to the selected particle (an Init, then Expands with their moves
and noise keys): with the run seed, the prompt id and the sampler it replays the sample exactly
(`decode_lineage` turns it back into the requests the engine runs).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from flowscale_ray.search.protocol import Expand, Init, Move, NoiseKey, StepRecord

# 3: `compute_units`, `model_seconds`, `reward_seconds`.
# 2: `rounds` and `budget_stop` (dataset budgets); `seed` is the selected round's
SCHEMA_VERSION = 3

IMAGE = pa.struct([pa.field("bytes", pa.binary()), pa.field("path", pa.string())])
NOISE = pa.struct(
    [
        pa.field("chain", pa.int32()),
        pa.field("step", pa.int32()),
        pa.field("candidate", pa.int32()),
        pa.field("stream", pa.int32()),
    ]
)
MOVE = pa.struct([pa.field("s_to", pa.float64()), pa.field("noise", NOISE), pa.field("renoise", pa.bool_())])
REQUEST = pa.struct(
    [
        pa.field("kind", pa.string()),  # "init" or "expand"
        pa.field("pid", pa.int64()),
        pa.field("parent", pa.int64()),  # null for an init
        pa.field("noise", NOISE),  # an init's noise; null for an expand
        pa.field("moves", pa.list_(MOVE)),  # an expand's moves; null for an init
        pa.field("score", pa.bool_()),
    ]
)
STEP = pa.struct(
    [
        pa.field("step", pa.int32()),
        pa.field("s", pa.float64()),
        pa.field("nfe", pa.int64()),
        pa.field("candidates", pa.int32()),
        pa.field("best_reward", pa.float64()),
        pa.field("accepted", pa.int32()),
        pa.field("rollover", pa.int32()),
        pa.field("resampled", pa.bool_()),
        pa.field("ess", pa.float64()),
        pa.field("extra", pa.string()),  # JSON
    ]
)

STATUSES = ("ok", "filtered", "failed")

# (name, type, description): the schema and its documentation.
COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("run_id", pa.string(), "run id (`output.run_id`, default the job name)"),
    ("prompt_id", pa.string(), "stable prompt id (given, or derived from row number and text)"),
    ("prompt", pa.string(), "prompt text"),
    ("prompt_metadata", pa.string(), "the prompt's own fields from the source (e.g. `counts`), JSON"),
    ("rank", pa.int32(), "0 = the prompt's best kept sample, 1 = the next, ...; null when nothing was kept"),
    ("status", pa.string(), "`ok` (a kept sample), `filtered` (nothing met the thresholds) or `failed`"),
    ("error", pa.string(), "why nothing was kept (`filtered`) or the error message (`failed`); else null"),
    (
        "seed",
        pa.int64(),
        "effective seed of the selected sample's search (the prompt's own, else the run seed; "
        "a dataset budget's later round derives its own)",
    ),
    ("method", pa.string(), "search method name (`rbf`, `smc`, ...)"),
    ("method_settings", pa.string(), "the method's settings, JSON"),
    ("model_id", pa.string(), "model id"),
    ("reward_name", pa.string(), "the reward the search optimised"),
    ("reward", pa.float64(), "given reward of the final sample"),
    ("search_reward", pa.float64(), "reward of the selected particle at its last search evaluation"),
    ("held_out_name", pa.string(), "held-out reward name (null when none)"),
    ("held_out", pa.float64(), "held-out reward of the final sample (never optimised)"),
    ("nfe", pa.int64(), "velocity evaluations the prompt's search spent (all its rounds)"),
    ("verifier_calls", pa.int64(), "reward evaluations the prompt's search made (scored candidates, final scores)"),
    ("compute_units", pa.float64(), "budget.c_d x nfe + budget.c_v x verifier_calls (the paper's cost model)"),
    ("model_seconds", pa.float64(), "seconds of model work for the prompt (its share of pooled batches)"),
    ("reward_seconds", pa.float64(), "seconds of reward work for the prompt (its share of pooled batches)"),
    ("rounds", pa.int32(), "search rounds the prompt received (1 without a dataset budget)"),
    (
        "budget_stop",
        pa.string(),
        "dataset budget: why the prompt got no more rounds (`solved`, `budget`, "
        "`max_rounds`, `failed`); null without one",
    ),
    ("steps", pa.int32(), "sampler steps"),
    ("interpolant", pa.string(), "sampled path: `linear` or `vp`"),
    ("sde", pa.bool_(), "stochastic (SDE) or deterministic (ODE) steps"),
    ("diffusion", pa.string(), "diffusion schedule and its scale, e.g. `square*3.0`"),
    ("sampler", pa.string(), "the full sampler spec, JSON"),
    ("image", IMAGE, "the final image as PNG, `struct<bytes, path>` (a Hugging Face `Image`); null if none"),
    ("width", pa.int32(), "image width in pixels"),
    ("height", pa.int32(), "image height in pixels"),
    ("sample", pa.list_(pa.float32()), "the final sample itself when the model does not decode to images"),
    ("lineage", pa.list_(REQUEST), "requests from the root to the sample: enough to replay it"),
    ("step_records", pa.list_(STEP), "one record per decision of the method (NFE, candidates, accepts, ESS)"),
    ("seconds", pa.float64(), "wall time of the prompt's search and final step"),
    ("config_hash", pa.string(), "hash of everything that determines the results (see manifest.json)"),
    ("created_at", pa.timestamp("us", tz="UTC"), "when the row was made (UTC)"),
]

_HF_FEATURES = {"info": {"features": {"image": {"_type": "Image"}}}}
SCHEMA = pa.schema(
    [pa.field(name, kind) for name, kind, _ in COLUMNS],
    metadata={
        "huggingface": json.dumps(_HF_FEATURES),
        "flowscale_ray": json.dumps({"schema_version": SCHEMA_VERSION}),
    },
)
NAMES = [name for name, _, _ in COLUMNS]
WALL_CLOCK = ("seconds", "model_seconds", "reward_seconds", "created_at")  # the columns that are measured times


def to_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts with exactly the schema's columns) -> a table with the schema."""
    for row in rows:
        if row.keys() != set(NAMES):
            missing, extra = set(NAMES) - row.keys(), row.keys() - set(NAMES)
            raise ValueError(f"row does not match the schema: missing {sorted(missing)}, unknown {sorted(extra)}")
        if row["status"] not in STATUSES:
            raise ValueError(f"row status must be one of {STATUSES}, got {row['status']!r}")
    return pa.Table.from_pylist(rows, schema=SCHEMA)


def markdown_table() -> str:
    """The schema as the README documents it."""
    lines = ["| column | type | meaning |", "|---|---|---|"]
    for name, kind, doc in COLUMNS:
        shown = "struct<bytes: binary, path: string>" if kind == IMAGE else _short(kind)
        lines.append(f"| `{name}` | {shown} | {doc} |")
    return "\n".join(lines)


def _short(kind: pa.DataType) -> str:
    if kind == pa.list_(REQUEST):
        return "list<struct<kind, pid, parent, noise, moves, score>>"
    if kind == pa.list_(STEP):
        return "list<struct<step, s, nfe, candidates, best_reward, accepted, rollover, resampled, ess, extra>>"
    return str(kind).replace("timestamp[us, tz=UTC]", "timestamp[us, UTC]")


# -- lineage and step records ------------------------------------------------------------------------------
def _noise(nk: NoiseKey | None) -> dict[str, int] | None:
    if nk is None:
        return None
    return {"chain": nk.chain, "step": nk.step, "candidate": nk.candidate, "stream": nk.stream}


def encode_lineage(requests: Sequence[Init | Expand]) -> list[dict[str, Any]]:
    out = []
    for req in requests:
        if isinstance(req, Init):
            out.append(
                {"kind": "init", "pid": req.pid, "parent": None, "noise": _noise(req.noise), "moves": None}
                | {"score": req.score}
            )
        else:
            moves = [{"s_to": m.s_to, "noise": _noise(m.noise), "renoise": m.renoise} for m in req.moves]
            out.append(
                {"kind": "expand", "pid": req.pid, "parent": req.parent, "noise": None, "moves": moves}
                | {"score": req.score}
            )
    return out


def decode_lineage(rows: list[dict[str, Any]]) -> list[Init | Expand]:
    """The inverse of `encode_lineage` (rows as read back from Parquet)."""

    def key(d: dict[str, int] | None) -> NoiseKey | None:
        return None if d is None else NoiseKey(d["chain"], d["step"], d["candidate"], d["stream"])

    out: list[Init | Expand] = []
    for r in rows:
        if r["kind"] == "init":
            out.append(Init(pid=r["pid"], noise=key(r["noise"]), score=r["score"]))  # type: ignore[arg-type]
        else:
            moves = tuple(Move(s_to=m["s_to"], noise=key(m["noise"]), renoise=m["renoise"]) for m in r["moves"])
            out.append(Expand(pid=r["pid"], parent=r["parent"], moves=moves, score=r["score"]))
    return out


def encode_steps(records: list[StepRecord]) -> list[dict[str, Any]]:
    return [
        {
            "step": r.step,
            "s": r.s,
            "nfe": r.nfe,
            "candidates": r.candidates,
            "best_reward": r.best_reward,
            "accepted": r.accepted,
            "rollover": r.rollover,
            "resampled": r.resampled,
            "ess": r.ess,
            "extra": strict_json(r.extra) if r.extra else None,
        }
        for r in records
    ]


# -- JSON columns ------------------------------------------------------------------------------------------
def finite(doc: Any) -> Any:
    """`doc` with every NaN or infinite float (inside dicts, lists and tuples) replaced by None: JSON has no
    NaN, so `strict_json` writes them as null."""
    if isinstance(doc, float):
        return doc if math.isfinite(doc) else None
    if isinstance(doc, dict):
        return {k: finite(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [finite(v) for v in doc]
    return doc


def strict_json(doc: Any, **kwargs: Any) -> str:
    """Valid JSON, always (`json.dumps` writes NaN and Infinity, which JSON readers refuse): non-finite floats
    become null; objects JSON does not know are written as their `str`."""
    return json.dumps(finite(doc), allow_nan=False, default=str, **kwargs)
