"""A flow-model replica: builds its model once, hosts a ParticleEngine, and (by default) the reward too.

`ReplicaWorker` is a plain class so that it can be tested in-process; the driver wraps it with `ray.remote`.
It implements `protocol.Replica`, the methods the driver calls.
Each call carries everything the replica needs (tasks to open, particle copies to adopt, releases), so one
round trip per batch suffices. Only small things go back: per particle its NFE, time and reward (or its
decoded preview when the reward runs elsewhere).
"""

from __future__ import annotations

import gc
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution.engine import Particle, ParticleEngine
from flowscale_ray.execution.inprocess import score
from flowscale_ray.observe.recorder import CALL_STATS, CallStats
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards.base import Reward
from flowscale_ray.runtime.messages import ComponentSpec
from flowscale_ray.search.protocol import Batch, Expand, Init


def build_model_from(spec: ComponentSpec):
    from flowscale_ray.models import build_model

    return build_model(spec.name, dict(spec.options))


def build_reward_from(spec: ComponentSpec | None) -> Reward | None:
    from flowscale_ray.rewards import build_reward

    return None if spec is None else build_reward(spec.name, dict(spec.options))


class ReplicaWorker:
    def __init__(
        self,
        model: ComponentSpec,
        sampler: SamplerSpec,
        reward: ComponentSpec | None,
        held_out: ComponentSpec | None,
        micro_batch: int | None,
    ) -> None:
        self.incarnation = uuid.uuid4().hex
        self.engine = ParticleEngine(build_model_from(model), sampler, micro_batch=micro_batch)
        self.reward = build_reward_from(reward)
        self.held_out = build_reward_from(held_out)
        if sampler.guided:  # gradient guidance needs the model and the reward in this process (core.guidance)
            if self.reward is None:
                raise ValueError(
                    "sampler.guidance: the reward gradient needs the reward in the model replicas; "
                    "set executor.reward_actors: 0 or remove the guidance"
                )
            self.engine.guide = self.reward
        self.prompts: dict[Any, Prompt] = {}
        self.busy_seconds = 0.0
        self.calls = 0
        gc.freeze()  # the model and libraries live forever: keep them out of every GC scan

    def ready(self) -> dict[str, Any]:
        return {"incarnation": self.incarnation, "pid": os.getpid(), "model": self.engine.model.model_id}

    def pid(self) -> int:
        return os.getpid()

    def _open(self, opens: Sequence[tuple[Any, Prompt, int]]) -> None:
        for key, prompt, seed in opens:
            if not self.engine.has_task(key):
                self.engine.open_task(key, prompt.id, prompt.text, seed, prompt=prompt)
                self.prompts[key] = prompt

    def run(
        self,
        work: Sequence[tuple[Any, tuple]],
        opens: Sequence[tuple[Any, Prompt, int]] = (),
        releases: Sequence[tuple[Any, Sequence[int]]] = (),
        adopt_keys: Sequence[Any] = (),
        *adopt_states: list[tuple[int, Particle]],
    ) -> tuple[dict[Any, list[tuple]], torch.Tensor | None]:
        """Compute `work` (task key, Batch.pack()). `adopt_states` (one per entry of `adopt_keys`) are particle
        copies exported by other replicas; they are top-level arguments so that Ray resolves them first."""
        started = time.perf_counter()
        for key, pids in releases:
            self.engine.release(key, pids)
        self._open(opens)
        for key, states in zip(adopt_keys, adopt_states, strict=True):
            self.engine.adopt(key, states)
        nfe_before, step_started = self.engine.nfe, time.perf_counter()
        outputs = self.engine.run([(key, Batch.unpack(packed)) for key, packed in work])
        step = (time.perf_counter() - step_started, sum(len(v) for v in outputs.values()), self.engine.nfe - nfe_before)
        if self.reward is None:
            return self._with_preview_ref(outputs, started, step)
        results: dict[Any, Any] = {}
        reward_started = time.perf_counter()
        for key, evaluated in outputs.items():
            scored = [o for o in evaluated if o.preview is not None]
            rewards: dict[int, float] = {}
            if self.reward is not None and scored:
                previews = [o.preview for o in scored if o.preview is not None]  # all of them (for the types)
                values = score(self.reward, previews, [self.prompts[key]] * len(scored))
                rewards = {o.pid: v for o, v in zip(scored, values, strict=True)}
            # ParticleResult fields as a plain tuple (see ParticleResult).
            results[key] = [(o.pid, o.nfe, o.s, rewards.get(o.pid, float("nan")), None) for o in evaluated]
        reward_seconds = time.perf_counter() - reward_started
        busy = time.perf_counter() - started
        self.busy_seconds += busy
        self.calls += 1
        # Actor-side figures for the driver's metrics travel with the results (a reserved, non-task key).
        results[CALL_STATS] = CallStats(busy, step[0], reward_seconds, step[1], step[2]).to_dict()
        return results, None

    def _with_preview_ref(self, outputs: dict, started: float, step: tuple[float, int, int]) -> tuple[dict, Any]:
        """Results without rewards, and the scored previews of the whole call as one tensor (a second return
        value: it stays in the object store, owned by the driver, which hands it to a reward actor without
        fetching it); each scored particle's `preview` holds its row in that tensor."""
        rows: list[torch.Tensor] = []
        results: dict[Any, Any] = {}
        for key, evaluated in outputs.items():
            results[key] = []
            for o in evaluated:
                row = None
                if o.preview is not None:
                    row = len(rows)
                    rows.append(o.preview)
                results[key].append((o.pid, o.nfe, o.s, float("nan"), row))  # ParticleResult fields
        busy = time.perf_counter() - started
        self.busy_seconds += busy
        self.calls += 1
        results[CALL_STATS] = CallStats(busy, step[0], None, step[1], step[2]).to_dict()
        return results, (torch.stack(rows) if rows else None)

    def replay(
        self, key: Any, prompt: Prompt, seed: int, requests: Sequence[Init | Expand], keep: Sequence[int]
    ) -> int:
        """Rebuild particles from their lineage: `requests` are the union of their chains from the root, in
        creation order (parents before children). Only `keep` stays. Returns the velocity evaluations spent
        (the driver does not charge them to the search: the search already paid for these particles)."""
        self._open([(key, prompt, seed)])
        nfe_before = self.engine.nfe
        for req in requests:
            req = replace(req, score=False)
            batch = Batch(inits=(req,)) if isinstance(req, Init) else Batch(expands=(req,))
            self.engine.run([(key, batch)])
        kept = set(keep)
        self.engine.release(key, [r.pid for r in requests if r.pid not in kept])
        return self.engine.nfe - nfe_before

    def export(self, key: Any, pids: Sequence[int]) -> list[tuple[int, Particle]]:
        return self.engine.export(key, pids)

    def finalize(self, key: Any, pids: Sequence[int], *adopt: list[tuple[int, Particle]]) -> dict[str, Any]:
        for states in adopt:
            self.engine.adopt(key, states)
        samples, images = self.engine.finalize(key, pids)
        prompt = self.prompts[key]
        out: dict[str, Any] = {"samples": samples, "images": images}
        if self.reward is not None:
            out["rewards"] = score(self.reward, list(images), [prompt] * len(pids))
        if self.held_out is not None:
            out["held_out"] = score(self.held_out, list(images), [prompt] * len(pids))
        return out

    def close(self, keys: Sequence[Any]) -> None:
        for key in keys:
            self.engine.close_task(key)
            self.prompts.pop(key, None)

    def stats(self) -> dict[str, Any]:
        return {
            "incarnation": self.incarnation,
            "busy_seconds": self.busy_seconds,
            "calls": self.calls,
            "nfe": self.engine.nfe,
            "model_calls": self.engine.model_calls,
            "gradients": self.engine.gradients,
            "live_particles": len(self.engine.particles),
            "open_tasks": len(self.engine.tasks),
        }
