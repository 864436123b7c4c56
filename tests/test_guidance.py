"""Gradient guidance (core.guidance): the guided drift against closed forms on the analytic mixture, guidance off
is the unguided sampler bit for bit, the charge, in-process equals Ray, and the replica's memory stays flat."""

from __future__ import annotations

import gc
import math

import pytest
import torch

from flowscale_ray.config import ConfigError, load_job
from flowscale_ray.core.conversions import velocity_to_score
from flowscale_ray.core.dynamics import Dynamics, SamplerSpec
from flowscale_ray.core.guidance import GuidanceSpec, reward_gradient, step_index
from flowscale_ray.core.interpolants import VPInterpolant
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.execution.engine import Particle
from flowscale_ray.models import build_model
from flowscale_ray.models.gaussian_mixture import GaussianMixtureFlow
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import build_reward
from flowscale_ray.runtime.messages import ComponentSpec
from flowscale_ray.runtime.replica import ReplicaWorker
from flowscale_ray.search import METHODS
from flowscale_ray.search.protocol import GUIDED_STEP_NFE, STREAM_INIT, Batch, Expand, Init, Move, NoiseKey

TARGET = [0.5, -3.5]  # gmm2d's third mode
REWARD = ComponentSpec("negative_squared_distance", {"target": TARGET})
SMALL = {"base": {}, "svdd": {"n_chains": 2, "n_children": 3}, "rbf": {"n_chains": 2, "nfe_budget": 30}}


def guided(scale: float = 0.5, steps=None, **spec) -> SamplerSpec:
    return SamplerSpec(steps=6, guidance=GuidanceSpec(scale=scale, steps=steps), **spec)


# -- closed forms ------------------------------------------------------------------------------------------------
def exact_pieces(gmm: GaussianMixtureFlow, interp, x: torch.Tensor, s: torch.Tensor, target: torch.Tensor):
    """Exact velocity, score and grad_x r(x0_hat(x)) for r(y) = -|y - target|^2 on path `interp`, float64.

    x0_hat = sum_k w_k m_k with m_k = mu_k + a v_k (x - a mu_k) / (a^2 v_k + sig^2); its Jacobian is
    (a / sig^2) Cov[x0 | x] (second-order Tweedie), Cov = sum_k w_k (diag(P_k) + m_k m_k^T) - x0_hat x0_hat^T,
    P_k = v_k sig^2 / (a^2 v_k + sig^2)."""
    a = interp.alpha(s)[:, None, None]
    sig = interp.sigma(s)[:, None, None]
    var = a**2 * gmm.variances + sig**2  # [B, K, D]
    diff = x[:, None, :] - a * gmm.means
    logp = -0.5 * ((diff**2) / var + torch.log(2 * math.pi * var)).sum(-1) + torch.log(gmm.weights)
    w = torch.softmax(logp, -1)  # [B, K]
    m = gmm.means + a * gmm.variances * diff / var  # [B, K, D]
    x0 = (w[..., None] * m).sum(1)
    post = gmm.variances * sig**2 / var
    second = torch.einsum("bk,bkd,bke->bde", w, m, m) + torch.diag_embed((w[..., None] * post).sum(1))
    cov = second - torch.einsum("bd,be->bde", x0, x0)
    jac = (a[:, :, 0] / sig[:, :, 0] ** 2)[..., None] * cov  # [B, D, D], symmetric
    grad = torch.einsum("bde,be->bd", jac, -2.0 * (x0 - target))
    score = (w[..., None] * (-diff / var)).sum(1)
    u = gmm.exact_velocity(interp, x, s)
    return u, score, grad


@pytest.mark.parametrize("path", ["vp", "linear"])
def test_guidance_gradient_and_drift_match_the_closed_form_on_the_mixture(path):
    """float64 through the code path the engine uses (conversion to VP included) against the exact expressions."""
    gmm = build_model("gmm2d")
    spec = SamplerSpec(interpolant=path, steps=6, guidance=GuidanceSpec(scale=0.7))
    dyn = Dynamics(spec, gmm.interpolant)
    target = torch.tensor(TARGET, dtype=torch.float64)
    reward = build_reward("negative_squared_distance", {"target": TARGET})
    x = torch.tensor([[0.3, -1.0], [-2.0, 0.5], [2.5, 1.0], [0.0, 0.0]], dtype=torch.float64)
    for s_val in (0.9, 0.6, 0.35):
        s = torch.full((4,), s_val, dtype=torch.float64)

        def velocity(xg, sg):
            x_model, t_model, conv = dyn.model_query(xg, sg)
            return dyn.target_velocity(xg, gmm.velocity(x_model, t_model, {}), conv)

        grad = reward_gradient(x, s, velocity, dyn.x0, gmm.decode, lambda y: reward(y, [Prompt("p", "")] * 4))
        u_exact, score_exact, grad_exact = exact_pieces(gmm, dyn.target, x, s, target)
        assert grad.dtype == torch.float64 and not grad.requires_grad
        torch.testing.assert_close(grad, grad_exact, rtol=1e-9, atol=1e-9)
        u = velocity(x, s).detach()
        torch.testing.assert_close(velocity_to_score(dyn.target, x, u, s), score_exact, rtol=1e-9, atol=1e-9)
        s_next = s - 0.1
        z = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        stepped = dyn.step(x, u, s, s_next, z, guide=0.7 * grad)
        g = dyn.g(s)[:, None]
        drift = u_exact - 0.5 * g**2 * (score_exact + 0.7 * grad_exact)
        torch.testing.assert_close(stepped, x - 0.1 * drift + g * math.sqrt(0.1) * z, rtol=1e-9, atol=1e-9)


def test_engine_guided_step_of_a_single_gaussian_matches_the_closed_form():
    """One Gaussian N(m, diag v) on the VP path: x0_hat is affine in x, so the guided step is known in closed form;
    the engine (float32 particles, 1 NFE for the velocity + the guidance charge) reproduces it."""
    m, v = torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[0.4, 0.9, 0.2]])
    gmm = GaussianMixtureFlow(m, v, torch.tensor([1.0]))
    target = torch.tensor([2.0, 0.0, -1.0], dtype=torch.float64)
    scale = 0.25
    spec = SamplerSpec(steps=8, guidance=GuidanceSpec(scale=scale))
    eng = ParticleEngine(gmm, spec)
    eng.guide = build_reward("negative_squared_distance", {"target": target.tolist()})
    eng.open_task(0, "p", "", seed=3)
    xs = torch.tensor([[0.2, -1.0, 0.3], [1.5, 0.5, -0.5], [-1.0, -3.0, 1.0]])
    k = 2
    s, s_next = eng.grid[k], eng.grid[k + 1]
    for i, x in enumerate(xs):
        eng.particles[(0, i)] = Particle(x=x, s=s)
    batch = Batch(expands=tuple(Expand(10 + i, i, (Move(s_next, NoiseKey(i, k, 0)),)) for i in range(3)))
    out = eng.run([(0, batch)])[0]
    assert [o.nfe for o in out] == [1 + GUIDED_STEP_NFE + 1] * 3  # velocity at x, the gradient, the look-ahead
    vp = VPInterpolant()
    st = torch.tensor(s, dtype=torch.float64)
    a, sig = vp.alpha(st), vp.sigma(st)
    mm, vv = m[0].double(), v[0].double()
    for i, x in enumerate(xs.double()):
        var = a**2 * vv + sig**2
        x0 = mm + a * vv * (x - a * mm) / var
        grad = (a * vv / var) * (-2.0 * (x0 - target))
        score = -(x - a * mm) / var
        u = vp.d_alpha(st) * x0 + vp.d_sigma(st) * (x - a * x0) / sig
        g, ds = 3.0 * st**2, st - s_next
        z = eng.noise(0, NoiseKey(i, k, 0)).double()
        expected = x - ds * (u - 0.5 * g**2 * (score + scale * grad)) + g * torch.sqrt(ds) * z
        torch.testing.assert_close(eng.particle(0, 10 + i).x.double(), expected, rtol=2e-5, atol=2e-5)
    assert eng.gradients == 3


# -- off means off -------------------------------------------------------------------------------------------------
def run_inprocess(spec: SamplerSpec, name: str, n: int = 4, model: str = "gmm2d", **kw):
    method = METHODS[name](METHODS[name].Config(**SMALL[name]))
    reward = build_reward(REWARD.name, dict(REWARD.options))
    ex = InProcessExecutor(ParticleEngine(build_model(model), spec, **kw), reward, in_flight=3)
    tasks = [SearchTask(Prompt(f"p{i}", "x"), method, seed=i) for i in range(n)]
    return {r.prompt.id: r for r in ex.run(tasks)}, ex.engine


@pytest.mark.parametrize("name", sorted(SMALL))
def test_guidance_off_is_the_unguided_sampler_bit_for_bit(name):
    ref, _ = run_inprocess(SamplerSpec(steps=6), name)
    for off in (GuidanceSpec(scale=0.0), GuidanceSpec(scale=2.0, steps=(20, 30))):  # zero scale; no step in range
        res, eng = run_inprocess(SamplerSpec(steps=6, guidance=off), name)
        assert eng.gradients == 0
        for pid, r in res.items():
            assert torch.equal(r.sample, ref[pid].sample) and r.nfe == ref[pid].nfe and r.lineage == ref[pid].lineage


# -- charging, step selection, effect -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("steps", [None, (1, 3), 0.5])
def test_each_guided_state_is_charged_once_and_only_selected_steps_are_guided(name, steps):
    spec = guided(steps=steps)
    ref, _ = run_inprocess(SamplerSpec(steps=6), name)
    res, eng = run_inprocess(spec, name)
    planned = METHODS[name](METHODS[name].Config(**SMALL[name])).planned_nfe(_ctx(spec))
    assert all(r.nfe == planned for r in ref.values())
    assert eng.gradients > 0
    assert sum(r.nfe for r in res.values()) == len(res) * planned + GUIDED_STEP_NFE * eng.gradients
    assert all(r.nfe == r.outcome.nfe for r in res.values())
    guided_steps = [k for k in range(spec.steps) if spec.guidance.guides(k, spec.steps)]
    if name == "base":  # one chain: one gradient per guided step
        assert eng.gradients == len(res) * len(guided_steps)
    expected = {None: [0, 1, 2, 3, 4], (1, 3): [1, 2], 0.5: [0, 1, 2]}[steps]
    assert guided_steps == expected  # the last step (to 0) is never guided


def _ctx(spec: SamplerSpec):
    from flowscale_ray.search.protocol import SearchContext

    return SearchContext(grid=spec.grid_times())


def test_step_index_places_off_grid_times_in_their_interval():
    grid = SamplerSpec(steps=4).grid_times()
    assert [step_index(s, grid) for s in grid[:-1]] == [0, 1, 2, 3]
    assert step_index((grid[1] + grid[2]) / 2, grid) == 1


def test_guidance_moves_samples_towards_the_reward():
    """DPS on gmm2d with r = -|x - mode 2|^2 raises the mean reward of plain sampling (64 seeds, paired)."""
    base, _ = run_inprocess(SamplerSpec(steps=6), "base", n=64)
    dps, _ = run_inprocess(guided(scale=0.5), "base", n=64)
    diff = torch.tensor([dps[k].reward - base[k].reward for k in base], dtype=torch.float64)
    assert diff.mean() > 4 * diff.std() / math.sqrt(len(diff))


# -- errors --------------------------------------------------------------------------------------------------------
JOB = {"name": "t", "model": {"name": "gmm2d"}, "method": {"name": "base"}, "reward": {"name": "counting"}}


@pytest.mark.parametrize(
    ("guidance", "where"),
    [
        ({"scale": -1}, "sampler.guidance.scale"),
        ({"scale": 1, "steps": [3, 1]}, "sampler.guidance.steps"),
        ({"scale": 1, "steps": 1.5}, "sampler.guidance.steps"),
        ({"scale": 1, "every": 2}, "sampler.guidance.every"),
    ],
)
def test_bad_guidance_settings_are_refused_naming_the_field(guidance, where):
    with pytest.raises(ConfigError) as err:
        load_job({**JOB, "prompts": ["a"], "sampler": {"preset": "vp-sde", "guidance": guidance}})
    assert err.value.where == where


def test_guidance_settings_load_from_a_job_file_and_need_an_sde():
    job = load_job(
        {**JOB, "prompts": ["a"], "sampler": {"preset": "vp-sde", "guidance": {"scale": 2, "steps": [0, 5]}}}
    )
    assert job.sampler.guidance == GuidanceSpec(scale=2.0, steps=(0, 5)) and job.sampler.guided
    with pytest.raises(ConfigError, match="needs an SDE sampler"):
        load_job({**JOB, "prompts": ["a"], "sampler": {"preset": "vp-ode", "guidance": {"scale": 1}}})


class NoGradMixture(GaussianMixtureFlow):
    @torch.no_grad()
    def velocity(self, x, t, cond):
        return super().velocity(x, t, cond)


@pytest.mark.parametrize("broken", ["reward", "model"])
def test_a_reward_or_model_without_gradients_fails_clearly(broken):
    gmm = build_model("gmm2d")
    model = NoGradMixture(gmm.means, gmm.variances, gmm.weights) if broken == "model" else gmm
    eng = ParticleEngine(model, guided())
    eng.guide = build_reward(REWARD.name, dict(REWARD.options))
    if broken == "reward":
        eng.guide = lambda samples, prompts: torch.zeros(samples.shape[0])  # type: ignore[assignment]
    eng.open_task(0, "p", "", 0)
    eng.run([(0, Batch(inits=(Init(0, NoiseKey(0, 0, 0, STREAM_INIT)),)))])
    with pytest.raises(ValueError, match="gives no gradient"):  # the model or the reward
        eng.run([(0, Batch(expands=(Expand(1, 0, (Move(eng.grid[1], NoiseKey(0, 1, 0)),)),)))])


def test_a_replica_without_the_reward_refuses_guidance():
    with pytest.raises(ValueError, match="reward_actors: 0"):
        ReplicaWorker(ComponentSpec("gmm2d", {}), guided(), None, None, None)


# -- memory --------------------------------------------------------------------------------------------------------
def _live_tensors() -> tuple[int, int]:
    gc.collect()
    ts = [o for o in gc.get_objects() if isinstance(o, torch.Tensor)]
    return len(ts), sum(t.untyped_storage().nbytes() for t in ts)


def test_replica_memory_stays_flat_over_many_guided_steps():
    """No graph survives a step: after a warm-up the replica's live tensors (count and bytes) do not grow over
    hundreds of guided steps, and no particle holds a tensor that requires grad or has a grad_fn."""
    rep = ReplicaWorker(ComponentSpec("gmm_highdim", {"dim": 64}), guided(scale=0.2, steps=None), REWARD_64, None, 4)
    grid = rep.engine.grid

    def one_prompt(i: int) -> None:
        key = ("k", i)
        rep.run(
            [(key, Batch(inits=(Init(0, NoiseKey(0, 0, 0, STREAM_INIT)),)).pack())], [(key, Prompt(f"p{i}", ""), i)]
        )
        state = 0
        for k in range(1, len(grid) - 1):
            kids = tuple(Expand(10 * k + c, state, (Move(grid[k], NoiseKey(0, k, c)),)) for c in range(3))
            rep.run([(key, Batch(expands=kids, release=(state,)).pack())])
            state = 10 * k
            for p in rep.engine.particles.values():
                for t in (p.x, p.u, p.x0, p.grad):
                    assert t is None or (not t.requires_grad and t.grad_fn is None)
        rep.finalize(key, [state])
        rep.close([key])

    for i in range(3):
        one_prompt(i)
    before = _live_tensors()
    gradients = rep.engine.gradients
    for i in range(3, 40):
        one_prompt(i)
    after = _live_tensors()
    assert rep.engine.gradients - gradients == 37 * (len(grid) - 2)  # one per guided state
    assert after[0] <= before[0] and after[1] <= before[1], (before, after)
    assert not rep.engine.particles and not rep.engine.tasks


REWARD_64 = ComponentSpec("negative_squared_distance", {"target": [0.5] * 64})


# -- Ray -------------------------------------------------------------------------------------------------------------
def test_guided_runs_on_ray_equal_in_process(local_ray):
    """Same samples and rewards as in-process. With one replica the charge is the same too; with several, a guided
    state whose children run on two replicas has its gradient computed (and charged) on both: the extra NFE is
    exactly GUIDED_STEP_NFE per extra gradient the replicas report."""
    from flowscale_ray.runtime.driver import RayExecutor, RuntimeOptions

    spec = guided(scale=0.5, steps=(0, 4))
    for name in ("svdd", "rbf"):
        ref, ref_engine = run_inprocess(spec, name, n=4)
        for replicas in (1, 2):
            ex = RayExecutor(
                ComponentSpec("gmm2d", {}),
                spec,
                REWARD,
                options=RuntimeOptions(replicas=replicas, in_flight=3, micro_batch=4, num_cpus=0.5),
            )
            try:
                method = METHODS[name](METHODS[name].Config(**SMALL[name]))
                tasks = [SearchTask(Prompt(f"p{i}", "x"), method, seed=i) for i in range(4)]
                res = {r.prompt.id: r for r in ex.run(tasks)}
                stats = ex.stats()
            finally:
                ex.close()
            assert res.keys() == ref.keys()
            for pid, r in res.items():
                assert torch.equal(r.sample, ref[pid].sample), (name, pid)
                assert r.reward == ref[pid].reward and r.nfe == r.outcome.nfe
                assert r.lineage == ref[pid].lineage
            gradients = sum(s["gradients"] for s in stats)
            extra = sum(r.nfe for r in res.values()) - sum(r.nfe for r in ref.values())
            assert gradients >= ref_engine.gradients > 0
            assert extra == GUIDED_STEP_NFE * (gradients - ref_engine.gradients)
            if replicas == 1:
                assert extra == 0
