"""FLUX and SD3 adapters on tiny random-initialised pipelines saved to a folder and loaded like checkpoints.

Equivalence: with the linear path, the ODE, a uniform grid shifted like the scheduler and the same initial
noise, our sampler (through the in-process executor) reproduces the diffusers pipeline's own output. Both
run the same float32 operations (the same Euler update, the same transformer inputs); the only differences
are the grid times (float64 here, numpy float32 in the scheduler, ~1e-7) and the batch layout, so 1e-4 is a
tight bound for latents of size ~3.
"""

import dataclasses

import numpy as np
import pytest
import torch

from flowscale_ray.core.dynamics import SAMPLER_PRESETS, SamplerSpec
from flowscale_ray.core.noise import SeedDeriver, standard_normal
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models import build_model
from flowscale_ray.models.diffusers_common import allowed_attention_backends
from flowscale_ray.models.flux import pack, unpack
from flowscale_ray.models.shift import sampler_shift
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.base import FunctionReward
from flowscale_ray.search import METHODS
from tests.tiny_models import flux_folder, sd3_folder  # noqa: F401  (fixtures)

PROMPT = "3 red circles and 2 blue squares"
SIZE = {"height": 16, "width": 16, "max_sequence_length": 16, "device": "cpu"}
STEPS = 4
TOL = 1e-4


def flux_options(folder, **extra):
    return {"path": str(folder), **SIZE, "guidance_scale": 4.0, "resolution_shift": True, **extra}


def sd3_options(folder, **extra):
    return {"path": str(folder), **SIZE, "guidance_scale": 3.0, **extra}


@pytest.fixture(scope="module")
def flux(flux_folder):  # noqa: F811
    return build_model("flux", flux_options(flux_folder))


@pytest.fixture(scope="module")
def sd3(sd3_folder):  # noqa: F811
    return build_model("sd3", sd3_options(sd3_folder))


def mean_latent(samples, prompts):
    return samples.float().mean(dim=(1, 2, 3))


def ode_spec(model):
    return SamplerSpec(
        interpolant="linear", sde=False, grid="uniform", steps=STEPS, shift=model.grid_shift, final_step="euler"
    )


def sample_once(model, spec, seed=7):
    """Plain sampling through the executor; returns (result, the initial noise it drew)."""
    method = METHODS["base"](METHODS["base"].Config())
    ex = InProcessExecutor(ParticleEngine(model, spec), FunctionReward(mean_latent, "mean"))
    result = next(iter(ex.run([SearchTask(Prompt("p0", PROMPT), method, seed=seed)])))
    nk = result.lineage[0].noise
    noise = standard_normal(model.latent_shape, SeedDeriver(seed, "p0")(nk.chain, nk.step, nk.candidate, nk.stream))
    return result, noise


def test_flux_matches_the_diffusers_pipeline(flux):
    spec = ode_spec(flux)
    result, noise = sample_once(flux, spec)
    kwargs = {"height": 16, "width": 16, "num_inference_steps": STEPS, "guidance_scale": 4.0, "max_sequence_length": 16}
    latent = flux.pipe(PROMPT, latents=pack(noise[None]), output_type="latent", **kwargs).images
    # The resolution shift: our shifted uniform grid is the scheduler's sigmas (FLUX.1-dev, mu from 8x8 tokens).
    assert flux.grid_shift != pytest.approx(1.0)
    np.testing.assert_allclose(spec.grid_times(), flux.pipe.scheduler.sigmas.numpy(), atol=1e-6)
    assert result.nfe == STEPS
    torch.testing.assert_close(result.sample, unpack(latent, flux.h, flux.w)[0], atol=TOL, rtol=0)
    image = flux.pipe(PROMPT, latents=pack(noise[None]), output_type="pt", **kwargs).images[0]
    assert result.image.shape == image.shape == (3, 16, 16)
    torch.testing.assert_close(result.image, image, atol=TOL, rtol=0)
    # Without the shift the grid (and so the output) differs.
    plain, _ = sample_once(flux, dataclasses.replace(spec, shift=1.0))
    assert (plain.sample - result.sample).abs().max() > 1e-3


def test_flux_guidance_embedding_is_used(flux, flux_folder):  # noqa: F811
    other = build_model("flux", flux_options(flux_folder, guidance_scale=1.0))
    cond = flux.encode([PROMPT])
    x = standard_normal(flux.latent_shape, 3)[None]
    t = torch.tensor([0.7])
    v1, v2 = flux.velocity(x, t, cond), other.velocity(x, t, cond)
    assert v1.shape == x.shape and torch.isfinite(v1).all()
    assert (v1 - v2).abs().max() > 1e-4
    assert flux.guidance_scale == 4.0 and other.guidance_scale == 1.0


def test_sd3_matches_the_diffusers_pipeline_with_cfg(sd3):
    spec = ode_spec(sd3)
    assert sd3.grid_shift == 3.0  # the scheduler's static shift
    result, noise = sample_once(sd3, spec)
    # The pipeline's default sigmas end at sigma_min, not 1/N; pass the uniform ones the scheduler then shifts.
    kwargs = {"height": 16, "width": 16, "guidance_scale": 3.0, "max_sequence_length": 16}
    kwargs |= {"num_inference_steps": STEPS, "sigmas": list(np.linspace(1.0, 1.0 / STEPS, STEPS))}
    latent = sd3.pipe(PROMPT, latents=noise[None], output_type="latent", **kwargs).images
    np.testing.assert_allclose(spec.grid_times(), sd3.pipe.scheduler.sigmas.numpy(), atol=1e-6)
    assert result.nfe == STEPS
    torch.testing.assert_close(result.sample, latent[0], atol=TOL, rtol=0)
    image = sd3.pipe(PROMPT, latents=noise[None], output_type="pt", **kwargs).images[0]
    torch.testing.assert_close(result.image, image, atol=TOL, rtol=0)


def test_sd3_cfg_combines_conditional_and_unconditional(sd3, sd3_folder):  # noqa: F811
    plain = build_model("sd3", sd3_options(sd3_folder, guidance_scale=1.0))
    x = standard_normal(sd3.latent_shape, 5)[None]
    t = torch.tensor([0.6])
    v_cond = plain.velocity(x, t, plain.encode([PROMPT]))
    v_null = plain.velocity(x, t, plain.encode([""]))
    v_cfg = sd3.velocity(x, t, sd3.encode([PROMPT]))
    torch.testing.assert_close(v_cfg, v_null + 3.0 * (v_cond - v_null), atol=1e-5, rtol=1e-5)
    assert (v_cfg - v_cond).abs().max() > 1e-4


def test_prompt_encodings_are_computed_once_per_prompt(flux, sd3):
    for model in (flux, sd3):
        calls: list[int] = []
        hook = model.pipe.text_encoder.register_forward_hook(lambda *a, calls=calls: calls.append(1))
        try:
            model.prompt_cache.rows.clear()
            a = model.encode(["one circle", "two squares", "one circle"])
            b = model.encode(["two squares"])
            engine = ParticleEngine(model, SamplerSpec())
            engine.open_task("k1", "p1", "one circle", 0)
            engine.open_task("k2", "p2", "two squares", 0)
        finally:
            hook.remove()
        assert len(calls) == 1  # one batched encoder call for the two distinct texts, then the cache
        torch.testing.assert_close(a["prompt_embeds"][1], b["prompt_embeds"][0])
        torch.testing.assert_close(a["pooled"][0], a["pooled"][2])
        assert a["prompt_embeds"].shape[0] == 3 and a["pooled"].shape[0] == 3


SMALL = {
    "base": {},
    "bon": {"n": 3},
    "sop": {"n_chains": 2, "n_children": 2, "substeps": 1},
    "smc": {"n_particles": 3},
    "code": {"n_chains": 2, "n_children": 2, "block": 2},
    "svdd": {"n_chains": 2, "n_children": 2},
    "rbf": {"n_chains": 2, "nfe_budget": 24},
}


@pytest.mark.parametrize("which", ["flux", "sd3"])
def test_every_method_runs_with_vp_sde(which, request):
    model = request.getfixturevalue(which)
    rows = []
    hook = model.transformer.register_forward_pre_hook(
        lambda m, args, kw: rows.append(kw["hidden_states"].shape[0]), with_kwargs=True
    )
    spec = SamplerSpec(**SAMPLER_PRESETS["vp-sde"], steps=4, shift=model.grid_shift)
    try:
        for name, settings in SMALL.items():
            method = METHODS[name](METHODS[name].Config(**settings))
            engine = ParticleEngine(model, spec, micro_batch=1)  # no padding rows: the model sees exactly NFE rows
            ex = InProcessExecutor(engine, FunctionReward(mean_latent, "mean"), in_flight=2)
            rows.clear()
            results = list(ex.run([SearchTask(Prompt(f"p{i}", PROMPT), method, seed=i) for i in range(2)]))
            planned = method.planned_nfe(ex.context)
            assert len(results) == 2, name
            for r in results:
                assert r.nfe == planned, name
                assert torch.isfinite(r.sample).all() and r.sample.shape == model.latent_shape
                assert r.image.shape == (3, 16, 16) and r.image.min() >= 0 and r.image.max() <= 1
            per_nfe = 2 if which == "sd3" else 1  # SD3's CFG: conditional + unconditional row per evaluation
            assert sum(rows) == per_nfe * engine.nfe == per_nfe * 2 * planned, name
    finally:
        hook.remove()


def test_sampler_shift_is_read_from_configs(flux_folder, sd3_folder, flux, sd3):  # noqa: F811
    assert sampler_shift("flux", flux_options(flux_folder)) == pytest.approx(flux.grid_shift)
    assert sampler_shift("flux", flux_options(flux_folder, resolution_shift=False)) == 1.0
    assert sampler_shift("sd3", sd3_options(sd3_folder)) == pytest.approx(sd3.grid_shift)
    shifted = build_model("sd3", sd3_options(sd3_folder, resolution_shift=True))
    assert sampler_shift("sd3", sd3_options(sd3_folder, resolution_shift=True)) == pytest.approx(shifted.grid_shift)
    assert shifted.grid_shift != pytest.approx(3.0)


def test_job_with_resolution_shift_gets_the_pipelines_shift(flux_folder, flux, tmp_path):  # noqa: F811
    """The driver builds the grid before any replica loads the model: run_job fills sampler.shift from the
    folder's configs when the job asks for the resolution shift; an explicit sampler.shift wins."""
    from flowscale_ray.config import ConfigError, load_job
    from flowscale_ray.run import resolve_sampler_shift

    doc = {
        "model": {"name": "flux", "options": flux_options(flux_folder)},
        "reward": {"name": "jpeg_compressibility"},
        "method": {"name": "base"},
        "prompts": [PROMPT],
    }
    job = resolve_sampler_shift(load_job(doc))
    assert job.sampler.shift == pytest.approx(flux.grid_shift) and job.sampler.shift != pytest.approx(1.0)
    explicit = resolve_sampler_shift(load_job({**doc, "sampler": {"shift": 2.5}}))
    assert explicit.sampler.shift == 2.5
    plain = {**doc, "model": {"name": "flux", "options": flux_options(flux_folder, resolution_shift=False)}}
    assert resolve_sampler_shift(load_job(plain)).sampler.shift == 1.0
    missing = {**doc, "model": {"name": "flux", "options": flux_options(tmp_path / "nowhere")}}
    with pytest.raises(ConfigError) as err:
        resolve_sampler_shift(load_job(missing))
    assert str(err.value).startswith("sampler.shift:") and "set sampler.shift explicitly" in str(err.value)
    assert len(str(err.value).splitlines()) == 1


@pytest.mark.parametrize("which", ["flux", "sd3"])
def test_missing_or_broken_folder_is_one_line_naming_the_path(which, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError) as err:
        build_model(which, {"path": str(missing), "device": "cpu"})
    msg = str(err.value)
    assert "\n" not in msg and str(missing) in msg and "model_index.json" in msg and "transformer/" in msg
    half = tmp_path / "half"
    (half / "transformer").mkdir(parents=True)
    (half / "model_index.json").write_text("{}")
    with pytest.raises(ValueError, match=r"lacks vae, text_encoder") as err:
        build_model(which, {"path": str(half), "device": "cpu"})
    assert str(half) in str(err.value)
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(ValueError, match="not a readable folder"):
        build_model(which, {"path": str(afile), "device": "cpu"})


def test_unreadable_weights_fail_at_start(flux_folder, tmp_path):  # noqa: F811
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(flux_folder, broken)
    for f in (broken / "transformer").glob("*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError) as err:
        build_model("flux", flux_options(broken))
    assert "\n" not in str(err.value) and str(broken) in str(err.value)
    for f in (broken / "transformer").glob("*.safetensors"):
        f.unlink()
    with pytest.raises(ValueError, match=r"no \.safetensors weights"):
        build_model("flux", flux_options(broken))


def test_bad_options_are_rejected(flux_folder, sd3_folder):  # noqa: F811
    with pytest.raises(TypeError, match="bogus"):
        build_model("flux", flux_options(flux_folder, bogus=1))
    with pytest.raises(TypeError, match="num_steps"):
        build_model("sd3", sd3_options(sd3_folder, num_steps=4))
    with pytest.raises(ValueError, match=r"model\.dtype: expected one of float32, bfloat16, float16"):
        build_model("flux", flux_options(flux_folder, dtype="float64"))
    with pytest.raises(ValueError, match=r"model\.device"):
        build_model("sd3", sd3_options(sd3_folder, device="tpu"))
    with pytest.raises(ValueError, match=r"model\.attention: unknown attention backend 'fast'; allowed: .*native"):
        build_model("flux", flux_options(flux_folder, attention="fast"))
    with pytest.raises(ValueError, match=r"model\.height"):
        build_model("flux", flux_options(flux_folder, height=15))
    with pytest.raises(ValueError, match=r"model\.resolution_shift"):
        build_model("flux", flux_options(flux_folder, resolution_shift="yes"))
    assert "native" in allowed_attention_backends()
    assert not any(b.endswith("_hub") for b in allowed_attention_backends())


def test_attention_backend_and_dtype_options(sd3_folder, sd3):  # noqa: F811
    native = build_model("sd3", sd3_options(sd3_folder, attention="native", dtype="float32"))
    x = standard_normal(sd3.latent_shape, 1)[None]
    t = torch.tensor([0.5])
    torch.testing.assert_close(native.velocity(x, t, native.encode([PROMPT])), sd3.velocity(x, t, sd3.encode([PROMPT])))
    half = build_model("sd3", sd3_options(sd3_folder, dtype="bfloat16"))
    assert half.dtype == torch.bfloat16 and half.transformer.dtype == torch.bfloat16
    v = half.velocity(x.to(torch.bfloat16), t, half.encode([PROMPT]))
    assert v.dtype == torch.bfloat16 and torch.isfinite(v.float()).all()
    assert sd3.dtype == torch.float32  # cpu default
