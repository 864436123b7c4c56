"""The job file's one definition (flowscale_ray.config) and its published JSON Schema (docs/job-schema.json):
the committed schema is what `flowscale schema` prints, the shipped job files pass both the schema and the loader,
bad documents fail both, and errors carry the field path in `.where`."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from flowscale_ray.cli import main
from flowscale_ray.config import (
    ConfigError,
    ExecutorConfig,
    JobConfig,
    MethodConfig,
    OutputConfig,
    load_job,
    read_job_file,
)
from flowscale_ray.schema_command import job_schema

ROOT = Path(__file__).resolve().parents[1]
COMMITTED = ROOT / "docs" / "job-schema.json"
JOB_FILES = sorted(p for p in (ROOT / "jobs").glob("*.yaml") if "method" in (yaml.safe_load(p.read_text()) or {}))

GOOD = {
    "name": "t",
    "model": {"name": "gmm2d"},
    "sampler": {"preset": "vp-sde", "steps": 6},
    "method": {"name": "svdd", "n_chains": 2, "n_children": 3},
    "reward": {"name": "mode_log_density", "options": {"mode": 2}},
    "prompts": ["a", {"prompt": "b", "id": "b1"}],
}


def with_(path: str, value):
    doc = copy.deepcopy(GOOD)
    node = doc
    keys = path.split(".")
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = value
    return doc


@pytest.fixture(scope="module")
def validator():
    schema = job_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_committed_schema_is_what_flowscale_schema_prints(capsys, tmp_path):
    assert main(["schema"]) == 0
    printed = capsys.readouterr().out
    assert printed == COMMITTED.read_text(), (
        "stale docs/job-schema.json: run `flowscale schema --out docs/job-schema.json`"
    )
    assert main(["schema", "--out", str(tmp_path / "s.json")]) == 0
    assert (tmp_path / "s.json").read_text() == printed
    schema = json.loads(printed)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_schema_keys_come_from_the_one_definition(validator):
    schema = validator.schema
    assert list(schema["properties"]) == [f.name for f in dataclasses.fields(JobConfig)]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {"model", "method", "reward", "prompts"}
    defs = schema["$defs"]
    assert next(iter(defs["SamplerSpec"]["properties"])) == "preset"
    from flowscale_ray.search import METHODS

    methods = defs["MethodConfig"]["oneOf"]
    assert [m["properties"]["name"]["const"] for m in methods] == list(METHODS)
    for m, (name, cls) in zip(methods, METHODS.items(), strict=True):
        assert list(m["properties"]) == ["name", *(f.name for f in dataclasses.fields(cls.Config))], name
        assert m["additionalProperties"] is False


@pytest.mark.parametrize("path", JOB_FILES, ids=[p.name for p in JOB_FILES])
def test_shipped_job_files_pass_the_schema_and_the_loader(validator, path):
    validator.validate(yaml.safe_load(path.read_text()))
    job = read_job_file(path)
    assert (
        isinstance(job.method, MethodConfig) and job.method.name in yaml.safe_load(path.read_text())["method"]["name"]
    )


def test_job_files_exist():
    assert {p.name for p in JOB_FILES} >= {"demo.yaml", "curation_flux.yaml", "curation_local.yaml"}


BAD = [
    (with_("colour", "red"), "colour"),
    (with_("method.beam", 4), "method.beam"),
    (with_("method.name", "beam"), "method.name"),
    (with_("method", {"n_chains": 2}), "method.name"),
    (with_("sampler.preset", "fast"), "sampler.preset"),
    (with_("sampler.steps", "ten"), "sampler.steps"),
    (with_("sampler.interpolant", "cosine"), "sampler.interpolant"),
    (with_("seed", 1.5), "seed"),
    (with_("executor.in_flight", 0), "executor.in_flight"),
    (with_("executor.kind", "spark"), "executor.kind"),
    (with_("output.top_k", 0), "output.top_k"),
    (with_("output.min_reward", "high"), "output.min_reward"),
    (with_("metrics.port", 70000), "metrics.port"),
    (with_("prompts", [3]), "prompts[0]"),
    (with_("prompts", {"file": "p.txt", "format": "xls"}), "prompts.format"),
    (with_("compare_with", [{"name": "rbf", "beam": 1}]), "compare_with[0].beam"),
    ({k: v for k, v in GOOD.items() if k != "reward"}, "reward"),
]


@pytest.mark.parametrize("doc,where", BAD, ids=[w for _, w in BAD])
def test_bad_documents_fail_the_schema_and_the_loader_naming_the_field(validator, doc, where):
    assert not validator.is_valid(doc)
    with pytest.raises(ConfigError) as err:
        load_job(doc)
    assert err.value.where == where
    assert str(err.value).startswith(f"{where}: ") and "\n" not in str(err.value)


def test_good_document_passes_both(validator):
    validator.validate(GOOD)
    job = load_job(GOOD)
    assert job.prompts == ["a", {"prompt": "b", "id": "b1"}] and job.sampler.steps == 6


@pytest.mark.parametrize(
    "doc,where,message",
    [
        (with_("method", {"name": "rbf", "nfe_budget": -5}), "method.nfe_budget", "must be > 0, got -5"),
        (with_("method", {"name": "rbf", "nfe_budget": 3}), "method.nfe_budget", "is too small"),
        (with_("compare_with", [{"name": "beam"}]), "compare_with[0].name", "unknown method 'beam'; allowed: "),
        (with_("executor", {"address": "auto"}), "executor.address", "only used with kind: ray"),
        (with_("executor.micro_batch", 0), "executor.micro_batch", "must be >= 1 or null, got 0"),
        (with_("executor.call_timeout_s", 0), "executor.call_timeout_s", "must be > 0, got 0"),
        (with_("model.options", {1: "x"}), "model.options[1]", "keys must be strings, got 1"),
        (with_("name", "my job"), "name", "is the run id when output.run_id is not set"),
        (with_("output.min_held_out", 0.5), "output.min_held_out", "needs a held_out reward"),
        (with_("sampler", 5), "sampler", "expected a mapping, got 5"),
        (with_("executor", 5), "executor", "expected a mapping, got int 5"),
        (with_("prompts", "a"), "prompts", "expected a list of prompts or a mapping {file: ...}, got 'a'"),
    ],
)
def test_structured_errors_carry_the_field_path(doc, where, message):
    with pytest.raises(ConfigError) as err:
        load_job(doc)
    assert err.value.where == where and message in err.value.message
    assert str(err.value) == f"{where}: {err.value.message}"


def test_read_job_file_keeps_the_field_path(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(with_("method", {"name": "rbf", "nfe_budget": -5})))
    with pytest.raises(ConfigError) as err:
        read_job_file(path)
    assert err.value.where == "method.nfe_budget" and err.value.source == str(path)
    assert str(err.value) == f"{path}: method.nfe_budget: must be > 0, got -5"


def test_sections_stay_plain_frozen_dataclasses():
    job = load_job(with_("executor", {"in_flight": 2}))
    assert dataclasses.asdict(job.model) == {"name": "gmm2d", "options": {}}
    assert job.run_id == "t" and job.executor.in_flight == 2 and job.compare_with == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        job.seed = 3  # type: ignore[misc]
    moved = dataclasses.replace(job, output=dataclasses.replace(job.output, run_id="other"))
    assert moved.run_id == "other" and moved.method == job.method
    # direct construction validates too, with the same one-line errors (relative to the section)
    for _ in range(2):  # also once the deferred class is built
        with pytest.raises(ConfigError, match=r"^in_flight: must be >= 1, got 0$"):
            ExecutorConfig(in_flight=0)
    with pytest.raises(ConfigError, match=r"^top_k: expected an integer, got '2'$"):
        OutputConfig(top_k="2")  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as err:
        dataclasses.replace(job, name="bad name")
    assert err.value.where == "name"


def test_null_sections_mean_defaults():
    job = load_job({**GOOD, "executor": None, "output": None, "sampler": None, "compare_with": None})
    assert job.executor == ExecutorConfig() and job.output == OutputConfig() and job.compare_with == ()


def test_a_method_registered_later_is_validated_and_in_the_schema():
    from flowscale_ray.search import METHODS, register_method
    from flowscale_ray.search.best_of_n import BestOfN

    load_job(GOOD)  # validators built before the registration

    @register_method
    class Later(BestOfN):
        name = "later_test_method"

    try:
        job = load_job(with_("method", {"name": "later_test_method", "n": 3}))
        assert job.method.name == "later_test_method" and job.method.settings == BestOfN.Config(n=3)
        with pytest.raises(ConfigError) as err:
            load_job(with_("method", {"name": "later_test_method", "m": 3}))
        assert str(err.value) == "method.m: unknown key; allowed: n"
        titles = [m["title"] for m in job_schema()["$defs"]["MethodConfig"]["oneOf"]]
        assert titles[-1] == "method later_test_method"
    finally:
        METHODS.unregister("later_test_method")
