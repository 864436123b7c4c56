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

Each section is defined once, below, as a frozen pydantic dataclass (strict types: no "3" for 3, no 1.5 for
an integer; unknown keys refused); `JobConfig` is the whole file. Two sections come from elsewhere: `sampler` is
a `flowscale_ray.core.dynamics.SamplerSpec` (plus a named `preset`), and `method` is `{name: ..., <settings>}`
validated against the registered method's own `Config` dataclass (`flowscale_ray.search.METHODS[name].Config`).
`flowscale schema` prints the JSON Schema of this file format (docs/job-schema.json).

Every error names the field and what is allowed, as one line: `method.nfe_budget: must be > 0, got -5`. The
field path comes from pydantic's structured errors (location, type, context), not from parsing messages; the
one exception is a check inside a component defined elsewhere (a method's Config, SamplerSpec), which only says
'field: problem' in its ValueError: `anchored` places that field under the section pydantic located.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Protocol

import yaml
from pydantic import (
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
)
from pydantic.dataclasses import dataclass as pydantic_dataclass
from pydantic_core import core_schema

from flowscale_ray.core.dynamics import FINAL_STEPS, SAMPLER_PRESETS, SamplerSpec
from flowscale_ray.errors import FlowscaleError


class ConfigError(FlowscaleError, ValueError):
    """A bad job file. str() is one line naming the field: `[source: ]where: message`."""

    def __init__(self, where: str, message: str, *, source: str | None = None) -> None:
        text = f"{where}: {message}" if where else message
        super().__init__(f"{source}: {text}" if source else text)
        self.where = where  # the field path, e.g. 'method.nfe_budget' or 'compare_with[0].name'; '' for the file
        self.message = message
        self.source = source  # the job file, when known

    def __reduce__(self):
        return _rebuild_config_error, (self.where, self.message, self.source)


def _rebuild_config_error(where: str, message: str, source: str | None) -> ConfigError:
    return ConfigError(where, message, source=source)


def anchored(section: str, message: str) -> ConfigError:
    """A ConfigError for a component's own ValueError text: 'field: problem' -> 'section.field: problem'.

    Components outside this module (method configs, SamplerSpec, models) only give a message; this is the one
    place their 'field: problem' convention is read."""
    head, sep, rest = message.partition(": ")
    if sep and head.startswith(f"{section}."):
        return ConfigError(head, rest)
    if sep and head.replace("_", "").replace(".", "").isalnum() and " " not in head:
        return ConfigError(_join(section, head), rest)
    return ConfigError(section, message)


class _Invalid(ValueError):
    """Raised by this module's validators: `message` about `field`, relative to where the validator runs
    ('' for the value itself). Pydantic keeps the exception in the error's context, so nothing is parsed."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.field = field


# -- how sections are declared --------------------------------------------------------------------------------

_SECTION = ConfigDict(strict=True, extra="forbid", defer_build=True, allow_inf_nan=False)
MAX_NFE_PER_PROMPT = 10**9  # a method planning more per prompt is a typo (and would never finish)


class _Mapping:
    """Mixin for a dataclass written as a mapping: accept a dict although the field types
    are strict (a strict pydantic dataclass would accept only an instance), and read null as {} (all defaults)."""

    @classmethod
    def _mapping_schema(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        schema = handler(source)
        typing.cast(dict[str, Any], handler.resolve_ref_schema(schema))["strict"] = False
        return core_schema.no_info_before_validator_function(_none_as_empty, schema)

    __get_pydantic_core_schema__ = _mapping_schema


def _none_as_empty(value: Any) -> Any:
    return {} if value is None else value


_T = typing.TypeVar("_T")


@typing.dataclass_transform(frozen_default=True, kw_only_default=True, field_specifiers=(Field,))
def _section(cls: type[_T]) -> type[_T]:
    """A job section: a frozen, keyword-only pydantic dataclass with strict types and no unknown keys.
    Building one directly with bad values raises a ConfigError too (relative field path)."""
    cls = pydantic_dataclass(frozen=True, kw_only=True, config=_SECTION)(cls)  # type: ignore[assignment]
    validated_init = cls.__init__

    @functools.wraps(validated_init)
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            validated_init(self, *args, **kwargs)
        except ValidationError as exc:
            raise config_error(exc, cls) from None
        finally:
            if cls.__init__ is not __init__:  # pydantic sets its own again when it builds the deferred class
                setattr(cls, "__init__", __init__)  # noqa: B010

    setattr(cls, "__init__", __init__)  # noqa: B010
    return cls


# -- the sections ----------------------------------------------------------------------------------------------


@_section
class ComponentConfig(_Mapping):
    """A registered component (model, reward) by name, with its constructor options."""

    name: str = Field(description="the registered name (see `flowscale methods`, docs/models.md)")
    options: dict[str, Any] = Field(default_factory=dict, description="constructor options of that component")


PROMPT_FORMATS = ("auto", "text", "jsonl", "csv", "parquet")


@_section
class PromptFileConfig(_Mapping):
    """Prompts from a file at any fsspec URI (see flowscale_ray.io.prompts for the formats)."""

    file: str = Field(description="path (relative to the job file) or fsspec URI, e.g. s3://bucket/prompts.jsonl")
    format: Literal["auto", "text", "jsonl", "csv", "parquet"] = Field(
        default="auto", description="auto: from the extension"
    )
    column: str = Field(default="prompt", description="the prompt text (JSONL, CSV, Parquet)")
    id_column: str | None = Field(default=None, description="given prompt ids; default: 'id' when the file has it")
    seed_column: str | None = Field(default=None, description="per-prompt seeds; default: 'seed' when the file has it")

    @field_validator("file")
    @classmethod
    def _names_a_file(cls, value: str) -> str:
        if not value.strip():
            raise _Invalid("must name a file")
        return value

    @field_validator("column", "id_column", "seed_column")
    @classmethod
    def _not_empty(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise _Invalid("must not be empty")
        return value


@_section
class ExecutorConfig(_Mapping):
    """Where the searches run. 'inprocess': this process. 'ray': model replicas on a Ray cluster (`address`:
    null starts a local Ray in this process; 'auto' joins the cluster this job runs in; or ray://HOST:PORT)."""

    kind: Literal["inprocess", "ray"] = "inprocess"
    in_flight: int = Field(default=4, ge=1, description="searches in flight at once")
    micro_batch: int | None = Field(default=None, ge=1, description="padded rows per model call; null: 8 (decode: 1)")
    address: str | None = Field(default=None, description="ray only: null (local), 'auto' or ray://HOST:PORT")
    replicas: int = Field(default=1, ge=1, description="ray only: model replicas")
    num_cpus: float = Field(default=1.0, ge=0, description="CPUs per replica")
    num_gpus: float = Field(default=0.0, ge=0, description="ray only: GPUs per replica")
    reward_actors: int = Field(default=0, ge=0, description="ray only: reward actors (0: rewards run in the replicas)")
    call_timeout_s: float = Field(default=600.0, gt=0, description="seconds before a model call counts as failed")
    max_restarts: int = Field(default=3, ge=0, description="restarts of a failed replica")
    drivers: int = Field(
        default=1,
        ge=1,
        description="ray only: driver shards splitting the prompts; replicas, reward_actors and "
        "in_flight are shared out among them",
    )

    def __post_init__(self) -> None:
        if self.kind == "inprocess":
            ray_only = {"address": None, "replicas": 1, "num_gpus": 0.0, "reward_actors": 0, "drivers": 1}
            for name, default in ray_only.items():
                if getattr(self, name) != default:
                    raise _Invalid("only used with kind: ray", name)
        for name in ("replicas", "reward_actors"):
            if getattr(self, name) % self.drivers:
                raise _Invalid(
                    f"must be a multiple of drivers ({self.drivers}): each driver gets an equal share, got "
                    f"{getattr(self, name)}",
                    name,
                )


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_BUCKETED = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oci", "r2")  # URLs that name a bucket
_READ_ONLY = "is read-only (fsspec cannot write there)"
_NOT_PERSISTENT = {  # fsspec protocols an output must not use, and why
    "memory": "keeps files in this process's memory only: the whole run would be lost when it exits",
    **{p: _READ_ONLY for p in ("http", "https", "github", "git", "zip", "tar", "libarchive", "reference", "data")},
}


@_section
class OutputConfig(_Mapping):
    """Where and what to write: `<dir>/<run_id>/data/part-NNNNN.parquet` (see flowscale_ray.io.writer)."""

    dir: str = Field(
        default="results", description="local path or persistent fsspec URI (file://, s3://bucket/prefix, gs://, ...)"
    )
    run_id: str | None = Field(
        default=None, description="default: the job name", json_schema_extra={"pattern": f"^{_RUN_ID.pattern}$"}
    )
    save_images: bool = Field(default=True, description="PNG bytes in the image column")
    shard_size: int = Field(default=100, ge=1, description="prompts per Parquet file (the unit of commit and resume)")
    row_group_size: int = Field(default=100, ge=1, description="rows (images) per Parquet row group")
    top_k: int = Field(default=1, ge=1, description="samples kept per prompt, best first")
    min_reward: float | None = Field(default=None, description="a sample is kept only if its reward reaches this")
    min_held_out: float | None = Field(default=None, description="... and its held-out reward reaches this")

    @field_validator("dir")
    @classmethod
    def _names_a_dir(cls, value: str) -> str:
        if not value.strip():
            raise _Invalid("must name a directory or URI")
        for part in value.split("::"):  # a chained fsspec URL: every filesystem in the chain
            protocol, _, rest = part.partition("://") if "://" in part else ("", "", part)
            protocol = protocol.lower()
            if protocol in _BUCKETED and not rest.split("/", 1)[0]:
                raise _Invalid(f"{protocol}:// names no bucket; give {protocol}://bucket/prefix")
            why = _NOT_PERSISTENT.get(protocol)
            if why is not None:
                raise _Invalid(
                    f"{protocol}:// {why}; give a local path, s3://bucket/prefix or another persistent fsspec URI "
                    "(gs://, az://, file://, ...)"
                )
        return value

    @field_validator("run_id")
    @classmethod
    def _is_a_run_id(cls, value: str | None) -> str | None:
        if value is not None and not _RUN_ID.fullmatch(value):
            raise _Invalid(
                f"must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit; got {value!r}"
            )
        return value

    @field_validator("min_reward", "min_held_out")
    @classmethod
    def _not_nan(cls, value: float | None) -> float | None:
        if value is not None and value != value:
            raise _Invalid("must be a number or null, got NaN")
        return value


@_section
class StorageConfig(_Mapping):
    """Object-storage settings for s3:// URIs (prompts and output). Anything left out comes from the
    standard AWS environment variables. Secrets are never logged or written (see flowscale_ray.io.storage)."""

    endpoint_url: str | None = Field(default=None, description="else AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL")
    key: str | None = Field(default=None, repr=False, description="else AWS_ACCESS_KEY_ID")
    secret: str | None = Field(default=None, repr=False, description="else AWS_SECRET_ACCESS_KEY")
    token: str | None = Field(default=None, repr=False, description="else AWS_SESSION_TOKEN")
    anon: bool = False
    retries: int = Field(
        default=5, ge=1, le=100, description="attempts per whole-file operation, on top of s3fs's own retries"
    )
    options: dict[str, Any] = Field(default_factory=dict, repr=False, description="extra s3fs / fsspec arguments")

    @field_validator("endpoint_url")
    @classmethod
    def _is_a_url(cls, value: str | None) -> str | None:
        if value is not None and "://" not in value:
            shown = f"<redacted>@{value.rsplit('@', 1)[1]}" if "@" in value else value  # no user-info in errors
            raise _Invalid(f"expected a URL such as http://127.0.0.1:9000, got {shown!r}")
        return value


# Settings under `storage` that are known to be harmless, as paths below it (`options.` for `storage.options`).
# Every other value there is treated as a secret: never shown in an error, a log line, `_run.json`, the manifest
# or a report, and scrubbed from any text by value (flowscale_ray.io.storage.Redactor). URLs among them are
# shown without their user-info.
HARMLESS_STORAGE_SETTINGS = frozenset(
    {
        "endpoint_url",
        "anon",
        "retries",
        "options.endpoint_url",
        "options.region_name",
        "options.profile",
        "options.anon",
        "options.use_ssl",
        "options.skip_instance_cache",
        "options.requester_pays",
        "options.version_aware",
        "options.client_kwargs.endpoint_url",
        "options.client_kwargs.region_name",
        "options.config_kwargs.signature_version",
        "options.config_kwargs.connect_timeout",
        "options.config_kwargs.read_timeout",
        "options.config_kwargs.max_pool_connections",
        "options.config_kwargs.retries.max_attempts",
        "options.config_kwargs.retries.mode",
        "options.config_kwargs.s3.addressing_style",
        "options.s3_additional_kwargs.ServerSideEncryption",
    }
)


def storage_setting(where: str) -> str | None:
    """The path below `storage` of a field path ('storage.options.x' -> 'options.x', 'storage' -> ''), or None
    for a field outside the storage section. Mapping keys written as `['x']` become `.x`."""
    if where != "storage" and not where.startswith(("storage.", "storage[")):
        return None
    rest = re.sub(r"\[['\"]?([^\]'\"]*)['\"]?\]", r".\1", where[len("storage") :])
    return rest.lstrip(".")


def is_secret_setting(where: str) -> bool:
    """Whether the value at field path `where` is treated as a secret (under `storage`, not on the allowlist)."""
    rest = storage_setting(where)
    return rest is not None and rest not in HARMLESS_STORAGE_SETTINGS


_METRICS_HOST = re.compile(r"[A-Za-z0-9.:\[\]-]+")


@_section
class MetricsConfig(_Mapping):
    """Live observability (see docs/observability.md). `port`: serve Prometheus `/metrics` from the driver
    (null: off; 0: a free port, logged). `progress`: a bar on an interactive terminal and log lines otherwise
    ('auto'), or force 'bar', 'log' or 'off'; log lines come every `log_interval_s`. The run folder gets a
    small `timeline.json` (replica busy time sampled every `timeline_interval_s`) for `flowscale report`."""

    port: int | None = Field(default=None, json_schema_extra={"minimum": 0, "maximum": 65535})
    host: str = Field(default="127.0.0.1", description="bind address; loopback unless you choose otherwise")
    progress: Literal["auto", "bar", "log", "off"] = "auto"
    log_interval_s: float = Field(default=30.0, gt=0)
    timeline_interval_s: float = Field(default=5.0, gt=0)

    @field_validator("port")
    @classmethod
    def _is_a_port(cls, value: int | None) -> int | None:
        if value is not None and not 0 <= value <= 65535:
            raise _Invalid(f"must be 0 (a free port) to 65535, or null (off); got {value}")
        return value

    @field_validator("host")
    @classmethod
    def _is_a_host(cls, value: str) -> str:
        if not _METRICS_HOST.fullmatch(value):
            raise _Invalid(f"expected an address to bind such as 127.0.0.1 or 0.0.0.0, got {value!r}")
        return value


@_section
class BudgetConfig(_Mapping):
    """How compute is allocated over prompts (see flowscale_ray.run.budget). `per_prompt` (the default): every
    prompt runs the method as configured. `dataset`: each block of prompts (an output shard) gets `mean_nfe` NFE
    per prompt; every prompt first runs the method with `base_nfe`, prompts that reach the target stop, and what
    they leave funds rounds of `round_nfe` for the prompts still short of it, furthest first."""

    mode: Literal["per_prompt", "dataset"] = "per_prompt"
    mean_nfe: float | None = Field(default=None, gt=0, description="dataset: mean NFE per prompt (the budget)")
    base_nfe: int | None = Field(default=None, ge=1, description="dataset: each prompt's first round")
    round_nfe: int | None = Field(default=None, ge=1, description="dataset: each later round (default base_nfe)")
    target_reward: float | None = Field(default=None, description="dataset: a prompt is done at reward >= this")
    target_held_out: float | None = Field(default=None, description="dataset: ... and held-out score >= this")
    max_rounds: int = Field(default=8, ge=1, le=10000, description="dataset: at most this many rounds a prompt")
    unit: Literal["nfe", "compute"] = Field(
        default="nfe",
        description="what budgets count: velocity evaluations (nfe, the paper's) or compute units "
        "c_d x NFE + c_v x verifier calls; with compute, mean_nfe, base_nfe, round_nfe and per_prompt are in units",
    )
    c_d: float = Field(default=1.0, ge=0, le=1e9, description="compute units per velocity evaluation (NFE)")
    c_v: float = Field(default=0.0, ge=0, le=1e9, description="compute units per verifier call (reward evaluation)")
    per_prompt: float | None = Field(
        default=None, gt=0, le=1e9, description="per_prompt: size the method to this budget (in `unit`); null: as set"
    )

    def __post_init__(self) -> None:
        if self.unit == "compute" and self.c_d == 0 and self.c_v == 0:
            raise _Invalid("with unit: compute, c_d or c_v must be > 0 (every search would be free)", "c_v")
        if self.mode == "per_prompt":
            for name in ("mean_nfe", "base_nfe", "round_nfe", "target_reward", "target_held_out"):
                if getattr(self, name) is not None:
                    raise _Invalid("only used with mode: dataset", name)
            return
        if self.per_prompt is not None:
            raise _Invalid("only used with mode: per_prompt (a dataset budget sizes rounds by base_nfe)", "per_prompt")
        for name in ("mean_nfe", "base_nfe"):
            if getattr(self, name) is None:
                raise _Invalid("required with mode: dataset", name)
        if self.target_reward is None and self.target_held_out is None:
            raise _Invalid("dataset needs a stopping rule: set target_reward and/or target_held_out", "mode")
        if self.base_nfe is not None and self.mean_nfe is not None and self.base_nfe > self.mean_nfe:
            raise _Invalid(
                f"must be <= mean_nfe ({self.mean_nfe:g}): every prompt's first round is paid first", "base_nfe"
            )

    @property
    def per_round(self) -> int | None:
        return self.round_nfe if self.round_nfe is not None else self.base_nfe

    @property
    def costs(self):
        from flowscale_ray.search.plan import Costs

        return Costs(self.c_d, self.c_v)


# -- sampler: a SamplerSpec, optionally on top of a preset ------------------------------------------------------


class _SamplerInput:
    """`sampler:` in a job file: SamplerSpec's fields (checked by SamplerSpec itself), on top of a named `preset`."""

    extra_keys = ("preset",)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_before_validator_function(_expand_preset, _Mapping._mapping_schema(source, handler))

    def __get_pydantic_json_schema__(self, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> Any:
        from flowscale_ray.core.diffusion import DIFFUSION_SCHEDULES
        from flowscale_ray.core.interpolants import INTERPOLANTS
        from flowscale_ray.core.timegrid import TIME_GRIDS

        json_schema = handler(schema)
        target = handler.resolve_ref_schema(json_schema)
        props = target["properties"]
        for name, allowed in (
            ("interpolant", INTERPOLANTS),
            ("diffusion", DIFFUSION_SCHEDULES),
            ("grid", TIME_GRIDS),
            ("final_step", FINAL_STEPS),
        ):
            props[name]["enum"] = list(allowed)
        preset = {"enum": list(SAMPLER_PRESETS), "description": "path + ODE/SDE; the other keys override it"}
        target["properties"] = {"preset": preset, **props}
        return json_schema


def _expand_preset(value: Any) -> Any:
    if value is None or isinstance(value, SamplerSpec):
        return value
    if not isinstance(value, Mapping):
        raise _Invalid(f"expected a mapping, got {value!r}")
    data = dict(value)
    preset = data.pop("preset", None)
    if preset is not None:
        if not (isinstance(preset, str) and preset in SAMPLER_PRESETS):
            raise _Invalid(f"unknown preset {preset!r}; allowed: {', '.join(SAMPLER_PRESETS)}", "preset")
        data = {**SAMPLER_PRESETS[preset], **data}
    return data


Sampler = Annotated[SamplerSpec, _SamplerInput()]


# -- method: {name: ..., <the method's settings>} ---------------------------------------------------------------


class MethodSettings(Protocol):
    """A search method's settings: an instance of its frozen `Config` dataclass (`METHODS[name].Config`), which
    checks itself in `__post_init__`."""

    __dataclass_fields__: ClassVar[dict[str, dataclasses.Field[Any]]]


@dataclasses.dataclass(frozen=True)
class MethodConfig:
    """A search method and its settings. In a job file the settings are inline: `{name: rbf, nfe_budget: 500}`."""

    name: str
    settings: MethodSettings

    def __post_init__(self) -> None:
        from flowscale_ray.search import METHODS

        if self.name not in METHODS or not isinstance(self.settings, METHODS[self.name].Config):
            raise TypeError(
                f"MethodConfig({self.name!r}): settings must be METHODS[name].Config, got {self.settings!r}"
            )

    def build(self):
        from flowscale_ray.search import METHODS

        return METHODS[self.name](self.settings)

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        """Dispatch on `name` when validating, so a method registered at any time is known."""
        return core_schema.no_info_plain_validator_function(_validate_method, ref=f"{__name__}.{cls.__name__}")

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> Any:
        """One object per registered method (`oneOf`), told apart by the constant `name`."""
        from flowscale_ray.search import METHODS

        choices = []
        for name, method in METHODS.items():
            settings = _settings_json_schema(method.Config, handler)
            summary = (method.__doc__ or "").strip().split("\n")[0]
            choices.append(
                {
                    "title": f"method {name}",
                    **({"description": summary} if summary else {}),
                    "type": "object",
                    "properties": {"name": {"const": name}, **settings.get("properties", {})},
                    "required": ["name", *settings.get("required", [])],
                    "additionalProperties": False,
                }
            )
        return {"oneOf": choices}


class _InvalidSettings(ValueError):
    """A method's settings failed their own validation: the inner ValidationError, for `root`, kept whole."""

    def __init__(self, error: ValidationError, root: type) -> None:
        super().__init__(str(error))
        self.error = error
        self.root = root


@functools.cache
def _settings_adapter(config: type) -> TypeAdapter[Any]:
    """Validates a method's settings (the section without `name`) into its Config dataclass, strictly like a
    section. The Config rides in a one-item tuple: pydantic takes no `config=` for a dataclass type itself, but
    applies it to a stdlib dataclass nested in another type. Locations therefore start with the item index 0."""
    return TypeAdapter(tuple[Annotated[config, _Mapping()]], config=_SECTION)  # type: ignore[valid-type]


def _settings_json_schema(config: type, handler: GetJsonSchemaHandler) -> dict[str, Any]:
    (item,) = handler(_settings_adapter(config).core_schema)["prefixItems"]
    return handler.resolve_ref_schema(item)


def _validate_method(value: Any) -> MethodConfig:
    from flowscale_ray.search import METHODS

    if isinstance(value, MethodConfig):
        return value
    if not isinstance(value, Mapping):
        raise _Invalid(f"expected a mapping with a 'name', got {value!r}")
    if "name" not in value:
        raise _Invalid(f"required; allowed: {', '.join(METHODS)}", "name")
    name = value["name"]
    if not (isinstance(name, str) and name in METHODS):
        raise _Invalid(f"unknown method {name!r}; allowed: {', '.join(METHODS)}", "name")
    try:
        config = METHODS[name].Config
    except ValueError as exc:  # a broken plugin: the registry's one line, 'method.name: ... failed to load: ...'
        raise _Invalid(anchored("method", str(exc)).message, "name") from None
    try:
        (settings,) = _settings_adapter(config).validate_python(({k: v for k, v in value.items() if k != "name"},))
    except ValidationError as exc:
        raise _InvalidSettings(exc, config) from None
    return MethodConfig(name=name, settings=settings)


def _method_list(value: Any) -> Any:
    if value is None:
        return ()
    if isinstance(value, list):
        return tuple(value)
    if not isinstance(value, tuple):
        raise _Invalid(f"expected a list of methods, e.g. [{{name: base}}], got {value!r}")
    return value


# -- prompts: a list, or a file -----------------------------------------------------------------------------------


def _check_prompts(value: Any) -> Any:
    """Precise errors for the prompts section (a generic union error would not say which item is wrong)."""
    if value is None or isinstance(value, Mapping | PromptFileConfig):
        return value  # a PromptFileConfig: its own errors name the field
    if not isinstance(value, list | tuple):
        raise _Invalid(f"expected a list of prompts or a mapping {{file: ...}}, got {value!r}")
    for i, item in enumerate(value):
        if not isinstance(item, str | Mapping):
            raise _Invalid(f"expected a string or a mapping with a 'prompt', got {item!r}", f"[{i}]")
    return list(value)


def _prompts_kind(value: Any) -> str:
    return "list" if isinstance(value, list) else "file"


def _prompt_kind(value: Any) -> str:
    return "text" if isinstance(value, str) else "record"


Prompt = Annotated[
    Annotated[str, Tag("text")] | Annotated[dict[str, Any], Tag("record")],  # a record: {prompt: ..., id: ..., ...}
    Discriminator(_prompt_kind),
]
Prompts = Annotated[
    Annotated[list[Prompt], Tag("list")] | Annotated[PromptFileConfig, Tag("file")],
    Discriminator(_prompts_kind),
    BeforeValidator(_check_prompts),
]


# -- the job ---------------------------------------------------------------------------------------------------------


@_section
class JobConfig(_Mapping):
    """A job file: what to sample (model, sampler), how to search (method, reward), for which prompts, where it
    runs (executor) and where the rows go (output, storage); `metrics` for live observability."""

    name: str = Field(default="job", description="run name; the run id (output folder) unless output.run_id is set")
    seed: int = Field(default=0, ge=0, lt=2**63, description="run seed; a prompt's own seed overrides it")
    model: ComponentConfig = Field(description="the flow model, e.g. {name: flux, options: {path: ...}}")
    sampler: Sampler = Field(default_factory=SamplerSpec, description="how particles move (core.dynamics)")
    method: MethodConfig = Field(description="the search method and its settings, e.g. {name: rbf, nfe_budget: 500}")
    reward: ComponentConfig = Field(description="the reward the search optimises")
    held_out: ComponentConfig | None = Field(
        default=None, description="a reward reported (and filtered on), never optimised"
    )
    prompts: Prompts = Field(description="a list of prompts (strings or {prompt: ..., id: ..., seed: ...}) or a file")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    compare_with: Annotated[tuple[MethodConfig, ...], BeforeValidator(_method_list)] = Field(
        default=(), description="baselines run on the same prompts, reported side by side"
    )
    metrics: MetricsConfig = Field(default_factory=MetricsConfig, description="/metrics, progress, timeline")
    budget: BudgetConfig = Field(default_factory=BudgetConfig, description="per prompt, or one for the dataset")

    def __post_init__(self) -> None:
        if self.output.run_id is None and not _RUN_ID.fullmatch(self.name):
            raise _Invalid(
                "is the run id when output.run_id is not set: must be letters, digits, '.', '_' or '-'; "
                f"got {self.name!r}",
                "name",
            )
        if self.output.min_held_out is not None and self.held_out is None:
            raise _Invalid("needs a held_out reward to compare with; set held_out or remove it", "output.min_held_out")
        from flowscale_ray.search.protocol import SearchContext

        ctx = SearchContext(grid=self.sampler.grid_times())
        try:  # the method's settings must fit the sampler's grid (e.g. an NFE budget for its steps)
            method = self.method.build()
            planned = method.planned_nfe(ctx)
            if planned > MAX_NFE_PER_PROMPT:
                raise ValueError(f"plans {planned} NFE per prompt; at most {MAX_NFE_PER_PROMPT} are allowed")
        except ValueError as exc:
            error = anchored("method", str(exc))
            raise _Invalid(error.message, error.where) from None
        budget = self.budget
        from flowscale_ray.search.plan import sized

        if budget.target_held_out is not None and self.held_out is None:
            raise _Invalid("needs a held_out reward; set held_out or remove it", "budget.target_held_out")
        amounts = (("base_nfe", budget.base_nfe), ("round_nfe", budget.per_round), ("per_prompt", budget.per_prompt))
        for name, amount in amounts:
            if amount is None:
                continue
            try:
                sized(method, amount, budget.unit, budget.costs, ctx, self.output.top_k, self.sampler.guided_moves())
            except ValueError as exc:
                raise _Invalid(f"{exc} (method {self.method.name}, {ctx.steps} steps)", f"budget.{name}") from None

    @property
    def run_id(self) -> str:
        return self.output.run_id or self.name


# -- loading ------------------------------------------------------------------------------------------------------


@functools.cache
def job_adapter() -> TypeAdapter[JobConfig]:
    """The validator (and JSON Schema source) of job documents; built on first use."""
    return TypeAdapter(JobConfig)


def load_job(data: Any, source: str = "job") -> JobConfig:
    """Validate a parsed job document."""
    if not isinstance(data, Mapping):
        raise ConfigError("", f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    try:
        return job_adapter().validate_python(data)
    except ValidationError as exc:
        raise config_error(exc, JobConfig) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b.c=value' -> (['a', 'b', 'c'], parsed YAML value)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        shown = repr(text) if not text.lstrip().startswith("storage") else "a storage setting (not shown)"
        raise ConfigError("--set", f"expected key.path=value, got {shown}")
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


MAX_YAML_VALUES = 1_000_000  # values of a job file once its aliases are expanded


class _JobLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (YAML would keep the last silently)."""


def _unique_mapping(loader: _JobLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given at line {seen[key]})", key_node.start_mark
                )
            seen[key] = key_node.start_mark.line + 1
        except TypeError:  # an unhashable key: the safe loader reports it itself
            continue
    return loader.construct_mapping(node, deep=deep)


_JobLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def _check_expanded_size(data: Any, source: str) -> None:
    """Refuse a document that expands to more than MAX_YAML_VALUES values (an alias bomb, a recursive alias)
    before anything walks it."""
    count, stack = 0, [data]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_YAML_VALUES:
            raise ConfigError(
                "",
                f"{source}: more than {MAX_YAML_VALUES} values once YAML aliases are expanded (recursive or "
                "nested aliases?); write the values out",
            )
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)


def load_yaml(text: str, source: str) -> Any:
    """A YAML document as Python values: one-line ConfigErrors for bad YAML, duplicate keys and alias bombs."""
    try:
        data = yaml.load(text, Loader=_JobLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise ConfigError("", f"{source}: invalid YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError("", f"{source}: nested too deeply") from None
    except (ValueError, OverflowError, TypeError) as exc:  # a scalar YAML reads but Python cannot build
        why = str(exc).split(";")[0] if "digits" not in str(exc) else "a number of more than 4300 digits"
        raise ConfigError("", f"{source}: invalid YAML: {why}") from None
    _check_expanded_size(data, source)
    return data


def read_text_file(path: Path, what: str) -> str:
    """A text file's content, with one-line ConfigErrors for a missing file, a directory or a device, and for
    bytes that are not UTF-8 (with their line and column)."""
    if not path.exists():
        raise ConfigError("", f"{path}: no such {what}")
    if path.is_dir():
        raise ConfigError("", f"{path}: is a directory, not a {what}")
    if not path.is_file():
        raise ConfigError("", f"{path}: is not a regular file (a pipe or a device?); give a {what}")
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        column = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise ConfigError(
            "", f"{path}: not UTF-8 text (byte {raw[exc.start]:#04x} at line {line}, column {column})"
        ) from None


def read_job_file(path: str | Path, overrides: list[str] | None = None) -> JobConfig:
    """Read, override and validate a job file. Raises ConfigError with a one-line message."""
    path = Path(path)
    data = load_yaml(read_text_file(path, "job file"), str(path))
    if data is None:
        raise ConfigError("", f"{path}: empty job file")
    if not isinstance(data, dict):
        raise ConfigError("", f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    data = apply_overrides(data, overrides or [])
    try:
        return load_job(data, str(path))
    except ConfigError as exc:
        raise ConfigError(exc.where, exc.message, source=str(path)) from None


# -- pydantic's errors as one line ----------------------------------------------------------------------------------


def config_error(exc: ValidationError, root: Any) -> ConfigError:
    """The first problem of a ValidationError for `root` as a ConfigError naming the field. A mistyped key is
    reported first (it is usually why something else looks missing)."""
    return _first_error(exc.errors(include_url=False), root)


def _first_error(errors: list[Any], root: Any) -> ConfigError:
    unknown = [e for e in errors if e["type"] in _UNKNOWN_KEY]
    return _one_error((unknown or errors)[0], root)


_UNKNOWN_KEY = ("unexpected_keyword_argument", "extra_forbidden")
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}
_TYPE_ERRORS = {
    "int_type",
    "int_parsing",
    "int_from_float",
    "float_type",
    "float_parsing",
    "bool_type",
    "bool_parsing",
    "string_type",
    "list_type",
    "tuple_type",
    "dict_type",
    "literal_error",
    "none_required",
}


class _Hidden:
    """Stands for a secret value in a message: what kind of value it is, never the value."""

    def __init__(self, value: Any) -> None:
        self.kind = _kind_of(value)

    def __repr__(self) -> str:
        return f"{self.kind} (not shown: storage settings are treated as secrets)"

    __str__ = __repr__


def _kind_of(value: Any) -> str:
    """A YAML reader's word for a value's type: 'a string', 'an integer', 'null', ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true or false"
    for tp, word in ((int, "an integer"), (float, "a number"), (str, "a string"), (Mapping, "a mapping")):
        if isinstance(value, tp):
            return word
    if isinstance(value, list | tuple):
        return "a list"
    return "a value"


def _one_error(error: Any, root: Any) -> ConfigError:
    where, allowed_keys, annotation = _locate(root, error["loc"])
    kind, value, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if is_secret_setting(where) and error["loc"][-1:] != ("[key]",):
        value = _Hidden(value)
    if kind == "value_error":
        cause = ctx.get("error")
        if isinstance(cause, _InvalidSettings):  # errors inside a method's settings: (0, <loc in its Config>)
            inner = _first_error(
                [{**e, "loc": e["loc"][1:]} for e in cause.error.errors(include_url=False)], cause.root
            )
            return ConfigError(_join(where, inner.where), inner.message)
        if isinstance(cause, _Invalid):
            path = f"{where}{cause.field}" if cause.field.startswith("[") else _join(where, cause.field)
            return ConfigError(path, cause.message)
        return anchored(where, str(cause))  # a component's own check (method Config, SamplerSpec)
    if kind == "missing":
        return ConfigError(where, "required")
    if kind in _UNKNOWN_KEY:
        return ConfigError(where, f"unknown key; allowed: {', '.join(allowed_keys) or '(none)'}")
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound  # 'must be > 0', as written
        nullable = " or null" if _allows_none(annotation) else ""
        return ConfigError(where, f"must be {_BOUNDS[kind]} {bound}{nullable}, got {value}")
    if kind == "finite_number":
        return ConfigError(where, f"must be a finite number, got {value}")
    if kind in ("dataclass_type", "dataclass_exact_type"):
        if isinstance(value, _Hidden) or value is None:
            shown = "null" if value is None else str(value)
        else:
            shown = f"{type(value).__name__} {value!r}"
        return ConfigError(where, f"expected a mapping, got {shown}")
    if error["loc"][-1:] == ("[key]",):
        return ConfigError(where, f"keys must be strings, got {value!r}")
    if kind in _TYPE_ERRORS and annotation is not None:
        if typing.get_origin(annotation) is Literal:
            allowed = ", ".join(map(str, typing.get_args(annotation)))
            return ConfigError(where, f"must be one of {allowed}; got {value!r}")
        return ConfigError(where, f"expected {_type_name(annotation)}, got {value!r}")
    return ConfigError(where, f"{error['msg']}, got {value!r}")


def _locate(root: Any, loc: tuple[int | str, ...]) -> tuple[str, tuple[str, ...], Any]:
    """Walk `loc` through the declared types: (field path, keys allowed where the last key sits, its annotation).
    Union tags in `loc` ('list'/'file' for prompts) are not part of the path."""
    path, annotation = "", root
    allowed: tuple[str, ...] = ()
    for part in loc:
        tp, extra_keys = _strip(annotation)
        if part == "[key]":  # pydantic's marker: the error is about the key itself
            continue
        if typing.get_origin(tp) in (dict, Mapping):  # a key of a mapping
            path += f"[{part!r}]"
            allowed, annotation = (), (typing.get_args(tp) or (None, None))[1]
            continue
        if isinstance(part, int):
            path += f"[{part}]"
            args = [a for a in typing.get_args(tp) if a is not Ellipsis]
            annotation = args[0] if len(args) == 1 else None
            continue
        member = _union_member(tp, part)
        if member is not None:
            annotation = member
            continue
        path = _join(path, str(part))
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            hints = typing.get_type_hints(tp, include_extras=True)
            fields = [f.name for f in dataclasses.fields(tp) if f.init]
            allowed, annotation = (*fields, *extra_keys), hints.get(part) if part in fields else None
        else:
            allowed, annotation = (), None
    return path, allowed, _strip_annotated(annotation)


def _strip_annotated(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _strip(tp: Any) -> tuple[Any, tuple[str, ...]]:
    """The type to walk into: without Annotated and without '| None'; and extra keys an Annotated marker adds."""
    extra: tuple[str, ...] = ()
    while True:
        if typing.get_origin(tp) is Annotated:
            extra += tuple(k for m in tp.__metadata__ for k in getattr(m, "extra_keys", ()))
            tp = typing.get_args(tp)[0]
        elif _allows_none(tp):
            rest = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(rest) != 1:
                return tp, extra
            tp = rest[0]
        else:
            return tp, extra


def _union_member(tp: Any, label: str) -> Any:
    """The member of a union that pydantic's `label` in a location names, else None: a tagged union's member by
    its pydantic.Tag, another union's member by its type name ('str', 'dict[str,any]')."""
    if typing.get_origin(tp) not in (typing.Union, types.UnionType):
        return None
    for member in typing.get_args(tp):
        if typing.get_origin(member) is Annotated:
            if any(isinstance(m, Tag) and m.tag == label for m in member.__metadata__):
                return member
            continue
        name = getattr(typing.get_origin(member) or member, "__name__", None)
        if name is not None and (label == name or label.startswith(f"{name}[")):
            return member
    return None


def _allows_none(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in typing.get_args(tp)


def _type_name(tp: Any) -> str:
    tp = _strip_annotated(tp)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, tuple):
        return "a list"
    if origin in (dict, Mapping) or tp is dict:
        return "a mapping"
    if tp is type(None):
        return "null"
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return "a mapping"  # a section: never its class name
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, "a value")


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where and key else where or key
