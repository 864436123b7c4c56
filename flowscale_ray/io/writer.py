"""Sharded Parquet output with commit markers, resume and a manifest, over any fsspec filesystem.

Layout of one run (`<output.dir>/<run_id>/`):

    _run.json                     the run's config hash and redacted config, written first
    data/part-00000.parquet       shard 0: the rows of prompts [0, shard_size), in prompt order
    data/part-00001.parquet       ...
    _committed/part-00000.json    marker: shard 0 is complete (rows, bytes, sha256, counts)
    manifest.json                 counts, config, versions: written when every shard is committed
    _SUCCESS                      written last: the run is complete

Shard i holds prompts [i * shard_size, (i + 1) * shard_size) of the prompt list, so names are deterministic
and a shard written twice (a retry, a resumed run, a duplicated task) replaces itself instead of adding rows.
A data file appears whole or not at all: object stores (S3, memory) publish an object only when its upload
completes; on a local disk the file is written under `_staging/` and renamed into `data/`. Its marker is
written only after the data file is complete; a shard without a marker is redone on resume. Readers read
`data/` (every file there is complete; names starting with `_` are outside it); `read_committed` reads only
the shards with markers.

`begin()` refuses a run directory that holds a run with a different config hash (a new run id starts a new
run), returns the shards already committed, and clears leftovers of a killed writer from `_staging/`.
Every storage operation is retried on transient errors (`storage.retries`). One writer per run at a time.

This is a plain library: any executor (in-process, a Ray driver) calls `write_shard(i, rows)`,
`commit(i)` and `finish()`; `ShardAssembler` buffers rows of prompts that finish out of order and
commits each shard once all its prompts are in.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from flowscale_ray.config import ConfigError
from flowscale_ray.io.schema import SCHEMA, SCHEMA_VERSION, STATUSES, to_table
from flowscale_ray.io.storage import Redactor, is_local, retry

DATA = "data"
MARKERS = "_committed"
STAGING = "_staging"
RUN_FILE = "_run.json"
MANIFEST = "manifest.json"
SUCCESS = "_SUCCESS"


def shard_file(index: int) -> str:
    return f"part-{index:05d}.parquet"


def marker_file(index: int) -> str:
    return f"part-{index:05d}.json"


def index_of(name: str) -> int | None:
    stem = name.rsplit("/", 1)[-1].split(".", 1)[0]
    if stem.startswith("part-") and stem[5:].isdigit():
        return int(stem[5:])
    return None


class RunConflictError(ConfigError):
    """The run directory holds a run whose config differs from this job's."""


@dataclass
class ShardStats:
    shard: int
    file: str
    rows: int
    prompts: int
    bytes: int
    sha256: str
    status: dict[str, int]
    nfe: int
    reward_sum: float  # over ok rows
    reward_count: int
    held_out_sum: float
    held_out_count: int
    committed_at: str = ""


@dataclass
class RunState:
    committed: set[int] = field(default_factory=set)
    complete: bool = False  # _SUCCESS is there
    resumed: bool = False  # _run.json was there


class ShardedWriter:
    def __init__(
        self,
        fs: Any,
        root: str,
        *,
        run_id: str,
        identity: dict[str, Any],
        config: dict[str, Any],
        num_prompts: int,
        shard_size: int,
        row_group_size: int = 100,
        retries: int = 5,
        log: Callable[[str], None] | None = None,
        redact: Redactor | None = None,
    ) -> None:
        if num_prompts < 1 or shard_size < 1 or row_group_size < 1:
            raise ValueError("num_prompts, shard_size and row_group_size must be >= 1")
        self.fs = fs
        self.root = root.rstrip("/")
        self.run_id = run_id
        self.identity = json.loads(json.dumps(identity, default=str))  # what determines the rows

        self.config_hash = config_hash(identity)
        self.config = config  # the whole job, already redacted: it is written as is
        self.num_prompts = num_prompts
        self.shard_size = shard_size
        self.row_group_size = row_group_size
        self.retries = retries
        self.log = log or (lambda _msg: None)
        self.redact = redact or Redactor()
        self.local = is_local(fs)
        self.state = RunState()
        self._written: dict[int, ShardStats] = {}
        self._stats: dict[int, ShardStats] = {}
        self._created_at: str | None = None
        self.on_retry: Callable[[], None] | None = None  # called once per retried storage operation (metrics)

    # -- layout ------------------------------------------------------------------------------------------------
    @property
    def num_shards(self) -> int:
        return -(-self.num_prompts // self.shard_size)

    def shard_of(self, prompt_index: int) -> int:
        return prompt_index // self.shard_size

    def shard_prompts(self, index: int) -> range:
        return range(index * self.shard_size, min((index + 1) * self.shard_size, self.num_prompts))

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    @property
    def data_dir(self) -> str:
        return self.path(DATA)

    # -- storage primitives (retried; every one safe to repeat) -----------------------------------------------
    def _retry(self, op: Callable[[], Any], what: str) -> Any:
        def log(message: str) -> None:
            if self.on_retry is not None:
                self.on_retry()
            self.log(self.redact(message))

        return retry(op, what, self.retries, log=log)

    def _put(self, rel: str, data: bytes) -> None:
        """Write a whole file atomically: readers see the old file, or none, or all of the new one."""
        target = self.path(rel)

        def op() -> None:
            if self.local:
                staging = self.path(STAGING, f"{rel.replace('/', '__')}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
                os.makedirs(os.path.dirname(staging), exist_ok=True)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                try:
                    with open(staging, "wb") as f:
                        f.write(data)
                        f.flush()
                        os.fsync(f.fileno())
                    os.replace(staging, target)
                finally:
                    if os.path.exists(staging):
                        os.remove(staging)
            else:
                self.fs.pipe_file(target, data)

        self._retry(op, f"write {rel}")

    def put_json(self, name: str, doc: Any) -> None:
        """Write a small JSON file at the run's top level (e.g. `timeline.json` for reports); atomic, retried."""
        self._put(name, _json(doc))

    def _get(self, rel: str) -> bytes | None:
        target = self.path(rel)

        def op() -> bytes | None:
            try:
                return self.fs.cat_file(target)
            except FileNotFoundError:
                return None

        return self._retry(op, f"read {rel}")

    def _list(self, rel: str) -> dict[str, int]:
        """File name -> size under a folder ({} when it does not exist)."""
        target = self.path(rel)

        def op() -> dict[str, int]:
            try:
                self.fs.invalidate_cache(target)
                entries = self.fs.ls(target, detail=True)
            except FileNotFoundError:
                return {}
            return {e["name"].rstrip("/").rsplit("/", 1)[-1]: int(e.get("size") or 0) for e in entries}

        return self._retry(op, f"list {rel}")

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def check(self) -> bool:
        """Read-only: raise RunConflictError if the directory holds a different run; True if one is there."""
        raw = self._get(RUN_FILE)
        if raw is None:
            return False
        previous = json.loads(raw)
        if previous.get("config_hash") != self.config_hash:
            changed = _diff(previous.get("identity", {}), self.identity)
            raise RunConflictError(
                "output.run_id",
                f"{self.redact(self.root)} holds run {self.run_id!r} made with a different configuration "
                f"(changed: {', '.join(changed[:5]) or 'unknown'}); run the same job to resume it, or pass "
                f"--run-id NEW (or set output.run_id) to start a new run",
            )
        self._created_at = previous.get("created_at")
        return True

    def completed_manifest(self) -> dict[str, Any] | None:
        """The manifest of this run if it already finished (`_SUCCESS` is there), else None."""
        if self._get(SUCCESS) is None:
            return None
        raw = self._get(MANIFEST)
        return json.loads(raw) if raw is not None else None

    def begin(self) -> RunState:
        """Start or resume the run. Raises RunConflictError when the directory holds a different run."""
        if self.check():
            self.state.resumed = True
        else:
            self._created_at = _now()
            doc = {
                "run_id": self.run_id,
                "config_hash": self.config_hash,
                "schema_version": SCHEMA_VERSION,
                "num_prompts": self.num_prompts,
                "shard_size": self.shard_size,
                "created_at": self._created_at,
                "identity": self.identity,
                "config": self.config,
            }
            self._put(RUN_FILE, _json(doc))
        data = self._list(DATA)

        for name in self._list(MARKERS):
            index = index_of(name)
            if index is None or index >= self.num_shards:
                continue
            if shard_file(index) in data:  # a marker whose data file went missing is redone
                self.state.committed.add(index)
        if self._get(SUCCESS) is not None and len(self.state.committed) == self.num_shards:
            self.state.complete = True
        if self.local:
            for name in self._list(STAGING):  # leftovers of a killed writer; never visible to readers
                self.fs.rm_file(self.path(STAGING, name))
        return self.state

    def pending_shards(self) -> list[int]:
        return [i for i in range(self.num_shards) if i not in self.state.committed]

    def write_shard(self, index: int, rows: list[dict[str, Any]] | pa.Table) -> ShardStats:
        """Write shard `index` (its complete rows, in prompt order). Repeating it replaces the file."""
        if not 0 <= index < self.num_shards:
            raise ValueError(f"shard {index} out of range [0, {self.num_shards})")
        table = rows if isinstance(rows, pa.Table) else to_table(rows)
        if not table.schema.equals(SCHEMA, check_metadata=False):
            raise ValueError("shard table does not have the output schema")
        expected = set(self.shard_prompts(index))
        buf = io.BytesIO()
        pq.write_table(table, buf, row_group_size=self.row_group_size, compression="zstd")
        data = buf.getvalue()
        self._put(f"{DATA}/{shard_file(index)}", data)
        stats = _stats(index, table, data, len(expected))
        self._written[index] = stats
        return stats

    def commit(self, index: int) -> None:
        """Mark shard `index` complete. Its data file must have been written by this writer."""
        if index not in self._written:
            raise RuntimeError(f"commit of shard {index}, which this writer has not written")
        stats = self._written.pop(index)
        stats.committed_at = _now()
        marker = {"run_id": self.run_id, "config_hash": self.config_hash, **asdict(stats)}
        self._put(f"{MARKERS}/{marker_file(index)}", _json(marker))
        self.state.committed.add(index)
        self._stats[index] = stats

    def finish(self, versions: dict[str, str] | None = None) -> dict[str, Any]:
        """Write manifest.json, then _SUCCESS. Every shard must be committed."""
        missing = self.pending_shards()
        if missing:
            raise RuntimeError(f"cannot finish: {len(missing)} shards not committed (first: {missing[0]})")
        self._load_marker_stats([i for i in range(self.num_shards) if i not in self._stats])
        stats = [self._stats[i] for i in range(self.num_shards)]
        status = dict.fromkeys(STATUSES, 0)
        for s in stats:
            for k, v in s.status.items():
                status[k] = status.get(k, 0) + v
        rewards = sum(s.reward_count for s in stats)
        helds = sum(s.held_out_count for s in stats)
        manifest = {
            "run_id": self.run_id,
            "config_hash": self.config_hash,
            "schema_version": SCHEMA_VERSION,
            "created_at": self._created_at,
            "finished_at": _now(),
            "counts": {
                "prompts": self.num_prompts,
                "rows": sum(s.rows for s in stats),
                "shards": self.num_shards,
                "status": status,
                "nfe": sum(s.nfe for s in stats),
                "bytes": sum(s.bytes for s in stats),
            },
            "reward_mean": sum(s.reward_sum for s in stats) / rewards if rewards else None,
            "held_out_mean": sum(s.held_out_sum for s in stats) / helds if helds else None,
            "layout": {"data": f"{DATA}/part-NNNNN.parquet", "shard_size": self.shard_size},
            "files": [
                {"path": f"{DATA}/{s.file}", "rows": s.rows, "bytes": s.bytes, "sha256": s.sha256} for s in stats
            ],
            "config": self.config,
            "versions": versions or {},
        }
        self._put(MANIFEST, _json(manifest))
        self._put(SUCCESS, b"")
        if self.local:
            with contextlib.suppress(OSError):
                os.rmdir(self.path(STAGING))  # only when empty
        self.state.complete = True
        return manifest

    def _load_marker_stats(self, indexes: list[int]) -> None:
        """Stats of shards committed by earlier runs, from their markers (fetched together: one batch)."""
        if not indexes:
            return
        paths = [self.path(MARKERS, marker_file(i)) for i in indexes]
        found = self._retry(lambda: self.fs.cat(paths, on_error="omit"), f"read {len(paths)} markers")
        by_name = {k.rstrip("/").rsplit("/", 1)[-1]: v for k, v in found.items()}
        for i in indexes:
            raw = by_name.get(marker_file(i))
            if raw is None:
                raise RuntimeError(f"the marker of shard {i} disappeared")
            doc = json.loads(raw)
            self._stats[i] = ShardStats(**{k: doc[k] for k in ShardStats.__dataclass_fields__})


class ShardAssembler:
    """Collects each prompt's rows and writes + commits a shard once every prompt in it has reported.

    Prompts may finish in any order; a prompt reported twice (a retried task) replaces its rows. Each prompt's
    rows are turned into Arrow when they arrive, so a row that cannot be encoded raises there, for that prompt,
    and never at the shard's write."""

    def __init__(self, writer: ShardedWriter, on_commit: Callable[[int, ShardStats], None] | None = None) -> None:
        self.writer = writer
        self.on_commit = on_commit
        self._buffers: dict[int, dict[int, pa.Table]] = {}

    def add(self, prompt_index: int, rows: list[dict[str, Any]] | pa.Table) -> int | None:
        """Add a prompt's rows; returns the shard index if this completed and committed a shard."""
        shard = self.writer.shard_of(prompt_index)
        if shard in self.writer.state.committed:
            return None  # already committed (a duplicate report): nothing is written twice
        table = rows if isinstance(rows, pa.Table) else to_table(rows)
        if not table.schema.equals(SCHEMA, check_metadata=False):
            raise ValueError("a prompt's table does not have the output schema")
        buf = self._buffers.setdefault(shard, {})
        buf[prompt_index] = table
        wanted = self.writer.shard_prompts(shard)
        if len(buf) < len(wanted):
            return None
        ordered = pa.concat_tables([buf[i] for i in wanted]).replace_schema_metadata(SCHEMA.metadata)
        stats = self.writer.write_shard(shard, ordered)
        self.writer.commit(shard)
        del self._buffers[shard]
        if self.on_commit is not None:
            self.on_commit(shard, stats)
        return shard

    @property
    def buffered_prompts(self) -> int:
        return sum(len(b) for b in self._buffers.values())


def read_committed(fs: Any, root: str, columns: list[str] | None = None) -> pa.Table:
    """The committed shards of a run (complete or not) as one table, in shard order."""
    root = root.rstrip("/")
    try:
        markers = sorted(n for n in (index_of(p) for p in fs.ls(f"{root}/{MARKERS}", detail=False)) if n is not None)
    except FileNotFoundError:
        markers = []
    tables = [pq.read_table(f"{root}/{DATA}/{shard_file(i)}", filesystem=fs, columns=columns) for i in markers]
    if not tables:
        schema = SCHEMA if columns is None else pa.schema([SCHEMA.field(c) for c in columns])
        return schema.empty_table()
    return pa.concat_tables(tables)


def _stats(index: int, table: pa.Table, data: bytes, prompts: int) -> ShardStats:
    status = {s: 0 for s in STATUSES}
    for s in table.column("status").to_pylist():
        status[s] += 1
    nfe_by_prompt = dict(zip(table.column("prompt_id").to_pylist(), table.column("nfe").to_pylist(), strict=True))
    ok = [st == "ok" for st in table.column("status").to_pylist()]
    rewards = [r for r, k in zip(table.column("reward").to_pylist(), ok, strict=True) if k and r is not None]
    helds = [h for h, k in zip(table.column("held_out").to_pylist(), ok, strict=True) if k and h is not None]
    return ShardStats(
        shard=index,
        file=shard_file(index),
        rows=table.num_rows,
        prompts=prompts,
        bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        status=status,
        nfe=sum(n or 0 for n in nfe_by_prompt.values()),
        reward_sum=float(sum(rewards)),
        reward_count=len(rewards),
        held_out_sum=float(sum(helds)),
        held_out_count=len(helds),
    )


def config_hash(identity: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of a run's identity (first 16 hex digits)."""
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _diff(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ."""
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for k in sorted(set(old) | set(new)):
            out += _diff(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k))
        return out
    return [] if old == new else [prefix or "(all)"]


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, indent=1, sort_keys=True, default=str) + "\n").encode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
