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


def test_a_prompt_whose_search_raises_gets_a_failed_row_on_ray(tmp_path, local_ray):
    prompts = [{"prompt": t, "id": t} for t in ("one", "two", "bad", "four", "five")]
    prompts[2]["explode"] = True  # the reward raises for this prompt (on the replica, inside the search)

    def doc(out, kind):
        executor = {"in_flight": 3} if kind == "inprocess" else {
            "kind": "ray", "replicas": 2, "in_flight": 3, "num_cpus": 0.5, "micro_batch": 8,
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
    assert ray_report.failed == local_report.failed == 1
    same = ("prompt_id", "status", "reward", "held_out", "nfe", "verifier_calls", "lineage", "image")
    for a, b in zip(ray_rows, local_rows, strict=True):
        assert {k: a[k] for k in same} == {k: b[k] for k in same}
