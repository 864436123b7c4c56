"""Cluster files: cluster.yaml against the JSON schema that ships inside the installed Ray package (and Ray's own
validate_config), its shape (CPU head with room for the driver, 8-GPU workers, pinned install, metrics port);
the KubeRay RayJob manifest's required fields; the job files for clusters (curation, runtime_env)."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from flowscale_ray.config import PromptFileConfig, read_job_file

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())


def load(name: str):
    return yaml.safe_load((ROOT / name).read_text())


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==")
            out[name.strip().lower()] = version.strip()
    return out


# -- cluster.yaml ------------------------------------------------------------------------------------------------


def test_cluster_yaml_is_valid_for_the_installed_ray():
    config = load("cluster.yaml")
    jsonschema.validate(config, SCHEMA)
    from ray.autoscaler._private.util import validate_config

    validate_config(config)  # the schema plus Ray's own checks (head_node_type among the node types, ...)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda c: c.update(unknown_key=1),
        lambda c: c["available_node_types"]["head"].pop("node_config"),
        lambda c: c["available_node_types"]["gpu-8x-a100"]["resources"].update(GPU=-1),
        lambda c: c["docker"].update(imagee="typo"),
    ],
)
def test_schema_rejects_a_broken_cluster_yaml(breakage):
    config = copy.deepcopy(load("cluster.yaml"))
    breakage(config)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, SCHEMA)


def test_cluster_shape_head_for_the_driver_and_8_gpu_workers():
    config = load("cluster.yaml")
    assert config["provider"]["type"] == "aws"
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and not head["resources"].get("GPU")  # the driver has the head
    assert "min_workers" not in head and "max_workers" not in head
    workers = {name: t for name, t in types.items() if name != config["head_node_type"]}
    assert workers and all(t["resources"]["GPU"] == 8 for t in workers.values())
    for t in workers.values():
        assert 0 <= t["min_workers"] <= t["max_workers"] <= config["max_workers"]
        assert t["resources"]["CPU"] >= 8 * 8  # room for 8 replicas at the curation job's num_cpus: 8
    assert sum(t["min_workers"] for t in workers.values()) <= config["max_workers"]


def test_cluster_uses_the_pinned_ray_gpu_image_and_installs_the_package_with_its_pins():
    config = load("cluster.yaml")
    pinned = pins()
    image = config["docker"]["image"]
    assert re.fullmatch(rf"rayproject/ray:{re.escape(pinned['ray'])}-py311-gpu", image), image
    installs = [shlex.split(c) for c in config["setup_commands"] if c.startswith("pip install")]
    assert installs, config["setup_commands"]
    cmd = installs[0]
    assert cmd[cmd.index("-c") + 1].endswith("/constraints.txt")
    assert cmd[-1] == "~/flowscale_ray" and config["file_mounts"]["~/flowscale_ray"] == "."
    assert {".venv", ".git", "results"} <= set(config["rsync_exclude"])


def test_every_node_exports_metrics_and_the_dashboard_stays_on_loopback():
    config = load("cluster.yaml")
    head = " ".join(config["head_start_ray_commands"])
    worker = " ".join(config["worker_start_ray_commands"])
    for cmd in (head, worker):
        assert re.search(r"--metrics-export-port=\d+", cmd), cmd
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head
    assert "--address=$RAY_HEAD_IP:6379" in worker


# -- KubeRay ------------------------------------------------------------------------------------------------------


def test_kuberay_rayjob_has_the_required_fields():
    job = load("jobs/kuberay-rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    assert job["metadata"]["name"]
    spec = job["spec"]
    entry = shlex.split(spec["entrypoint"])
    assert entry[:2] == ["flowscale", "run"] and (ROOT / entry[2]).is_file()
    read_job_file(ROOT / entry[2])  # the job it runs parses
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] >= 0
    assert spec["submissionMode"] in ("K8sJobMode", "HTTPMode", "SidecarMode")
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"]
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == pins()["ray"]
    head = cluster["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and "metrics-export-port" in head["rayStartParams"]
    containers = head["template"]["spec"]["containers"]
    assert containers[0]["image"] and containers[0]["resources"]["limits"]["memory"]
    assert {p["containerPort"] for p in containers[0]["ports"]} >= {6379, 8265}
    groups = cluster["workerGroupSpecs"]
    assert groups
    for g in groups:
        assert g["groupName"] and 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
        assert "metrics-export-port" in g["rayStartParams"]
        (worker,) = g["template"]["spec"]["containers"]
        assert worker["image"]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] == worker["resources"]["requests"]["nvidia.com/gpu"]
    text = (ROOT / "jobs/kuberay-rayjob.yaml").read_text().lower()
    assert "aws_secret_access_key" not in text and "aws_access_key_id" not in text  # credentials from IRSA


# -- job files for clusters ------------------------------------------------------------------------------------


def test_curation_job_parses_and_has_the_required_fields():
    job = read_job_file(ROOT / "jobs/curation_flux.yaml")
    assert job.model.name == "flux" and job.model.options["dtype"] == "bfloat16"
    assert job.model.options["device"] == "cuda" and job.model.options["path"]
    assert isinstance(job.prompts, PromptFileConfig)
    assert job.prompts.file.startswith("s3://") and job.prompts.file.endswith(".parquet")
    assert job.prompts.format in ("parquet", "auto")
    assert job.output.dir.startswith("s3://")
    assert job.method.name == "rbf"
    assert job.sampler.interpolant == "vp" and job.sampler.sde is True
    assert job.executor.kind == "ray" and job.executor.address is None and job.executor.num_gpus >= 1
    assert job.reward.name == "clip_score" and job.held_out is not None and job.held_out.name == "aesthetic"
    assert job.output.run_id is None  # the Ray submission id names the run
    assert job.storage.key is None and job.storage.secret is None  # credentials never in the file


def test_curation_job_needs_no_model_folder_on_the_head_node_for_its_grid():
    """The driver builds the grid on the head node, which has no FLUX folder: the job gives FLUX.1-dev's
    resolution shift at its size (exp(mu), with the scheduler's default shift parameters)."""
    from flowscale_ray.models.diffusers_common import dynamic_shift
    from flowscale_ray.run import resolve_sampler_shift

    job = read_job_file(ROOT / "jobs/curation_flux.yaml")
    assert job.model.options["resolution_shift"] is True
    tokens = (job.model.options["height"] // 16) * (job.model.options["width"] // 16)  # VAE /8, 2x2 packing
    assert job.sampler.shift == pytest.approx(dynamic_shift(tokens, {}), abs=1e-4)
    assert resolve_sampler_shift(job) is job  # nothing to read from a model folder


def test_runtime_env_is_valid_and_keeps_the_upload_small():
    from ray.runtime_env import RuntimeEnv

    env = load("jobs/runtime_env.yaml")
    RuntimeEnv(**env)  # Ray's own validation of the fields
    assert {".git", ".venv", "results"} <= set(env["excludes"])
    assert "working_dir" not in env  # given on the command line: --working-dir .
    assert int(env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"]) > 3


def test_runtime_env_upload_leaves_out_the_big_things(tmp_path):
    """Package the working dir the way `ray job submit --working-dir .` does, with these excludes alone (not
    .gitignore, not Ray's default excludes): the list holds by itself."""
    import zipfile

    from ray._private.runtime_env.packaging import create_package

    env = load("jobs/runtime_env.yaml")
    zip_path = tmp_path / "wd.zip"
    create_package(str(ROOT), zip_path, excludes=env["excludes"], include_gitignore=False)
    names = zipfile.ZipFile(zip_path).namelist()
    assert any(n.endswith("flowscale_ray/cli.py") for n in names)
    assert any(n.endswith("jobs/demo.yaml") for n in names)
    assert not any(n.startswith((".venv/", ".git/", "results/", "build/")) for n in names)
    assert zip_path.stat().st_size < 64 * 1024 * 1024  # far below Ray's 512 MiB limit
