"""Prompt sources: every format, ids, per-prompt overrides, fsspec URIs, and one-line errors for bad input."""

import gzip
import json

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from flowscale_ray.cli import main
from flowscale_ray.config import ConfigError, PromptFileConfig
from flowscale_ray.io.prompts import derived_id, load_prompts, prompts_digest

JOB = {
    "name": "t",
    "model": {"name": "gmm2d"},
    "sampler": {"preset": "vp-sde", "steps": 4},
    "method": {"name": "base"},
    "reward": {"name": "mode_log_density", "options": {"mode": 2}},
}


def spec(path, **kw):
    return PromptFileConfig(file=str(path), **kw)


def error_of(path, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load_prompts(spec(path, **kw))
    msg = str(info.value)
    assert "\n" not in msg
    return msg


def test_text_file_skips_blank_lines_and_derives_ids_from_line_and_text(tmp_path):
    p = tmp_path / "p.txt"
    p.write_text("a red circle\n\n  two blue squares  \n")
    prompts = load_prompts(spec(p))
    assert [q.text for q in prompts] == ["a red circle", "two blue squares"]
    assert [q.id for q in prompts] == [derived_id(1, "a red circle"), derived_id(3, "two blue squares")]
    assert prompts[0].id.startswith("000001-") and prompts[1].id.startswith("000003-")
    assert load_prompts(spec(p)) == prompts  # stable
    assert derived_id(1, "x") != derived_id(2, "x") and derived_id(1, "x") != derived_id(1, "y")


def test_jsonl_ids_seeds_and_metadata_overrides(tmp_path):
    p = tmp_path / "p.jsonl"
    rows = [
        {"id": "cats-1", "prompt": "three cats", "seed": 7, "counts": {"cat": 3}},
        {"prompt": "a dog", "style": "photo"},
        {"id": 42, "prompt": "two birds"},
    ]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    prompts = load_prompts(spec(p))
    assert [q.id for q in prompts] == ["cats-1", derived_id(2, "a dog"), "42"]
    assert [q.seed for q in prompts] == [7, None, None]
    assert prompts[0].metadata == {"counts": {"cat": 3}}
    assert prompts[1].metadata == {"style": "photo"}


def test_csv_named_columns_and_json_cells(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text('key,caption,seed,counts\nk1,"a, quoted, caption",3,"{""blue square"": 2}"\nk2,plain,,\n')
    prompts = load_prompts(spec(p, column="caption", id_column="key"))
    assert [(q.id, q.text, q.seed) for q in prompts] == [("k1", "a, quoted, caption", 3), ("k2", "plain", None)]
    assert prompts[0].metadata == {"counts": {"blue square": 2}}
    assert prompts[1].metadata == {}


def test_parquet_column(tmp_path):
    p = tmp_path / "p.parquet"
    pq.write_table(pa.table({"text": ["one", "two"], "seed": [1, 2], "score": [0.5, 0.25]}), p)
    prompts = load_prompts(spec(p, column="text"))
    assert [(q.text, q.seed, q.metadata) for q in prompts] == [("one", 1, {"score": 0.5}), ("two", 2, {"score": 0.25})]


def test_fsspec_uris_memory_file_and_gzip(tmp_path):
    with fsspec.open("memory://bucket/prompts.jsonl", "w") as f:
        f.write('{"prompt": "from memory"}\n')
    assert [q.text for q in load_prompts(spec("memory://bucket/prompts.jsonl"))] == ["from memory"]
    p = tmp_path / "p.txt.gz"
    p.write_bytes(gzip.compress(b"zipped\n"))
    assert [q.text for q in load_prompts(spec(f"file://{p}"))] == ["zipped"]


def test_inline_prompts_strings_and_mappings():
    prompts = load_prompts(["a", {"prompt": "b", "id": "bee", "seed": 3, "counts": {"x": 1}}])
    assert [(q.id, q.seed) for q in prompts] == [(derived_id(1, "a"), None), ("bee", 3)]
    assert prompts[1].metadata == {"counts": {"x": 1}}
    with pytest.raises(ConfigError, match=r"prompts\[1\]: duplicate prompt id 'x' \(first at prompts\[0\]\)"):
        load_prompts([{"prompt": "a", "id": "x"}, {"prompt": "b", "id": "x"}])


def test_digest_changes_with_any_prompt_field():
    base = load_prompts(["a", "b"])
    assert prompts_digest(base) == prompts_digest(load_prompts(["a", "b"]))
    assert prompts_digest(base) != prompts_digest(load_prompts(["a", "c"]))
    assert prompts_digest(base) != prompts_digest(load_prompts(["a", {"prompt": "b", "seed": 1}]))


# -- bad input: one line naming the file, the row and the problem ----------------------------------------------
def test_missing_and_empty_files(tmp_path):
    assert error_of(tmp_path / "nope.txt") == f"prompts.file: no such file: {tmp_path / 'nope.txt'}"
    (tmp_path / "empty.jsonl").write_text("\n \n")
    assert "empty.jsonl is empty" in error_of(tmp_path / "empty.jsonl")
    (tmp_path / "header.csv").write_text("prompt,seed\n")
    assert "header.csv holds no prompts" in error_of(tmp_path / "header.csv")


def test_undecodable_line_is_named(tmp_path):
    p = tmp_path / "bad.txt"
    p.write_bytes(b"fine\nalso fine\nbroken \xff\xfe here\n")
    assert error_of(p) == f"prompts.file: {p} line 3: not UTF-8 text (byte 0xff)"


def test_malformed_jsonl_line(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"prompt": "ok"}\n{"prompt": "oops",\n')
    msg = error_of(p)
    assert msg.startswith(f"prompts.file: {p} line 2: invalid JSON")
    p.write_text('{"prompt": "ok"}\n["a list"]\n')
    assert "line 2: expected a JSON object, got list" in error_of(p)


def test_missing_column_and_key(tmp_path):
    p = tmp_path / "p.csv"
    p.write_text("caption\nx\n")
    assert error_of(p) == f"prompts.file: {p}: missing column 'prompt' (prompts.column); columns: caption"
    q = tmp_path / "p.parquet"
    pq.write_table(pa.table({"caption": ["x"]}), q)
    assert "missing column 'text' (prompts.column); columns: caption" in error_of(q, column="text")
    assert "missing column 'uid' (prompts.id_column)" in error_of(p, column="caption", id_column="uid")
    j = tmp_path / "p.jsonl"
    j.write_text('{"prompt": "a"}\n{"text": "b"}\n')
    assert error_of(j) == f"prompts.file: {j} line 2: no 'prompt' key (prompts.column); keys: text"


def test_duplicate_ids_name_both_rows(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"id": "a", "prompt": "x"}\n{"id": "b", "prompt": "y"}\n{"id": "a", "prompt": "z"}\n')
    assert error_of(p) == f"prompts.file: {p} line 3: duplicate prompt id 'a' (first at line 1)"
    c = tmp_path / "p.csv"
    c.write_text("id,prompt\n1,x\n1,y\n")
    assert error_of(c) == f"prompts.file: {c} row 2: duplicate prompt id '1' (first at row 1)"


def test_bad_rows(tmp_path):
    p = tmp_path / "p.jsonl"
    p.write_text('{"prompt": "x", "seed": "seven"}\n')
    assert "line 1: seed must be an integer >= 0, got 'seven'" in error_of(p)
    p.write_text('{"prompt": "x"}\n{"prompt": "   "}\n')
    assert "line 2: empty prompt" in error_of(p)
    p.write_text('{"prompt": 5}\n')
    assert "line 1: 'prompt' must be a string, got 5" in error_of(p)
    q = tmp_path / "p.parquet"
    pq.write_table(pa.table({"prompt": [1, 2]}), q)
    assert "column 'prompt' must hold strings, got int64" in error_of(q)
    r = tmp_path / "p.csv"
    r.write_text("prompt\nok\n")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    assert "not a readable Parquet file" in error_of(tmp_path / "broken.parquet")
    assert "cannot tell the format" in error_of(tmp_path / "p.dat")


def test_cli_reports_prompt_errors_with_exit_2_before_any_work(tmp_path, capsys):
    p = tmp_path / "prompts.jsonl"
    p.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    out = tmp_path / "out"
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**JOB, "prompts": {"file": "prompts.jsonl"}, "output": {"dir": str(out)}}))
    for command in ("run", "validate"):
        assert main([command, str(job)]) == 2
        err = capsys.readouterr().err
        problem = "prompts.file: prompts.jsonl line 2: duplicate prompt id 'a' (first at line 1)"
        assert err == f"flowscale: error: {job}: {problem}\n"
    assert not out.exists()  # nothing was started


@pytest.mark.parametrize(
    "prompts,message",
    [
        ({"file": "p.txt", "format": "xml"}, "prompts.format: must be one of auto, text, jsonl, csv, parquet"),
        ({"file": "p.txt", "colum": "x"}, "prompts.colum: unknown key; allowed: file, format, column"),
        (["ok", 1], "prompts[1]: expected a string or a mapping with a 'prompt', got 1"),
        ("a string", "prompts: expected a list of prompts or a mapping {file: ...}, got 'a string'"),
    ],
)
def test_prompt_config_errors(tmp_path, capsys, prompts, message):
    (tmp_path / "p.txt").write_text("a\n")
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({**JOB, "prompts": prompts}))
    assert main(["validate", str(job)]) == 2
    assert message in capsys.readouterr().err
