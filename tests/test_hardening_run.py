"""The run folder and the faults around it.

- A poison prompt (one whose row cannot be built or encoded: text Arrow refuses, metadata whose conversion
  raises, a seed beyond int64) becomes that prompt's `failed` row; its shard commits and the run finishes, with
  every other prompt's row as a clean run writes it.
- Metadata holding NaN or infinity is written as valid JSON (null).
- A run folder that cannot be used (`data` or `_committed` a file, a truncated run record, a corrupt manifest)
  is one clear line with exit code 2 through the real command, and nothing in it is lost.
- A `flowscale run` killed with SIGKILL leaves no process of the local Ray it started.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from flowscale_ray.prompts import Prompt
from flowscale_ray.run import components
from tests.test_io_run import REPO, job_doc, run

COMPARED = ("prompt_id", "status", "reward", "search_reward", "held_out", "nfe", "verifier_calls", "lineage", "image")


def read(path: Path) -> list[dict]:
    return ds.dataset(str(path), format="parquet").to_table().to_pylist()


def with_prompts(monkeypatch, prompts: list[Prompt]) -> None:
    """Make the run loop see `prompts` (the file readers refuse these up front; a library caller need not).
    A prompt with metadata `spoil` gets a row value Arrow cannot convert (a reward that is not a number), the
    way a plugin's odd value would only break when the shard is encoded."""
    from flowscale_ray.run import output

    real = output.rows_for_result

    def spoiled(result, *args, **kwargs):
        rows = real(result, *args, **kwargs)
        if result.prompt.metadata.get("spoil"):
            rows[0]["reward"] = object()
        return rows

    monkeypatch.setattr("flowscale_ray.run.loop.load_prompts", lambda *_a, **_k: list(prompts))
    monkeypatch.setattr(output, "rows_for_result", spoiled)


GOOD = [Prompt(id=f"p{i}", text=t) for i, t in enumerate(["one", "two", "three", "four", "five", "six"])]
# kind -> (the prompt, where it fails: its search (its noise derives from its id and seed) or its row)
POISON = {
    "surrogate-text": (Prompt(id="bad", text="bad \ud800 text"), "row"),
    "surrogate-id": (Prompt(id="bad \udcff", text="bad id"), "search"),
    "arrow-conversion": (Prompt(id="bad", text="bad value", metadata={"spoil": True}), "row"),
    "seed-beyond-int64": (Prompt(id="bad", text="bad seed", seed=2**70), "search"),
}


@pytest.mark.parametrize("kind", sorted(POISON))
def test_a_poison_prompt_gets_a_failed_row_and_the_run_finishes(tmp_path, monkeypatch, kind):
    poison, stage = POISON[kind]
    prompts = [*GOOD[:2], poison, *GOOD[2:]]
    with_prompts(monkeypatch, prompts)
    report = run(job_doc(tmp_path / "out", executor__in_flight=3, output__shard_size=3), tmp_path)
    rows = read(tmp_path / "out" / "toy" / "data")
    assert report.manifest["counts"]["status"] == {"ok": 6, "filtered": 0, "failed": 1} and report.failed == 1
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "ok", "ok", "ok", "ok"]
    bad = rows[2]
    assert bad["image"] is None and bad["error"]
    if stage == "row":
        assert bad["error"].startswith("its row cannot be written: ")
        assert bad["nfe"] == 16  # the search ran and spent its NFE; only the row failed
    if kind.startswith("surrogate"):  # the text is kept, escaped
        assert "\\ud800" in bad["prompt"] or "\\udcff" in bad["prompt_id"]
    if kind == "seed-beyond-int64":
        assert bad["seed"] is None
    # the other prompts' rows are exactly those of a run without the poison prompt
    with_prompts(monkeypatch, GOOD)
    run(job_doc(tmp_path / "clean", executor__in_flight=3, output__shard_size=3), tmp_path)
    clean = {r["prompt_id"]: r for r in read(tmp_path / "clean" / "toy" / "data")}
    for r in rows[:2] + rows[3:]:
        assert {k: r[k] for k in COMPARED} == {k: clean[r["prompt_id"]][k] for k in COMPARED}


def test_poison_prompts_one_after_another_do_not_stop_the_run(tmp_path, monkeypatch):
    """Rows that cannot be written are the prompts' fault, not the machinery's: they never count towards the
    failures in a row that stop a run."""
    poison = [Prompt(id=f"bad{i}", text=f"bad \ud800 {i}") for i in range(4)]
    with_prompts(monkeypatch, [GOOD[0], *poison, GOOD[1]])
    report = run(job_doc(tmp_path / "out", executor__in_flight=1), tmp_path)
    assert [r["status"] for r in read(tmp_path / "out" / "toy" / "data")] == ["ok", *["failed"] * 4, "ok"]
    assert report.failed == 4


def test_metadata_with_nan_is_written_as_valid_json(tmp_path, monkeypatch):
    nan = float("nan")
    prompts = [Prompt(id="a", text="a", metadata={"w": nan, "v": [1.0, float("inf")], "n": {"x": -float("inf")}})]
    with_prompts(monkeypatch, prompts)
    run(job_doc(tmp_path / "out"), tmp_path)
    (row,) = read(tmp_path / "out" / "toy" / "data")
    assert json.loads(row["prompt_metadata"], parse_constant=lambda c: pytest.fail(f"invalid JSON: {c}")) == {
        "n": {"x": None},
        "v": [1.0, None],
        "w": None,
    }


def test_the_loader_is_where_the_loop_reads_prompts():
    """The monkeypatch above replaces the name the run loop calls."""
    from flowscale_ray.run import loop

    assert loop.load_prompts is components.load_prompts


# -- a run folder that cannot be used: one line, exit code 2, nothing in it changed ------------------------------
JOB = """\
name: t
model: {name: gmm2d}
sampler: {preset: linear-sde, steps: 6}
method: {name: bon, n: 2}
reward: {name: mode_log_density, options: {mode: 2}}
prompts: [a, b, c]
output: {dir: out, shard_size: 2}
"""


def flowscale(*args: str, cwd: Path, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flowscale_ray", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout
    )


def snapshot(folder: Path) -> dict[str, bytes | None]:
    """Every path under `folder` with its bytes (None for a folder)."""
    return {p.relative_to(folder).as_posix(): (p.read_bytes() if p.is_file() else None) for p in folder.rglob("*")}


def to_legacy(run: Path) -> None:
    """Rewrite a run folder into the layout that kept its records at the top level."""
    records = run / ".flowscale"
    for new, old in [("run.json", "_run.json"), ("committed", "_committed"), ("manifest.json", "manifest.json")]:
        if (records / new).exists():
            (records / new).rename(run / old)
    if (records / "SUCCESS").exists():
        (records / "SUCCESS").rename(run / "_SUCCESS")
    shutil.rmtree(records)


def _file_instead(path: Path) -> None:
    shutil.rmtree(path)
    path.write_text("not a folder")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def _unfinish(run: Path) -> None:
    """The run as a killed driver leaves it: the last shard not committed, no manifest."""
    for p in [run / ".flowscale" / "SUCCESS", run / ".flowscale" / "manifest.json"]:
        p.unlink()
    (run / ".flowscale" / "committed" / "part-00001.json").unlink()


# (id, layout, finished?, how the folder is damaged, words the one line must hold)
FOLDERS = [
    ("data-is-a-file", "current", False, lambda r: _file_instead(r / "data"), "out/t/data is a file where"),
    (
        "markers-are-a-file",
        "current",
        False,
        lambda r: _file_instead(r / ".flowscale" / "committed"),
        ".flowscale/committed is a file where the run keeps a folder",
    ),
    (
        "records-are-a-file",
        "current",
        False,
        lambda r: _file_instead(r / ".flowscale"),
        ".flowscale is a file where the run keeps a folder",
    ),
    (
        "run-record-truncated",
        "current",
        False,
        lambda r: _truncate(r / ".flowscale" / "run.json"),
        ".flowscale/run.json is damaged: not valid JSON",
    ),
    (
        "run-record-not-an-object",
        "current",
        True,
        lambda r: (r / ".flowscale" / "run.json").write_text("[1, 2]"),
        ".flowscale/run.json is damaged: a JSON list, not an object",
    ),
    (
        "run-record-not-utf8",
        "current",
        True,
        lambda r: (r / ".flowscale" / "run.json").write_bytes(b"\xff\xfe{"),
        ".flowscale/run.json is damaged: not valid JSON",
    ),
    (
        "manifest-corrupt",
        "current",
        True,
        lambda r: (r / ".flowscale" / "manifest.json").write_text('{"counts": {"rows": 3'),
        ".flowscale/manifest.json is damaged: not valid JSON",
    ),
    ("legacy-data-is-a-file", "legacy", False, lambda r: _file_instead(r / "data"), "out/t/data is a file where"),
    (
        "legacy-markers-are-a-file",
        "legacy",
        False,
        lambda r: _file_instead(r / "_committed"),
        "out/t/_committed is a file where the run keeps a folder",
    ),
    (
        "legacy-run-record-truncated",
        "legacy",
        False,
        lambda r: _truncate(r / "_run.json"),
        "out/t/_run.json is damaged: not valid JSON",
    ),
    (
        "legacy-manifest-corrupt",
        "legacy",
        True,
        lambda r: (r / "manifest.json").write_text("NaN garbage"),
        "out/t/manifest.json is damaged: not valid JSON",
    ),
]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A finished run of JOB (2 shards), made once; each case copies it."""
    base = tmp_path_factory.mktemp("finished")
    (base / "job.yaml").write_text(JOB)
    proc = flowscale("run", "job.yaml", cwd=base)
    assert proc.returncode == 0, proc.stderr
    return base


@pytest.mark.parametrize("layout, finished, damage, words", [c[1:] for c in FOLDERS], ids=[c[0] for c in FOLDERS])
@pytest.mark.parametrize("command", ["run", "validate"])
def test_an_unusable_run_folder_is_one_line_and_left_alone(
    finished_run, tmp_path, command, layout, finished, damage, words
):
    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
    run_dir = tmp_path / "out" / "t"
    if not finished:
        _unfinish(run_dir)
    if layout == "legacy":
        to_legacy(run_dir)
    damage(run_dir)
    before = snapshot(tmp_path / "out")
    proc = flowscale(command, "job.yaml", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("flowscale: error: ") and words in proc.stderr, proc.stderr
    assert "--run-id NEW" in proc.stderr or "remove" in proc.stderr or "restore" in proc.stderr
    assert snapshot(tmp_path / "out") == before  # nothing written, moved or removed


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_inspect_names_a_damaged_run_record(finished_run, tmp_path, damage):
    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
    record = tmp_path / "out" / "t" / ".flowscale" / "run.json"
    _truncate(record) if damage == "truncated" else record.unlink()
    proc = flowscale("inspect", "out/t", "--no-sheet", cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    words = ".flowscale/run.json is damaged: not valid JSON" if damage == "truncated" else "not a flowscale run"
    assert words in proc.stderr, proc.stderr


def test_a_damaged_marker_makes_its_shard_run_again(finished_run, tmp_path):
    """A marker is the shard's commit: a damaged one (a disk that lost its tail) means the shard is redone."""
    shutil.copytree(finished_run, tmp_path, dirs_exist_ok=True)
    run_dir = tmp_path / "out" / "t"
    before = pq_rows(run_dir)
    for p in [run_dir / ".flowscale" / "SUCCESS", run_dir / ".flowscale" / "manifest.json"]:
        p.unlink()
    _truncate(run_dir / ".flowscale" / "committed" / "part-00001.json")
    proc = flowscale("run", "job.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "resuming: 1 of 2 shards already committed" in proc.stdout + proc.stderr
    assert json.loads((run_dir / ".flowscale" / "committed" / "part-00001.json").read_text())["rows"] == 1
    assert pq_rows(run_dir) == before


def pq_rows(run_dir: Path) -> list[tuple]:
    table = ds.dataset(str(run_dir / "data"), format="parquet").to_table(columns=["prompt_id", "reward", "sample"])
    return sorted(tuple(map(str, r.values())) for r in table.to_pylist())


# -- a killed driver leaves no process of the local Ray it started ----------------------------------------------
def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def _tree(root: int) -> dict[int, int]:
    """The live descendants of `root`: pid -> start time."""
    procs = {int(p): st for p in os.listdir("/proc") if p.isdigit() and (st := _stat(int(p))) is not None}
    found: dict[int, int] = {}
    todo = [root]
    while todo:
        parent = todo.pop()
        for pid, (ppid, start) in procs.items():
            if ppid == parent and pid not in found:
                found[pid] = start
                todo.append(pid)
    return found


def _alive(tree: dict[int, int]) -> dict[int, str]:
    """Those of `tree` still running (the same process: same start time), with their command lines."""
    out = {}
    for pid, start in tree.items():
        st = _stat(pid)
        if st is not None and st[1] == start:
            try:
                out[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
    return out


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
def test_a_killed_driver_leaves_no_process_of_its_local_ray(tmp_path):
    """`flowscale run` starts a local Ray and is SIGKILLed mid-run: every process of that Ray (GCS, raylet,
    agents, workers; the driver's descendants just before the kill) is gone within a bounded time. Only the
    processes of this driver are looked at (other Ray instances on the machine are never touched)."""
    import tempfile

    doc = job_doc(
        tmp_path / "out",
        model={"name": "tests.test_io_run:toy_model", "options": {"delay": 0.05}},
        prompts=[f"prompt number {i}" for i in range(60)],
        executor={"kind": "ray", "replicas": 1, "in_flight": 2, "num_cpus": 0.5},
        output={"dir": str(tmp_path / "out"), "shard_size": 2},
    )
    (tmp_path / "job.yaml").write_text(json.dumps(doc))
    ray_tmp = tempfile.mkdtemp(prefix="fsr-", dir="/tmp")  # short: Ray's socket paths must fit in 107 bytes
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "flowscale_ray", "run", "job.yaml"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    tree: dict[int, int] = {}
    try:
        markers = tmp_path / "out" / "toy" / ".flowscale" / "committed"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and driver.poll() is None and not list(markers.glob("part-*.json")):
            time.sleep(0.2)
        assert driver.poll() is None, "the run ended before it could be killed"
        assert list(markers.glob("part-*.json")), "the run did not commit a shard in time"
        tree = _tree(driver.pid)
        assert any("raylet" in cmd for cmd in _alive(tree).values()), _alive(tree)
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and _alive(tree):
            time.sleep(0.5)
        assert not _alive(tree), f"left running after the driver was killed: {_alive(tree)}"
    finally:
        if driver.poll() is None:
            driver.kill()
        for pid in _alive(tree):  # whatever is left (a failed test must not leak Ray processes either)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
