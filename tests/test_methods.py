"""Search methods in isolation: a scripted executor feeds them rewards, no model involved.

Checks the exact NFE each method reports and plans, RBF's Algorithm 2 (strict improvement, rollover,
fallback, budget), SMC's resampling and final pick, SoP's and CoDe's structure, and resampling schemes.
"""

import math
import random

import pytest
import torch

from flowscale_ray.core.timegrid import time_grid
from flowscale_ray.search import METHODS
from flowscale_ray.search.best_of_n import BestOfN, BestOfNConfig
from flowscale_ray.search.code import CoDe, CoDeConfig, SVDDConfig
from flowscale_ray.search.rbf import RBFConfig, RolloverBudgetForcing
from flowscale_ray.search.resampling import RESAMPLERS, effective_sample_size, normalize_log_weights
from flowscale_ray.search.search_over_paths import SearchOverPaths, SearchOverPathsConfig
from flowscale_ray.search.smc import SMC, SMCConfig
from tests.helpers import ScriptedRun

GRID = time_grid("sqrt", 10)


def random_rewards(seed=0):
    rng = random.Random(seed)
    return lambda pid, parent, s, req: rng.gauss(0.0, 1.0)


ALL_METHODS = [
    BestOfN(BestOfNConfig(n=50)),
    BestOfN(BestOfNConfig(n=7)),
    METHODS["base"](),
    CoDe(CoDeConfig()),
    CoDe(CoDeConfig(n_chains=3, n_children=4, block=3)),
    METHODS["svdd"](SVDDConfig()),
    SMC(SMCConfig()),
    SMC(SMCConfig(n_particles=9, resampling="systematic", ess_threshold=0.5)),
    SearchOverPaths(SearchOverPathsConfig()),
    SearchOverPaths(SearchOverPathsConfig(substeps=11, selection="per_chain")),
    RolloverBudgetForcing(RBFConfig()),
    RolloverBudgetForcing(RBFConfig(seed_candidates=25)),
    RolloverBudgetForcing(RBFConfig(n_chains=3, nfe_budget=301)),
]


@pytest.mark.parametrize("method", ALL_METHODS, ids=lambda m: f"{m.name}-{m.config}")
@pytest.mark.parametrize("steps", [10, 4])
def test_reported_nfe_equals_spent_and_planned(method, steps):
    grid = time_grid("sqrt", steps)
    run = ScriptedRun(method, grid, random_rewards(steps))
    out = run.run()
    assert out.nfe == run.nfe == method.planned_nfe(run_ctx(grid))
    assert out.best in run.live, "the selected particle was released"
    assert set(out.selected) <= run.live and out.selected[0] == out.best


def run_ctx(grid):
    from flowscale_ray.search.protocol import SearchContext

    return SearchContext(grid=grid)


def test_paper_defaults_nfe():
    ctx = run_ctx(GRID)
    assert BestOfN(BestOfNConfig(n=50)).planned_nfe(ctx) == 500  # N x steps
    assert SMC(SMCConfig()).planned_nfe(ctx) == 500
    assert RolloverBudgetForcing(RBFConfig()).planned_nfe(ctx) == 500
    # SVDD/CoDe evaluate each initial state once: 2 + 2*25*9 (the reference code spends 500, 48 on duplicates)
    assert CoDe(CoDeConfig()).planned_nfe(ctx) == 452
    # SoP with the reference defaults: 4 * (2 + 4*2*5) = 168
    assert SearchOverPaths(SearchOverPathsConfig()).planned_nfe(ctx) == 168
    assert SearchOverPathsConfig().rounds == 4


def test_releases_bound_live_particles():
    """Methods release what they no longer need: live particles stay O(candidates per step)."""
    for method, bound in [
        (CoDe(CoDeConfig()), 2 * 2 * 25 + 2),  # this step's children + last step's, freed with the next batch
        (SMC(SMCConfig()), 2 * 50),
        (RolloverBudgetForcing(RBFConfig()), 4 * 2),  # per chain: state, interval best, new candidate, freed one
    ]:
        run = ScriptedRun(method, GRID, random_rewards())
        run.run()
        assert run.max_live <= bound


# -- RBF: Algorithm 2 ---------------------------------------------------------------------------------------


def rbf_records(out, chain=0):
    return [r for r in out.records if r.extra["chain"] == chain]


@pytest.mark.parametrize("budget", [20, 21, 50, 99, 100, 300, 500, 1000, 1001])
@pytest.mark.parametrize("n_chains", [1, 2, 3])
def test_rbf_spends_its_whole_budget(budget, n_chains):
    method = RolloverBudgetForcing(RBFConfig(n_chains=n_chains, nfe_budget=budget))
    if budget < n_chains * 10:
        with pytest.raises(ValueError, match="nfe_budget"):
            method.planned_nfe(run_ctx(GRID))
        return
    run = ScriptedRun(method, GRID, random_rewards(budget))
    out = run.run()
    assert out.nfe == run.nfe == budget  # never exceeds, spends it all (>= 99%)


def test_rbf_rolls_over_when_every_first_candidate_improves():
    # strictly increasing rewards: the first candidate of every interval beats the running best
    out = ScriptedRun(RolloverBudgetForcing(RBFConfig(n_chains=1)), GRID, lambda pid, *_: float(pid)).run()
    recs = rbf_records(out)
    q = (500 - 1) // 9  # 55 per interval
    assert [r.accepted for r in recs[:-1]] == [1] * 8
    assert [r.nfe for r in recs[:-1]] == [1] * 8
    # rollover accumulates: interval i has quota q + i*(q-1) and hands on all but one candidate
    assert [r.extra["quota"] for r in recs[:-1]] == [q + i * (q - 1) for i in range(8)]
    assert [r.rollover for r in recs[:-1]] == [q + i * (q - 1) - 1 for i in range(8)]
    # the last interval spends everything that is left
    assert recs[-1].nfe == 499 - 8 and recs[-1].accepted == 0
    assert out.nfe == 500


def test_rbf_falls_back_to_the_interval_argmax_when_nothing_improves():
    seed_reward = 10.0

    def reward(pid, parent, s, req):
        if parent is None:
            return seed_reward  # the starting state: nothing later beats it
        return -abs(pid % 7 - 3)  # best candidate of each interval: pid % 7 == 3, reward 0 < r*

    run = ScriptedRun(RolloverBudgetForcing(RBFConfig(n_chains=1, nfe_budget=1 + 9 * 10)), GRID, reward)
    out = run.run()
    recs = rbf_records(out)
    assert [r.accepted for r in recs] == [0] * 9
    assert [r.nfe for r in recs] == [10] * 9  # each interval spends exactly its quota
    assert [r.best_reward for r in recs] == [0.0] * 9
    # the chain moved to each interval's argmax: every expand's parent is the previous argmax
    states = {e.parent for b in run.batches for e in b.expands}
    assert len(states) == 9  # the start, then the argmax of each of the 8 non-final intervals
    assert all(p % 7 == 3 for p in states - {0})


def test_rbf_improvement_is_strict_and_rollover_is_quota_minus_j():
    # reward equal to r* is no improvement; an improvement at candidate j rolls over q - j
    q = 5
    budget = 1 + 9 * q

    def reward(pid, parent, s, req):
        if parent is None:
            return 0.0
        j = req.moves[0].noise.candidate  # candidate index within the interval
        step = req.moves[0].noise.step
        if step == 1:
            return 0.0 if j < 2 else 1.0  # ties at j=0,1; improvement at the 3rd candidate
        return -1.0

    out = ScriptedRun(RolloverBudgetForcing(RBFConfig(n_chains=1, nfe_budget=budget)), GRID, reward).run()
    first = rbf_records(out)[0]
    assert first.accepted == 1 and first.nfe == 3 and first.rollover == q - 3
    assert rbf_records(out)[1].extra["quota"] == q + (q - 3)


def test_rbf_seed_search_picks_best_seed_per_chain():
    out_runs = ScriptedRun(
        RolloverBudgetForcing(RBFConfig(n_chains=2, seed_candidates=25)), GRID, lambda pid, *_: -((pid - 30) ** 2)
    )
    out_runs.run()
    first = out_runs.batches[0]
    assert len(first.inits) == 50
    second = out_runs.batches[1]
    # chain 0 owns pids 0..24 (best: 24), chain 1 owns 25..49 (best: 30)
    assert sorted(e.parent for e in second.expands) == [24, 30]


def test_rbf_result_is_best_final_chain():
    rewards = {}

    def reward(pid, parent, s, req):
        rewards[pid] = random.Random(pid).random()
        return rewards[pid]

    run = ScriptedRun(RolloverBudgetForcing(RBFConfig(n_chains=3, nfe_budget=120)), GRID, reward)
    out = run.run()
    assert out.reward == rewards[out.best]
    assert [rewards[p] for p in out.selected] == sorted((rewards[p] for p in out.selected), reverse=True)
    last_times = {e.moves[-1].s_to for b in run.batches for e in b.expands if e.pid in out.selected}
    assert last_times == {GRID[-2]}  # every chain finished at s_{M-1}


# -- SMC ---------------------------------------------------------------------------------------------------------


def test_smc_does_not_resample_uniform_weights_and_does_otherwise():
    flat = ScriptedRun(SMC(SMCConfig(n_particles=8)), GRID, lambda *a: 1.0).run()
    assert not any(r.resampled for r in flat.records)
    assert all(r.ess == pytest.approx(8.0) for r in flat.records)
    varied = ScriptedRun(SMC(SMCConfig(n_particles=8)), GRID, random_rewards()).run()
    assert all(r.resampled for r in varied.records) and all(r.ess < 8 for r in varied.records)


def test_smc_weights_follow_reward_increments_and_final_pick_options():
    # rewards depend on the particle's index: weight increments exp((r - r_parent)/lambda) telescope
    def reward(pid, parent, s, req):
        i = req.noise.chain if hasattr(req, "noise") else req.moves[0].noise.chain
        return float(i) if s > 0.5 else float(-i)

    cfg = dict(n_particles=6, ess_threshold=0.0)  # never resample: weights accumulate
    by_reward = ScriptedRun(SMC(SMCConfig(**cfg)), GRID, reward).run()
    by_weight = ScriptedRun(SMC(SMCConfig(**cfg, final_pick="weight")), GRID, reward).run()
    # final rewards are -i: best reward is particle 0; log-weight = r_final/lambda, the same ordering here
    assert by_reward.reward == 0.0
    assert by_weight.reward == 0.0


def test_smc_start_leaves_the_first_steps_unscored_and_unresampled():
    """start 0.5 on 10 steps: steps 0-4 are plain independent sampling (no reward asked, every child continues its
    own chain), the weights start at step 5 and resampling happens from step 6; same NFE, fewer verifier calls."""
    run = ScriptedRun(SMC(SMCConfig(n_particles=8, start=0.5)), GRID, random_rewards())
    out = run.run()
    full = ScriptedRun(SMC(SMCConfig(n_particles=8)), GRID, random_rewards())
    full.run()
    assert run.nfe == full.nfe == 8 * 10
    assert run.verifier_calls == 8 * 5 and full.verifier_calls == 8 * 10  # steps 5-9 only
    for k, batch in enumerate(run.batches):
        reqs = batch.inits or batch.expands
        assert all(r.score == (k >= 5) for r in reqs), k
        if 1 <= k <= 5:  # no resampling yet: child i continues chain i
            assert [e.parent for e in batch.expands] == [
                r.pid for r in (run.batches[k - 1].inits or run.batches[k - 1].expands)
            ]
    assert not any(r.resampled for r in out.records[:5]) and all(r.resampled for r in out.records[5:])
    assert SMC(SMCConfig(start=0.0)).config == SMCConfig()
    with pytest.raises(ValueError, match=r"start: must be a fraction in \[0, 1\)"):
        SMCConfig(start=1.0)


def test_smc_final_pick_weight_is_the_last_increment_after_resampling():
    """With resampling at every step (threshold 1), the accumulated weight at the end is the last increment
    exp((r - r_parent)/lambda): the 'weight' pick (reference code) and the 'reward' pick (paper) differ."""
    grid = time_grid("uniform", 3)
    for pick in ("reward", "weight"):
        rewards: dict[int, float] = {}
        parents: dict[int, int] = {}

        def reward(pid, parent, s, req, rewards=rewards, parents=parents):
            rewards[pid] = random.Random(pid * 7919 + 1).gauss(0, 1)
            if parent is not None:
                parents[pid] = parent
            return rewards[pid]

        out = ScriptedRun(SMC(SMCConfig(n_particles=12, temperature=10.0, final_pick=pick)), grid, reward).run()
        assert out.records[-1].resampled
        finals = out.selected
        if pick == "reward":
            expected = max(finals, key=lambda p: rewards[p])
            by_reward = out.best
        else:
            expected = max(finals, key=lambda p: rewards[p] - rewards[parents[p]])
            by_weight = out.best
        assert out.best == expected
    assert by_reward != by_weight  # this seed makes them disagree, so the option matters


@pytest.mark.parametrize("scheme", list(RESAMPLERS))
def test_resampling_is_unbiased_and_skips_zero_weights(scheme):
    gen = torch.Generator().manual_seed(0)
    w = torch.tensor([0.0, 0.1, 0.2, 0.0, 0.3, 0.4], dtype=torch.float64)
    n, reps = 60, 400
    counts = torch.zeros(6, dtype=torch.float64)
    for _ in range(reps):
        idx = RESAMPLERS[scheme](w, n, gen)
        assert idx.numel() == n
        counts += torch.bincount(idx, minlength=6).double()
    assert counts[0] == 0 and counts[3] == 0
    freq = counts / (n * reps)
    se = (w * (1 - w) / (n * reps)).sqrt()  # multinomial SE; systematic/stratified have less variance
    assert ((freq - w).abs() <= 4.5 * se + 1e-12).all(), freq


def test_log_weights_and_ess():
    w = normalize_log_weights(torch.tensor([0.0, 0.0, -math.inf, 0.0]))
    assert w.tolist() == pytest.approx([1 / 3, 1 / 3, 0.0, 1 / 3])
    assert effective_sample_size(w) == pytest.approx(3.0)
    assert normalize_log_weights(torch.tensor([1000.0, 0.0])).tolist() == pytest.approx([1.0, 0.0])


# -- SoP and CoDe structure -------------------------------------------------------------------------------------


def test_sop_schedule_and_selection():
    cfg = SearchOverPathsConfig()
    run = ScriptedRun(SearchOverPaths(cfg), GRID, random_rewards(3))
    run.run()
    rounds = sop_rounds(run)
    assert len(rounds) == 4
    targets = [b.expands[0].moves[-1].s_to for b in rounds]
    # backward targets 0.12 -> 0.09 -> 0.06 -> 0.03 -> 0, evaluated one substep above each target
    for r, target in enumerate([0.09, 0.06, 0.03, 0.0]):
        t_f = 0.12 - 0.03 * r + 0.78
        assert rounds[r].expands[0].moves[1].s_to == pytest.approx(t_f)
        assert targets[r] == pytest.approx(target + (t_f - target) / 4)
    assert all(len(b.expands) == 10 for b in rounds)


def sop_rounds(run):
    return [b for b in run.batches if b.expands and len(b.expands[0].moves) > 1 and b.expands[0].moves[1].renoise]


def test_sop_global_selection_can_keep_two_children_of_one_chain():
    def reward(pid, parent, s, req):
        is_child = len(req.moves) > 1 and req.moves[1].renoise
        return 1.0 if is_child and req.moves[1].noise.chain == 0 else 0.0  # slot 0's children win

    for selection, from_slot0 in [("global", 2), ("per_chain", 1)]:
        run = ScriptedRun(SearchOverPaths(SearchOverPathsConfig(selection=selection)), GRID, reward)
        run.run()
        first, second = sop_rounds(run)[:2]
        slot0 = {e.pid for e in first.expands if e.moves[1].noise.chain == 0}
        assert len({e.parent for e in second.expands} & slot0) == from_slot0, selection


def test_code_blocks_select_every_L_steps():
    out = ScriptedRun(CoDe(CoDeConfig(block=2)), GRID, random_rewards()).run()
    assert [r.step for r in out.records] == [2, 4, 6, 8, 9]
    svdd = ScriptedRun(METHODS["svdd"](), GRID, random_rewards()).run()
    assert [r.step for r in svdd.records] == list(range(1, 10))


def test_every_noise_draw_has_a_distinct_key():
    for method in ALL_METHODS:
        run = ScriptedRun(method, GRID, random_rewards())
        run.run()
        keys = []
        for b in run.batches:
            keys += [i.noise for i in b.inits]
            for e in b.expands:
                # SoP's deferred substep is the parent's own continuation: shared by its children by design
                keys += [m.noise for m in e.moves if m.noise is not None and m.noise.candidate != -1]
        assert len(keys) == len(set(keys)), method


def test_batch_pack_roundtrip():
    import pickle

    from flowscale_ray.search.protocol import Batch

    for method in ALL_METHODS:
        run = ScriptedRun(method, GRID, random_rewards())
        run.run()
        for b in run.batches:
            assert Batch.unpack(pickle.loads(pickle.dumps(b.pack()))) == b
