"""Jobs against a real S3-protocol server (moto's, on 127.0.0.1, as s3fs's own tests do): prompts read from S3,
the dataset written to S3, credentials from the job file or the environment and never written or logged,
a proxy that fails 10% of requests, and the driver killed mid-run then resumed.

Everything listens on 127.0.0.1 and is stopped by its fixture.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml

from flowscale_ray.cli import main

REPO = Path(__file__).resolve().parents[1]
KEY = "AKIAFLOWSCALETEST0001"
SECRET = "flowscale-test-secret-Zq7wX9"  # must never show up in a log, a row or the manifest
ENV_SECRET = "flowscale-env-secret-Kp3vN8"


@pytest.fixture(autouse=True)
def _isolated_aws(monkeypatch, tmp_path):
    """No real AWS configuration, and no instance-metadata lookups (they would leave the loopback)."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    assert host == "127.0.0.1"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def s3(endpoint: str):
    import s3fs

    return s3fs.S3FileSystem(key=KEY, secret=SECRET, client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)


@pytest.fixture
def bucket(s3_endpoint, request):
    name = "t-" + request.node.name.lower().replace("_", "-")[:50].strip("-")
    fs = s3(s3_endpoint)
    fs.mkdir(name)
    return name


class FaultyProxy:
    """An HTTP proxy on 127.0.0.1 in front of the S3 server that fails a fraction of requests: a 503 SlowDown,
    the connection dropped before forwarding, or dropped after forwarding (the request took effect, the
    answer is lost), in turn. Which requests fail comes from a seeded generator, in arrival order."""

    HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "proxy-connection", "te", "trailer", "upgrade"})

    def __init__(self, upstream: str, fail_rate: float, seed: int = 0) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.fail_rate = fail_rate
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def faults(self) -> int:
        return sum(v for k, v in self.counts.items() if k != "forwarded")

    def decide(self) -> str:
        with self.lock:
            kind = "forwarded"
            if self.rng.random() < self.fail_rate:
                kind = ("503", "drop-before", "drop-after")[self.faults % 3]  # each kind in turn
            self.counts[kind] += 1
            return kind

    def _handler(self):
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            def _any(self):
                body = self._body()
                fault = proxy.decide()
                if fault == "drop-before":
                    self.close_connection = True
                    return
                if fault == "503":
                    payload = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in proxy.HOP}
                if body:
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                if fault == "drop-after":
                    self.close_connection = True
                    return
                self.send_response(resp.status, resp.reason)
                skip = proxy.HOP | {"content-length", "date", "server"}
                for k, v in resp.getheaders():
                    if k.lower() not in skip:
                        self.send_header(k, v)
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else str(len(data))
                self.send_header("Content-Length", length)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _any

        return Handler

    def __enter__(self) -> FaultyProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def job_doc(bucket: str, endpoint: str | None, **extra) -> dict:
    doc = {
        "name": "s3job",
        "model": {"name": "gmm2d"},
        "sampler": {"preset": "vp-sde", "steps": 4},
        "method": {"name": "bon", "n": 2},
        "reward": {"name": "mode_log_density", "options": {"mode": 2}},
        "prompts": {"file": f"s3://{bucket}/in/prompts.jsonl"},
        "output": {"dir": f"s3://{bucket}/datasets", "shard_size": 2},
    }
    if endpoint is not None:
        doc["storage"] = {"endpoint_url": endpoint, "key": KEY, "secret": SECRET}
    doc.update(extra)
    return doc


def put_prompts(fs, bucket: str, n: int) -> list[str]:
    texts = [f"prompt {i}" for i in range(n)]
    lines = [json.dumps({"id": f"p{i:03d}", "prompt": t, "seed": i}) for i, t in enumerate(texts)]
    fs.pipe_file(f"{bucket}/in/prompts.jsonl", ("\n".join(lines) + "\n").encode())
    return texts


def rows_of(fs, root: str) -> list[dict]:
    return ds.dataset(f"{root}/data", filesystem=fs, format="parquet").to_table().to_pylist()


def every_object(fs, bucket: str) -> dict[str, bytes]:
    return {p: fs.cat_file(p) for p in fs.find(bucket)}


def test_job_on_s3_with_job_file_credentials_never_leaks_them(s3_endpoint, bucket, tmp_path, capfd):
    fs = s3(s3_endpoint)
    texts = put_prompts(fs, bucket, 5)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_doc(bucket, s3_endpoint)))
    assert main(["run", str(job)]) == 0
    assert main(["inspect", f"s3://{bucket}/datasets/s3job", "--job", str(job), "--no-sheet"]) == 0
    out, err = capfd.readouterr()
    assert f"s3://{bucket}/datasets/s3job" in out and "prompts 5 of 5 committed" in out

    root = f"{bucket}/datasets/s3job"
    fs.invalidate_cache()
    rows = rows_of(fs, root)
    assert [r["prompt"] for r in rows] == texts and [r["seed"] for r in rows] == list(range(5))
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{root}/data")) == [
        "part-00000.parquet",
        "part-00001.parquet",
        "part-00002.parquet",
    ]
    manifest = json.loads(fs.cat_file(f"{root}/.flowscale/manifest.json"))
    assert manifest["counts"]["rows"] == 5 and fs.exists(f"{root}/.flowscale/SUCCESS")
    assert manifest["config"]["storage"]["key"] == "<redacted>" and "s3fs" in manifest["versions"]
    for path, data in every_object(fs, bucket).items():
        assert SECRET.encode() not in data and KEY.encode() not in data, path
    assert SECRET not in out + err and KEY not in out + err


def test_credentials_and_endpoint_from_the_environment(s3_endpoint, bucket, tmp_path, monkeypatch, capfd):
    fs = s3(s3_endpoint)
    put_prompts(fs, bucket, 3)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", ENV_SECRET)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_doc(bucket, None)))  # no storage section at all
    assert main(["run", str(job)]) == 0
    out, err = capfd.readouterr()
    fs.invalidate_cache()
    assert len(rows_of(fs, f"{bucket}/datasets/s3job")) == 3
    assert ENV_SECRET not in out + err
    for data in every_object(fs, bucket).values():
        assert ENV_SECRET.encode() not in data


def test_missing_bucket_or_prompt_file_is_one_line_and_exit_2(s3_endpoint, tmp_path, capfd):
    job = tmp_path / "job.yaml"
    doc = job_doc("nobucket", s3_endpoint, prompts=["a"])
    job.write_text(yaml.safe_dump(doc))
    assert main(["run", str(job)]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "output.dir: cannot use s3://nobucket/datasets/s3job: FileNotFoundError: " in err
    doc["prompts"] = {"file": "s3://nobucket/none.jsonl"}
    job.write_text(yaml.safe_dump(doc))
    assert main(["run", str(job)]) == 2
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "prompts.file: no such file: s3://nobucket/none.jsonl" in err


def test_transient_storage_errors_are_retried_every_prompt_once(s3_endpoint, bucket, tmp_path, capfd):
    fs = s3(s3_endpoint)
    texts = put_prompts(fs, bucket, 16)
    with FaultyProxy(s3_endpoint, fail_rate=0.1, seed=3) as proxy:
        doc = job_doc(bucket, proxy.endpoint, output={"dir": f"s3://{bucket}/datasets", "shard_size": 1})
        job = tmp_path / "job.yaml"
        job.write_text(yaml.safe_dump(doc))
        started = time.perf_counter()
        assert main(["run", str(job)]) == 0
        elapsed = time.perf_counter() - started
    out, err = capfd.readouterr()
    requests = sum(proxy.counts.values())
    assert proxy.faults >= 3 and set(proxy.counts) >= {"503", "drop-before", "drop-after"}, proxy.counts
    root = f"{bucket}/datasets/s3job"
    fs.invalidate_cache()
    rows = rows_of(fs, root)  # read back directly, not through the proxy
    assert sorted(r["prompt"] for r in rows) == sorted(texts) and len(rows) == 16
    assert json.loads(fs.cat_file(f"{root}/.flowscale/manifest.json"))["counts"]["rows"] == 16
    assert len(fs.ls(f"{root}/.flowscale/committed")) == 16 and fs.exists(f"{root}/.flowscale/SUCCESS")
    print(f"\n{requests} requests, {proxy.faults} failed ({dict(proxy.counts)}), run {elapsed:.1f}s")
    assert SECRET not in out + err


def test_driver_killed_mid_run_on_s3_then_resumed(s3_endpoint, bucket, tmp_path):
    fs = s3(s3_endpoint)
    n, shard_size = 20, 2
    texts = put_prompts(fs, bucket, n)
    doc = job_doc(
        bucket,
        s3_endpoint,
        model={"name": "tests.test_io_run:toy_model", "options": {"delay": 0.02}},
        reward={"name": "tests.test_io_run:red"},
        executor={"in_flight": 1},
        output={"dir": f"s3://{bucket}/datasets", "shard_size": shard_size},
    )
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "flowscale_ray.cli", "run", str(job)]
    root = f"{bucket}/datasets/s3job"

    def committed() -> list[str]:
        fs.invalidate_cache()
        try:
            return fs.ls(f"{root}/.flowscale/committed")
        except FileNotFoundError:
            return []

    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None and len(committed()) < 2:
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    first = len(committed())
    assert 2 <= first < n // shard_size
    assert not fs.exists(f"{root}/.flowscale/SUCCESS")
    for path in fs.ls(f"{root}/data"):  # every visible object is a complete Parquet file
        assert pq.read_table(path, filesystem=fs).num_rows == shard_size

    proc2 = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc2.returncode == 0, proc2.stderr
    assert f"resuming: {first} of {n // shard_size} shards" in proc2.stdout
    fs.invalidate_cache()
    rows = rows_of(fs, root)
    assert sorted(r["prompt"] for r in rows) == sorted(texts) and len(rows) == n
    assert fs.exists(f"{root}/.flowscale/SUCCESS")
    assert SECRET not in proc2.stdout + proc2.stderr


def test_images_written_through_a_remote_filesystem(s3_endpoint, bucket, tmp_path):
    """A run with images on S3 (formerly done on memory://, which output.dir now refuses: it keeps nothing)."""
    from flowscale_ray.io.writer import SUCCESS

    doc = job_doc(
        bucket,
        s3_endpoint,
        model={"name": "tests.test_io_run:toy_model"},
        reward={"name": "tests.test_io_run:red"},
        held_out={"name": "tests.test_io_run:green"},
        prompts=["a red square", "two circles", "three things", "four", "five items here"],
    )
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(doc))
    assert main(["run", str(job)]) == 0
    fs = s3(s3_endpoint)
    root = f"{bucket}/datasets/s3job"
    assert fs.exists(f"{root}/{SUCCESS}")
    rows = rows_of(fs, root)
    assert len(rows) == 5 and all(r["image"]["bytes"] for r in rows)
    assert all(r["held_out"] is not None for r in rows)


def test_an_endpoint_that_is_down_is_one_line_naming_it(tmp_path, capfd):
    """Nothing listens on the endpoint: every command says so on one line (no retries for minutes, no botocore
    traceback, no credentials); the endpoint that is up is reached (the other tests here)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(job_doc("bucket", down, prompts=["a"])))
    run = "s3://bucket/datasets/s3job"
    for argv in (["validate", str(job)], ["run", str(job)], ["inspect", run, "--job", str(job), "--no-sheet"]):
        started = time.perf_counter()
        assert main(argv) == 2, argv
        elapsed = time.perf_counter() - started
        err = capfd.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert f"storage.endpoint_url: the S3 endpoint {down} could not be reached (connection refused)" in err
        assert SECRET not in err and KEY not in err
        print(f"{argv[0]}: {elapsed:.2f}s")


def test_every_storage_value_is_a_secret_unless_known_harmless(monkeypatch):
    """Redaction by value: whatever a setting under `storage` is called (camelCase, nested, a number), its value is
    scrubbed from text and replaced in the recorded settings; the allowlisted settings are shown."""
    from flowscale_ray.config import StorageConfig
    from flowscale_ray.io.storage import REDACTED, Redactor, describe_storage

    sse, session, number = "c3NlLWMta2V5LTMyLWJ5dGVzLWxvbmctZm9yLXRlc3Q=", "FwoGZXIvYXdzEJr-session", 918273645
    storage = StorageConfig(
        endpoint_url="https://minio.internal:9000",
        options={
            "s3_additional_kwargs": {"SSECustomerKey": sse, "SSECustomerAlgorithm": "AES256"},
            "SessionToken": session,
            "client_kwargs": {"region_name": "eu-west-1", "endpoint_url": "http://u:pw-in-url@proxy:3128"},
            "config_kwargs": {"connect_timeout": 5, "x_custom_number": number},
        },
    )
    redact = Redactor.for_storage(storage)
    text = f"sse {sse} session {session} number {number} url http://u:pw-in-url@proxy:3128/x"
    assert redact(text) == f"sse {REDACTED} session {REDACTED} number {REDACTED} url http://{REDACTED}@proxy:3128/x"
    described = describe_storage(storage)
    flat = json.dumps(described)
    for secret in (sse, session, str(number), "pw-in-url", "AES256"):
        assert secret not in flat
    opts = described["options"]
    assert opts["s3_additional_kwargs"] == {"SSECustomerKey": REDACTED, "SSECustomerAlgorithm": REDACTED}
    assert opts["SessionToken"] == REDACTED and opts["config_kwargs"]["x_custom_number"] == REDACTED
    assert opts["client_kwargs"]["region_name"] == "eu-west-1" and opts["config_kwargs"]["connect_timeout"] == 5
    assert described["endpoint_url"] == "https://minio.internal:9000"
    # a log line of a run is redacted before any handler sees it
    from flowscale_ray.logs import get_logger, redacting

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = get_logger("flowscale_ray.test_redaction")
    handler = Keep()
    logger.addHandler(handler)
    try:
        with redacting(redact):
            logger.warning(f"storage said {session} and {number}")
    finally:
        logger.removeHandler(handler)
    assert seen == [f"storage said {REDACTED} and {REDACTED}"]
