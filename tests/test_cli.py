"""The command line: bad job files fail with exit code 2 and one line naming the field; runs write results."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flowscale_ray.cli import main

GOOD = {
    "name": "t",
    "seed": 0,
    "model": {"name": "gmm2d"},
    "sampler": {"preset": "vp-sde", "steps": 6},
    "method": {"name": "svdd", "n_chains": 2, "n_children": 3},
    "reward": {"name": "mode_log_density", "options": {"mode": 2}},
    "prompts": ["a", "b"],
}


def write(tmp_path: Path, doc, name="job.yaml") -> Path:
    p = tmp_path / name
    p.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc))
    return p


def cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "flowscale_ray.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def with_(**changes):
    doc = json.loads(json.dumps(GOOD))
    for path, value in changes.items():
        node = doc
        keys = path.split("__")
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if value is KeyError:
            del node[keys[-1]]
        else:
            node[keys[-1]] = value
    return doc


BAD = [
    (with_(colour="red"), "colour: unknown key; allowed: name, seed, model"),
    (with_(method__name="beam"), "method.name: unknown method 'beam'; allowed: bon, base"),
    (with_(method__n_children=-3), "method.n_children: must be > 0, got -3"),
    (with_(method__name="rbf", method__nfe_budget=-5, method__n_children=KeyError), "method.nfe_budget: must be > 0"),
    (with_(method__beam=4), "method.beam: unknown key; allowed: n_chains, n_children"),
    (with_(sampler__interpolant="cosine"), "sampler.interpolant: unknown 'cosine'; allowed: linear, vp"),
    (with_(sampler__preset="fast"), "sampler.preset: unknown preset 'fast'; allowed: linear-ode"),
    (with_(sampler__steps="ten"), "sampler.steps: expected an integer, got 'ten'"),
    (with_(seed=1.5), "seed: expected an integer, got 1.5"),
    (with_(reward=KeyError), "reward: required"),
    (with_(reward__name="nope"), "reward.name: unknown reward 'nope'"),
    (with_(model__name="flux9"), "model.name: unknown model 'flux9'"),
    (with_(prompts=[]), "prompts: must hold at least one prompt"),
    (with_(prompts={"file": "missing.txt"}), "prompts.file: no such file: missing.txt"),
    (with_(executor__in_flight=0), "executor.in_flight: must be >= 1, got 0"),
    ("method: [1, 2\n", "invalid YAML at line 2"),
    ("", "empty job file"),
    ("- a\n- b\n", "expected a mapping at the top level"),
]


@pytest.mark.parametrize("doc,message", BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_job_files_exit_2_with_one_line(tmp_path, capsys, doc, message):
    path = write(tmp_path, doc)
    for command in ("run", "validate"):
        code = main([command, str(path)])
        err = capsys.readouterr().err
        assert code == 2
        assert err.count("\n") == 1 and "Traceback" not in err, err
        assert message in err, err
        assert err.startswith(f"flowscale: error: {path}: ")


def test_bad_job_through_the_real_console_no_traceback(tmp_path):
    proc = cli("run", str(write(tmp_path, with_(method__name="beam"))))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert "method.name: unknown method 'beam'" in proc.stderr


def test_missing_job_file(capsys, tmp_path):
    assert main(["run", str(tmp_path / "nope.yaml")]) == 2
    assert "no such job file" in capsys.readouterr().err


def test_set_overrides_and_their_errors(tmp_path, capsys):
    path = write(tmp_path, GOOD)
    assert main(["validate", str(path), "--set", "method.n_children=5", "--set", "sampler.sde=false"]) == 0
    out = capsys.readouterr().out
    assert "'n_children': 5" in out and "'sde': False" in out
    assert main(["validate", str(path), "--set", "method.n_children"]) == 2
    assert "--set: expected key.path=value" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [[], ["run"], ["validate"], ["methods"]])
def test_help_on_every_subcommand(argv):
    proc = cli(*argv, "--help")
    assert proc.returncode == 0 and "usage: flowscale" in proc.stdout


def test_methods_lists_all_six_and_base():
    proc = cli("methods")
    for name in ("bon", "sop", "smc", "code", "svdd", "rbf", "base"):
        assert f"\n{name} " in "\n" + proc.stdout


def test_run_writes_results(tmp_path, capsys):
    import pyarrow.dataset as ds

    doc = with_(output={"dir": str(tmp_path / "out")}, prompts={"file": "prompts.txt"})
    (tmp_path / "prompts.txt").write_text("first\n\nsecond\n")
    path = write(tmp_path, doc)
    assert main(["run", str(path)]) == 0
    out = capsys.readouterr().out
    assert "first" in out and "second" in out and "NFE" in out
    run = tmp_path / "out" / "t"
    assert (run / ".flowscale" / "SUCCESS").exists() and (run / ".flowscale" / "manifest.json").exists()
    rows = ds.dataset(run / "data").to_table().to_pylist()
    assert [r["prompt"] for r in rows] == ["first", "second"]
    # ids carry the line number (and a digest of the text)
    assert [r["prompt_id"][:6] for r in rows] == ["000001", "000003"]
    assert all(r["nfe"] == 2 + 2 * 3 * 5 for r in rows)
    assert rows[0]["lineage"][0]["kind"] == "init"
    assert rows[0]["method"] == "svdd" and json.loads(rows[0]["method_settings"])["n_children"] == 3


@pytest.mark.parametrize(
    "executor,message",
    [
        ({"kind": "ray", "replicas": 0}, "executor.replicas: must be >= 1, got 0"),
        ({"kind": "inprocess", "address": "auto"}, "executor.address: only used with kind: ray"),
        ({"kind": "spark"}, "executor.kind: must be one of inprocess, ray"),
        ({"kind": "ray", "call_timeout_s": 0}, "executor.call_timeout_s: must be > 0"),
    ],
)
def test_executor_errors(tmp_path, capsys, executor, message):
    path = write(tmp_path, with_(executor=executor))
    assert main(["validate", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_compare_with_runs_baselines_side_by_side(tmp_path, capsys):
    doc = with_(compare_with=[{"name": "base"}], output={"dir": str(tmp_path / "out")})
    assert main(["run", str(write(tmp_path, doc))]) == 0
    out = capsys.readouterr().out
    assert "base: reward" in out and "svdd: reward" in out and "base: NFE" in out
    assert (tmp_path / "out" / "t-base" / ".flowscale" / "SUCCESS").exists()
    assert (tmp_path / "out" / "t" / ".flowscale" / "SUCCESS").exists()
    bad = with_(compare_with=[{"name": "beam"}])
    assert main(["validate", str(write(tmp_path, bad, "bad.yaml"))]) == 2
    assert "compare_with[0].name: unknown method 'beam'" in capsys.readouterr().err
