"""RunOutput: the one object the run loop writes through.

    output = RunOutput.open(job, prompts)     # nothing written yet; a bad location is a ConfigError
    output.existing()                         # the manifest of a finished run there, else None
    todo = output.begin(model_id, settings)   # start or resume: the prompt indexes still to run
    output.add(i, result) / output.add_failure(i, error)   # a shard commits once all its prompts are in
    manifest = output.finish(timeline)

Behind it: the sharded Parquet writer (flowscale_ray.io.writer), the row builder with the job's curation rules
(flowscale_ray.io.rows) and the run's identity (flowscale_ray.run.identity).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pyarrow as pa

from flowscale_ray.config import ConfigError, JobConfig
from flowscale_ray.errors import first_line
from flowscale_ray.execution import TaskResult
from flowscale_ray.io.rows import RunInfo, failed_table, prompt_table, rows_for_result
from flowscale_ray.io.storage import Redactor, open_filesystem
from flowscale_ray.io.writer import ShardAssembler, ShardedWriter, ShardStats
from flowscale_ray.logs import get_logger
from flowscale_ray.prompts import Prompt
from flowscale_ray.run.identity import describe_job, versions

log = get_logger(__name__)
_T = TypeVar("_T")
_UNUSABLE = (FileNotFoundError, PermissionError, NotADirectoryError, FileExistsError)  # an output folder we cannot use


class RunOutput:
    def __init__(self, job: JobConfig, prompts: list[Prompt], writer: ShardedWriter, redact: Redactor) -> None:
        self.job = job
        self.prompts = prompts
        self.writer = writer
        self.redact = redact
        self.uri = redact(_uri(job, writer.root))  # the run's folder, for people (credentials redacted)
        self.on_commit: Callable[[int, ShardStats], None] | None = None
        self.on_retry: Callable[[], None] | None = None
        self._info: RunInfo | None = None
        self._assembler: ShardAssembler | None = None
        self._allocations: dict[int, tuple[int, str | None]] = {}  # prompt -> (rounds, why it stopped)

    @classmethod
    def open(cls, job: JobConfig, prompts: list[Prompt]) -> RunOutput:
        """The run's output over the job's filesystem; nothing is read or written yet."""
        redact = Redactor.for_storage(job.storage)
        identity, config = describe_job(job, prompts)
        try:
            fs, base = open_filesystem(job.output.dir, job.storage)
        except ConfigError:
            raise  # already names its field (e.g. an S3 endpoint that cannot be reached)
        except (ValueError, ImportError) as exc:
            raise ConfigError("output.dir", f"cannot open {redact(job.output.dir)}: {redact(str(exc))}") from None
        writer = ShardedWriter(
            fs,
            f"{base.rstrip('/')}/{job.run_id}",
            run_id=job.run_id,
            identity=identity,
            config=config,
            num_prompts=len(prompts),
            shard_size=job.output.shard_size,
            row_group_size=job.output.row_group_size,
            retries=job.storage.retries,
            log=log.info,
            redact=redact,
        )
        out = cls(job, prompts, writer, redact)
        writer.on_retry = out._retried
        return out

    # -- before any work -----------------------------------------------------------------------------------------
    def existing(self) -> dict[str, Any] | None:
        """Read-only look at the run folder: the manifest of this run if it already finished, else None. A
        folder holding a different run, or one that cannot be used, is a ConfigError."""
        return self.writer.completed_manifest() if self._usable(self.writer.check) else None

    def describe_state(self) -> str:
        """'a new run', 'complete' or 'resumes the run there' (read-only; for `flowscale validate`)."""
        if not self._usable(self.writer.check):
            return "a new run"
        return "complete" if self.writer.completed_manifest() is not None else "resumes the run there"

    @property
    def num_shards(self) -> int:
        return self.writer.num_shards

    def shard_of(self, index: int) -> int:
        """The output shard that holds prompt `index` (a dataset budget allocates within one shard)."""
        return self.writer.shard_of(index)

    # -- the run ---------------------------------------------------------------------------------------------------
    def begin(self, model_id: str, settings: dict[str, Any]) -> list[int]:
        """Start or resume the run; returns the indexes of the prompts still to run (in shard order)."""
        self._usable(self.writer.begin)
        self._info = RunInfo.for_job(self.job, self.writer.config_hash, model_id, settings)
        self._assembler = ShardAssembler(self.writer, on_commit=self._committed)
        return [i for shard in self.writer.pending_shards() for i in self.writer.shard_prompts(shard)]

    @property
    def resumed_shards(self) -> int | None:
        """Shards already committed by an earlier call, or None for a new run."""
        return len(self.writer.state.committed) if self.writer.state.resumed else None

    def allocation(self, index: int, rounds: int, stop: str | None) -> None:
        """What a dataset budget gave prompt `index` (its rows record it)."""
        self._allocations[index] = (rounds, stop)

    def add(self, index: int, result: TaskResult) -> bool:
        """Prompt `index`'s rows from its search result. A result whose rows cannot be built or encoded (text
        Arrow refuses, an image that cannot be written, metadata that breaks JSON) becomes the prompt's `failed`
        row instead, so one poison prompt never blocks its shard; returns False then."""
        rounds, stop = self._allocations.pop(index, (1, None))
        try:
            table = prompt_table(rows_for_result(result, self._run_info, rounds=rounds, budget_stop=stop))
        except Exception as exc:  # the prompt's own data: its row, not the run, fails
            error = f"its row cannot be written: {first_line(exc)}"
            log.info(f"prompt {self.prompts[index].id!a}: {self.redact(error)}; recorded as failed")
            metrics = {"nfe": result.nfe, "verifier_calls": result.verifier_calls}
            self._add(index, self._failure(index, error, result.seconds, stop, **metrics))
            return False
        self._add(index, table)
        return True

    def add_failure(self, index: int, error: str) -> None:
        """Prompt `index` failed: one `failed` row carrying `error` (redacted)."""
        _, stop = self._allocations.pop(index, (1, None))
        self._add(index, self._failure(index, error, 0.0, stop))

    def put_json(self, name: str, doc: Any) -> None:
        """A JSON document beside the data (e.g. the run's timeline)."""
        self.writer.put_json(name, doc)

    def finish(self) -> dict[str, Any]:
        """Write the manifest and `_SUCCESS` once every shard is committed; returns the manifest."""
        return self.writer.finish(versions())

    # -- internals ---------------------------------------------------------------------------------------------------
    def _usable(self, op: Callable[[], _T]) -> _T:
        """op() on the run folder; a folder we cannot use (no such bucket, access denied, a file where a folder
        should be) is a ConfigError naming output.dir, before any work."""
        try:
            return op()
        except _UNUSABLE as exc:
            raise ConfigError("output.dir", f"cannot use {self.uri}: {self.redact(first_line(exc))}") from None

    @property
    def _run_info(self) -> RunInfo:
        if self._info is None:
            raise RuntimeError("RunOutput.begin() must be called before rows are added")
        return self._info

    def _failure(self, index: int, error: str, seconds: float, stop: str | None, **metrics: Any) -> pa.Table:
        return failed_table(self.prompts[index], self._run_info, self.redact(error), seconds, stop, **metrics)

    def _add(self, index: int, rows: pa.Table) -> None:
        if self._assembler is None:
            raise RuntimeError("RunOutput.begin() must be called before rows are added")
        self._assembler.add(index, rows)

    def _committed(self, shard: int, stats: ShardStats) -> None:
        log.info(f"shard {shard + 1}/{self.writer.num_shards} committed: {stats.rows} rows, {stats.bytes / 1e6:.2f} MB")
        if self.on_commit is not None:
            self.on_commit(shard, stats)

    def _retried(self) -> None:
        if self.on_retry is not None:
            self.on_retry()


def _uri(job: JobConfig, root: str) -> str:
    if "://" in job.output.dir and not job.output.dir.startswith("file://"):
        return f"{job.output.dir.split('://', 1)[0]}://{root}"
    return root
