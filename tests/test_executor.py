"""The in-process executor and particle engine: NFE audited against the model, determinism, batch
invariance, final-step modes and lineage."""

import dataclasses

import pytest
import torch

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models.gaussian_mixture import gmm2d
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward
from flowscale_ray.search import METHODS
from flowscale_ray.search.protocol import Expand, Init

SMALL = {
    "base": {},
    "bon": {"n": 6},
    "sop": {"n_chains": 2, "n_children": 3, "substeps": 2},
    "smc": {"n_particles": 6},
    "code": {"n_chains": 2, "n_children": 3, "block": 2},
    "svdd": {"n_chains": 2, "n_children": 3},
    "rbf": {"n_chains": 2, "nfe_budget": 60},
}


def make_method(name):
    cls = METHODS[name]
    return cls(cls.Config(**SMALL[name]))


def run(method, spec=None, prompts=3, in_flight=1, micro_batch=None, seed=0, model=None):
    model = model or gmm2d()
    engine = ParticleEngine(model, spec or SamplerSpec(), micro_batch=micro_batch)
    ex = InProcessExecutor(engine, build_reward("mode_log_density", {"mode": 2}), in_flight=in_flight)
    tasks = [SearchTask(Prompt(f"p{i}", "text"), method, seed) for i in range(prompts)]
    results = sorted(ex.run(tasks), key=lambda r: r.prompt.id)
    return results, engine, model


@pytest.mark.parametrize("name", list(SMALL))
@pytest.mark.parametrize("preset", ["linear-ode", "vp-sde"])
def test_nfe_is_audited_against_the_model(name, preset):
    from flowscale_ray.core.dynamics import SAMPLER_PRESETS

    spec = SamplerSpec(**SAMPLER_PRESETS[preset])
    method = make_method(name)
    results, engine, model = run(method, spec, micro_batch=1)  # calls of one row: the model sees no padding
    planned = method.planned_nfe(InProcessExecutor(engine, None).context)  # type: ignore[arg-type]
    for r in results:
        assert r.nfe == r.outcome.nfe == planned
    assert model.calls == engine.nfe == planned * len(results)
    assert not engine.particles and not engine.tasks  # everything released at the end


@pytest.mark.parametrize("name", list(SMALL))
def test_same_seed_same_samples_whatever_the_batching(name):
    method = make_method(name)
    ref, _, _ = run(method, prompts=4, in_flight=1)
    again, _, _ = run(method, prompts=4, in_flight=1)
    pooled, _, _ = run(method, prompts=4, in_flight=3, micro_batch=5)
    for a, b, c in zip(ref, again, pooled, strict=True):
        assert torch.equal(a.sample, b.sample) and torch.equal(a.sample, c.sample)
        assert a.reward == b.reward == c.reward and a.nfe == c.nfe
        assert a.lineage == c.lineage


def test_different_prompts_and_seeds_give_different_samples():
    method = make_method("bon")
    a, _, _ = run(method, prompts=3, seed=0)
    b, _, _ = run(method, prompts=3, seed=1)
    assert len({tuple(r.sample.tolist()) for r in a}) == 3
    assert all(not torch.equal(x.sample, y.sample) for x, y in zip(a, b, strict=True))


def test_prompt_seed_overrides_run_seed():
    method = make_method("base")
    engine = ParticleEngine(gmm2d(), SamplerSpec())
    ex = InProcessExecutor(engine, build_reward("mode_log_density", {"mode": 2}))
    r1 = next(ex.run([SearchTask(Prompt("p", "t", seed=5), method, seed=0)]))
    r2 = next(ex.run([SearchTask(Prompt("p", "t", seed=5), method, seed=99)]))
    r3 = next(ex.run([SearchTask(Prompt("p", "t"), method, seed=99)]))
    assert torch.equal(r1.sample, r2.sample) and not torch.equal(r1.sample, r3.sample)


def test_particles_get_different_noise():
    engine = ParticleEngine(gmm2d(), SamplerSpec())
    engine.open_task(0, "p", "", 0)
    from flowscale_ray.search.protocol import NoiseKey

    draws = [engine.noise(0, NoiseKey(c, k, j)) for c in range(3) for k in range(3) for j in range(3)]
    assert len({tuple(d.tolist()) for d in draws}) == 27


def test_final_step_denoise_returns_the_scored_x0():
    """'denoise': the output is the x0 estimate the search scored, so its reward is the search's reward."""
    results, _, _ = run(make_method("svdd"), SamplerSpec(final_step="denoise"))
    for r in results:
        assert r.reward == pytest.approx(r.outcome.reward, rel=1e-6, abs=1e-6)
    euler, _, _ = run(make_method("svdd"), SamplerSpec(final_step="euler"))
    assert any(abs(r.reward - r.outcome.reward) > 1e-3 for r in euler)


def test_linear_ode_final_steps_coincide():
    """On the linear path the Euler step to 0 is x - t u, exactly the x0 estimate."""
    a, _, _ = run(make_method("bon"), SamplerSpec(interpolant="linear", sde=False, final_step="denoise"))
    b, _, _ = run(make_method("bon"), SamplerSpec(interpolant="linear", sde=False, final_step="euler"))
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x.sample, y.sample, rtol=1e-5, atol=1e-5)


def test_lineage_replays_the_selected_sample():
    """The lineage (requests from the root) is enough to rebuild the selected particle exactly."""
    results, _, model = run(make_method("rbf"), prompts=2)
    for r in results:
        assert isinstance(r.lineage[0], Init) and all(isinstance(q, Expand) for q in r.lineage[1:])
        engine = ParticleEngine(model, SamplerSpec())
        engine.open_task("replay", r.prompt.id, r.prompt.text, 0)
        from flowscale_ray.search.protocol import Batch

        for req in r.lineage:
            batch = Batch(inits=(req,)) if isinstance(req, Init) else Batch(expands=(req,))
            engine.run([("replay", batch)])
        sample, _ = engine.finalize("replay", [r.lineage[-1].pid])
        assert torch.equal(sample[0], r.sample)


def test_micro_batch_pads_to_a_fixed_shape():
    shapes = []

    class Recording(type(gmm2d())):
        def velocity(self, x, t, cond):
            shapes.append(x.shape[0])
            return super().velocity(x, t, cond)

    base = gmm2d()
    model = Recording(base.means, base.variances, base.weights)
    results, engine, _ = run(make_method("smc"), prompts=2, in_flight=1, micro_batch=4, model=model)  # 6 rows: pad 2
    assert set(shapes) == {4}
    # the model saw padded rows; NFE counts particles only
    assert model.calls == 4 * engine.model_calls > engine.nfe == sum(r.nfe for r in results)


def test_step_direction_is_checked():
    engine = ParticleEngine(gmm2d(), SamplerSpec())
    engine.open_task(0, "p", "", 0)
    from flowscale_ray.search.protocol import Batch, Move, NoiseKey

    engine.run([(0, Batch(inits=(Init(0, NoiseKey(0, 0, 0, 0)),)))])
    with pytest.raises(ValueError, match="earlier time"):
        engine.run([(0, Batch(expands=(Expand(1, 0, (Move(1.0, NoiseKey(0, 1, 0)),)),)))])


def test_sampler_spec_rejects_bad_values():
    with pytest.raises(ValueError, match=r"sampler\.final_step"):
        SamplerSpec(final_step="tweedie2")
    with pytest.raises(ValueError, match=r"sampler\.steps"):
        SamplerSpec(steps=1)
    assert dataclasses.replace(SamplerSpec(), sde=False).label == "vp-ode"
