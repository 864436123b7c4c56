"""`flowscale bench`: the cluster benchmark runs end to end on a real local Ray and writes a coherent report.

Speed itself is not asserted here (figures live in benchmarks/results); these tests check that the report's
numbers are consistent with each other and that bad arguments fail with one line.
"""

import json
from pathlib import Path

import pytest
import yaml

from flowscale_ray.benchmark.command import DEFAULT_JOB
from flowscale_ray.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_report_is_consistent(local_ray, tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--set", "model={name: gmm2d}",
            "--set", "reward={name: mode_log_density, options: {mode: 2}}",
            "--set", "sampler={preset: linear-sde, steps: 6}",
            "--set", "method={name: rbf, n_chains: 2, nfe_budget: 30}",
            "--set", "executor.num_cpus=0.5",
            "--replicas", "1,2",
            "--delay-ms", "5",
            "--delay-batch", "4",
            "--per-replica", "2",
            "--prompts", "3",
            "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    report = json.loads(out.read_text())
    over = report["overhead"]
    assert over["nfe"] == 3 * 30  # RBF spends its budget exactly, in both executors (checked inside too)
    assert over["model"] == "gmm2d"
    for key in ("plain_loop", "in_process", "ray_1_replica"):
        assert over["nfe_per_s"][key] == pytest.approx(over["nfe"] / over["seconds"][key])
    assert over["ratio_ray_vs_plain"] == pytest.approx(over["seconds"]["plain_loop"] / over["seconds"]["ray_1_replica"])
    rows = report["scaling"]
    assert [r["replicas"] for r in rows] == [1, 2]
    assert rows[0]["parallel_efficiency"] == pytest.approx(1.0)
    for r in rows:
        assert r["nfe"] == r["prompts"] * 30
        assert r["prompts"] == 2 * 2 * r["replicas"]
        assert 0.0 < r["busy_fraction"] <= 1.0 + 1e-6
        assert r["rounds"] >= r["calls_per_replica"] * r["replicas"] - 1e-9
        assert r["driver_ms_per_round"] > 0
    assert report["cluster"]["cpus"] == 2.0
    assert report["settings"]["delay_batch"] == 4
    printed = capsys.readouterr().out
    assert "Ray, 1 rep" in printed and "efficiency" in printed


def test_bench_job_file_matches_the_built_in_default():
    """`flowscale bench` with no job file runs what jobs/bench.yaml says (the package does not ship jobs/)."""
    on_disk = yaml.safe_load((REPO / "jobs" / "bench.yaml").read_text())
    for key in ("model", "reward", "sampler", "method", "prompts", "seed"):
        assert on_disk[key] == DEFAULT_JOB.get(key, 0), key


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replicas", "1,x"], "--replicas: expected comma-separated counts"),
        (["--replicas", "0"], "--replicas: expected comma-separated counts"),
        (["--per-replica", "0"], "--per-replica: must be >= 1"),
        (["--delay-ms", "-1"], "--delay-ms: must be >= 0"),
        (["--delay-batch", "-2"], "--delay-batch: must be >= 0"),
        (["--set", "method.nfe_budget=-3"], "method.nfe_budget"),
    ],
)
def test_bench_bad_arguments_fail_with_one_line(args, message, capsys):
    assert main(["bench", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
