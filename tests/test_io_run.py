"""Jobs end to end on a local disk: images in Parquet, curation, failed prompts, lineage replay, resume after
the driver is killed, config conflicts, `flowscale inspect`, reading back with pyarrow and Hugging Face.

The toy image model and rewards below are named from job files as `tests.test_io_run:...`.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from PIL import Image

from flowscale_ray.cli import main
from flowscale_ray.config import load_job
from flowscale_ray.io.schema import decode_lineage
from flowscale_ray.models.base import FlowModel
from flowscale_ray.prompts import Prompt
from flowscale_ray.run import run_job
from tests.helpers import LogLines

REPO = Path(__file__).resolve().parents[1]


# -- a tiny model that decodes to 3x8x8 images, and rewards on them -------------------------------------------
class ToyImages(FlowModel):
    model_id = "toy-images"
    latent_shape = (3, 8, 6)

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay

    def encode(self, prompts: Sequence[str]):
        return {"m": torch.tensor([[(len(p) % 5) / 5.0] for p in prompts])}

    def velocity(self, x, t, cond):
        if self.delay:
            time.sleep(self.delay)
        return x - cond["m"].to(x.dtype).view(-1, 1, 1, 1)

    def decode(self, x0):
        return torch.sigmoid(2 * x0)


def toy_model(delay: float = 0.0) -> ToyImages:
    return ToyImages(delay)


def red(samples, prompts: Sequence[Prompt]):
    """Mean red, plus a per-prompt `bonus` from the prompt file; a prompt with `explode` breaks it."""
    if any(p.metadata.get("explode") for p in prompts):
        raise ValueError("boom: this prompt breaks the reward")
    bonus = torch.tensor([float(p.metadata.get("bonus", 0.0)) for p in prompts])
    return samples[:, 0].mean(dim=(1, 2)) + bonus


def green(samples, prompts):
    return samples[:, 1].mean(dim=(1, 2))


def job_doc(out: Path, **changes) -> dict:
    doc = {
        "name": "toy",
        "seed": 0,
        "model": {"name": "tests.test_io_run:toy_model"},
        "sampler": {"preset": "vp-sde", "steps": 4},
        "method": {"name": "bon", "n": 4},
        "reward": {"name": "tests.test_io_run:red"},
        "held_out": {"name": "tests.test_io_run:green"},
        "prompts": ["a red square", "two circles", "three things", "four", "five items here"],
        "executor": {"in_flight": 2},
        "output": {"dir": str(out), "shard_size": 2},
    }
    for key, value in changes.items():
        node = doc
        *parents, last = key.split("__")
        for k in parents:
            node = node.setdefault(k, {})
        node[last] = value
    return doc


def run(doc: dict, tmp_path: Path, logs: list | None = None):
    with LogLines() as lines:
        report = run_job(load_job(json.loads(json.dumps(doc))), base_dir=tmp_path)
    if logs is not None:
        logs.extend(lines)
    return report


def read(path: Path) -> list[dict]:
    return ds.dataset(str(path), format="parquet").to_table().to_pylist()


def test_images_top_k_and_readback(tmp_path):
    report = run(job_doc(tmp_path / "out", output__top_k=3), tmp_path)
    rows = read(tmp_path / "out" / "toy" / "data")
    assert report.manifest["counts"]["rows"] == len(rows) == 15  # 5 prompts x top 3
    by_prompt: dict[str, list[dict]] = {}
    for r in rows:
        by_prompt.setdefault(r["prompt_id"], []).append(r)
    for kept in by_prompt.values():
        assert [r["rank"] for r in kept] == [0, 1, 2]
        assert [r["reward"] for r in kept] == sorted((r["reward"] for r in kept), reverse=True)
        assert len({r["image"]["bytes"] for r in kept}) == 3  # three different samples
    r = rows[0]
    assert r["status"] == "ok" and r["error"] is None and r["model_id"] == "toy-images"
    assert (r["width"], r["height"], r["steps"], r["interpolant"], r["diffusion"]) == (6, 8, 4, "vp", "square*3")
    assert r["nfe"] == 16 and r["held_out_name"] == "tests.test_io_run:green" and r["created_at"].tzinfo
    img = Image.open(io.BytesIO(r["image"]["bytes"]))
    assert img.format == "PNG" and img.size == (6, 8) and r["image"]["path"].endswith("_0.png")
    # the stored image is the decoded sample the reward scored
    arr = torch.from_numpy(np.asarray(img, dtype=np.float32)) / 255  # [8, 6, 3]
    assert abs(arr[..., 0].mean().item() - r["reward"]) < 0.01
    assert (tmp_path / "out" / "toy" / ".flowscale" / "SUCCESS").exists()
    assert pq.ParquetFile(tmp_path / "out" / "toy" / "data" / "part-00000.parquet").metadata.num_row_groups == 1


def test_hugging_face_datasets_decodes_the_images(tmp_path):
    import datasets  # a dev dependency: the dataset must load as Hugging Face `datasets` reads it

    run(job_doc(tmp_path / "out"), tmp_path)
    data = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "out" / "toy" / "data" / "*.parquet"), split="train"
    )
    assert isinstance(data.features["image"], datasets.Image)
    assert data[0]["image"].size == (6, 8)


def test_thresholds_record_why_nothing_was_kept(tmp_path):
    prompts = [{"prompt": "keep me", "bonus": 10.0}, {"prompt": "drop me"}]
    doc = job_doc(tmp_path / "out", prompts=prompts, output__min_reward=5.0, output__top_k=2)
    run(doc, tmp_path)
    rows = read(tmp_path / "out" / "toy" / "data")
    assert [(r["prompt"], r["status"], r["rank"]) for r in rows] == [
        ("keep me", "ok", 0),
        ("keep me", "ok", 1),
        ("drop me", "filtered", None),
    ]
    dropped = rows[2]
    assert dropped["image"] is None and dropped["reward"] < 5.0
    assert dropped["error"].startswith("kept 0 of 2 samples: 2 below min_reward 5 (best reward ")
    assert json.loads(rows[0]["prompt_metadata"]) == {"bonus": 10.0}

    doc = job_doc(tmp_path / "out2", prompts=["x"], output__min_held_out=2.0)  # green is at most 1
    run(doc, tmp_path)
    (row,) = read(tmp_path / "out2" / "toy" / "data")
    assert row["status"] == "filtered" and "1 below min_held_out 2 (best held-out " in row["error"]


def test_a_failing_prompt_gets_a_failed_row_and_the_rest_complete(tmp_path):
    prompts = [{"prompt": t, "id": t} for t in ("one", "two", "bad", "four", "five")]
    prompts[2]["explode"] = True
    logs: list[str] = []
    report = run(job_doc(tmp_path / "out", prompts=prompts, executor__in_flight=3), tmp_path, logs)
    rows = read(tmp_path / "out" / "toy" / "data")
    assert [r["prompt"] for r in rows] == ["one", "two", "bad", "four", "five"]
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "ok", "ok"]
    assert rows[2]["error"] == "ValueError: boom: this prompt breaks the reward" and rows[2]["image"] is None
    assert report.failed == 1 and report.manifest["counts"]["status"] == {"ok": 4, "filtered": 0, "failed": 1}
    assert any("rerunning the" in m for m in logs)
    # the prompts that were in flight with the bad one are the same as in a clean run
    clean = run(job_doc(tmp_path / "clean", prompts=[{"prompt": t, "id": t} for t in ("one", "two", "four")]), tmp_path)
    assert clean.failed == 0
    clean_rows = {r["prompt"]: r["reward"] for r in read(tmp_path / "clean" / "toy" / "data")}
    assert all(clean_rows[r["prompt"]] == r["reward"] for r in rows if r["prompt"] in clean_rows)


def test_a_broken_reward_stops_the_run_and_keeps_committed_shards(tmp_path):
    prompts = ["one", "two", *({"prompt": f"bad {i}", "explode": True} for i in range(4))]
    with pytest.raises(RuntimeError, match="3 prompts failed in a row"):
        run(job_doc(tmp_path / "out", prompts=prompts, executor__in_flight=1), tmp_path)
    root = tmp_path / "out" / "toy"
    assert not (root / ".flowscale" / "SUCCESS").exists()
    assert [r["prompt"] for r in read(root / "data")] == ["one", "two"]  # shard 0 was committed


def test_lineage_replays_the_sample_exactly(tmp_path):
    from flowscale_ray.execution import ParticleEngine
    from flowscale_ray.models import build_model
    from flowscale_ray.search.protocol import Batch, Init

    doc = job_doc(
        tmp_path / "out",
        model={"name": "gmm2d"},
        reward={"name": "mode_log_density", "options": {"mode": 2}},
        held_out=None,
        method={"name": "rbf", "n_chains": 2, "nfe_budget": 40},
    )
    doc.pop("held_out")
    job = load_job(doc)
    run_job(job)
    for row in read(tmp_path / "out" / "toy" / "data"):
        requests = decode_lineage(row["lineage"])
        engine = ParticleEngine(build_model("gmm2d"), job.sampler)
        engine.open_task(0, row["prompt_id"], row["prompt"], row["seed"])
        for req in requests:
            batch = Batch(inits=(req,)) if isinstance(req, Init) else Batch(expands=(req,))
            engine.run([(0, batch)])
        samples, _ = engine.finalize(0, [requests[-1].pid])
        assert torch.equal(samples[0].float(), torch.tensor(row["sample"], dtype=torch.float32))


def test_changed_config_is_refused_unless_a_new_run_id(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_doc(tmp_path / "out")))
    assert main(["run", str(path)]) == 0
    assert main(["run", str(path)]) == 0  # the same job: already complete
    assert "already complete" in capsys.readouterr().out
    assert main(["validate", str(path)]) == 0
    assert "(3 shards of 2 prompts): complete" in capsys.readouterr().out
    for command in ("run", "validate"):
        assert main([command, str(path), "--set", "method.n=6", "--set", "seed=3"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "output.run_id:" in err and "changed: method.n, seed" in err
    before = sorted(p.name for p in (tmp_path / "out" / "toy" / "data").iterdir())
    assert main(["run", str(path), "--set", "method.n=6", "--run-id", "toy-n6"]) == 0
    assert sorted(p.name for p in (tmp_path / "out" / "toy" / "data").iterdir()) == before
    assert len(read(tmp_path / "out" / "toy-n6" / "data")) == 5
    # what the executor does is not part of the identity: more in flight resumes the same run
    assert main(["run", str(path), "--set", "executor.in_flight=5"]) == 0


def test_inspect_reports_counts_rewards_and_writes_a_contact_sheet(tmp_path, capsys):
    run(job_doc(tmp_path / "out", output__top_k=2), tmp_path)
    sheet = tmp_path / "best.png"
    assert main(["inspect", str(tmp_path / "out" / "toy"), "--top", "4", "--sheet", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert "run toy at" in out and ": complete" in out
    assert "prompts 5 of 5 committed; rows 10: ok 10, filtered 0, failed 0" in out
    assert "reward   (best per prompt, n=5): mean" in out and "held-out (best per prompt, n=5)" in out
    assert "best 4 samples:" in out and f"contact sheet: {sheet} (4 images)" in out
    img = Image.open(sheet)
    assert img.size[0] > 6 * 2 and img.mode == "RGB"
    assert main(["inspect", str(tmp_path / "nothing")]) == 2
    assert "not a flowscale run" in capsys.readouterr().err


# -- the driver killed mid-run, then the same job again ----------------------------------------------------------
def kill_mid_run(argv: list[str], root: Path, env: dict, at_least: int, shards: int) -> None:
    """Start the driver, SIGKILL it once `at_least` shards are committed (and before it finishes)."""
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            markers = list((root / ".flowscale" / "committed").glob("part-*.json"))
            if len(markers) >= at_least:
                break
            time.sleep(0.01)
        assert proc.poll() is None, f"the driver ended before it could be killed: {proc.stderr.read().decode()}"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        proc.stderr.close()
    committed = len(list((root / ".flowscale" / "committed").glob("part-*.json")))
    assert at_least <= committed < shards, committed


def test_driver_killed_mid_run_then_resumed_has_every_prompt_once(tmp_path):
    n, shard_size = 24, 3
    out = tmp_path / "out"
    doc = job_doc(
        out,
        model={"name": "tests.test_io_run:toy_model", "options": {"delay": 0.02}},
        prompts=[f"prompt number {i}" for i in range(n)],
        executor={"in_flight": 2},
        output={"dir": str(out), "shard_size": shard_size},
    )
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "flowscale_ray.cli", "run", str(path)]
    root = out / "toy"
    kill_mid_run(argv, root, env, at_least=2, shards=n // shard_size)

    # What a reader sees now: complete files only, each a committed or a complete unmarked shard
    assert not (root / ".flowscale" / "SUCCESS").exists() and not (root / ".flowscale" / "manifest.json").exists()
    files = sorted((root / "data").iterdir())
    for f in files:
        assert pq.read_table(f).num_rows == shard_size
    seen = [r["prompt_id"] for r in read(root / "data")]
    assert len(seen) == len(set(seen))
    committed = {p.name: json.loads(p.read_text())["sha256"] for p in (root / ".flowscale" / "committed").iterdir()}

    proc = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"resuming: {len(committed)} of {n // shard_size} shards already committed" in proc.stdout
    rows = read(root / "data")
    assert sorted(r["prompt"] for r in rows) == sorted(f"prompt number {i}" for i in range(n))
    assert len({r["prompt_id"] for r in rows}) == n == len(rows)
    assert (root / ".flowscale" / "SUCCESS").exists()
    manifest = json.loads((root / ".flowscale" / "manifest.json").read_text())
    assert manifest["counts"]["rows"] == n and len(manifest["files"]) == n // shard_size
    assert not (root / ".flowscale" / "staging").exists()
    after = {p.name: json.loads(p.read_text())["sha256"] for p in (root / ".flowscale" / "committed").iterdir()}
    assert all(after[name] == sha for name, sha in committed.items())  # committed shards were not redone


def test_output_at_fsspec_uris(tmp_path):  # a remote filesystem: tests/test_io_s3.py (memory:// is refused)
    import fsspec

    uri = f"file://{tmp_path}/out"
    run(job_doc(uri), tmp_path)
    fs, path = fsspec.core.url_to_fs(f"{uri}/toy")
    assert fs.exists(f"{path}/.flowscale/SUCCESS")
    rows = ds.dataset(f"{path}/data", filesystem=fs, format="parquet").to_table().to_pylist()
    assert len(rows) == 5 and all(r["image"]["bytes"] for r in rows)


@pytest.mark.parametrize(
    "change,message",
    [
        ({"output__top_k": 0}, "output.top_k: must be >= 1, got 0"),
        ({"output__shard_size": -1}, "output.shard_size: must be >= 1, got -1"),
        ({"output__run_id": "../up"}, "output.run_id: must be 1-128 letters, digits"),
        ({"output__min_reward": "high"}, "output.min_reward: expected a number or null, got 'high'"),
        ({"output__keep": 3}, "output.keep: unknown key; allowed: dir, run_id, save_images, shard_size"),
        ({"storage__retries": 0}, "storage.retries: must be >= 1, got 0"),
        ({"storage__endpoint_url": "localhost"}, "storage.endpoint_url: expected a URL"),
        ({"storage__password": "x"}, "storage.password: unknown key; allowed: endpoint_url, key, secret"),
        ({"name": "my job"}, "name: is the run id when output.run_id is not set"),
    ],
)
def test_output_and_storage_config_errors(tmp_path, capsys, change, message):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job_doc(tmp_path / "out", **change)))
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()


def test_min_held_out_needs_a_held_out_reward(tmp_path, capsys):
    doc = job_doc(tmp_path / "out", output__min_held_out=0.5)
    doc.pop("held_out")
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["validate", str(path)]) == 2
    assert "output.min_held_out: needs a held_out reward" in capsys.readouterr().err
