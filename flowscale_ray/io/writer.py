"""Sharded Parquet output with commit markers, resume and a manifest, over any fsspec filesystem.

Layout of one run (`<output.dir>/<run_id>/`):

    data/part-00000.parquet                 shard 0: the rows of prompts [0, shard_size), in prompt order
    data/part-00001.parquet                 ...
    .flowscale/run.json                     the run's config hash and redacted config, written first
    .flowscale/committed/part-00000.json    marker: shard 0 is complete (rows, bytes, sha256, counts)
    .flowscale/manifest.json                counts, config, versions: written when every shard is committed
    .flowscale/timeline.json                replica busy time over the run (for `flowscale report`)
    .flowscale/SUCCESS                      written last: the run is complete

Only Parquet files lie outside the hidden `.flowscale/` folder, which every reader skips (pyarrow and Hugging
Face `datasets` ignore hidden paths; DuckDB and polars read `*.parquet`), so a run folder loads as it is.
Runs written before this layout kept the same records at the top level (`_run.json`, `_committed/`,
`manifest.json`, `timeline.json`, `_SUCCESS`): they are read as they are, and `begin()` moves an unfinished one's
records under `.flowscale/` before it goes on.

Shard i holds prompts [i * shard_size, (i + 1) * shard_size) of the prompt list, so names are deterministic
and a shard written twice (a retry, a resumed run, a duplicated task) replaces itself instead of adding rows.
A data file appears whole or not at all: object stores (S3, memory) publish an object only when its upload
completes; on a local disk the file is written under `.flowscale/staging/` and renamed into `data/`. Its marker is
written only after the data file is complete; a shard without a marker (or with a damaged one) is redone on
resume. Readers read `data/` (every file there is complete); `read_committed` reads only the shards with
markers.

`check()` and `begin()` refuse a run directory that holds a run with a different config hash (a new run id
starts a new run), or whose records are damaged or in the way (`data` a file, a truncated `run.json`), with a
ConfigError that names the file and changes nothing. `begin()` returns the shards already committed and clears
leftovers of a killed writer from the staging folder.
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
from flowscale_ray.io.schema import SCHEMA, SCHEMA_VERSION, STATUSES, strict_json, to_table
from flowscale_ray.io.storage import Redactor, is_local, retry

DATA = "data"
BOOKKEEPING = ".flowscale"  # hidden: readers of the data skip it


@dataclass(frozen=True)
class Layout:
    """Where a run keeps its records, relative to the run folder."""

    run_file: str
    markers: str
    manifest: str
    success: str
    staging: str
    docs: str  # the folder of other JSON documents (`timeline.json`); "" is the run folder itself

    def doc(self, name: str) -> str:
        return f"{self.docs}/{name}" if self.docs else name

    @property
    def folders(self) -> tuple[str, ...]:
        """The folders of this layout (with `data`): a file at any of them makes the run folder unusable."""
        return tuple(f for f in (self.docs, DATA, self.markers, self.staging) if f)


LAYOUT = Layout(
    run_file=f"{BOOKKEEPING}/run.json",
    markers=f"{BOOKKEEPING}/committed",
    manifest=f"{BOOKKEEPING}/manifest.json",
    success=f"{BOOKKEEPING}/SUCCESS",
    staging=f"{BOOKKEEPING}/staging",
    docs=BOOKKEEPING,
)
# Run folders written before the `.flowscale/` layout: still read (and migrated by `begin()`).
LEGACY = Layout(
    run_file="_run.json",
    markers="_committed",
    manifest="manifest.json",
    success="_SUCCESS",
    staging="_staging",
    docs="",
)
RUN_FILE, MARKERS, MANIFEST, SUCCESS, STAGING = (
    LAYOUT.run_file,
    LAYOUT.markers,
    LAYOUT.manifest,
    LAYOUT.success,
    LAYOUT.staging,
)


def find_layout(fs: Any, root: str) -> Layout | None:
    """The layout of the run at `root` (the current one or the legacy one), or None when none is there."""
    root = root.rstrip("/")
    for layout in (LAYOUT, LEGACY):
        if fs.exists(f"{root}/{layout.run_file}"):
            return layout
    return None


def read_record(raw: bytes, where: str, fix: str, field: str = "output.dir") -> dict[str, Any]:
    """A JSON record of the run folder (run.json, a manifest), or a ConfigError naming the damaged file and
    `fix`, what the user can do about it."""
    try:
        doc = json.loads(raw)
    except ValueError as exc:  # not JSON, or not UTF-8 (UnicodeDecodeError is a ValueError)
        reason = f"not valid JSON ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    else:
        if isinstance(doc, dict):
            return doc
        reason = f"a JSON {type(doc).__name__}, not an object"
    raise ConfigError(field, f"{where} is damaged: {reason}; {fix}")


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
    complete: bool = False  # SUCCESS is there
    resumed: bool = False  # run.json was there


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
        self.layout = LAYOUT  # LEGACY when check() finds a run written before the `.flowscale/` layout
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
                name = f"{rel.replace('/', '__')}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
                staging = self.path(self.layout.staging, name)
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
        """Write a small JSON document among the run's records (e.g. `timeline.json` for reports); atomic,
        retried."""
        self._put(self.layout.doc(name), _json(doc))

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

    def _remove(self, rel: str) -> None:
        def op() -> None:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self.path(rel))

        self._retry(op, f"remove {rel}")

    def _is_file(self, rel: str) -> bool:
        return bool(self._retry(lambda: self.fs.isfile(self.path(rel)), f"look at {rel}"))

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def check(self) -> bool:
        """Read-only: raise RunConflictError if the directory holds a different run, a ConfigError if its
        records are damaged or a file stands where the run keeps a folder; True if a run is there."""
        if self._retry(lambda: self.fs.isfile(self.root), "look at the run folder"):
            raise ConfigError("output.dir", f"{self.redact(self.root)} is a file, not a run folder")
        layout, raw = LAYOUT, None
        if not self._is_file(BOOKKEEPING):
            raw = self._get(LAYOUT.run_file)
        if raw is None and self._get(LEGACY.run_file) is not None:
            layout, raw = LEGACY, self._get(LEGACY.run_file)
        for folder in layout.folders:
            if self._is_file(folder):
                raise ConfigError(
                    "output.dir",
                    f"{self.redact(self.path(folder))} is a file where the run keeps a folder; move it away, or "
                    "pass --run-id NEW (or set output.run_id) to write a new run elsewhere",
                )
        if raw is None:
            return False
        previous = read_record(raw, self.redact(self.path(layout.run_file)), self._damaged_fix())
        self.layout = layout
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

    def _damaged_fix(self) -> str:
        return (
            f"it records the run in {self.redact(self.root)}: restore it, or pass --run-id NEW (or set "
            "output.run_id) to start a new run beside it"
        )

    def completed_manifest(self) -> dict[str, Any] | None:
        """The manifest of this run if it already finished (SUCCESS is there), else None. A damaged manifest
        of a finished run is a ConfigError (nothing is changed)."""
        layout = self.layout
        if self._get(layout.success) is None:
            return None
        raw = self._get(layout.manifest)
        if raw is None:
            return None
        where = self.redact(self.path(layout.manifest))
        fix = (
            f"the data is intact: remove {self.redact(self.path(layout.success))} and run the job again to "
            "rewrite the manifest, or pass --run-id NEW (or set output.run_id) to start a new run"
        )
        return read_record(raw, where, fix)

    def begin(self) -> RunState:
        """Start or resume the run. Raises RunConflictError when the directory holds a different run."""
        if self.check():
            self.state.resumed = True
            if self.layout is LEGACY:
                self._migrate()
            elif (old := self._get(LEGACY.run_file)) is not None and _hash_of(old) == self.config_hash:
                self._remove_legacy()  # a migration was interrupted after its switch
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
        marked = {
            i: name
            for name in self._list(MARKERS)
            if (i := index_of(name)) is not None and i < self.num_shards and shard_file(i) in data
        }  # a marker whose data file went missing is redone
        self._load_marker_stats(sorted(marked), lenient=True)  # a damaged marker is redone too
        self.state.committed |= set(marked) & set(self._stats)
        if self._get(SUCCESS) is not None and len(self.state.committed) == self.num_shards:
            self.state.complete = True
        if self.local:
            for name in self._list(STAGING):  # leftovers of a killed writer; never visible to readers
                self._remove(f"{STAGING}/{name}")
        return self.state

    def _migrate(self) -> None:
        """Move the records of a run written before the `.flowscale/` layout under `.flowscale/`: the markers,
        manifest, timeline and SUCCESS first, `run.json` last (from then on the new records are the run's), then
        the old records are removed, `_run.json` last. Interrupted anywhere, the next `begin()` picks up: before
        the new `run.json` exists the old records are still the run's; after it, leftovers are removed."""
        names = self._list(LEGACY.markers)
        for name in names:
            raw = self._get(f"{LEGACY.markers}/{name}")
            if raw is not None:
                self._put(f"{LAYOUT.markers}/{name}", raw)
        for old, new in (
            (LEGACY.manifest, LAYOUT.manifest),
            (LEGACY.doc("timeline.json"), LAYOUT.doc("timeline.json")),
        ):
            raw = self._get(old)
            if raw is not None:
                self._put(new, raw)
        if self._get(LEGACY.success) is not None:
            self._put(LAYOUT.success, b"")
        raw = self._get(LEGACY.run_file)
        if raw is not None:
            self._put(LAYOUT.run_file, raw)
        self.layout = LAYOUT
        self._remove_legacy()
        self.log(f"{self.redact(self.root)}: the run's records moved under {BOOKKEEPING}/ (the current layout)")

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

    def _remove_legacy(self) -> None:
        """Remove the old top-level records of a run whose records are under `.flowscale/` (`_run.json` last)."""
        for name in self._list(LEGACY.markers):
            self._remove(f"{LEGACY.markers}/{name}")
        for old in (LEGACY.manifest, LEGACY.doc("timeline.json"), LEGACY.success):
            self._remove(old)
        if self.local:
            for name in self._list(LEGACY.staging):
                self._remove(f"{LEGACY.staging}/{name}")
            for folder in (LEGACY.markers, LEGACY.staging):
                with contextlib.suppress(OSError):
                    os.rmdir(self.path(folder))
        self._remove(LEGACY.run_file)

    def _load_marker_stats(self, indexes: list[int], lenient: bool = False) -> None:
        """Stats of shards committed by earlier runs, from their markers (fetched together: one batch). With
        `lenient`, a missing or damaged marker (not JSON, or not this run's) is skipped: its shard is redone."""
        if not indexes:
            return
        paths = [self.path(MARKERS, marker_file(i)) for i in indexes]
        found = self._retry(lambda: self.fs.cat(paths, on_error="omit"), f"read {len(paths)} markers")
        by_name = {k.rstrip("/").rsplit("/", 1)[-1]: v for k, v in found.items()}
        for i in indexes:
            raw = by_name.get(marker_file(i))
            try:
                if raw is None:
                    raise RuntimeError(f"the marker of shard {i} disappeared")
                doc = json.loads(raw)
                if doc.get("config_hash") != self.config_hash:
                    raise ValueError(f"the marker of shard {i} belongs to another run")
                self._stats[i] = ShardStats(**{k: doc[k] for k in ShardStats.__dataclass_fields__})
            except Exception:
                if not lenient:
                    raise
                self.log(f"shard {i}: its marker is missing or damaged; the shard is redone")


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


def committed_shards(fs: Any, root: str) -> list[int]:
    """The indexes of the shards with markers in the run at `root` (either layout), in order."""
    root = root.rstrip("/")
    layout = find_layout(fs, root) or LAYOUT
    try:
        names = fs.ls(f"{root}/{layout.markers}", detail=False)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in (index_of(p) for p in names) if n is not None)


def read_committed(fs: Any, root: str, columns: list[str] | None = None) -> pa.Table:
    """The committed shards of a run (complete or not) as one table, in shard order."""
    root = root.rstrip("/")
    markers = committed_shards(fs, root)
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


def _hash_of(raw: bytes) -> str | None:
    """The config hash a run record holds (None when it is damaged)."""
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc.get("config_hash") if isinstance(doc, dict) else None


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
    """A record as strict JSON (NaN and infinity as null: JSON readers refuse them)."""
    return (strict_json(doc, indent=1, sort_keys=True) + "\n").encode()


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
