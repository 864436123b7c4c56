"""A finished run folder loads as it is with the common Parquet readers: pyarrow datasets, Hugging Face
`datasets` (by `data_dir` and by path), DuckDB and polars; so does a run resumed from the layout that kept its
records at the top level (`_run.json`, `_committed/`, `manifest.json`, `_SUCCESS`), which is moved under
`.flowscale/` when it resumes. Every reader sees the same rows, and the JSON columns are valid JSON."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import duckdb
import polars as pl
import pyarrow.dataset as ds
import pytest

from flowscale_ray.cli import main
from flowscale_ray.io.inspect import summarize
from tests.test_io_run import job_doc, run

PROMPTS = [{"prompt": "a red square", "w": 0.5}, "two circles", "three things", "four", "five items here"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A complete run (3 shards, with a held-out score, metadata and a timeline) and its folder."""
    tmp = tmp_path_factory.mktemp("readers")
    report = run(job_doc(tmp / "out", prompts=PROMPTS), tmp)
    assert report.manifest["counts"]["rows"] == 5
    return tmp / "out" / "toy"


def ids(values) -> list[str]:
    return sorted(values)


def expected(run_dir: Path) -> list[str]:
    return ids(ds.dataset(str(run_dir / "data"), format="parquet").to_table().column("prompt_id").to_pylist())


def test_only_parquet_lies_outside_the_hidden_records(finished):
    outside = sorted(p.relative_to(finished).as_posix() for p in finished.rglob("*") if p.is_file())
    outside = [p for p in outside if not p.startswith(".flowscale/")]
    assert outside == ["data/part-00000.parquet", "data/part-00001.parquet", "data/part-00002.parquet"]
    records = {p.name for p in (finished / ".flowscale").iterdir()}
    assert {"run.json", "committed", "manifest.json", "timeline.json", "SUCCESS"} <= records


def test_pyarrow_dataset_reads_the_run_folder(finished):
    table = ds.dataset(str(finished), format="parquet").to_table()
    assert table.num_rows == 5 and ids(table.column("prompt_id").to_pylist()) == expected(finished)
    assert ds.dataset(str(finished)).count_rows() == 5  # the format inferred from the file names too


@pytest.mark.parametrize("how", ["data_dir", "path"])
def test_hugging_face_datasets_reads_the_run_folder(finished, tmp_path, how):
    import datasets

    datasets.disable_progress_bars()
    if how == "data_dir":
        data = datasets.load_dataset("parquet", data_dir=str(finished), split="train", cache_dir=str(tmp_path))
    else:
        data = datasets.load_dataset(str(finished), split="train", cache_dir=str(tmp_path))
    assert len(data) == 5 and ids(data["prompt_id"]) == expected(finished)
    assert isinstance(data.features["image"], datasets.Image) and data[0]["image"].size == (6, 8)


@pytest.mark.parametrize("pattern", ["{run}", "{run}/**/*.parquet", "{run}/data/*.parquet"])
def test_duckdb_reads_the_run_folder(finished, pattern):
    source = pattern.format(run=finished)
    got = duckdb.sql(f"select prompt_id, held_out from read_parquet('{source}')").fetchall()
    assert ids(r[0] for r in got) == expected(finished) and all(r[1] is not None for r in got)


@pytest.mark.parametrize("pattern", ["{run}/**/*.parquet", "{run}/data"])
def test_polars_reads_the_run_folder(finished, pattern):
    frame = pl.read_parquet(pattern.format(run=finished))
    assert frame.height == 5 and ids(frame["prompt_id"].to_list()) == expected(finished)
    assert pl.scan_parquet(pattern.format(run=finished)).select(pl.len()).collect().item() == 5


def test_json_columns_and_records_are_strict_json(finished):
    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))

    rows = ds.dataset(str(finished / "data"), format="parquet").to_table().to_pylist()
    for r in rows:
        for column in ("prompt_metadata", "method_settings", "sampler"):
            if r[column] is not None:
                strict(r[column])
    assert strict(rows[0]["prompt_metadata"]) == {"w": 0.5}
    for record in (finished / ".flowscale").rglob("*.json"):
        strict(record.read_text())


def legacy_copy(run_dir: Path, to: Path, drop_shard: int | None = None) -> Path:
    """The run as the earlier layout wrote it: the same records at the top level; optionally unfinished, with
    shard `drop_shard` never committed."""
    shutil.copytree(run_dir, to)
    records = to / ".flowscale"
    (records / "run.json").rename(to / "_run.json")
    (records / "committed").rename(to / "_committed")
    (records / "manifest.json").rename(to / "manifest.json")
    (records / "timeline.json").rename(to / "timeline.json")
    (records / "SUCCESS").rename(to / "_SUCCESS")
    shutil.rmtree(records)
    if drop_shard is not None:
        for p in (to / "_SUCCESS", to / "manifest.json", to / "_committed" / f"part-{drop_shard:05d}.json"):
            p.unlink()
    return to


def test_a_finished_run_in_the_earlier_layout_is_still_complete_and_inspected(finished, tmp_path, capsys):
    old = legacy_copy(finished, tmp_path / "out" / "toy")
    report = run(job_doc(tmp_path / "out", prompts=PROMPTS), tmp_path)
    assert report.ran == 0 and report.manifest["counts"]["rows"] == 5  # nothing to do, nothing rewritten
    assert (old / "_SUCCESS").exists() and not (old / ".flowscale").exists()
    summary, _, paths = summarize(str(old))
    assert summary.complete and summary.shards_committed == 3 and summary.rows == 5 and len(paths) == 3
    assert main(["inspect", str(old), "--no-sheet"]) == 0
    assert "complete" in capsys.readouterr().out


def test_an_unfinished_run_in_the_earlier_layout_resumes_into_the_current_one(finished, tmp_path):
    old = legacy_copy(finished, tmp_path / "out" / "toy", drop_shard=1)
    sha = json.loads((old / "_committed" / "part-00000.json").read_text())["sha256"]
    report = run(job_doc(tmp_path / "out", prompts=PROMPTS), tmp_path)
    assert report.ran == 2  # shard 1 (prompts 2 and 3) only
    assert sorted(p.name for p in old.iterdir()) == [".flowscale", "data"]  # the old records moved
    assert json.loads((old / ".flowscale" / "committed" / "part-00000.json").read_text())["sha256"] == sha
    assert (old / ".flowscale" / "SUCCESS").exists() and report.manifest["counts"]["rows"] == 5
    same = ["prompt_id", "status", "reward", "held_out", "nfe", "lineage", "image"]
    resumed = ds.dataset(str(old), format="parquet").to_table(columns=same).sort_by("prompt_id")
    assert resumed.equals(ds.dataset(str(finished), format="parquet").to_table(columns=same).sort_by("prompt_id"))
