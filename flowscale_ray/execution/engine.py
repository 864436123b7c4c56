"""ParticleEngine: computes what search methods ask for, for any number of searches at once.

It owns the model, the sampler dynamics and the particle store (latent, time, cached velocity and x0
estimate per particle, keyed by (task, pid)). Given the batches of several tasks it pools all their
velocity queries into model calls, applies the moves and returns, per evaluated particle, the NFE it cost
and its decoded preview (what the reward scores). The in-process executor uses one engine; the Ray runtime
puts one in every model replica.

Batch invariance: every noise draw has its own generator (see core.noise), and every model call has a fixed
number of rows: velocity and reward-gradient calls exactly `micro_batch` rows, DEFAULT_CHUNK when it is not set
(the last chunk is padded with copies of its last row); decode calls `micro_batch` rows the same way, or one
sample at a time when it is not set. So results do not depend on how requests were pooled (which prompts were
in flight together, how a prompt's particles were spread over replicas, a replica rebuilt after a fault) even
for models whose kernels depend on the batch size: a CPU convolution gives a row different last bits in a
batch of 3 than in a batch of 4.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from flowscale_ray.core.dynamics import Dynamics, SamplerSpec
from flowscale_ray.core.guidance import reward_gradient
from flowscale_ray.core.noise import SeedDeriver, standard_normal
from flowscale_ray.models.base import Condition, FlowModel, cat_conditions
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.base import Reward
from flowscale_ray.search.protocol import GUIDED_STEP_NFE, Batch, Expand, Init, Move, NoiseKey

TaskKey = Hashable
DEFAULT_CHUNK = 8  # rows per model call when `micro_batch` is not set (a fixed shape: batch invariance)


def chunked(n: int, size: int) -> list[tuple[Tensor, int]]:
    """Row indexes of `n` rows in chunks of exactly `size` (the last padded with copies of its last row), each
    with how many of its rows are real."""
    out = []
    for start in range(0, n, size):
        idx = torch.arange(start, min(start + size, n))
        real = idx.numel()
        if real < size:
            idx = torch.cat([idx, idx[-1:].repeat(size - real)])
        out.append((idx, real))
    return out


@dataclass
class Particle:
    x: Tensor  # latent on the sampled path, float32, [*latent_shape]
    s: float
    u: Tensor | None = None  # cached velocity at (x, s)
    x0: Tensor | None = None  # x0 estimate at (x, s)
    grad: Tensor | None = None  # guidance: grad_x r(x0_hat) at (x, s), computed when a guided step leaves it


@dataclass
class Evaluated:
    pid: int
    nfe: int
    s: float
    preview: Tensor | None  # decoded x0 estimate, only for scored particles


@dataclass
class _Task:
    seeds: SeedDeriver  # (run seed, prompt id) prefix
    cond: Condition
    prompt: Prompt  # what the guidance reward is given


class ParticleEngine:
    def __init__(self, model: FlowModel, spec: SamplerSpec, micro_batch: int | None = None) -> None:
        if micro_batch is not None and micro_batch < 1:
            raise ValueError(f"micro_batch: must be >= 1, got {micro_batch}")
        self.model = model
        self.spec = spec
        self.grid = spec.grid_times()
        self._guided_moves = spec.guided_moves()  # whether a move from time s is a guided step (None: no guidance)
        self.dynamics = Dynamics(spec, model.interpolant)
        self.micro_batch = micro_batch
        self.chunk = micro_batch or DEFAULT_CHUNK  # rows in every velocity (and gradient) call
        self.decode_chunk = micro_batch or 1  # rows in every decode call
        self.particles: dict[tuple[TaskKey, int], Particle] = {}
        self.tasks: dict[TaskKey, _Task] = {}
        self.nfe = 0  # velocity rows evaluated (padding excluded)
        self.model_calls = 0
        # Guidance (sampler.guidance, core.guidance): the differentiable reward, set by the executor that owns
        # the engine, and the reward gradients computed (each charged GUIDED_STEP_NFE to the search).
        self.guide: Reward | None = None
        self.gradients = 0

    # -- task lifecycle ---------------------------------------------------------------------------------
    def open_task(
        self, key: TaskKey, prompt_id: str, prompt_text: str, seed: int, prompt: Prompt | None = None
    ) -> None:
        self.tasks[key] = _Task(
            seeds=SeedDeriver(seed, prompt_id),
            cond=self.model.encode([prompt_text]),
            prompt=prompt if prompt is not None else Prompt(prompt_id, prompt_text),
        )

    def close_task(self, key: TaskKey) -> None:
        self.tasks.pop(key, None)
        for pk in [pk for pk in self.particles if pk[0] == key]:
            del self.particles[pk]

    def release(self, key: TaskKey, pids: Sequence[int]) -> None:
        for pid in pids:
            self.particles.pop((key, pid), None)

    def export(self, key: TaskKey, pids: Sequence[int]) -> list[tuple[int, Particle]]:
        """Copies of particle states, to move them to another engine (another replica)."""
        return [(pid, self.particle(key, pid)) for pid in pids]

    def adopt(self, key: TaskKey, states: Sequence[tuple[int, Particle]]) -> None:
        """Take particle states exported by another engine (same model and sampler)."""
        for pid, p in states:
            self.particles[(key, pid)] = p

    def has_task(self, key: TaskKey) -> bool:
        return key in self.tasks

    def particle(self, key: TaskKey, pid: int) -> Particle:
        try:
            return self.particles[(key, pid)]
        except KeyError:
            raise KeyError(f"task {key!r} has no particle {pid}") from None

    # -- noise ----------------------------------------------------------------------------------------------
    def noise(self, key: TaskKey, nk: NoiseKey) -> Tensor:
        seed = self.tasks[key].seeds(nk.chain, nk.step, nk.candidate, nk.stream)
        return standard_normal(self.model.latent_shape, seed)

    # -- velocity ---------------------------------------------------------------------------------------------
    def _velocity(self, rows: list[tuple[TaskKey, Particle]]) -> None:
        """Evaluate and cache the velocity (and x0 estimate) of the given particles, pooled."""
        if not rows:
            return
        x = torch.stack([p.x for _, p in rows])
        s = torch.tensor([p.s for _, p in rows], dtype=torch.float64)
        if (s <= 0).any():
            raise ValueError("velocity requested at s <= 0")
        cond = self._conditions([k for k, _ in rows])
        x_model, t_model, conv = self.dynamics.model_query(x, s)
        u_model = self._model_velocity(x_model, t_model, cond)
        u = self.dynamics.target_velocity(x, u_model.to(torch.float32), conv)
        x0 = self.dynamics.x0(x, u, s)
        for p, u_row, x0_row in zip((p for _, p in rows), u.unbind(0), x0.float().unbind(0), strict=True):
            p.u, p.x0 = u_row, x0_row
        self.nfe += len(rows)

    def _conditions(self, keys: list[TaskKey]) -> Condition:
        """One condition row per key (the prompt encodings are computed once per task, at open)."""
        order: dict[TaskKey, int] = {}
        index = torch.tensor([order.setdefault(k, len(order)) for k in keys])
        table = cat_conditions([self.tasks[k].cond for k in order])
        return {name: v.index_select(0, index.to(v.device)) for name, v in table.items()}

    def _model_velocity(self, x: Tensor, t: Tensor, cond: Condition) -> Tensor:
        outs = []
        for idx, real in chunked(x.shape[0], self.chunk):
            xb = x.index_select(0, idx).to(device=self.model.device, dtype=self.model.dtype)
            tb = t.index_select(0, idx).to(device=self.model.device, dtype=torch.float32)
            cb = {k: v.index_select(0, idx.to(v.device)) for k, v in cond.items()}
            with torch.inference_mode():
                ub = self.model.velocity(xb, tb, cb)
            outs.append(ub[:real].float().cpu())
            self.model_calls += 1
        return torch.cat(outs)

    def decode(self, x0: Tensor) -> Tensor:
        """Decoded images (float32, on the CPU) of x0 [B, *latent_shape], in calls of a fixed size."""
        outs = []
        for idx, real in chunked(x0.shape[0], self.decode_chunk):
            with torch.inference_mode():
                xb = x0.index_select(0, idx).to(device=self.model.device, dtype=self.model.dtype)
                outs.append(self.model.decode(xb)[:real].float().cpu())
        return torch.cat(outs)

    # -- guidance ----------------------------------------------------------------------------------------------
    def _guided(self, s: float) -> bool:
        return self._guided_moves is not None and self._guided_moves(s)

    def _gradients(self, rows: list[tuple[TaskKey, Particle]]) -> None:
        """Compute and cache grad_x r(x0_hat(x)) of the given particles (pooled, in micro-batches when set)."""
        if not rows:
            return
        if self.guide is None:
            raise ValueError("sampler.guidance: no reward to guide with in the process that steps the particles")
        guide = self.guide
        keys = [k for k, _ in rows]
        x = torch.stack([p.x for _, p in rows])
        s = torch.tensor([p.s for _, p in rows], dtype=torch.float64)
        cond = self._conditions(keys)
        prompts = [self.tasks[k].prompt for k in keys]
        n = x.shape[0]
        grads = []
        for idx, real in chunked(n, self.chunk):  # same chunks as velocity calls (batch invariance)
            cb = {k: v.index_select(0, idx.to(v.device)) for k, v in cond.items()}
            pb = [prompts[i] for i in idx.tolist()]

            def velocity(xg: Tensor, sg: Tensor, cb: Condition = cb) -> Tensor:
                x_model, t_model, conv = self.dynamics.model_query(xg, sg)
                xm = x_model.to(device=self.model.device, dtype=self.model.dtype)
                u_model = self.model.velocity(xm, t_model.to(device=self.model.device, dtype=torch.float32), cb)
                self.model_calls += 1
                if not u_model.requires_grad:  # else the x0 formula's own x term would give a silently wrong gradient
                    raise ValueError(
                        f"sampler.guidance: model {self.model.model_id!r} gives no gradient (its velocity runs "
                        "without autograd); guidance needs a differentiable model"
                    )
                return self.dynamics.target_velocity(xg, u_model.to(device="cpu", dtype=torch.float32), conv)

            def decode(x0: Tensor) -> Tensor:
                return self.model.decode(x0.to(device=self.model.device, dtype=self.model.dtype)).float().cpu()

            g = reward_gradient(
                x.index_select(0, idx),
                s.index_select(0, idx),
                velocity,
                self.dynamics.x0,
                decode,
                lambda images, pb=pb: guide(images, pb),  # type: ignore[misc]
            )
            grads.append(g[:real])
        for (_, p), g_row in zip(rows, torch.cat(grads).float().unbind(0), strict=True):
            p.grad = g_row.clone()
        self.gradients += n

    # -- moves -------------------------------------------------------------------------------------------------
    def _apply(self, key: TaskKey, rows: list[tuple[Particle, Move]]) -> list[Particle]:
        """Apply one move to each particle (velocities already cached for steps); returns new particles."""
        out: list[Particle | None] = [None] * len(rows)
        for renoise in (False, True):
            idx = [i for i, (_, m) in enumerate(rows) if m.renoise == renoise]
            if not idx:
                continue
            x = torch.stack([rows[i][0].x for i in idx])
            s = torch.tensor([rows[i][0].s for i in idx], dtype=torch.float64)
            s_to = torch.tensor([rows[i][1].s_to for i in idx], dtype=torch.float64)
            if renoise:
                if (s_to <= s).any():
                    raise ValueError("renoise moves must go to a later (noisier) time")
                z = torch.stack([self.noise(key, rows[i][1].noise) for i in idx])  # type: ignore[arg-type]
                x_new = self.dynamics.renoise(x, s, s_to, z)
            else:
                if (s_to >= s).any() or (s_to < 0).any():
                    raise ValueError("steps must go to an earlier time in [0, s)")
                u = torch.stack([rows[i][0].u for i in idx])  # type: ignore[misc]
                z = None
                if self.spec.sde:
                    z = torch.stack([self.noise(key, rows[i][1].noise or _missing_noise()) for i in idx])
                x_new = self.dynamics.step(x, u, s, s_to, z)
                guided = [j for j, i in enumerate(idx) if rows[i][0].grad is not None]
                if guided:  # guided rows again, with the reward gradient in the score (core.guidance)
                    g = torch.tensor(guided)
                    scale = self.spec.guidance.scale  # type: ignore[union-attr]
                    guide = scale * torch.stack([rows[idx[j]][0].grad for j in guided])  # type: ignore[misc]
                    x_new = x_new.clone()
                    x_new[g] = self.dynamics.step(x[g], u[g], s[g], s_to[g], None if z is None else z[g], guide)
            for j, i in enumerate(idx):
                out[i] = Particle(x=x_new[j].float(), s=rows[i][1].s_to)
        return out  # type: ignore[return-value]

    # -- a round of work ------------------------------------------------------------------------------------
    def run(self, work: Sequence[tuple[TaskKey, Batch]]) -> dict[TaskKey, list[Evaluated]]:
        """Compute the batches of several tasks together. Returns, per task, one Evaluated per particle
        the batch created (inits, then expands, in batch order)."""
        s0 = self.grid[0]
        created: list[tuple[TaskKey, int, Particle, bool]] = []  # task, pid, particle, scored
        spent: dict[tuple[TaskKey, int], int] = {}
        for key, batch in work:
            for init in batch.inits:
                p = Particle(x=self.noise(key, init.noise), s=s0)
                self.particles[(key, init.pid)] = p
                created.append((key, init.pid, p, init.score))
                spent[(key, init.pid)] = 0
        # Expansions: all tasks' move sequences advance together, one move per round.
        active: list[tuple[TaskKey, Expand, Particle]] = []
        for key, batch in work:
            for exp in batch.expands:
                active.append((key, exp, self.particle(key, exp.parent)))
                spent[(key, exp.pid)] = 0
        depth = max((len(e.moves) for _, e, _ in active), default=0)
        for r in range(depth):
            movers = [(i, k, e, p) for i, (k, e, p) in enumerate(active) if r < len(e.moves)]
            # Children of one parent share its particle object: evaluate it once, charge the first child.
            need: dict[int, tuple[TaskKey, Particle, int]] = {}
            for _, k, e, p in movers:
                if not e.moves[r].renoise and p.u is None and id(p) not in need:
                    need[id(p)] = (k, p, e.pid)
            self._velocity([(k, p) for k, p, _ in need.values()])
            for k, _, pid in need.values():
                spent[(k, pid)] += 1
            if self.spec.guided:  # the reward gradient of each guided state, once per state (core.guidance)
                grad_need: dict[int, tuple[TaskKey, Particle, int]] = {}
                for _, k, e, p in movers:
                    m = e.moves[r]
                    if not m.renoise and p.grad is None and id(p) not in grad_need and self._guided(p.s):
                        grad_need[id(p)] = (k, p, e.pid)
                self._gradients([(k, p) for k, p, _ in grad_need.values()])
                for k, _, pid in grad_need.values():
                    spent[(k, pid)] += GUIDED_STEP_NFE
            by_task: dict[TaskKey, list[int]] = {}
            for i, k, _, _ in movers:
                by_task.setdefault(k, []).append(i)
            for k, idxs in by_task.items():
                moved = self._apply(k, [(active[i][2], active[i][1].moves[r]) for i in idxs])
                for i, p_new in zip(idxs, moved, strict=True):
                    active[i] = (active[i][0], active[i][1], p_new)
        for k, e, p in active:
            self.particles[(k, e.pid)] = p
            created.append((k, e.pid, p, e.score))
        # Evaluate every created particle (velocity, x0) and decode the scored ones.
        pending = [(k, p) for k, _, p, _ in created if p.u is None and p.s > 0]
        self._velocity(pending)
        pending_ids = {id(p) for _, p in pending}
        results: dict[TaskKey, list[Evaluated]] = {k: [] for k, _ in work}
        scored = [(k, pid, p) for k, pid, p, sc in created if sc]
        previews: dict[tuple[TaskKey, int], Tensor] = {}
        if scored:
            images = self.decode(torch.stack([p.x0 if p.x0 is not None else p.x for _, _, p in scored]))
            for i, (k, pid, _) in enumerate(scored):
                previews[(k, pid)] = images[i]
        for k, pid, p, _ in created:
            nfe = spent[(k, pid)] + (1 if id(p) in pending_ids else 0)
            results[k].append(Evaluated(pid=pid, nfe=nfe, s=p.s, preview=previews.get((k, pid))))
        for key, batch in work:
            self.release(key, batch.release)
        # Rows of batched tensors are views; own copies keep a kept particle from pinning its whole batch.
        for _, _, p, _ in created:
            p.x = p.x.clone()
            p.u = None if p.u is None else p.u.clone()
            p.x0 = None if p.x0 is None else p.x0.clone()
        return results

    # -- output ------------------------------------------------------------------------------------------------
    def finalize(self, key: TaskKey, pids: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Take the final step to s = 0 for the given particles; returns (samples, decoded images)."""
        parts = [self.particle(key, pid) for pid in pids]
        self._velocity([(key, p) for p in parts if p.u is None and p.s > 0])
        finals = []
        for p in parts:
            if p.s <= 0:
                finals.append(p.x)
            else:
                s = torch.tensor([p.s], dtype=torch.float64)
                finals.append(self.dynamics.final(p.x[None], p.u[None], s)[0])  # type: ignore[index]
        samples = torch.stack(finals)
        return samples, self.decode(samples)


def _missing_noise() -> NoiseKey:
    raise ValueError("an SDE step needs a noise key")


__all__ = ["Evaluated", "Init", "Particle", "ParticleEngine"]
