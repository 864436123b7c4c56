"""Ray Jobs on a real local Ray head (`ray start --head`, loopback only): `ray job submit` of the demo job with the
documented submit line, `ray job stop` in the middle of a longer job and a resubmission that resumes it (exactly
one row per prompt), and `flowscale run --address` against the same running cluster.

The head is started with `--block` and stopped by signalling that process (it then stops everything it started):
`ray stop` would also kill every other Ray on the machine."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow.dataset as ds
import pytest
import yaml

from flowscale_ray.cli import main, run_id_for_submission

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # .venv/bin: `ray` and `flowscale`
PROMPTS = ["3 red circles", "2 blue squares", "5 green squares", "1 yellow square and 2 red circles"]
# The demo, shrunk: fewer prompts, a smaller budget, no baselines; replicas on the cluster the job runs in.
SMALL_DEMO = [
    f"prompts={json.dumps(PROMPTS)}",
    "compare_with=[]",
    "method.nfe_budget=20",
    "method.n_chains=2",
    "executor.kind=ray",
    "executor.num_cpus=0.5",
]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
SMALL_JOB = {  # the analytic model: a quick job for the in-process checks
    "name": "small",
    "model": {"name": "gmm2d"},
    "sampler": {"preset": "vp-sde", "steps": 6},
    "method": {"name": "bon", "n": 4},
    "reward": {"name": "mode_log_density", "options": {"mode": 2}},
    "prompts": ["a", "b", "c"],
}


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class Head:
    """A Ray head on 127.0.0.1 with its own ports and temp dir, started by this test and stopped by it."""

    def __init__(self) -> None:
        self.temp = tempfile.mkdtemp(prefix="fsray-", dir="/tmp")  # short: Ray's socket paths must stay < 108 chars
        gcs, dash, client, agent, metrics = _free_ports(5)
        self.gcs = f"127.0.0.1:{gcs}"
        self.dashboard = f"http://127.0.0.1:{dash}"
        self.env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every listener on 127.0.0.1
            "RAY_AUTH_MODE": "disabled",  # `ray job submit` would otherwise get 401
            "HF_HUB_OFFLINE": "1",
        }
        self.env.pop("RAY_ADDRESS", None)
        args = [
            str(BIN / "ray"),
            "start",
            "--head",
            "--block",
            "--node-ip-address=127.0.0.1",
            f"--port={gcs}",
            "--include-dashboard=true",
            "--dashboard-host=127.0.0.1",
            f"--dashboard-port={dash}",
            f"--ray-client-server-port={client}",
            f"--dashboard-agent-listen-port={agent}",
            f"--metrics-export-port={metrics}",
            "--num-cpus=2",
            f"--temp-dir={self.temp}",
            "--disable-usage-stats",
        ]
        self.log = open(Path(self.temp) / "head.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(args, env=self.env, stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        try:
            self._wait_up(timeout=180)
        except BaseException:
            self.stop()
            raise

    def _wait_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited with {self.proc.returncode}: {self.head_log()[-2000:]}")
            try:
                self._api("")
                return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the Ray head did not answer within {timeout:.0f}s: {self.head_log()[-2000:]}")

    def head_log(self) -> str:
        return (Path(self.temp) / "head.log").read_text(errors="replace")

    def ray(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        cmd = [str(BIN / "ray"), *args[:2], "--address", self.dashboard, *args[2:]]
        out = subprocess.run(cmd, env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)} exited {out.returncode}: {out.stdout[-2000:]}{out.stderr[-2000:]}")
        return out

    def submit(self, submission_id: str, job: str, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
        """The documented submit line (docs/cluster.md), with --no-wait: the test polls the status itself."""
        sets = [a for o in overrides for a in ("--set", o)]
        return self.ray(
            "job",
            "submit",
            "--submission-id",
            submission_id,
            "--working-dir",
            ".",
            "--runtime-env",
            "jobs/runtime_env.yaml",
            "--no-wait",
            "--",
            "flowscale",
            "run",
            job,
            *sets,
            check=check,
        )

    def _api(self, path: str) -> dict:
        with urllib.request.urlopen(f"{self.dashboard}/api/jobs/{path}", timeout=60) as resp:
            return json.loads(resp.read())

    def status(self, submission_id: str) -> str:
        return self._api(submission_id)["status"]

    def logs(self, submission_id: str) -> str:
        return self._api(f"{submission_id}/logs")["logs"]

    def wait(self, submission_id: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status(submission_id)
            if status in TERMINAL:
                return status
            time.sleep(0.5)
        raise AssertionError(f"job {submission_id} not finished after {timeout:.0f}s:\n{self.logs(submission_id)}")

    def stop(self) -> None:
        """SIGTERM to `ray start --block`: it stops the GCS, raylet, dashboard and workers it started."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def head():  # only the tests that use it are slow
    h = Head()
    try:
        yield h
    finally:
        h.stop()


def rows_of(run_dir: Path):
    return ds.dataset(str(run_dir / "data"), format="parquet").to_table(columns=["prompt_id", "prompt", "status"])


def job_file(tmp_path: Path, **changes) -> Path:
    doc = {**SMALL_JOB, "output": {"dir": str(tmp_path / "out")}, **changes}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def ray_job_env(monkeypatch, submission_id: str) -> None:
    """What Ray's job supervisor gives the entrypoint: the job config JSON with the submission id."""
    config = {"runtime_env": {}, "metadata": {"job_submission_id": submission_id, "job_name": submission_id}}
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", json.dumps(config))


@pytest.mark.parametrize(
    ("submission_id", "extra_args", "job_run_id", "expected"),
    [
        ("nightly-42", [], None, "nightly-42"),  # the submission id names the run
        ("nightly-42-retry3", [], None, "nightly-42"),  # a retry resumes it
        ("raysubmit_AbCdEf123", [], None, "small"),  # generated by Ray: the job name
        ("nightly-42", ["--run-id", "chosen"], None, "chosen"),  # --run-id wins
        ("nightly-42", [], "fixed", "fixed"),  # output.run_id wins
    ],
)
def test_run_id_from_the_submission_id(tmp_path, monkeypatch, submission_id, extra_args, job_run_id, expected):
    ray_job_env(monkeypatch, submission_id)
    output = {"dir": str(tmp_path / "out"), **({"run_id": job_run_id} if job_run_id else {})}
    assert main(["run", str(job_file(tmp_path, output=output)), *extra_args]) == 0
    assert [p.name for p in (tmp_path / "out").iterdir()] == [expected]
    assert (tmp_path / "out" / expected / ".flowscale" / "SUCCESS").exists()


def test_a_submission_id_that_cannot_name_a_run_is_one_line_error(tmp_path, monkeypatch, capsys):
    ray_job_env(monkeypatch, "has space")
    assert main(["run", str(job_file(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--submission-id: 'has space' cannot name a run" in err, err
    assert "--run-id" in err


def test_sigterm_stops_a_run_cleanly_and_the_next_run_resumes(tmp_path):
    prompts = [f"p{i}" for i in range(60)]
    path = job_file(
        tmp_path,
        prompts=prompts,
        method={"name": "bon", "n": 128},  # about 5 s in all on 2 cores: stopped long before the end
        output={"dir": str(tmp_path / "out"), "shard_size": 3},
    )
    cmd = [str(BIN / "flowscale"), "run", str(path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop("RAY_JOB_CONFIG_JSON_ENV_VAR", None)
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    markers = tmp_path / "out" / "small" / ".flowscale" / "committed"
    try:
        deadline = time.monotonic() + 300
        while not (markers.exists() and any(markers.iterdir())):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no shard committed"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, (out, err)
    assert err.strip().splitlines()[-1] == (
        f"flowscale: error: {path}: stopped by SIGTERM; committed shards are kept: run the job again with the "
        "same run id to resume"
    )
    assert "Traceback" not in err
    committed = sorted(p.name for p in markers.iterdir())
    assert committed and len(committed) < 20 and not (tmp_path / "out" / "small" / ".flowscale" / "SUCCESS").exists()
    assert ds.dataset(str(tmp_path / "out" / "small" / "data"), format="parquet").count_rows() >= 3 * len(committed)

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"resuming: {len(committed)} of 20 shards already committed" in done.stdout
    ids = rows_of(tmp_path / "out" / "small").column("prompt_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(prompts)


def test_submission_ids_name_runs():
    assert run_id_for_submission("curation-2026-11") == "curation-2026-11"
    assert run_id_for_submission("curation-2026-11-retry2") == "curation-2026-11"
    assert run_id_for_submission("raysubmit_AbC123") is None  # generated anew each time: never resumes
    assert run_id_for_submission("-retry1") == "-retry1"


@pytest.mark.slow
def test_demo_job_submitted_to_a_running_cluster(head, tmp_path):
    out = tmp_path / "out"
    head.submit("demo-job-1", "jobs/demo.yaml", *SMALL_DEMO, f"output.dir={out}")
    status = head.wait("demo-job-1")
    logs = head.logs("demo-job-1")
    assert status == "SUCCEEDED", logs
    # It joined the cluster it runs in (no second Ray), and the submission id named the run.
    assert "connected to the cluster at RAY_ADDRESS" in logs and "started a local Ray" not in logs, logs
    assert "run id demo-job-1 from the Ray submission id demo-job-1" in logs, logs
    run = out / "demo-job-1"
    assert (run / ".flowscale" / "SUCCESS").exists()
    manifest = json.loads((run / ".flowscale" / "manifest.json").read_text())
    assert manifest["run_id"] == "demo-job-1" and manifest["counts"]["rows"] == len(PROMPTS)
    table = rows_of(run)
    assert sorted(table.column("prompt").to_pylist()) == sorted(PROMPTS)
    assert set(table.column("status").to_pylist()) == {"ok"}

    # Ray refuses the same submission id twice; after `ray job delete` the same id is accepted and finds the
    # run complete (nothing is redone).
    again = head.submit("demo-job-1", "jobs/demo.yaml", *SMALL_DEMO, f"output.dir={out}", check=False)
    assert again.returncode != 0 and "already exists" in again.stdout + again.stderr
    head.ray("job", "delete", "demo-job-1")
    head.submit("demo-job-1", "jobs/demo.yaml", *SMALL_DEMO, f"output.dir={out}")
    assert head.wait("demo-job-1") == "SUCCEEDED"
    assert "is already complete" in head.logs("demo-job-1")


@pytest.mark.slow
def test_stopped_job_keeps_committed_shards_and_resubmission_completes_it(head, tmp_path):
    out = tmp_path / "out"
    prompts = [f"{1 + i % 6} {color} circles" for i, color in enumerate(["red", "blue", "green", "yellow"] * 10)]
    long_job = [
        f"prompts={json.dumps(prompts)}",
        "compare_with=[]",
        "method.nfe_budget=20",
        "method.n_chains=2",
        "executor.kind=ray",
        "executor.num_cpus=0.5",
        "executor.in_flight=4",
        "output.shard_size=4",
        f"output.dir={out}",
    ]
    markers = out / "long-job" / ".flowscale" / "committed"
    head.submit("long-job", "jobs/demo.yaml", *long_job)
    deadline = time.monotonic() + 400
    while not (markers.exists() and any(markers.iterdir())):
        if time.monotonic() > deadline or head.status("long-job") in TERMINAL:
            raise AssertionError(f"no shard committed before the job ended:\n{head.logs('long-job')}")
        time.sleep(0.2)
    head.ray("job", "stop", "long-job")  # waits until the job has exited
    assert head.wait("long-job", timeout=120) == "STOPPED"
    logs = head.logs("long-job")
    assert "stopped by SIGTERM; committed shards are kept" in logs, logs  # the handler ran, not SIGKILL
    committed = sorted(p.name for p in markers.iterdir())
    assert committed and len(committed) < 10, committed
    assert not (out / "long-job" / ".flowscale" / "SUCCESS").exists()
    # Every committed shard's data file is complete and readable.
    partial = rows_of(out / "long-job")
    assert partial.num_rows >= 4 * len(committed)

    # Resubmit under a new submission id with a retry suffix: same run id, resumes.
    head.submit("long-job-retry1", "jobs/demo.yaml", *long_job)
    status = head.wait("long-job-retry1")
    logs = head.logs("long-job-retry1")
    assert status == "SUCCEEDED", logs
    assert f"resuming: {len(committed)} of 10 shards already committed" in logs, logs
    table = rows_of(out / "long-job")
    ids = table.column("prompt_id").to_pylist()
    assert len(ids) == len(set(ids)) == len(prompts)  # exactly one row per prompt
    assert sorted(table.column("prompt").to_pylist()) == sorted(prompts)
    assert json.loads((out / "long-job" / ".flowscale" / "manifest.json").read_text())["counts"]["rows"] == len(prompts)


@pytest.mark.slow
def test_flowscale_run_address_against_the_running_cluster(head, tmp_path):
    out = tmp_path / "out"
    args = [str(BIN / "flowscale"), "run", "jobs/demo.yaml", "--address", head.gcs, "--run-id", "from-outside"]
    args += [a for o in [*SMALL_DEMO, f"output.dir={out}"] for a in ("--set", o)]
    done = subprocess.run(args, env=head.env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"connected to {head.gcs}" in done.stdout
    table = rows_of(out / "from-outside")
    assert sorted(table.column("prompt").to_pylist()) == sorted(PROMPTS)
    assert (out / "from-outside" / ".flowscale" / "SUCCESS").exists()
