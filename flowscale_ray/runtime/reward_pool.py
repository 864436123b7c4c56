"""RewardPool: the optional reward actors (`reward_actors: n`), called round robin, restarted when they die.

Reward actors are stateless, so a scoring call whose actor died (or missed its deadline and was killed, then
restarted by Ray) is sent again, as it was, to the next actor. An actor that fails more than `max_restarts`
times fails the run.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from flowscale_ray.prompts import Prompt
from flowscale_ray.runtime.calls import RewardCall, ScoreCall, ScoreFinalCall
from flowscale_ray.runtime.messages import ComponentSpec
from flowscale_ray.runtime.options import RuntimeFailure, RuntimeOptions, failure_cause

log = logging.getLogger("flowscale_ray.runtime")


class RewardPool:
    """Empty (falsy) when rewards run inside the model replicas."""

    def __init__(self, reward: ComponentSpec, held_out: ComponentSpec | None, options: RuntimeOptions) -> None:
        self.options = options
        self.actors: list[Any] = []
        self.restarts = [0] * options.reward_actors
        self._next = 0  # round robin
        if options.reward_actors <= 0:
            return
        from flowscale_ray.runtime.rewarder import RewardWorker

        cls = ray.remote(RewardWorker).options(
            num_cpus=options.reward_num_cpus,
            num_gpus=options.reward_num_gpus,
            max_restarts=options.max_restarts,
            max_task_retries=0,
        )
        self.actors = [cls.remote(reward, held_out) for _ in range(options.reward_actors)]
        try:
            ray.get([a.ready.remote() for a in self.actors], timeout=options.start_timeout_s)
        except (RayActorError, RayTaskError) as exc:
            raise RuntimeFailure(f"a reward actor failed to start: {failure_cause(exc)}") from None
        except GetTimeoutError:
            raise RuntimeFailure(f"reward actors did not start within {options.start_timeout_s:.0f}s") from None

    def __bool__(self) -> bool:
        return bool(self.actors)

    def __len__(self) -> int:
        return len(self.actors)

    def _pick(self) -> tuple[int, float]:
        a = self._next % len(self.actors)
        self._next += 1
        return a, time.monotonic()

    def score(self, rows: list[tuple[int, Prompt, list[int]]], previews: Any, pids: dict[int, list[int]]):
        """Score a step call's previews (`rows`: per search, its prompt and rows in `previews`)."""
        a, now = self._pick()
        args = (rows, previews)
        call = ScoreCall(a, args, pids, sent=now, deadline=now + self.options.call_timeout_s)
        return self.actors[a].score.remote(*args), call

    def score_final(self, key: int, prompt: Prompt, finalized: dict[str, Any]):
        """Score search `key`'s finalized images; `finalized` (the finalize output) waits in the call."""
        a, now = self._pick()
        args = (prompt, finalized["images"])
        call = ScoreFinalCall(a, key, args, finalized, sent=now, deadline=now + self.options.call_timeout_s)
        return self.actors[a].score_final.remote(*args), call

    def resend(self, call: RewardCall):
        """The same call again, to the next actor."""
        a, now = self._pick()
        again = dataclasses.replace(call, actor=a, sent=now, deadline=now + self.options.call_timeout_s)
        match again:
            case ScoreCall(args=args):
                return self.actors[a].score.remote(*args), again
            case ScoreFinalCall(args=args):
                return self.actors[a].score_final.remote(*args), again
        raise TypeError(f"not a reward call: {call!r}")

    def kill(self, actor: int) -> None:
        """Kill an actor that missed its deadline; Ray restarts it."""
        ray.kill(self.actors[actor], no_restart=False)

    def failed(self, actor: int) -> None:
        """Count a failure of `actor`; fail the run past `max_restarts`."""
        self.restarts[actor] += 1
        if self.restarts[actor] > self.options.max_restarts:
            raise RuntimeFailure(
                f"reward actor {actor} failed {self.restarts[actor]} times "
                f"(max_restarts={self.options.max_restarts}); giving up"
            )
        log.warning("reward actor %d died; sending its scoring call again", actor)

    def stats(self) -> list[dict[str, Any]]:
        return ray.get([a.stats.remote() for a in self.actors], timeout=self.options.call_timeout_s)

    def shutdown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
