"""Plugins through entry points, and the lazy registries.

The example plugin (examples/plugin) is installed into a temporary folder and a job naming its model, reward
and method runs end to end in a subprocess that has the folder on PYTHONPATH. A broken entry point fails
with one line naming the plugin, and only when its name is used.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from flowscale_ray.models import MODELS, build_model, register_model
from flowscale_ray.plugins import PluginError, Registry
from flowscale_ray.rewards import REWARDS, build_reward, register_reward
from flowscale_ray.search import METHODS, register_method
from flowscale_ray.search.best_of_n import BestOfN
from flowscale_ray.search.registry import BUILTIN_METHODS

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "plugin"


def run(*args: str, pythonpath: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pythonpath), str(ROOT)])}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The example plugin installed (no dependencies, no network) into a fresh target folder."""
    tmp = tmp_path_factory.mktemp("plugin")
    source = tmp / "src"
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    target = tmp / "site"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--no-index",
            "--target",
            str(target),
            str(source),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return target


def test_the_example_plugin_runs_a_job_end_to_end(installed, tmp_path):
    import pyarrow.dataset as ds

    job = yaml.safe_load((EXAMPLE / "job.yaml").read_text())
    job["output"] = {"dir": str(tmp_path / "out"), "top_k": 2}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(job))
    proc = run("-m", "flowscale_ray.cli", "run", str(path), pythonpath=installed, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = ds.dataset(tmp_path / "out" / "toy-plugin" / "data").to_table().to_pylist()
    assert len(rows) == 3 * 2  # three prompts, top 2 each
    assert {r["status"] for r in rows} == {"ok"}
    assert {r["method"] for r in rows} == {"sequential_bon"}
    assert {r["model_id"] for r in rows} == {"toy_gaussian"}
    assert {r["reward_name"] for r in rows} == {"toy_target"}
    settings = json.loads(rows[0]["method_settings"])
    assert settings == {"name": "sequential_bon", "n": 3, "rounds": 2}
    assert all(r["nfe"] == 2 * 3 * 6 for r in rows)  # planned_nfe = rounds x n x steps, as counted
    for r in rows:  # the reward is the plugin's: -mean squared distance to the target
        x = r["sample"]
        expected = -((x[0] - 2.5) ** 2 + (x[1] + 1.0) ** 2) / 2
        assert r["reward"] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    best = {r["prompt"]: r["reward"] for r in rows if r["rank"] == 0}
    assert all(best[r["prompt"]] >= r["reward"] for r in rows)


def test_plugin_names_are_listed_after_the_builtins(installed, tmp_path):
    code = (
        "from flowscale_ray.models import MODELS; from flowscale_ray.rewards import REWARDS; "
        "from flowscale_ray.search import METHODS; "
        "print(list(MODELS)[-1], list(REWARDS)[-1], list(METHODS)[-1], MODELS.source('toy_gaussian'))"
    )
    proc = run("-c", code, pythonpath=installed, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("toy_gaussian toy_target sequential_bon plugin flowscale-toy-plugin 0.1.0")
    listed = run("-m", "flowscale_ray.cli", "methods", pythonpath=installed, cwd=tmp_path)
    assert listed.returncode == 0 and "\nsequential_bon n=4, rounds=2" in "\n" + listed.stdout


def fake_distribution(folder: Path, name: str, entry_points: str) -> Path:
    """A minimal installed distribution: its metadata and entry points, no code."""
    info = folder / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return folder


BROKEN = """\
[flowscale_ray.models]
broken_model = no_such_module_xyz:factory

[flowscale_ray.rewards]
broken_reward = json:no_such_attribute

[flowscale_ray.methods]
broken_method = no_such_module_xyz:Method
not_a_method = json:dumps
"""


@pytest.mark.parametrize(
    "field,value,message",
    [
        (
            "model",
            {"name": "broken_model"},
            "model.name: model 'broken_model' comes from plugin broken-plugin 0.1 (entry point broken_model = "
            "no_such_module_xyz:factory in group flowscale_ray.models), which failed to load: "
            "ModuleNotFoundError: No module named 'no_such_module_xyz'",
        ),
        (
            "reward",
            {"name": "broken_reward"},
            "reward.name: reward 'broken_reward' comes from plugin broken-plugin 0.1",
        ),
    ],
)
def test_a_broken_plugin_fails_with_one_line_when_used(tmp_path, field, value, message):
    site = fake_distribution(tmp_path / "site", "broken-plugin", BROKEN)
    job = {
        "name": "t",
        "model": {"name": "gmm2d"},
        "sampler": {"steps": 3},
        "method": {"name": "bon", "n": 2},
        "reward": {"name": "mode_log_density"},
        "prompts": ["a"],
        "output": {"dir": str(tmp_path / "out")},
    }
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump(job))
    proc = run("-m", "flowscale_ray.cli", "validate", str(ok), pythonpath=site, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr  # the broken plugin is installed but not used: no harm
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**job, field: value}))
    proc = run("-m", "flowscale_ray.cli", "validate", str(bad), pythonpath=site, cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert message in proc.stderr


def test_a_broken_method_plugin_fails_with_one_line_through_the_cli(tmp_path):
    site = fake_distribution(tmp_path / "site", "broken-plugin", BROKEN)
    job = {"model": {"name": "gmm2d"}, "method": {"name": "broken_method"}, "reward": {"name": "mode_log_density"}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump({**job, "prompts": ["a"]}))
    proc = run("-m", "flowscale_ray.cli", "validate", str(path), pythonpath=site, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "method 'broken_method' comes from plugin broken-plugin 0.1" in proc.stderr


def test_broken_method_error_is_one_line_and_listing_skips_it(tmp_path, monkeypatch, caplog):
    site = fake_distribution(tmp_path / "site", "broken-plugin", BROKEN)
    monkeypatch.syspath_prepend(str(site))  # a new sys.path: the registries rescan their entry points
    assert "broken_method" in METHODS and "not_a_method" in METHODS  # knowing the name loads nothing
    with pytest.raises(PluginError) as err:
        METHODS["broken_method"]
    text = str(err.value)
    assert "\n" not in text and text.startswith("method.name: method 'broken_method' comes from plugin broken-plugin")
    assert text.endswith("ModuleNotFoundError: No module named 'no_such_module_xyz'")
    with pytest.raises(PluginError, match="is unusable: expected a SearchMethod subclass, got function"):
        METHODS["not_a_method"]
    names = [name for name, _ in METHODS.items()]  # `flowscale methods`: the rest is listed
    assert names[:2] == ["bon", "base"] and "broken_method" not in names
    assert "skipping a broken plugin: method.name: method 'broken_method'" in caplog.text
    assert METHODS["bon"] is BestOfN


def test_two_plugins_with_one_name_are_refused_and_builtins_win(tmp_path, monkeypatch, caplog):
    site = tmp_path / "site"
    fake_distribution(site, "plugin-one", "[flowscale_ray.rewards]\ntwin = json:dumps\nbon = json:dumps\n")
    fake_distribution(site, "plugin-two", "[flowscale_ray.rewards]\ntwin = json:loads\n")
    fake_distribution(site, "plugin-three", "[flowscale_ray.methods]\nbon = json:dumps\n")
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(PluginError, match=r"reward.name: reward 'twin' is declared by 2 plugins: .*plugin-one.*"):
        REWARDS["twin"]
    assert METHODS["bon"] is BestOfN  # the built-in wins; the plugin is ignored with a warning
    assert list(METHODS).count("bon") == 1
    assert "method 'bon': plugin plugin-three 0.1" in caplog.text and "is ignored" in caplog.text


def test_registries_are_lazy_mappings():
    code = (
        "import sys; from flowscale_ray.models import MODELS; from flowscale_ray.rewards import REWARDS; "
        "from flowscale_ray.search import METHODS; "
        "names = list(MODELS) + list(REWARDS) + list(METHODS); "
        "assert 'flux' in MODELS and 'counting' in REWARDS and 'smc' in METHODS; "
        "print(sorted(m for m in sys.modules if m.startswith('flowscale_ray.')))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    loaded = proc.stdout
    for implementation in ("models.flux", "models.gaussian_mixture", "rewards.jpeg", "builtin", "search.smc"):
        assert f"flowscale_ray.{implementation}" not in loaded, loaded
    assert list(METHODS)[:7] == ["bon", "base", "code", "svdd", "rbf", "sop", "smc"]
    assert dict(METHODS.items())["svdd"].name == "svdd"


def test_register_in_process_and_module_attribute_names(monkeypatch):
    @register_model("tiny_test_model")
    def tiny(**options):
        return build_model("gmm2d", options)

    @register_reward("tiny_test_reward")
    def tiny_reward(samples, prompts):
        return samples.sum(-1)

    @register_method
    class Tiny(BestOfN):
        name = "tiny_test_method"

    try:
        assert build_model("tiny_test_model").model_id == "gmm2d"
        assert build_reward("tiny_test_reward").name == "tiny_reward"
        assert METHODS["tiny_test_method"] is Tiny and list(METHODS)[len(BUILTIN_METHODS)] == "tiny_test_method"
        assert MODELS.source("tiny_test_model") == "registered"
    finally:
        MODELS.unregister("tiny_test_model")
        REWARDS.unregister("tiny_test_reward")
        METHODS.unregister("tiny_test_method")
    assert "tiny_test_method" not in METHODS
    assert build_model("flowscale_ray.models.gaussian_mixture:gmm2d").model_id == "gmm2d"
    with pytest.raises(
        ValueError, match=r"model.name: unknown model 'nope'; allowed: flux, gmm2d, .* 'module:factory'"
    ):
        build_model("nope")
    with pytest.raises(
        ValueError, match=r"reward.name: unknown reward 'nope'; allowed: aesthetic, .*'module:attribute'"
    ):
        build_reward("nope")


def test_a_registry_without_plugins_is_a_plain_mapping():
    reg: Registry[object] = Registry("thing", {"a": "json:dumps", "b": "json:loads"}, "flowscale_ray.no_such_group")
    assert list(reg) == ["a", "b"] and len(reg) == 2 and "c" not in reg and 1 not in reg
    assert reg["a"] is json.dumps and dict(reg.items())["b"] is json.loads
    with pytest.raises(KeyError):
        reg["c"]
