"""The sharded writer as a library: layout, markers after data, resume, conflicts, retries, the schema."""

import json
from datetime import UTC, datetime
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from flowscale_ray.config import StorageConfig
from flowscale_ray.io import schema
from flowscale_ray.io.storage import REDACTED, Redactor, describe_storage, retry
from flowscale_ray.io.writer import (
    RunConflictError,
    ShardAssembler,
    ShardedWriter,
    config_hash,
    read_committed,
)

IDENTITY = {"method": {"name": "bon", "n": 4}, "seed": 0}


def row(i: int, rank: int = 0) -> dict:
    r = dict.fromkeys(schema.NAMES)
    r.update(
        run_id="r",
        prompt_id=f"p{i:03d}",
        prompt=f"prompt {i}",
        rank=rank,
        status="ok",
        reward=float(i) - rank,
        nfe=10,
        created_at=datetime.now(UTC),
    )
    return r


def make(fs, root, n=7, shard_size=3, identity=IDENTITY, **kw) -> ShardedWriter:
    return ShardedWriter(
        fs, root, run_id="r", identity=identity, config={"x": 1}, num_prompts=n, shard_size=shard_size, **kw
    )


@pytest.fixture(params=["local", "memory"])
def target(request, tmp_path):
    if request.param == "local":
        fs = fsspec.filesystem("file")
        yield fs, str(tmp_path / "out" / "r")
    else:
        fs = fsspec.filesystem("memory")
        root = f"/writer-test-{tmp_path.name}/r"
        yield fs, root
        fs.rm(root, recursive=True)


def names(fs, path):
    try:
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False))
    except FileNotFoundError:
        return []


def test_layout_out_of_order_prompts_and_manifest(target):
    fs, root = target
    w = make(fs, root, row_group_size=2)
    state = w.begin()
    assert not state.committed and not state.resumed and w.num_shards == 3
    committed = []
    asm = ShardAssembler(w, on_commit=lambda i, s: committed.append(i))
    for i in [6, 0, 3, 1, 4, 2, 5]:
        rows = [row(i), row(i, 1)] if i == 4 else [row(i)]  # top-k: prompt 4 keeps two samples
        asm.add(i, rows)
    assert committed == [2, 0, 1]  # shard 2 holds prompt 6 alone; each commits when its last prompt is in
    assert names(fs, f"{root}/data") == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert names(fs, f"{root}/.flowscale/committed") == ["part-00000.json", "part-00001.json", "part-00002.json"]
    manifest = w.finish({"pyarrow": pa.__version__})
    assert names(fs, root) == [".flowscale", "data"]  # only Parquet outside the hidden records
    assert {"SUCCESS", "committed", "manifest.json", "run.json"} <= set(names(fs, f"{root}/.flowscale"))
    assert manifest["counts"] == {
        "prompts": 7,
        "rows": 8,
        "shards": 3,
        "status": {"ok": 8, "filtered": 0, "failed": 0},
        "nfe": 70,  # per prompt, not per row
        "bytes": sum(f["bytes"] for f in manifest["files"]),
    }
    assert manifest["config_hash"] == config_hash(IDENTITY) and manifest["config"] == {"x": 1}
    table = read_committed(fs, root)
    assert table.column("prompt_id").to_pylist() == [f"p{i:03d}" for i in [0, 1, 2, 3, 4, 4, 5, 6]]
    meta = pq.ParquetFile(fs.open(f"{root}/data/part-00001.parquet", "rb")).metadata
    assert meta.num_rows == 4 and meta.num_row_groups == 2  # row_group_size 2
    assert json.loads(fs.cat_file(f"{root}/.flowscale/committed/part-00001.json"))["rows"] == 4


def test_data_before_marker_and_success_last(target):
    fs, root = target
    w = make(fs, root)
    writes = []
    put = w._put
    w._put = lambda rel, data: (writes.append(rel), put(rel, data))[1]
    w.begin()
    asm = ShardAssembler(w)
    for i in range(7):
        asm.add(i, [row(i)])
    w.finish()
    assert writes == [
        ".flowscale/run.json",
        "data/part-00000.parquet",
        ".flowscale/committed/part-00000.json",
        "data/part-00001.parquet",
        ".flowscale/committed/part-00001.json",
        "data/part-00002.parquet",
        ".flowscale/committed/part-00002.json",
        ".flowscale/manifest.json",
        ".flowscale/SUCCESS",
    ]


def test_resume_skips_committed_and_redoes_unmarked_shards(tmp_path):
    fs = fsspec.filesystem("file")
    root = str(tmp_path / "r")
    first = make(fs, root)
    first.begin()
    first.write_shard(0, [row(i) for i in range(3)])
    first.commit(0)
    first.write_shard(1, [row(3)] * 3)  # a shard written but never committed (the driver died here) ...
    staging = Path(root) / ".flowscale" / "staging"
    (staging / "data__part-00002.parquet.123.abc.tmp").write_bytes(b"PAR1 half a file")  # ... or mid-write
    sha0 = json.loads((Path(root) / ".flowscale/committed/part-00000.json").read_text())["sha256"]

    second = make(fs, root)
    state = second.begin()
    assert state.resumed and state.committed == {0} and second.pending_shards() == [1, 2]
    assert not list(staging.iterdir())  # leftovers of the killed writer are gone
    asm = ShardAssembler(second)
    for i in range(3, 7):
        asm.add(i, [row(i)])
    second.finish()
    ids = ds.dataset(str(Path(root) / "data")).to_table().column("prompt_id").to_pylist()
    assert sorted(ids) == [f"p{i:03d}" for i in range(7)]  # shard 1 replaced, not duplicated
    assert json.loads((Path(root) / ".flowscale/committed/part-00000.json").read_text())["sha256"] == sha0
    assert make(fs, root).begin().complete


def test_marker_without_data_is_redone(tmp_path):
    fs = fsspec.filesystem("file")
    root = str(tmp_path / "r")
    w = make(fs, root)
    w.begin()
    w.write_shard(0, [row(i) for i in range(3)])
    w.commit(0)
    (Path(root) / "data/part-00000.parquet").unlink()
    assert make(fs, root).begin().committed == set()


def test_conflicting_config_is_refused_with_the_changed_fields(target):
    fs, root = target
    make(fs, root).begin()
    make(fs, root).begin()  # the same config resumes
    with pytest.raises(RunConflictError) as info:
        make(fs, root, identity={"method": {"name": "bon", "n": 8}, "seed": 0}).begin()
    msg = str(info.value)
    assert msg.startswith("output.run_id: ") and "changed: method.n" in msg and "--run-id NEW" in msg


def test_duplicates_are_not_written_twice(tmp_path):
    fs = fsspec.filesystem("file")
    root = str(tmp_path / "r")
    w = make(fs, root, n=2, shard_size=2)
    w.begin()
    asm = ShardAssembler(w)
    asm.add(0, [row(0)])
    asm.add(0, [row(0, 0)])  # a retried task reports again: replaces, does not add
    assert asm.buffered_prompts == 1
    assert asm.add(1, [row(1)]) == 0
    before = (Path(root) / "data/part-00000.parquet").read_bytes()
    assert asm.add(1, [row(1)]) is None  # after the commit: ignored
    assert (Path(root) / "data/part-00000.parquet").read_bytes() == before
    assert read_committed(fs, root).num_rows == 2


def test_finish_refuses_an_incomplete_run_and_commit_needs_a_write(tmp_path):
    w = make(fsspec.filesystem("file"), str(tmp_path / "r"))
    w.begin()
    with pytest.raises(RuntimeError, match="not written"):
        w.commit(0)
    with pytest.raises(RuntimeError, match="3 shards not committed"):
        w.finish()
    with pytest.raises(ValueError, match="out of range"):
        w.write_shard(3, [row(0)])
    with pytest.raises(ValueError, match="missing"):
        w.write_shard(0, [{"prompt_id": "x"}])


class FlakyMemory:
    """A memory filesystem whose writes fail now and then, like a network store."""

    def __init__(self, fail_every: int, error: type[Exception] = ConnectionResetError) -> None:
        self.fs = fsspec.filesystem("memory")
        self.calls = 0
        self.failures = 0
        self.fail_every = fail_every
        self.error = error

    def pipe_file(self, path, data):
        self.calls += 1
        if self.calls % self.fail_every == 0:
            self.failures += 1
            raise self.error("connection reset by peer")
        self.fs.pipe_file(path, data)

    def __getattr__(self, name):
        return getattr(self.fs, name)


def test_transient_write_errors_are_retried_and_logged(tmp_path):
    flaky = FlakyMemory(fail_every=3)
    logs = []
    root = f"/flaky-{tmp_path.name}/r"
    w = make(flaky, root, log=logs.append)
    w.retries = 4
    import flowscale_ray.io.storage as storage

    w.begin()
    asm = ShardAssembler(w)
    for i in range(7):
        asm.add(i, [row(i)])
    w.finish()
    assert flaky.failures >= 2 and len(logs) == flaky.failures
    assert all("retry" in m for m in logs)
    assert read_committed(flaky.fs, root).num_rows == 7
    assert storage.is_transient(ConnectionResetError()) and not storage.is_transient(PermissionError())


def test_permanent_errors_are_not_retried():
    calls = []

    def denied():
        calls.append(1)
        raise PermissionError("access denied")

    with pytest.raises(PermissionError):
        retry(denied, "write", attempts=5)
    assert len(calls) == 1


# -- schema ---------------------------------------------------------------------------------------------------
def test_schema_declares_a_hugging_face_image_column():
    field = schema.SCHEMA.field("image")
    assert field.type == pa.struct([("bytes", pa.binary()), ("path", pa.string())]) and field.nullable
    hf = json.loads(schema.SCHEMA.metadata[b"huggingface"])
    assert hf["info"]["features"]["image"] == {"_type": "Image"}
    assert schema.SCHEMA.field("created_at").type == pa.timestamp("us", tz="UTC")


def test_readme_documents_every_column():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert schema.markdown_table() in readme


def test_lineage_round_trip():
    from flowscale_ray.search.protocol import Expand, Init, Move, NoiseKey

    reqs = [
        Init(pid=0, noise=NoiseKey(0, 0, 0, 0), score=False),
        Expand(pid=3, parent=0, moves=(Move(0.5, NoiseKey(0, 1, 2)), Move(0.9, None, renoise=True))),
    ]
    encoded = schema.encode_lineage(reqs)
    table = pa.table({"lineage": pa.array([encoded], pa.list_(schema.REQUEST))})
    assert schema.decode_lineage(table.column("lineage")[0].as_py()) == reqs


# -- credentials ----------------------------------------------------------------------------------------------
def test_redactor_scrubs_secrets_everywhere(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-value-123")
    storage = StorageConfig(
        endpoint_url="http://user:pa55word@127.0.0.1:9000",
        key="AKIAJOBFILEKEY",
        secret="job-file-secret-456",
        options={"client_kwargs": {"aws_session_token": "nested-token-789"}, "tokenizer": "kept"},
    )
    redact = Redactor.for_storage(storage)
    text = "key AKIAJOBFILEKEY secret job-file-secret-456 env env-secret-value-123 nested nested-token-789"
    assert redact(text) == f"key {REDACTED} secret {REDACTED} env {REDACTED} nested {REDACTED}"
    assert redact("http://user:pa55word@127.0.0.1:9000/x") == f"http://{REDACTED}@127.0.0.1:9000/x"
    described = json.dumps(describe_storage(storage))
    for secret in ("AKIAJOBFILEKEY", "job-file-secret-456", "nested-token-789", "pa55word"):
        assert secret not in described
    assert "kept" not in described  # every value under storage is a secret unless it is a known-harmless setting
    assert "job-file-secret-456" not in repr(storage)
