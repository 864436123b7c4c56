"""Job files: typed, validated configuration that rejects unknown keys.

A job file is YAML:

    name: demo                      # run name (output folder)
    seed: 0                         # run seed; a prompt's own seed overrides it
    model:   {name: gmm2d, options: {}}
    sampler: {preset: vp-sde, steps: 10}          # or interpolant/sde/diffusion/... directly
    method:  {name: rbf, nfe_budget: 500}         # method settings inline, validated per method
    reward:  {name: mode_log_density, options: {mode: 2}}
    held_out: {name: negative_distance, options: {target: [0.5, -3.5]}}   # optional
    prompts: ["a prompt", ...]                    # or {file: prompts.jsonl, column: prompt}
    executor: {kind: inprocess, in_flight: 4, micro_batch: null}
    output: {dir: results}                        # or s3://bucket/prefix; run_id, shard_size, top_k, ...
    storage: {endpoint_url: null}                 # optional: S3 endpoint, credentials, options
    metrics: {port: 9464, progress: auto}         # optional: Prometheus /metrics, progress display

Every error names the field and what is allowed, as one line: `method.nfe_budget: must be > 0, got -5`.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from flowscale_ray.core.dynamics import SAMPLER_PRESETS, SamplerSpec


class ConfigError(ValueError):
    """A bad job file. str() is one line naming the field."""

    def __init__(self, where: str, message: str) -> None:
        super().__init__(f"{where}: {message}" if where else message)
        self.where = where


# -- generic dataclass loading ------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin in (dict, Mapping):
        return "a mapping"
    if tp is type(None):
        return "null"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        structured = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        if isinstance(value, Mapping) and len(structured) == 1:
            return load_dataclass(structured[0], value, where)  # its own, precise errors
        for arg in typing.get_args(tp):
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(where, f"expected {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(where, f"expected null, got {value!r}")
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
        raise ConfigError(where, f"must be one of {', '.join(map(str, typing.get_args(tp)))}; got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(where, f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(where, f"expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(where, f"expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(where, f"expected a string, got {value!r}")
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(where, f"expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(where, f"expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return load_dataclass(tp, value, where)
    raise TypeError(f"unsupported config type {tp!r} at {where}")


def load_dataclass(cls: type, data: Any, where: str) -> Any:
    """Build dataclass `cls` from a mapping: unknown keys, wrong types and failed checks are ConfigErrors."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(where, f"expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            allowed = ", ".join(fields) or "(none)"
            raise ConfigError(_join(where, str(key)), f"unknown key; allowed: {allowed}")
    kwargs = {}
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _coerce(data[name], hints[name], _join(where, name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(_join(where, name), "required")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        # Component checks raise "field: problem"; anchor them under this section.
        head, sep, rest = msg.partition(": ")
        if sep and head in fields:
            raise ConfigError(_join(where, head), rest) from None
        if sep and where and head.startswith(f"{where}."):
            raise ConfigError(head, rest) from None
        raise ConfigError(where, msg) from None


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def anchored(section: str, message: str) -> ConfigError:
    """A ConfigError for a component's message: 'field: problem' -> 'section.field: problem'."""
    head, sep, rest = message.partition(": ")
    if sep and head.startswith(f"{section}."):
        return ConfigError(head, rest)
    if sep and head.replace("_", "").replace(".", "").isalnum() and " " not in head:
        return ConfigError(_join(section, head), rest)
    return ConfigError(section, message)


# -- the job schema -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ComponentConfig:
    """A registered component (model, reward) by name, with its constructor options."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)


PROMPT_FORMATS = ("auto", "text", "jsonl", "csv", "parquet")


@dataclass(frozen=True)
class PromptFileConfig:
    """Prompts from a file at any fsspec URI (see flowscale_ray.io.prompts for the formats)."""

    file: str
    format: Literal["auto", "text", "jsonl", "csv", "parquet"] = "auto"  # auto: from the extension
    column: str = "prompt"  # the prompt text (JSONL, CSV, Parquet)
    id_column: str | None = None  # given prompt ids; default: 'id' when the file has it, else derived
    seed_column: str | None = None  # per-prompt seeds; default: 'seed' when the file has it

    def __post_init__(self) -> None:
        if not self.file.strip():
            raise ValueError("file: must name a file")
        for name in ("column", "id_column", "seed_column"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ValueError(f"{name}: must not be empty")


@dataclass(frozen=True)
class ExecutorConfig:
    """Where the searches run. 'inprocess': this process. 'ray': model replicas on a Ray cluster (`address`:
    null starts a local Ray in this process; 'auto' joins the cluster this job runs in; or ray://HOST:PORT)."""

    kind: Literal["inprocess", "ray"] = "inprocess"
    in_flight: int = 4
    micro_batch: int | None = None
    address: str | None = None
    replicas: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    reward_actors: int = 0
    call_timeout_s: float = 600.0
    max_restarts: int = 3

    def __post_init__(self) -> None:
        if self.in_flight < 1:
            raise ValueError(f"in_flight: must be >= 1, got {self.in_flight}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ValueError(f"micro_batch: must be >= 1 or null, got {self.micro_batch}")
        if self.replicas < 1:
            raise ValueError(f"replicas: must be >= 1, got {self.replicas}")
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError("num_cpus, num_gpus: must be >= 0")
        if self.reward_actors < 0:
            raise ValueError(f"reward_actors: must be >= 0, got {self.reward_actors}")
        if self.call_timeout_s <= 0:
            raise ValueError(f"call_timeout_s: must be > 0, got {self.call_timeout_s}")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts: must be >= 0, got {self.max_restarts}")
        if self.kind == "inprocess":
            ray_only = {"address": None, "replicas": 1, "num_gpus": 0.0, "reward_actors": 0}
            for name, default in ray_only.items():
                if getattr(self, name) != default:
                    raise ValueError(f"{name}: only used with kind: ray")


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class OutputConfig:
    """Where and what to write: `<dir>/<run_id>/data/part-NNNNN.parquet` (see flowscale_ray.io.writer)."""

    dir: str = "results"  # local path or fsspec URI (file://, s3://bucket/prefix, memory://)
    run_id: str | None = None  # default: the job name
    save_images: bool = True  # PNG bytes in the image column
    shard_size: int = 100  # prompts per Parquet file (the unit of commit and resume)
    row_group_size: int = 100  # rows (images) per Parquet row group
    top_k: int = 1  # samples kept per prompt, best first
    min_reward: float | None = None  # a sample is kept only if its reward reaches this
    min_held_out: float | None = None  # ... and its held-out reward reaches this

    def __post_init__(self) -> None:
        if not self.dir.strip():
            raise ValueError("dir: must name a directory or URI")
        if self.run_id is not None and not _RUN_ID.fullmatch(self.run_id):
            raise ValueError(
                f"run_id: must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit; "
                f"got {self.run_id!r}"
            )
        for name in ("shard_size", "row_group_size", "top_k"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("min_reward", "min_held_out"):
            value = getattr(self, name)
            if value is not None and value != value:
                raise ValueError(f"{name}: must be a number or null, got NaN")


@dataclass(frozen=True)
class StorageConfig:
    """Object-storage settings for s3:// URIs (prompts and output). Anything left out comes from the
    standard AWS environment variables. Secrets are never logged or written (see flowscale_ray.io.storage)."""

    endpoint_url: str | None = None  # else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL
    key: str | None = field(default=None, repr=False)  # else AWS_ACCESS_KEY_ID
    secret: str | None = field(default=None, repr=False)  # else AWS_SECRET_ACCESS_KEY
    token: str | None = field(default=None, repr=False)  # else AWS_SESSION_TOKEN
    anon: bool = False
    retries: int = 5  # attempts per whole-file operation, on top of s3fs's own retries
    options: dict[str, Any] = field(default_factory=dict, repr=False)  # extra s3fs / fsspec arguments

    def __post_init__(self) -> None:
        if self.retries < 1:
            raise ValueError(f"retries: must be >= 1, got {self.retries}")
        if self.endpoint_url is not None and "://" not in self.endpoint_url:
            raise ValueError(f"endpoint_url: expected a URL such as http://127.0.0.1:9000, got {self.endpoint_url!r}")


_METRICS_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]+")


@dataclass(frozen=True)
class MetricsConfig:
    """Live observability (see docs/observability.md). `port`: serve Prometheus `/metrics` from the driver
    (null: off; 0: a free port, logged). `progress`: a bar on an interactive terminal and log lines otherwise
    ('auto'), or force 'bar', 'log' or 'off'; log lines come every `log_interval_s`. The run folder gets a
    small `timeline.json` (replica busy time sampled every `timeline_interval_s`) for `flowscale report`."""

    port: int | None = None
    host: str = "127.0.0.1"  # bind address; loopback unless you choose otherwise
    progress: Literal["auto", "bar", "log", "off"] = "auto"
    log_interval_s: float = 30.0
    timeline_interval_s: float = 5.0

    def __post_init__(self) -> None:
        if self.port is not None and not 0 <= self.port <= 65535:
            raise ValueError(f"port: must be 0 (a free port) to 65535, or null (off); got {self.port}")
        if not _METRICS_HOST.fullmatch(self.host):
            raise ValueError(f"host: expected an address to bind such as 127.0.0.1 or 0.0.0.0, got {self.host!r}")
        for name in ("log_interval_s", "timeline_interval_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: must be > 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class MethodConfig:
    name: str
    settings: Any  # the method's own validated Config dataclass

    def build(self):
        from flowscale_ray.search import METHODS

        return METHODS[self.name](self.settings)


@dataclass(frozen=True)
class JobConfig:
    model: ComponentConfig
    method: MethodConfig
    reward: ComponentConfig
    prompts: list[str | dict[str, Any]] | PromptFileConfig
    name: str = "job"
    seed: int = 0
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    held_out: ComponentConfig | None = None
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    compare_with: tuple[MethodConfig, ...] = ()  # baselines run on the same prompts, reported side by side
    metrics: MetricsConfig = field(default_factory=MetricsConfig)  # /metrics, progress, timeline

    @property
    def run_id(self) -> str:
        return self.output.run_id or self.name


def _load_method(data: Any) -> MethodConfig:
    from flowscale_ray.search import METHODS

    if not isinstance(data, Mapping):
        raise ConfigError("method", f"expected a mapping with a 'name', got {data!r}")
    if "name" not in data:
        raise ConfigError("method.name", f"required; allowed: {', '.join(METHODS)}")
    name = data["name"]
    if name not in METHODS:
        raise ConfigError("method.name", f"unknown method {name!r}; allowed: {', '.join(METHODS)}")
    settings = {k: v for k, v in data.items() if k != "name"}
    cfg = load_dataclass(METHODS[name].Config, settings, "method")
    return MethodConfig(name=name, settings=cfg)


def _load_sampler(data: Any) -> SamplerSpec:
    if data is None:
        return SamplerSpec()
    if not isinstance(data, Mapping):
        raise ConfigError("sampler", f"expected a mapping, got {data!r}")
    data = dict(data)
    preset = data.pop("preset", None)
    if preset is not None:
        if preset not in SAMPLER_PRESETS:
            raise ConfigError("sampler.preset", f"unknown preset {preset!r}; allowed: {', '.join(SAMPLER_PRESETS)}")
        data = {**SAMPLER_PRESETS[preset], **data}
    try:
        return load_dataclass(SamplerSpec, data, "sampler")
    except ConfigError as exc:
        if "unknown key" in str(exc):
            raise ConfigError(exc.where, str(exc).split(": ", 1)[1] + ", preset") from None
        raise


def _check_prompts(value: Any) -> None:
    """Precise errors for the prompts section (the generic union error would not say which item is wrong)."""
    if isinstance(value, Mapping) or value is None:
        return  # a PromptFileConfig: load_dataclass names the field
    if not isinstance(value, list | tuple):
        raise ConfigError("prompts", f"expected a list of prompts or a mapping {{file: ...}}, got {value!r}")
    for i, item in enumerate(value):
        if not isinstance(item, str | Mapping):
            raise ConfigError(f"prompts[{i}]", f"expected a string or a mapping with a 'prompt', got {item!r}")


def load_job(data: Any, source: str = "job") -> JobConfig:
    """Validate a parsed job document."""
    if not isinstance(data, Mapping):
        raise ConfigError("", f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    data = dict(data)
    if "method" not in data:
        raise ConfigError("method", "required")
    method = _load_method(data.pop("method"))
    sampler = _load_sampler(data.pop("sampler", None))
    compare = data.pop("compare_with", None) or []
    if not isinstance(compare, list):
        raise ConfigError("compare_with", f"expected a list of methods, e.g. [{{name: base}}], got {compare!r}")
    baselines = []
    for i, item in enumerate(compare):
        try:
            baselines.append(_load_method(item))
        except ConfigError as exc:
            raise ConfigError(
                exc.where.replace("method", f"compare_with[{i}]", 1), str(exc).split(": ", 1)[1]
            ) from None
    for key in data:
        if key not in _JOB_KEYS:
            raise ConfigError(str(key), f"unknown key; allowed: {', '.join(_JOB_KEYS)}")
    if "prompts" in data:
        _check_prompts(data["prompts"])
    # method and sampler have their own loaders; everything else is validated generically.
    rest = load_dataclass(_JobRest, data, "")
    if rest.output.run_id is None and not _RUN_ID.fullmatch(rest.name):
        raise ConfigError(
            "name",
            f"is the run id when output.run_id is not set: must be letters, digits, '.', '_' or '-'; got {rest.name!r}",
        )
    if rest.output.min_held_out is not None and rest.held_out is None:
        raise ConfigError("output.min_held_out", "needs a held_out reward to compare with; set held_out or remove it")
    from flowscale_ray.search.protocol import SearchContext

    try:
        method.build().planned_nfe(SearchContext(grid=sampler.grid_times()))
    except ValueError as exc:
        raise anchored("method", str(exc)) from None
    return JobConfig(
        model=rest.model,
        method=method,
        reward=rest.reward,
        prompts=rest.prompts,
        name=rest.name,
        seed=rest.seed,
        sampler=sampler,
        held_out=rest.held_out,
        executor=rest.executor,
        output=rest.output,
        storage=rest.storage,
        compare_with=tuple(baselines),
        metrics=rest.metrics,
    )


@dataclass(frozen=True)
class _JobRest:
    model: ComponentConfig
    reward: ComponentConfig
    prompts: list[str | dict[str, Any]] | PromptFileConfig
    name: str = "job"
    seed: int = 0
    held_out: ComponentConfig | None = None
    executor: ExecutorConfig = field(default_factory=ExecutorConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)


_JOB_KEYS = (
    "name",
    "seed",
    "model",
    "sampler",
    "method",
    "reward",
    "held_out",
    "prompts",
    "executor",
    "output",
    "storage",
    "compare_with",
    "metrics",
)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a', 'b', 'c'], parsed YAML value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError("--set", f"expected key.path=value, got {text!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError("--set", f"{'.'.join(path)}: {part} is not a mapping")
            node = nxt
        node[path[-1]] = value
    return data


def read_job_file(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Read, override and validate a job file. Raises ConfigError with a one-line message."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", f"{path}: no such job file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ConfigError("", f"{path}: invalid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError("", f"{path}: not UTF-8 text") from None
    if data is None:
        raise ConfigError("", f"{path}: empty job file")
    if not isinstance(data, dict):
        raise ConfigError("", f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        return load_job(data, str(path))
    except ConfigError as exc:
        raise ConfigError("", f"{path}: {exc}") from None
