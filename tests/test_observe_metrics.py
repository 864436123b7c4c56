"""Prometheus metrics after real in-process runs: the counts equal what the run and the methods' own StepRecords
say; label keys stay within the fixed set (never a prompt id); the server listens on loopback only."""

import urllib.request

import pytest

from flowscale_ray.config import ConfigError, load_job
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models.registry import build_model
from flowscale_ray.observe import metrics
from flowscale_ray.observe.recorder import NULL_RECORDER, CallStats, RunRecorder
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward
from flowscale_ray.run import run_job
from tests.helpers import LogLines

PROMPT_IDS = [f"prompt-id-{i}-zq" for i in range(5)]


def job_doc(tmp_path, method, **extra):
    return {
        "name": f"m-{method['name']}",
        "model": {"name": "gmm2d"},
        "method": method,
        "reward": {"name": "mode_log_density", "options": {"mode": 2}},
        "prompts": [{"id": pid, "prompt": f"text {pid}"} for pid in PROMPT_IDS],
        "output": {"dir": str(tmp_path / "out"), "shard_size": 2},
        "executor": {"in_flight": 2},
        "metrics": {"port": 0, "progress": "off"},
        **extra,
    }


def value(name, **labels):
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


RUN = {"model": "gmm2d", "reward": "mode_log_density"}
NAMES = [
    "flowscale_nfe_total",
    "flowscale_prompts_started_total",
    "flowscale_prompts_finished_total",
    "flowscale_prompts_failed_total",
    "flowscale_candidates_scored_total",
    "flowscale_rbf_accepts_total",
    "flowscale_rbf_rollovers_total",
    "flowscale_smc_resamples_total",
    "flowscale_smc_ess_count",
    "flowscale_prompt_best_reward_count",
    "flowscale_candidate_reward_count",
    "flowscale_rows_written_total",
    "flowscale_bytes_written_total",
    "flowscale_shards_committed_total",
]


def run_and_measure(tmp_path, method):
    job = load_job(job_doc(tmp_path, method))
    labels = {"method": method["name"], **RUN}
    replica = {"model": "gmm2d", "replica": "0"}
    before = {n: value(n, **labels) for n in NAMES}
    busy_before = value("flowscale_replica_busy_seconds_total", **replica)
    calls_before = value("flowscale_replica_calls_total", **replica)
    batches_before = value("flowscale_replica_batch_size_count", **replica)
    report = run_job(job)
    delta = {n: value(n, **labels) - before[n] for n in NAMES}
    delta["busy"] = value("flowscale_replica_busy_seconds_total", **replica) - busy_before
    delta["calls"] = value("flowscale_replica_calls_total", **replica) - calls_before
    delta["batches"] = value("flowscale_replica_batch_size_count", **replica) - batches_before
    return report, delta, labels


def test_rbf_run_metrics_equal_the_run_and_its_step_records(tmp_path):
    report, d, labels = run_and_measure(tmp_path, {"name": "rbf", "n_chains": 2, "nfe_budget": 60})
    results = report.preview
    assert len(results) == len(PROMPT_IDS) == report.ran
    records = [rec for r in results for rec in r.outcome.records]
    assert d["flowscale_nfe_total"] == report.nfe == sum(r.nfe for r in results) > 0
    assert d["flowscale_prompts_started_total"] == d["flowscale_prompts_finished_total"] == len(PROMPT_IDS)
    assert d["flowscale_prompts_failed_total"] == 0
    assert value("flowscale_prompts_in_flight", **labels) == 0
    assert value("flowscale_prompts_total", **labels) == len(PROMPT_IDS)
    assert d["flowscale_candidates_scored_total"] == sum(rec.candidates for rec in records) > 0
    assert d["flowscale_rbf_accepts_total"] == sum(rec.accepted for rec in records) > 0
    assert d["flowscale_rbf_rollovers_total"] == sum(rec.rollover for rec in records)
    assert d["flowscale_smc_resamples_total"] == 0 and d["flowscale_smc_ess_count"] == 0
    assert d["flowscale_prompt_best_reward_count"] == len(PROMPT_IDS)
    assert value("flowscale_prompt_best_reward_last", **labels) in {r.reward for r in results}
    assert d["flowscale_candidate_reward_count"] > 0
    counts = report.manifest["counts"]
    assert d["flowscale_rows_written_total"] == counts["rows"]
    assert d["flowscale_bytes_written_total"] == counts["bytes"]
    assert d["flowscale_shards_committed_total"] == counts["shards"] == 3
    assert d["busy"] > 0 and d["calls"] == d["batches"] > 0


def test_smc_resamples_and_ess_come_from_step_records(tmp_path):
    report, d, _ = run_and_measure(tmp_path, {"name": "smc", "n_particles": 8})
    records = [rec for r in report.preview for rec in r.outcome.records]
    assert d["flowscale_smc_resamples_total"] == sum(rec.resampled for rec in records) > 0
    assert d["flowscale_smc_ess_count"] == sum(rec.ess is not None for rec in records) > 0
    assert d["flowscale_nfe_total"] == report.nfe


def test_label_keys_are_fixed_and_no_prompt_id_is_a_label(tmp_path):
    run_job(load_job(job_doc(tmp_path, {"name": "bon", "n": 4})))
    assert metrics.label_keys() <= metrics.LABEL_KEYS
    values = set()
    for family in metrics.REGISTRY.collect():
        assert family.name.startswith("flowscale_"), family.name
        for sample in family.samples:
            values |= set(sample.labels.values())
    assert not values & set(PROMPT_IDS)
    assert not any("text prompt-id" in v for v in values)


def test_server_is_bound_to_loopback_and_serves_the_registry(tmp_path):
    with LogLines() as lines:
        run_job(load_job(job_doc(tmp_path, {"name": "bon", "n": 2})))
    (line,) = [m for m in lines if m.startswith("metrics: serving")] or [None]
    if line is None:  # an earlier test in this process started the server and announced it
        port = metrics.serve(0, "127.0.0.1")
    else:
        assert "http://127.0.0.1:" in line
        port = int(line.rsplit(":", 1)[1].split("/")[0])
    servers = [s for (host, p), (s, _) in metrics._servers.items() if p == port]
    assert servers and all(s.server_address[0] == "127.0.0.1" for s in servers)
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert 'flowscale_nfe_total{method="bon",model="gmm2d",reward="mode_log_density"}' in body
    assert "flowscale_replica_busy_seconds_total" in body


def test_storage_retries_are_counted(tmp_path, monkeypatch):
    import os

    original = os.replace
    failures = []

    def flaky(src, dst, *args, **kwargs):  # the local writer's atomic rename of a finished file
        if str(dst).endswith("part-00001.parquet") and not failures:
            failures.append(dst)
            raise ConnectionError("injected")
        return original(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", flaky)
    doc = job_doc(tmp_path, {"name": "bon", "n": 2})
    labels = {"method": "bon", **RUN}
    before = value("flowscale_storage_retries_total", **labels)
    run_job(load_job(doc))
    assert failures and value("flowscale_storage_retries_total", **labels) - before == 1


def test_metrics_off_by_default_and_executors_default_to_a_no_op_recorder(tmp_path):
    doc = job_doc(tmp_path, {"name": "bon", "n": 2})
    del doc["metrics"]
    job = load_job(doc)
    assert job.metrics.port is None and job.metrics.host == "127.0.0.1"
    labels = {"method": "bon", **RUN}
    before = value("flowscale_nfe_total", **labels)
    report = run_job(job)
    assert report.nfe > 0 and value("flowscale_nfe_total", **labels) == before  # nothing recorded
    ex = InProcessExecutor(ParticleEngine(build_model("gmm2d"), job.sampler), build_reward("mode_log_density"))
    assert ex.recorder is NULL_RECORDER
    (result,) = ex.run([SearchTask(Prompt("p", "t"), job.method.build(), seed=0)])
    assert result.nfe > 0


def test_recorder_timeline_samples_busy_time():
    clock = iter([0.0, 0.0, 1.0, 2.5, 6.0, 7.0]).__next__
    rec = RunRecorder("bon", "m", "r", prompts=1, planned_nfe=10, replicas=2, clock=clock, timeline_interval_s=5.0)
    rec.replica_call(0, CallStats(0.5, 0.4, 0.1, 4, 4))  # t=1: within the first interval, not sampled
    rec.replica_call(1, CallStats(2.0, 2.0, None, 4, 4))  # t=2.5
    rec.replica_call(0, CallStats(1.0, 1.0, 0.0, 4, 4))  # t=6: sampled
    doc = rec.close()  # t=7: the last sample
    assert doc["replicas"] == ["0", "1"]
    assert [s["t"] for s in doc["samples"]] == [0.0, 6.0, 7.0]
    assert doc["samples"][1]["busy"] == {"0": 1.5, "1": 2.0}


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"port": 70000}, "metrics.port: must be 0 (a free port) to 65535, or null (off); got 70000"),
        ({"progress": "fancy"}, "metrics.progress: must be one of auto, bar, log, off; got 'fancy'"),
        ({"log_interval_s": 0}, "metrics.log_interval_s: must be > 0"),
        ({"host": "a b"}, "metrics.host: expected an address to bind"),
        ({"prot": 1}, "metrics.prot: unknown key; allowed: port, host, progress"),
    ],
)
def test_bad_metrics_section_is_one_line(tmp_path, section, message):
    with pytest.raises(ConfigError) as err:
        load_job(job_doc(tmp_path, {"name": "bon", "n": 2}, metrics=section))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_metric_is_documented_with_its_labels():
    from pathlib import Path

    from prometheus_client.metrics import MetricWrapperBase

    doc = (Path(__file__).resolve().parents[1] / "docs" / "observability.md").read_text()
    declared = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    assert len(declared) >= 25
    for m in declared:
        name = m._name + ("_total" if m._type == "counter" else "")
        assert f"| `{name}` | {m._type} | {', '.join(m._labelnames)} |" in doc, name
        assert set(m._labelnames) <= metrics.LABEL_KEYS
