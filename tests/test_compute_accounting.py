"""Verifier calls are counted exactly: what a TaskResult reports is what the reward was asked to score."""

from __future__ import annotations

import pytest
import torch

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import Reward, build_reward
from flowscale_ray.search import METHODS

SETTINGS = {
    "base": {},
    "bon": {"n": 5},
    "smc": {"n_particles": 6},
    "svdd": {"n_chains": 2, "n_children": 3},
    "code": {"n_chains": 2, "n_children": 3},
    "rbf": {"n_chains": 2, "nfe_budget": 40},
    "sop": {},
    "abf": {"nfe_budget": 40},
    "vt": {"nfe_budget": 40},
    "sh": {"n": 8, "checkpoints": (0.3, 0.6), "keep": 0.5},
}


class Counted(Reward):
    """Counts the rows it scores."""

    def __init__(self, inner: Reward) -> None:
        self.inner, self.name, self.rows = inner, inner.name, 0

    def __call__(self, samples: torch.Tensor, prompts) -> torch.Tensor:
        self.rows += samples.shape[0]
        return self.inner(samples, prompts)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_verifier_calls_are_the_rows_the_reward_scored(name):
    reward = Counted(build_reward("mode_log_density", {"mode": 2}))
    held = Counted(build_reward("negative_distance", {"target": [0.5, -3.5]}))
    engine = ParticleEngine(build_model("gmm2d"), SamplerSpec(interpolant="linear", sde=True, steps=6))
    ex = InProcessExecutor(engine, reward, held, in_flight=3, top_k=2)
    method = METHODS[name](METHODS[name].Config(**SETTINGS[name]))
    results = list(ex.run([SearchTask(Prompt(f"p{i}", "x"), method, seed=i) for i in range(4)]))
    assert sum(r.verifier_calls for r in results) == reward.rows  # the held-out score is not the verifier's cost
    assert all(r.verifier_calls >= len(r.selected) for r in results)
    assert held.rows == sum(len(r.selected) for r in results)


# -- planned cost and compute-unit budgets ---------------------------------------------------------------------


def _grid(steps: int) -> tuple[float, ...]:
    return tuple(1 - i / steps for i in range(steps + 1))


@pytest.mark.parametrize("steps", [4, 10])
@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_plan_matches_planned_nfe_for_every_budget(name, steps):
    from flowscale_ray.search.plan import plan
    from flowscale_ray.search.protocol import SearchContext

    ctx = SearchContext(grid=_grid(steps))
    cls = METHODS[name]
    for nfe in (30, 50, 100, 300):
        try:
            method = cls().with_budget(nfe, ctx)
        except ValueError:
            method = cls()
        assert plan(method, ctx).nfe == method.planned_nfe(ctx), (name, nfe)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_planned_verifier_calls_equal_what_the_executor_counts(name):
    from flowscale_ray.search.plan import plan

    engine = ParticleEngine(build_model("gmm2d"), SamplerSpec(interpolant="linear", sde=True, steps=6))
    ex = InProcessExecutor(engine, build_reward("mode_log_density", {"mode": 2}), in_flight=2, top_k=2)
    method = METHODS[name](METHODS[name].Config(**SETTINGS[name]))
    expected = plan(method, ex.context, top_k=2)
    for r in ex.run([SearchTask(Prompt(f"p{i}", "x"), method, seed=i) for i in range(3)]):
        assert (r.nfe, r.verifier_calls) == (expected.nfe, expected.verifier_calls)
        assert r.model_seconds > 0 and r.reward_seconds > 0
        assert r.model_seconds + r.reward_seconds <= r.seconds + 0.05  # shares of work inside the prompt's time


@pytest.mark.parametrize(("name", "c_d", "c_v"), [("rbf", 1.0, 0.5), ("bon", 1.0, 4.0), ("svdd", 0.2, 1.0)])
def test_size_for_units_is_the_largest_budget_that_fits(name, c_d, c_v):
    from flowscale_ray.search.plan import Costs, plan, size_for_units
    from flowscale_ray.search.protocol import SearchContext

    ctx, costs = SearchContext(grid=_grid(10)), Costs(c_d, c_v)
    for units in (60.0, 150.0, 420.0):
        method = size_for_units(METHODS[name](), units, costs, ctx)
        used = plan(method, ctx).units(costs)
        assert used <= units
        bigger = [METHODS[name]().with_budget(n, ctx) for n in range(method.planned_nfe(ctx) + 1, int(units) + 40)]
        assert all(plan(m, ctx).units(costs) > units or plan(m, ctx) == plan(method, ctx) for m in bigger)
    with pytest.raises(ValueError, match="compute units does not pay"):
        size_for_units(METHODS[name](), 1.0, costs, ctx)


def _job(out, budget: dict, method: dict | None = None) -> dict:
    return {
        "name": "units",
        "seed": 5,
        "model": {"name": "gmm2d"},
        "sampler": {"preset": "linear-sde", "steps": 6},
        "method": method or {"name": "rbf", "n_chains": 2, "nfe_budget": 30},
        "reward": {"name": "mode_log_density", "options": {"mode": 2}},
        "prompts": [f"prompt {i}" for i in range(6)],
        "output": {"dir": str(out), "shard_size": 3},
        "budget": budget,
    }


def _rows(out) -> list[dict]:
    import pyarrow.dataset as ds

    return ds.dataset(str(out / "units" / "data"), format="parquet").to_table().to_pylist()


def test_a_per_prompt_budget_in_compute_units_sizes_the_method_and_rows_carry_the_units(tmp_path):
    from flowscale_ray.config import load_job
    from flowscale_ray.run import run_job

    run_job(load_job(_job(tmp_path, {"unit": "compute", "c_d": 1.0, "c_v": 0.5, "per_prompt": 45})))
    rows = _rows(tmp_path)
    assert len(rows) == 6
    for r in rows:
        assert r["compute_units"] == pytest.approx(r["nfe"] + 0.5 * r["verifier_calls"])
        assert 40 < r["compute_units"] <= 45  # the largest RBF budget that fits: 30 NFE and 31 calls = 45.5 > 45
        assert r["model_seconds"] > 0 and r["reward_seconds"] > 0
    # The same budget in NFE (the default unit) gives the method 45 NFE: units = NFE when c_v = 0.
    run_job(load_job({**_job(tmp_path / "nfe", {"per_prompt": 45}), "name": "units"}))
    assert {r["nfe"] for r in _rows(tmp_path / "nfe")} == {45}


def test_a_dataset_budget_in_compute_units_never_overspends(tmp_path):
    from flowscale_ray.config import load_job
    from flowscale_ray.run import run_job

    budget = {
        "mode": "dataset", "unit": "compute", "c_d": 1.0, "c_v": 1.0,
        "mean_nfe": 60, "base_nfe": 20, "round_nfe": 20, "target_reward": 100.0,  # never reached: spend it all
    }  # fmt: skip
    run_job(load_job(_job(tmp_path, budget)))
    rows = _rows(tmp_path)
    for shard in ({0, 1, 2}, {3, 4, 5}):
        block = [r for r in rows if int(r["prompt_id"][:6]) - 1 in shard]
        assert sum(r["compute_units"] for r in block) <= 60 * len(block)
        assert max(r["rounds"] for r in block) >= 2  # what the first rounds left bought more rounds


@pytest.mark.parametrize(
    ("budget", "where"),
    [
        ({"unit": "compute", "c_d": 0, "c_v": 0, "per_prompt": 10}, "budget.c_v"),
        ({"unit": "compute", "c_v": 1.0, "per_prompt": 3}, "budget.per_prompt"),
        ({"per_prompt": 2}, "budget.per_prompt"),
        (
            {"mode": "dataset", "mean_nfe": 40, "base_nfe": 12, "target_reward": 0, "per_prompt": 30},
            "budget.per_prompt",
        ),
        ({"c_v": -1}, "budget.c_v"),
        ({"unit": "compute", "c_d": 0.001, "c_v": 0.001, "per_prompt": 1e6}, "budget.per_prompt"),  # > 100000 NFE
    ],
)
def test_bad_compute_budgets_name_the_field(tmp_path, budget, where):
    from flowscale_ray.config import ConfigError, load_job

    with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
        load_job(_job(tmp_path, budget))


def test_validate_states_the_planned_cost_and_a_run_logs_the_measured_one(tmp_path):
    from flowscale_ray.config import load_job
    from flowscale_ray.run import run_job
    from flowscale_ray.run.validate import validate_job
    from tests.helpers import LogLines

    job = load_job(_job(tmp_path, {"unit": "compute", "c_d": 1.0, "c_v": 0.5, "per_prompt": 45}))
    cost = [line for line in validate_job(job) if line.lstrip().startswith("cost")]
    assert cost and "29 NFE, 30 verifier calls = 44 compute units" in cost[0] and "'nfe_budget': 29" in cost[0]
    with LogLines() as logs:
        run_job(job)
    assert any(m.startswith("measured cost: ") and "per verifier call" in m for m in logs)


def test_validate_describes_a_dataset_budget_in_compute_units_as_the_run_charges_it(tmp_path):
    from flowscale_ray.config import load_job
    from flowscale_ray.run.validate import validate_job

    budget = {"mode": "dataset", "unit": "compute", "c_d": 1.0, "c_v": 1.0, "mean_nfe": 60, "base_nfe": 20}
    job = load_job(_job(tmp_path, {**budget, "target_reward": 0.0}))
    (line,) = [x for x in validate_job(job) if x.lstrip().startswith("budget")]
    # 20 units buy RBF one chain of 9 NFE (a start and 8 candidates, 6 steps): 9 NFE + 10 verifier calls = 19 units
    assert "60 compute units per prompt on average" in line and "first round 19 compute units" in line
    assert "'nfe_budget': 9" in line


# -- reward-gradient guidance in the plans ------------------------------------------------------------------------


class Recording:
    """`method` with every reward it is sent recorded by pid (to replay a real search in the dry run)."""

    def __init__(self, method) -> None:
        self.method, self.name, self.rewards, self.seed = method, method.name, {}, 0

    def planned_nfe(self, ctx):
        return self.method.planned_nfe(ctx)

    def reward(self, pid, *_):
        return self.rewards[pid]

    def search(self, ctx, seed):
        self.seed = seed  # the decision seed the executor derived
        gen = self.method.search(ctx, seed)
        batch = next(gen)
        while True:
            evals = yield batch
            self.rewards.update({pid: e.reward for pid, e in evals.items()})
            try:
                batch = gen.send(evals)
            except StopIteration as stop:
                return stop.value


GUIDED = SamplerSpec(steps=6, guidance={"scale": 0.5, "steps": (1, 5)})


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_the_plan_charges_guidance_gradients_as_the_executor_does(name):
    """Given the rewards the real search saw, the dry run charges exactly the NFE the executor charged, the reward
    gradients included (once per state a guided move leaves)."""
    from flowscale_ray.search.plan import DryRun

    reward = build_reward("negative_squared_distance", {"target": [0.5, -3.5]})
    ex = InProcessExecutor(ParticleEngine(build_model("gmm2d"), GUIDED), reward, in_flight=1)
    method = METHODS[name](METHODS[name].Config(**SETTINGS[name]))
    for seed in range(3):
        recorded = Recording(method)
        (result,) = ex.run([SearchTask(Prompt("p", "x"), recorded, seed=seed)])  # type: ignore[arg-type]
        replay = DryRun(method, ex.context, recorded.reward, recorded.seed, GUIDED.guided_moves())
        replay.run()
        assert replay.gradients > 0 and result.nfe > method.planned_nfe(ex.context)
        assert replay.nfe == result.nfe, (name, seed)


def test_a_guided_job_is_sized_to_its_nfe_budget_gradients_included(tmp_path):
    from flowscale_ray.config import ConfigError, load_job
    from flowscale_ray.run import run_job
    from flowscale_ray.run.validate import validate_job

    sampler = {"preset": "vp-sde", "steps": 6, "guidance": {"scale": 0.5}}
    job = {
        **_job(tmp_path, {"per_prompt": 60}),
        "sampler": sampler,
        "reward": {"name": "negative_squared_distance", "options": {"target": [0.5, -3.5]}},
    }
    loaded = load_job(job)
    (cost,) = [line for line in validate_job(loaded) if line.lstrip().startswith("cost")]
    run_job(loaded)
    rows = _rows(tmp_path)
    assert len(rows) == 6 and all(50 < r["nfe"] <= 60 for r in rows)  # what it was charged, gradients included
    assert f" {rows[0]['nfe']} NFE" in cost  # validate states the charge the run made
    with pytest.raises(ConfigError, match=r"budget\.per_prompt.*guided search"):
        load_job({**job, "budget": {"per_prompt": 8}})
