"""The run folder and the faults around it.

- A poison prompt (one whose row cannot be built or encoded: text Arrow refuses, metadata whose conversion
  raises, a seed beyond int64) becomes that prompt's `failed` row; its shard commits and the run finishes, with
  every other prompt's row as a clean run writes it.
- Metadata holding NaN or infinity is written as valid JSON (null).
- A run folder that cannot be used (`data` or `_committed` a file, a truncated run record, a corrupt manifest)
  is one clear line with exit code 2 through the real command, and nothing in it is lost.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from flowscale_ray.prompts import Prompt
from flowscale_ray.run import components
from tests.test_io_run import job_doc, run

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
