"""Dashboards and alerts against the real thing: `promtool` checks and unit-tests the alerting rules; a real
Prometheus (Debian's package, started here on 127.0.0.1) scrapes a live run on a local Ray with two replicas,
and every dashboard panel's PromQL expression must parse and return data."""

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from flowscale_ray.observe import metrics

ROOT = Path(__file__).resolve().parents[1]
DASHBOARDS = ROOT / "dashboards"
RULES = DASHBOARDS / "alerts" / "flowscale.rules.yml"
PROMPTS = 8


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: `make prometheus` (apt-get install prometheus) installs it")
    return path


def dashboard() -> dict:
    return json.loads((DASHBOARDS / "flowscale-overview.json").read_text())


def panel_targets(dash: dict) -> list[tuple[str, str]]:
    out = []
    for p in dash["panels"]:
        for t in p.get("targets", []):
            out.append((p["title"], t["expr"]))
    return out


def substitute(expr: str) -> str:
    """Grafana's template variables as Grafana would expand them with 'All' selected."""
    for name, value in {
        "$__rate_interval": "1m",
        "$__interval": "15s",
        "$__range": "5m",
        "$method": ".*",
        "$model": ".*",
    }.items():
        expr = expr.replace(name, value)
    assert "$" not in expr, expr
    return expr


def test_promtool_checks_and_unit_tests_the_alert_rules():
    promtool = tool("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS: 3 rules found" in check.stdout, check.stdout + check.stderr
    test = subprocess.run(
        [promtool, "test", "rules", "flowscale.rules.test.yml"], cwd=RULES.parent, capture_output=True, text=True
    )
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr
    names = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    assert names == ["FlowscaleRunStalled", "FlowscaleReplicaRestarting", "FlowscaleHighErrorRate"]


def test_dashboard_structure_and_provisioning():
    dash = dashboard()
    assert dash["uid"] == "flowscale-overview" and dash["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    assert {"method", "model"} <= variables.keys()
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_count", "_sum"], "gauge": [""]}
    known = {f.name + x for f in metrics.REGISTRY.collect() for x in suffixes.get(f.type, [""])}
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}"
            for name in re.findall(r"flowscale_[a-z_]+", t["expr"]):
                assert name in known, f"{p['title']}: {name} is not a metric flowscale exports"
    titles = " ".join(p["title"] for p in dash["panels"]).lower()
    for topic in ("nfe/s", "utilization", "reward", "failed", "restarts", "rbf", "smc", "batch size", "latency"):
        assert topic in titles, topic
    prov = yaml.safe_load((DASHBOARDS / "provisioning" / "dashboards.yaml").read_text())
    assert prov["apiVersion"] == 1 and prov["providers"][0]["type"] == "file"
    ds = yaml.safe_load((DASHBOARDS / "provisioning" / "datasources.yaml").read_text())
    assert ds["datasources"][0]["type"] == "prometheus"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def api(base: str, path: str, **params) -> dict:
    url = f"{base}{path}?{urllib.parse.urlencode(params)}" if params else f"{base}{path}"
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def prometheus(tmp_path):
    """A real Prometheus on 127.0.0.1 scraping flowscale's /metrics port every second, with the alert rules."""
    binary = tool("prometheus")
    target, web = free_port(), free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(RULES)],
        "scrape_configs": [{"job_name": "flowscale", "static_configs": [{"targets": [f"127.0.0.1:{target}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{web}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{web}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=1).read()
                break
            except OSError:
                assert proc.poll() is None, (tmp_path / "prometheus.log").read_text()
                assert time.monotonic() < deadline, "prometheus did not become ready"
                time.sleep(0.2)
        yield base, target
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


def wait_for(base: str, query: str, want: float, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        result = api(base, "/api/v1/query", query=query)["data"]["result"]
        if result and float(result[0]["value"][1]) == want:
            return
        assert time.monotonic() < deadline, f"{query}: wanted {want}, got {result}"
        time.sleep(0.5)


@pytest.mark.slow
def test_every_dashboard_panel_returns_data_from_a_live_ray_run(local_ray, prometheus, tmp_path):
    from flowscale_ray.config import load_job
    from flowscale_ray.run import run_with_baselines
    from tests.helpers import LogLines

    base, port = prometheus
    job = load_job(
        {
            "name": "live",
            "model": {"name": "gmm2d"},
            "method": {"name": "rbf", "n_chains": 2, "nfe_budget": 80},
            "compare_with": [{"name": "smc", "n_particles": 8}],
            "reward": {"name": "mode_log_density", "options": {"mode": 2}},
            "prompts": [f"p{i}" for i in range(PROMPTS)],
            "executor": {"kind": "ray", "replicas": 2, "num_cpus": 0.5, "in_flight": 4},
            "output": {"dir": str(tmp_path / "out"), "shard_size": 4},
            "metrics": {"port": port, "progress": "off"},
        }
    )
    lines = LogLines()

    def registry(name: str, method: str) -> float:  # this process's counters (earlier tests may have added)
        labels = {"method": method, "model": "gmm2d", "reward": "mode_log_density"}
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    names = ("flowscale_prompts_finished_total", "flowscale_nfe_total")
    before = {(n, m): registry(n, m) for n in names for m in ("rbf", "smc")}
    with lines:
        smc, rbf = run_with_baselines(job)
    assert f"metrics: serving Prometheus metrics at http://127.0.0.1:{port}/metrics" in lines
    # Prometheus holds exactly what the run did.
    for report, m in ((rbf, "rbf"), (smc, "smc")):
        assert registry(names[0], m) - before[(names[0], m)] == PROMPTS
        assert registry(names[1], m) - before[(names[1], m)] == report.nfe > 0
        for n in names:
            wait_for(base, f'sum({n}{{method="{m}"}})', registry(n, m))
    time.sleep(2.5)  # a few more scrapes after the last change, so rates over the window are defined
    replicas = api(base, "/api/v1/query", query="flowscale_replica_busy_seconds_total > 0")["data"]["result"]
    assert {r["metric"]["replica"] for r in replicas} == {"0", "1"}  # both replicas reported busy time

    failures = []
    for title, expr in panel_targets(dashboard()):
        answer = api(base, "/api/v1/query", query=substitute(expr))
        result = answer["data"]["result"] if answer["status"] == "success" else []
        if not result:
            failures.append(f"{title}: {expr} -> {answer}")
    assert not failures, "\n".join(failures)

    rules = api(base, "/api/v1/rules")["data"]["groups"][0]["rules"]
    assert len(rules) == 3 and all(r["health"] == "ok" for r in rules), rules
    firing = api(base, "/api/v1/alerts")["data"]["alerts"]
    assert not [a for a in firing if a["state"] == "firing"]  # a healthy run raises no alert


@pytest.mark.slow
def test_ray_replica_figures_and_restarts_reach_the_metrics(local_ray):
    """Per-replica figures measured inside the actors equal the replicas' own counters; restarts are counted."""
    from flowscale_ray.core.dynamics import SamplerSpec
    from flowscale_ray.execution import SearchTask
    from flowscale_ray.observe.recorder import RunRecorder
    from flowscale_ray.prompts import Prompt
    from flowscale_ray.runtime.driver import RayExecutor, RuntimeFailure, RuntimeOptions
    from flowscale_ray.runtime.messages import ComponentSpec
    from flowscale_ray.search import METHODS

    reward = ComponentSpec("mode_log_density", {"mode": 2})
    method = METHODS["bon"](METHODS["bon"].Config(n=6))
    tasks = [SearchTask(Prompt(f"q{i}", "t"), method, seed=1) for i in range(4)]
    model = "obs-replicas"
    rec = RunRecorder("bon", model, "mode_log_density", prompts=4, planned_nfe=0, replicas=2, prometheus=True)
    ex = RayExecutor(
        ComponentSpec("gmm2d", {}), SamplerSpec(), reward, options=RuntimeOptions(replicas=2, num_cpus=0.5)
    )
    ex.recorder = rec
    try:
        results = list(ex.run(tasks))
        stats = ex.stats()
    finally:
        ex.shutdown()
    assert rec.totals.nfe == sum(r.nfe for r in results) > 0
    for r, s in enumerate(stats):
        labels = {"model": model, "replica": str(r)}
        assert metrics.REGISTRY.get_sample_value("flowscale_replica_nfe_total", labels) == s["nfe"]
        assert metrics.REGISTRY.get_sample_value("flowscale_replica_calls_total", labels) == s["calls"]
        busy = metrics.REGISTRY.get_sample_value("flowscale_replica_busy_seconds_total", labels)
        assert busy == pytest.approx(s["busy_seconds"], rel=1e-9, abs=1e-12)
    assert sum(s["calls"] for s in stats) > 0

    rec = RunRecorder("bon", "obs-crashing", "mode_log_density", prompts=1, planned_nfe=0, replicas=1, prometheus=True)
    ex = RayExecutor(
        ComponentSpec("tests.runtime_models:crashing", {}),
        SamplerSpec(),
        reward,
        options=RuntimeOptions(replicas=1, num_cpus=0.5, max_restarts=1),
    )
    ex.recorder = rec
    restart = {"kind": "model", "replica": "0"}
    before = metrics.REGISTRY.get_sample_value("flowscale_replica_restarts_total", restart) or 0.0
    try:
        with pytest.raises(RuntimeFailure, match="replica 0 failed 2 times"):
            list(ex.run(tasks[:1]))
    finally:
        ex.shutdown()
    assert metrics.REGISTRY.get_sample_value("flowscale_replica_restarts_total", restart) - before == 2
    assert rec.totals.restarts == 2
