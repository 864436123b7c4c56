"""Building what a job names: its prompts, model, rewards and the sampler's resolution shift.

Every problem a user can cause here is a one-line ConfigError naming the job's field: a component that cannot
be built (`model.options.foo: unknown option of model 'gmm2d'; allowed: ...`), a `module:attr` that is not a
model, and a reward that cannot score the model's samples (a target of the wrong dimension), found by scoring
one probe sample before any prompt runs."""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flowscale_ray.config import ComponentConfig, ConfigError, JobConfig, PromptFileConfig, StorageConfig, anchored
from flowscale_ray.core.dynamics import OVERSHOOT_WARNING, gaussian_overshoot
from flowscale_ray.errors import first_line
from flowscale_ray.models import FlowModel, build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import Reward, build_reward

# The first prompts of the prompts this process loaded last, by their spec: build_components scores one probe
# sample with them (a reward may read the prompt's metadata, so a made-up prompt would not do).
PROBES = 3
_first_prompts: dict[str, list[Prompt]] = {}


def _spec_key(spec: Any) -> str:
    return repr(spec)


def load_prompts(
    spec: list[str | dict[str, Any]] | PromptFileConfig,
    base_dir: Path | None = None,
    storage: StorageConfig | None = None,
) -> list[Prompt]:
    """Every prompt of a job, validated (see flowscale_ray.io.prompts)."""
    from flowscale_ray.io.prompts import load_prompts as load

    prompts = load(spec, base_dir, storage)
    _first_prompts.clear()
    _first_prompts[_spec_key(spec)] = prompts[:PROBES]
    return prompts


_UNEXPECTED = re.compile(r"got an unexpected keyword argument '([^']+)'")
_MISSING = re.compile(r"missing \d+ required (?:positional |keyword-only )?arguments?: (.+)$")


def build(kind: str, builder: Callable[[str, dict[str, Any]], Any], name: str, options: dict[str, Any]) -> Any:
    """Build a component; its errors become one-line ConfigErrors under `kind` (`model`, `reward`, `held_out`):
    the field a component's own message names ('reward.options.mode: ...' is re-anchored under `kind`), an
    option the factory does not take, a required option left out."""
    try:
        return builder(name, options)
    except ConfigError:
        raise
    except (Exception, SystemExit) as exc:  # whatever a factory raises is about the job's settings for it
        msg = first_line(exc, typed=False)
        family = "model" if kind == "model" else "reward"
        if msg.startswith(f"{family}."):
            raise anchored(kind, f"{kind}.{msg[len(family) + 1 :]}") from None
        if isinstance(exc, TypeError) and msg.endswith("object is not callable"):
            raise ConfigError(f"{kind}.name", f"{name!r} is not a class or factory ({msg})") from None
        if isinstance(exc, TypeError):
            error = _signature_error(kind, family, name, options, msg)
            if error is not None:
                raise error from None
        raise ConfigError(f"{kind}.options", f"cannot build {family} {name!r}: {msg}") from None


def _signature_error(kind: str, family: str, name: str, options: dict[str, Any], msg: str) -> ConfigError | None:
    """An option the factory does not take, or a required one left out, named as a field (the TypeError names
    the factory's Python function instead)."""
    accepted = _options_of(family, name)
    unexpected = _UNEXPECTED.search(msg)
    if unexpected and accepted is not None:
        allowed = ", ".join(accepted) or "none"
        return ConfigError(
            f"{kind}.options.{unexpected[1]}", f"unknown option of {family} {name!r}; allowed: {allowed}"
        )
    missing = _MISSING.search(msg)
    if missing:
        names = re.findall(r"'([^']+)'", missing[1])
        if names and not any(n in options for n in names):
            return ConfigError(f"{kind}.options.{names[0]}", f"required by {family} {name!r}")
    return None


def _options_of(family: str, name: str) -> list[str] | None:
    """The keyword options a model or reward factory takes, None when it takes any."""
    from flowscale_ray.models import MODELS
    from flowscale_ray.rewards import REWARDS
    from flowscale_ray.utils import import_object

    registry: Any = MODELS if family == "model" else REWARDS
    try:
        factory = registry[name] if name in registry else import_object(name)
        params = inspect.signature(factory).parameters.values()
    except (Exception, SystemExit):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]


def _is_flow_model(obj: Any) -> bool:
    return isinstance(obj, FlowModel) or all(callable(getattr(obj, m, None)) for m in ("encode", "velocity", "decode"))


def build_components(job: JobConfig, probes: list[Prompt] | None = None) -> tuple[FlowModel, Reward, Reward | None]:
    """The job's model, reward and held-out reward (None without one), built in this process; each reward then
    scores one probe sample of the model (the zero latent, decoded) for the `probes` prompts (default: the first
    PROBES of the job's prompts when this process has loaded them), so that a reward that cannot score the model's
    samples is refused before any prompt runs."""
    model = build("model", build_model, job.model.name, dict(job.model.options))
    if not _is_flow_model(model):
        raise ConfigError(
            "model.name",
            f"{job.model.name!r} returned a {type(model).__name__}, not a flow model; name a registered model or a "
            "'module:factory' that returns a FlowModel (see docs/models.md)",
        )
    reward = build("reward", build_reward, job.reward.name, dict(job.reward.options))
    held = None
    if job.held_out is not None:
        held = build("held_out", build_reward, job.held_out.name, dict(job.held_out.options))
    probes = probes if probes is not None else _first_prompts.get(_spec_key(job.prompts), [])
    if probes:
        check_scoring(job, model, [("reward", job.reward, reward), ("held_out", job.held_out, held)], probes)
    return model, reward, held


def check_scoring(
    job: JobConfig,
    model: FlowModel,
    rewards: list[tuple[str, ComponentConfig | None, Reward | None]],
    probes: list[Prompt],
) -> None:
    """Score the model's zero latent, decoded, with each reward for each of `probes` in turn: a reward that raises
    for every one of them (a target of the wrong dimension, a sample it cannot read) or gives other than one value
    is a ConfigError naming it. One that fails for some prompts only is left to the run, where those prompts get
    their `failed` rows; so is a model whose decoder fails on the probe."""
    import torch

    try:
        with torch.no_grad():
            latent = torch.zeros((1, *model.latent_shape), dtype=model.dtype, device=model.device)
            sample = model.decode(latent)
    except Exception:
        return
    for kind, spec, reward in rewards:
        if reward is None or spec is None:
            continue
        problems = [_score_once(reward, sample, probe) for probe in probes]
        if None in problems:
            continue
        problem = problems[0]
        raise ConfigError(
            f"{kind}.options",
            f"{kind} {spec.name!r} cannot score the samples of model {job.model.name!r} (shape "
            f"{tuple(sample.shape[1:])}): {problem}; check its options against the model (e.g. a target's dimension)",
        )


def _score_once(reward: Reward, sample: Any, probe: Prompt) -> str | None:
    """Why `reward` cannot score `sample` for `probe`, or None when it gives one value."""
    import torch

    try:
        with torch.no_grad():
            count = torch.as_tensor(reward(sample, [probe])).numel()
    except Exception as exc:
        return first_line(exc, typed=False)
    return None if count == 1 else f"it gave {count} values for 1 sample"


def resolve_sampler_shift(job: JobConfig) -> JobConfig:
    """FLUX.1-dev's resolution shift: when the model options ask for it (`resolution_shift: true`) and the job
    leaves `sampler.shift` at 1, fill in the shift the diffusers pipeline would use, read from the model
    folder's JSON configs (no weights). The driver builds the time grid before any replica loads the model,
    so the shift must be known here; it is part of the run's configuration (a resumed run checks it)."""
    if job.model.name not in ("flux", "sd3") or not job.model.options.get("resolution_shift"):
        return job
    if job.sampler.shift != 1.0:
        return job  # set explicitly: the job's value wins
    from flowscale_ray.models.shift import sampler_shift

    try:
        shift = sampler_shift(job.model.name, dict(job.model.options))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            "sampler.shift",
            f"resolution_shift needs the model's configs to compute the shift ({first_line(exc)}); "
            "set sampler.shift explicitly (FLUX.1-dev at 1024x1024: 3.1582)",
        ) from None
    return dataclasses.replace(job, sampler=dataclasses.replace(job.sampler, shift=shift))


def sampler_check(job: JobConfig) -> tuple[str, bool]:
    """The sampler on Gaussian data (core.dynamics.gaussian_overshoot): a line for `flowscale validate`, and
    whether it warns (past OVERSHOOT_WARNING)."""
    factor, step, _ = gaussian_overshoot(job.sampler)
    line = f"  check   sampler on Gaussian data: state variance within a factor {factor:.3g} of the marginal's"
    if factor <= OVERSHOOT_WARNING:
        return line, False
    return (
        f"{line} (step {step}); warning: past {OVERSHOOT_WARNING:g} the model is queried far off its training "
        "marginals and samples may saturate: lower sampler.diffusion_norm or raise sampler.steps"
    ), True
