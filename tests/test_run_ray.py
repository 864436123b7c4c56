"""The run loop on the Ray executor: a prompt whose search raises gets a `failed` row and the run goes on, with
the same rows for every other prompt as the in-process executor (the Executor contract's discard path)."""

from __future__ import annotations

import json

import pyarrow.dataset as ds
import pytest

from flowscale_ray.config import load_job
from flowscale_ray.run import run_job
from tests.test_io_run import job_doc

pytestmark = pytest.mark.slow


def read(path) -> list[dict]:
    return sorted(ds.dataset(str(path), format="parquet").to_table().to_pylist(), key=lambda r: r["prompt_id"])


@pytest.mark.parametrize("drivers", [1, 2])
def test_a_prompt_whose_search_raises_gets_a_failed_row_on_ray(tmp_path, local_ray, drivers):
    """With `drivers: 2` the prompts are split over two driver actors (runtime.sharded), one replica each: the
    same rows, each prompt once, the search's own error in the failed row, and a rerun finds the run complete."""
    prompts = [{"prompt": t, "id": t} for t in ("one", "two", "bad", "four", "five")]
    prompts[2]["explode"] = True  # the reward raises for this prompt (on the replica, inside the search)

    def doc(out, kind):
        executor = {"in_flight": 3} if kind == "inprocess" else {
            "kind": "ray", "replicas": 2, "in_flight": 3, "num_cpus": 0.5, "micro_batch": 8, "drivers": drivers,
        }  # fmt: skip
        d = job_doc(tmp_path / out, prompts=prompts, executor=executor)
        if kind == "inprocess":
            d["executor"]["micro_batch"] = 8
        return load_job(json.loads(json.dumps(d)))

    ray_report = run_job(doc("ray", "ray"), base_dir=tmp_path)
    local_report = run_job(doc("local", "inprocess"), base_dir=tmp_path)
    ray_rows, local_rows = read(tmp_path / "ray" / "toy" / "data"), read(tmp_path / "local" / "toy" / "data")
    assert [r["status"] for r in ray_rows] == ["failed", "ok", "ok", "ok", "ok"]  # bad, five, four, one, two
    assert ray_rows[0]["prompt_id"] == "bad" and "boom" in ray_rows[0]["error"]
    assert "ray::" not in ray_rows[0]["error"] and "\n" not in ray_rows[0]["error"]
    assert ray_report.failed == local_report.failed == 1
    assert run_job(doc("ray", "ray"), base_dir=tmp_path).ran == 0  # complete: nothing run twice
    same = ("prompt_id", "status", "reward", "held_out", "nfe", "verifier_calls", "lineage", "image")
    for a, b in zip(ray_rows, local_rows, strict=True):
        assert {k: a[k] for k in same} == {k: b[k] for k in same}


def test_a_prompt_whose_row_cannot_be_written_gets_a_failed_row_on_ray(tmp_path, local_ray, monkeypatch):
    """A poison prompt (text Arrow refuses) searched on the replicas: its row fails, its shard commits, the run
    finishes, and every other row equals the in-process run's."""
    from flowscale_ray.prompts import Prompt
    from tests.test_hardening_run import with_prompts

    prompts = [Prompt(id=t, text=t) for t in ("one", "two", "four", "five")]
    prompts.insert(2, Prompt(id="bad", text="bad \ud800"))
    with_prompts(monkeypatch, prompts)
    executor = {"kind": "ray", "replicas": 2, "in_flight": 3, "num_cpus": 0.5}
    ray_report = run_job(load_job(job_doc(tmp_path / "ray", executor=executor)), base_dir=tmp_path)
    local_report = run_job(load_job(job_doc(tmp_path / "local", executor={"in_flight": 3})), base_dir=tmp_path)
    ray_rows, local_rows = read(tmp_path / "ray" / "toy" / "data"), read(tmp_path / "local" / "toy" / "data")
    assert [(r["prompt_id"], r["status"]) for r in ray_rows] == [
        ("bad", "failed"), ("five", "ok"), ("four", "ok"), ("one", "ok"), ("two", "ok"),
    ]  # fmt: skip
    assert ray_rows[0]["error"].startswith("its row cannot be written: UnicodeEncodeError")
    assert ray_rows[0]["prompt"] == "bad \\ud800" and ray_report.failed == local_report.failed == 1
    assert ray_report.manifest["counts"]["status"] == {"ok": 4, "filtered": 0, "failed": 1}
    same = ("prompt_id", "status", "reward", "held_out", "nfe", "verifier_calls", "lineage", "image")
    for a, b in zip(ray_rows, local_rows, strict=True):
        assert {k: a[k] for k in same} == {k: b[k] for k in same}
