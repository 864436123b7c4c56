"""The executor contract: what an executor is given (SearchTask), what it returns (TaskResult with its
SelectedSamples), and the Executor protocol that the run loop talks to.

Two executors implement it: `InProcessExecutor` (this package) and the Ray runtime's `RayExecutor`. The run loop
(flowscale_ray.run) knows nothing else about them.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from torch import Tensor

from flowscale_ray.core.noise import derive_seed
from flowscale_ray.observe.recorder import Recorder
from flowscale_ray.prompts import Prompt
from flowscale_ray.search.base import SearchMethod
from flowscale_ray.search.protocol import STREAM_DECISION, Expand, Init, SearchContext, SearchOutcome


@dataclass(frozen=True)
class SearchTask:
    prompt: Prompt
    method: SearchMethod
    seed: int  # run seed (the prompt's own seed overrides it when set)
    round: int = 0  # a dataset budget's later rounds of the prompt draw fresh noise (flowscale_ray.run.budget)

    @property
    def effective_seed(self) -> int:
        """The seed every noise draw of this search derives from: the prompt's own seed, else the run's; a later
        round's is derived from it and the round."""
        seed = self.prompt.seed if self.prompt.seed is not None else self.seed
        return seed if self.round == 0 else derive_seed(seed, "round", self.round)


@dataclass(frozen=True)
class SelectedSample:
    """One finalized particle of a search's `outcome.selected` (best search reward first)."""

    pid: int
    sample: Tensor  # final sample at t = 0 on the sampled path [*latent_shape]
    image: Tensor  # decoded sample (what the reward scores)
    reward: float  # of the final sample
    held_out: float | None
    search_reward: float  # at the particle's last search evaluation
    lineage: tuple[Init | Expand, ...]  # requests from the root to this particle: enough to replay it


@dataclass(frozen=True)
class TaskResult:
    """One prompt's finished search: its selected samples (at least one, the best first) and its cost."""

    prompt: Prompt
    outcome: SearchOutcome
    selected: tuple[SelectedSample, ...]
    nfe: int  # velocity evaluations counted by the executor
    seconds: float
    seed: int | None = None  # the effective seed its noise derives from (replaying a lineage needs it)
    verifier_calls: int = 0  # reward evaluations: every scored candidate of the search, plus the final scores
    # Seconds of model work (velocity, decoding, final step) and of reward work (search and final scores) that
    # this prompt's rows took; a batch shared by several prompts is split by their rows in it.
    model_seconds: float = 0.0
    reward_seconds: float = 0.0

    def __post_init__(self) -> None:
        if not self.selected:
            raise ValueError("a TaskResult holds at least one selected sample")

    @property
    def best(self) -> SelectedSample:
        return self.selected[0]

    @property
    def sample(self) -> Tensor:
        return self.best.sample

    @property
    def image(self) -> Tensor:
        return self.best.image

    @property
    def reward(self) -> float:
        return self.best.reward

    @property
    def held_out(self) -> float | None:
        return self.best.held_out

    @property
    def lineage(self) -> tuple[Init | Expand, ...]:
        return self.best.lineage


@runtime_checkable
class Executor(Protocol):
    """What the run loop needs from an executor.

    `run` yields one TaskResult per task in completion order and pulls tasks lazily (so a caller can tell which
    tasks were handed out). If a search raises, the exception propagates out of `run`; the caller then calls
    `discard_unfinished()` to drop the state of every search that was cut short, and may call `run` again.
    """

    context: SearchContext  # what methods plan against (the time grid)
    recorder: Recorder  # metrics and progress hooks

    @property
    def model_id(self) -> str: ...

    def run(self, tasks: Iterable[SearchTask]) -> Iterator[TaskResult]: ...

    def discard_unfinished(self) -> None: ...

    def close(self) -> None: ...


def decision_seed(run_seed: int, prompt_id: str) -> int:
    """Seed for a method's own random decisions (e.g. SMC resampling) on one prompt."""
    return derive_seed(run_seed, prompt_id, STREAM_DECISION)


def lineage_of(lineage: Mapping[int, Init | Expand], pid: int) -> tuple[Init | Expand, ...]:
    """The requests from the root to particle `pid`, root first."""
    chain: list[Init | Expand] = []
    while True:
        req = lineage[pid]
        chain.append(req)
        if isinstance(req, Init):
            return tuple(chain[::-1])
        pid = req.parent


def verifier_calls_of(requests: Iterable[Init | Expand]) -> int:
    """How many of a batch's requests the reward scores (verifier calls)."""
    return sum(1 for req in requests if req.score)


def selected_pids(outcome: SearchOutcome, top_k: int) -> list[int]:
    """The best first, then the next of `selected` up to top_k (the best alone when top_k is 1)."""
    return [outcome.best, *[p for p in outcome.selected if p != outcome.best][: top_k - 1]]


def build_result(
    task: SearchTask,
    outcome: SearchOutcome,
    pids: Sequence[int],
    samples: Tensor,
    images: Tensor,
    rewards: Sequence[float],
    helds: Sequence[float] | None,
    lineage: Mapping[int, Init | Expand],
    search_rewards: Mapping[int, float],
    nfe: int,
    started: float,
    verifier_calls: int = 0,
    model_seconds: float = 0.0,
    reward_seconds: float = 0.0,
    final_calls: int | None = None,
) -> TaskResult:
    """A TaskResult for finalized particles `pids` (the best first); shared by every executor."""
    selected = tuple(
        SelectedSample(
            pid=pid,
            sample=samples[i],
            image=images[i],
            reward=rewards[i],
            held_out=helds[i] if helds is not None else None,
            search_reward=outcome.reward if pid == outcome.best else search_rewards.get(pid, math.nan),
            lineage=lineage_of(lineage, pid),
        )
        for i, pid in enumerate(pids)
    )
    return TaskResult(
        prompt=task.prompt,
        outcome=outcome,
        selected=selected,
        nfe=nfe,
        seconds=time.perf_counter() - started,
        seed=task.effective_seed,
        # the final samples are scored once each; final_calls: what those scores cost (Reward.verifier_calls)
        verifier_calls=verifier_calls + (len(pids) if final_calls is None else final_calls),
        model_seconds=model_seconds,
        reward_seconds=reward_seconds,
    )
