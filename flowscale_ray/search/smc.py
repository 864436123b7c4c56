"""Sequential Monte Carlo with the pretrained reverse kernel as proposal (DAS-style, spec 2.3).

N particles. Initial weights w = exp(r / lambda). Before every step: normalise, and if the effective sample
size is below `ess_threshold` x N, resample N ancestors and reset the weights. Then every particle takes one
sampler step (1 NFE for its look-ahead reward) and its weight is multiplied by exp((r - r_parent) / lambda).
Weights live in log space.

`start` (a fraction of the steps, default 0): before step round(start x steps) the particles are neither
scored nor resampled, and the weights start there (w = exp(r / lambda) at that step). On rewards that say
nothing about the final sample early (the counting task: docs/adaptive.md), resampling on them only throws
diversity away; this keeps the first part of the chain plain independent sampling and saves its verifier calls.

Final pick: 'reward' (default) returns the particle with the highest reward; 'weight' returns the one with
the highest accumulated weight, as the reference code does.

NFE = N x steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from flowscale_ray.search.base import (
    SearchMethod,
    decision_generator,
    per_round,
    positive,
    rank_desc,
    spent,
)
from flowscale_ray.search.protocol import (
    STREAM_INIT,
    Batch,
    Expand,
    Init,
    Move,
    NoiseKey,
    PidCounter,
    SearchContext,
    SearchGenerator,
    SearchOutcome,
    StepRecord,
)
from flowscale_ray.search.resampling import RESAMPLERS, effective_sample_size, normalize_log_weights


@dataclass(frozen=True)
class SMCConfig:
    n_particles: int = 50
    temperature: float = 0.1  # lambda (the paper's beta) in exp(r / lambda)
    ess_threshold: float = 1.0  # resample when ESS < ess_threshold * N
    resampling: str = "multinomial"
    final_pick: str = "reward"
    start: float = 0.0  # fraction of the steps before the first scoring and resampling (0: from the start)

    def __post_init__(self) -> None:
        positive("n_particles", self.n_particles)
        if not 0.0 <= self.start < 1.0:
            raise ValueError(f"start: must be a fraction in [0, 1), got {self.start}")
        positive("temperature", self.temperature)
        if not 0.0 <= self.ess_threshold <= 1.0:
            raise ValueError(f"ess_threshold: must be in [0, 1], got {self.ess_threshold}")
        if self.resampling not in RESAMPLERS:
            raise ValueError(f"resampling: unknown {self.resampling!r}; allowed: {', '.join(RESAMPLERS)}")
        if self.final_pick not in ("reward", "weight"):
            raise ValueError(f"final_pick: unknown {self.final_pick!r}; allowed: reward, weight")


class SMC(SearchMethod):
    name = "smc"
    Config = SMCConfig

    def planned_nfe(self, ctx: SearchContext) -> int:
        return self.config.n_particles * ctx.steps

    def with_budget(self, nfe: int, ctx: SearchContext) -> SearchMethod:
        """As many particles as `nfe` pays for, the other settings unchanged."""
        return SMC(replace(self.config, n_particles=per_round(nfe, ctx.steps, "particle")))

    def search(self, ctx: SearchContext, seed: int) -> SearchGenerator:
        c = self.config
        n, times = c.n_particles, ctx.search_times
        gen = decision_generator(seed)
        resample = RESAMPLERS[c.resampling]
        new_pid = PidCounter()
        first = min(round(c.start * ctx.steps), len(times) - 1)  # the first step scored
        inits = tuple(Init(new_pid(), NoiseKey(i, 0, 0, STREAM_INIT), score=first == 0) for i in range(n))
        evals = yield Batch(inits=inits)
        nfe = spent(evals)
        particles = [i.pid for i in inits]
        rewards = torch.tensor([evals[p].reward for p in particles], dtype=torch.float64)
        log_w = rewards / c.temperature if first == 0 else torch.zeros(n, dtype=torch.float64)
        records: list[StepRecord] = []
        for k in range(1, len(times)):
            weights = normalize_log_weights(log_w)
            ess = effective_sample_size(weights)
            resampled = k > first and ess < c.ess_threshold * n * (1.0 - 1e-9)
            if resampled:
                idx = resample(weights, n, gen).tolist()
                parents = [particles[i] for i in idx]
                parent_rewards = rewards[idx]
                log_w = torch.zeros(n, dtype=torch.float64)
            else:
                parents, parent_rewards = particles, rewards
            children = tuple(
                Expand(new_pid(), parent=parents[i], moves=(Move(times[k], NoiseKey(i, k, 0)),), score=k >= first)
                for i in range(n)
            )
            evals = yield Batch(expands=children, release=tuple(particles))
            step_nfe = spent(evals)
            nfe += step_nfe
            particles = [ch.pid for ch in children]
            rewards = torch.tensor([evals[p].reward for p in particles], dtype=torch.float64)
            if k == first:  # the weights start here
                log_w = rewards / c.temperature
            elif k > first:
                log_w = log_w + (rewards - parent_rewards) / c.temperature
            records.append(
                StepRecord(
                    step=k,
                    s=times[k],
                    nfe=step_nfe,
                    candidates=n,
                    best_reward=float(rewards.max()),
                    resampled=resampled,
                    ess=ess,
                )
            )
        score = rewards if c.final_pick == "reward" else log_w
        order = rank_desc(score.tolist())
        return SearchOutcome(
            best=particles[order[0]],
            reward=float(rewards[order[0]]),
            nfe=nfe,
            records=records,
            selected=[particles[i] for i in order],
        )
