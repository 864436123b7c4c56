"""What executors report while they run, and the recorder that turns it into metrics, progress and a timeline.

Executors and the run loop call a `Recorder` (a no-op by default, so tests and library users pay nothing):

    prompt_started() / prompt_finished(result) / prompt_failed()     the run loop (flowscale_ray.run)
    batch_evaluated(nfe, rewards)     a search's batch came back: NFE charged, rewards of scored candidates
    replica_call(replica, CallStats)  one model-replica call, timed inside the replica
    reward_call(replica, seconds)     one call to a separate reward actor (driver-side round trip)
    replica_restart(replica, kind)    the driver recovered from a dead or hung actor
    shard_committed(rows, bytes) / storage_retry()                   the writer
    budget_planned(nfe) / budget_spent(nfe) / prompt_allocated(nfe, rounds, stop)   a dataset budget

`RunRecorder` keeps plain totals (what the progress display and the run's timeline are made from) and, when
asked, forwards everything to the Prometheus metrics of flowscale_ray.observe.metrics. Search figures
(candidates, RBF accepts and rollovers, SMC resamples and ESS) come from the methods' own StepRecords.
No Prometheus import here: the metrics module is loaded only when a run exports metrics.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

CALL_STATS = "_call"  # key of the CallStats dict a replica returns beside its per-task results
MAX_TIMELINE = 400  # samples kept; past that, every other one is dropped and the interval doubles


@dataclass(frozen=True)
class CallStats:
    """One replica call, measured in the replica."""

    seconds: float  # busy time of the whole call
    step_seconds: float  # model steps (velocity, x0 estimate, decode)
    reward_seconds: float | None  # in-replica scoring; None when rewards run elsewhere
    rows: int  # particles computed
    nfe: int  # velocity evaluations computed

    def to_dict(self) -> dict[str, Any]:
        return {
            "seconds": self.seconds,
            "step_seconds": self.step_seconds,
            "reward_seconds": self.reward_seconds,
            "rows": self.rows,
            "nfe": self.nfe,
        }

    @staticmethod
    def from_dict(d: dict[str, Any]) -> CallStats:
        return CallStats(d["seconds"], d["step_seconds"], d.get("reward_seconds"), int(d["rows"]), int(d["nfe"]))


class Recorder:
    """The no-op recorder: every hook does nothing."""

    def prompt_started(self) -> None:
        pass

    def prompt_finished(self, result: Any) -> None:
        pass

    def prompt_failed(self) -> None:
        pass

    def batch_evaluated(self, nfe: int, rewards: Sequence[float]) -> None:
        pass

    def replica_call(self, replica: int | str, stats: CallStats) -> None:
        pass

    def reward_call(self, replica: int | str, seconds: float) -> None:
        pass

    def replica_restart(self, replica: int | str, kind: str = "model") -> None:
        pass

    def shard_committed(self, rows: int, nbytes: int) -> None:
        pass

    def storage_retry(self) -> None:
        pass

    def budget_planned(self, nfe: float) -> None:
        pass

    def budget_spent(self, nfe: float) -> None:
        pass

    def prompt_allocated(self, nfe: int, rounds: int, stop: str) -> None:
        pass


NULL_RECORDER = Recorder()


@dataclass
class Totals:
    """What a run has done so far (this call of the run)."""

    prompts: int = 0  # to do
    started: int = 0
    finished: int = 0
    failed: int = 0
    nfe: int = 0
    planned_nfe: int = 0  # the methods' planned NFE for every prompt to do (for the ETA)
    best_reward: float = -math.inf
    busy: dict[str, float] = field(default_factory=dict)  # replica -> busy seconds
    calls: dict[str, int] = field(default_factory=dict)
    restarts: int = 0
    rows: int = 0
    bytes: int = 0
    retries: int = 0
    verifier_calls: int = 0  # reward evaluations of the finished prompts
    budget_nfe: float = 0  # dataset budget of the blocks started
    budget_spent: float = 0  # ... charged to rounds so far

    @property
    def done(self) -> int:
        return self.finished + self.failed


class RunRecorder(Recorder):
    """Totals + timeline for one run call; Prometheus series when `prometheus` is True; a progress display
    (anything with `update(totals, elapsed)` and `close(totals, elapsed)`) refreshed on every event."""

    def __init__(
        self,
        method: str,
        model: str,
        reward: str,
        *,
        prompts: int,
        planned_nfe: int,
        replicas: int = 1,
        prometheus: bool = False,
        progress: Any = None,
        timeline_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.labels = {"method": method, "model": model, "reward": reward}
        self.totals = Totals(prompts=prompts, planned_nfe=planned_nfe)
        self.progress = progress
        self.clock = clock
        self.started_at = clock()
        self.interval = timeline_interval_s
        self.timeline: list[dict[str, Any]] = []
        self._next_sample = self.started_at
        self.m = None
        if prometheus:
            from flowscale_ray.observe import metrics

            self.m = metrics
            self._init_series(replicas)
        for r in range(replicas):
            self.totals.busy[str(r)] = 0.0
            self.totals.calls[str(r)] = 0
        self._sample(force=True)

    # -- Prometheus ---------------------------------------------------------------------------------------------
    def _init_series(self, replicas: int) -> None:
        """Create every series at zero, so dashboards and alerts see them before the first event."""
        m, lab = self.m, self.labels
        assert m is not None
        for metric in (
            m.NFE,
            m.CANDIDATES,
            m.CANDIDATE_REWARD,
            m.RBF_ACCEPTS,
            m.RBF_ROLLOVERS,
            m.SMC_RESAMPLES,
            m.SMC_ESS,
            m.BEST_REWARD,
            m.PROMPTS_STARTED,
            m.PROMPTS_FINISHED,
            m.PROMPTS_FAILED,
            m.PROMPT_SECONDS,
            m.ROWS_WRITTEN,
            m.BYTES_WRITTEN,
            m.SHARDS_COMMITTED,
            m.STORAGE_RETRIES,
        ):
            metric.labels(**lab)
        m.PROMPTS_TOTAL.labels(**lab).set(self.totals.prompts)
        m.PROMPTS_IN_FLIGHT.labels(**lab).set(0)
        m.RUN_START.labels(**lab).set(time.time())
        m.LAST_PROGRESS.labels(**lab).set(time.time())
        m.REPLICAS.labels(model=lab["model"]).set(replicas)
        for r in range(replicas):
            rl = {"model": lab["model"], "replica": str(r)}
            for metric in (m.REPLICA_BUSY, m.REPLICA_CALLS, m.REPLICA_NFE, m.BATCH_SIZE, m.STEP_SECONDS):
                metric.labels(**rl)
            m.REWARD_SECONDS.labels(reward=lab["reward"], replica=str(r))
            m.RESTARTS.labels(kind="model", replica=str(r))

    def _progressed(self) -> None:
        if self.m is not None:
            self.m.LAST_PROGRESS.labels(**self.labels).set(time.time())

    # -- hooks -------------------------------------------------------------------------------------------------
    def prompt_started(self) -> None:
        self.totals.started += 1
        if self.m is not None:
            self.m.PROMPTS_STARTED.labels(**self.labels).inc()
            self.m.PROMPTS_IN_FLIGHT.labels(**self.labels).inc()
        self._tick()

    def prompt_finished(self, result: Any) -> None:
        """`result` is a TaskResult: its outcome's StepRecords carry the method's own figures."""
        t = self.totals
        t.finished += 1
        t.verifier_calls += int(getattr(result, "verifier_calls", 0))
        reward = float(result.reward)
        if not math.isnan(reward):
            t.best_reward = max(t.best_reward, reward)
        m = self.m
        if m is not None:
            lab = self.labels
            m.PROMPTS_FINISHED.labels(**lab).inc()
            m.PROMPTS_IN_FLIGHT.labels(**lab).dec()
            m.PROMPT_SECONDS.labels(**lab).observe(result.seconds)
            m.VERIFIER_CALLS.labels(**lab).inc(int(getattr(result, "verifier_calls", 0)))
            m.PROMPT_WORK_SECONDS.labels(**lab, part="model").inc(float(getattr(result, "model_seconds", 0.0)))
            m.PROMPT_WORK_SECONDS.labels(**lab, part="reward").inc(float(getattr(result, "reward_seconds", 0.0)))
            if not math.isnan(reward):
                m.BEST_REWARD.labels(**lab).observe(reward)
                m.LAST_BEST_REWARD.labels(**lab).set(reward)
            for rec in result.outcome.records:
                m.CANDIDATES.labels(**lab).inc(rec.candidates)
                if rec.accepted:
                    m.RBF_ACCEPTS.labels(**lab).inc(rec.accepted)
                if rec.rollover:
                    m.RBF_ROLLOVERS.labels(**lab).inc(rec.rollover)
                if rec.resampled:
                    m.SMC_RESAMPLES.labels(**lab).inc()
                if rec.ess is not None and not math.isnan(rec.ess):
                    m.SMC_ESS.labels(**lab).observe(rec.ess)
        self._progressed()
        self._tick()

    def prompt_failed(self) -> None:
        self.totals.failed += 1
        if self.m is not None:
            self.m.PROMPTS_FAILED.labels(**self.labels).inc()
            self.m.PROMPTS_IN_FLIGHT.labels(**self.labels).dec()
        self._tick()

    def batch_evaluated(self, nfe: int, rewards: Sequence[float]) -> None:
        self.totals.nfe += nfe
        if self.m is not None:
            self.m.NFE.labels(**self.labels).inc(nfe)
            hist = self.m.CANDIDATE_REWARD.labels(**self.labels)
            for r in rewards:
                if not math.isnan(r):
                    hist.observe(r)
        self._progressed()
        self._tick()

    def replica_call(self, replica: int | str, stats: CallStats) -> None:
        r = str(replica)
        self.totals.busy[r] = self.totals.busy.get(r, 0.0) + stats.seconds
        self.totals.calls[r] = self.totals.calls.get(r, 0) + 1
        if self.m is not None:
            rl = {"model": self.labels["model"], "replica": r}
            self.m.REPLICA_BUSY.labels(**rl).inc(stats.seconds)
            self.m.REPLICA_CALLS.labels(**rl).inc()
            self.m.REPLICA_NFE.labels(**rl).inc(stats.nfe)
            self.m.BATCH_SIZE.labels(**rl).observe(stats.rows)
            self.m.STEP_SECONDS.labels(**rl).observe(stats.step_seconds)
            if stats.reward_seconds is not None:
                self.m.REWARD_SECONDS.labels(reward=self.labels["reward"], replica=r).observe(stats.reward_seconds)
        self._tick()

    def reward_call(self, replica: int | str, seconds: float) -> None:
        if self.m is not None:
            self.m.REWARD_SECONDS.labels(reward=self.labels["reward"], replica=f"reward-{replica}").observe(seconds)

    def replica_restart(self, replica: int | str, kind: str = "model") -> None:
        self.totals.restarts += 1
        if self.m is not None:
            name = str(replica) if kind == "model" else f"reward-{replica}"
            self.m.RESTARTS.labels(kind=kind, replica=name).inc()

    def shard_committed(self, rows: int, nbytes: int) -> None:
        self.totals.rows += rows
        self.totals.bytes += nbytes
        if self.m is not None:
            self.m.ROWS_WRITTEN.labels(**self.labels).inc(rows)
            self.m.BYTES_WRITTEN.labels(**self.labels).inc(nbytes)
            self.m.SHARDS_COMMITTED.labels(**self.labels).inc()

    def storage_retry(self) -> None:
        self.totals.retries += 1
        if self.m is not None:
            self.m.STORAGE_RETRIES.labels(**self.labels).inc()

    def budget_planned(self, nfe: float) -> None:
        self.totals.budget_nfe += nfe
        if self.m is not None:
            self.m.BUDGET_NFE.labels(**self.labels).inc(nfe)

    def budget_spent(self, nfe: float) -> None:
        self.totals.budget_spent += nfe
        if self.m is not None:
            self.m.BUDGET_SPENT.labels(**self.labels).inc(nfe)

    def prompt_allocated(self, nfe: int, rounds: int, stop: str) -> None:
        if self.m is not None:
            self.m.PROMPT_NFE.labels(**self.labels).observe(nfe)
            self.m.PROMPT_ROUNDS.labels(**self.labels).observe(rounds)
            self.m.PROMPTS_STOPPED.labels(**self.labels, reason=stop).inc()

    # -- timeline and progress -------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self.clock() - self.started_at

    def _tick(self) -> None:
        self._sample()
        if self.progress is not None:
            self.progress.update(self.totals, self.elapsed())

    def _sample(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now < self._next_sample:
            return
        t = self.totals
        self.timeline.append(
            {
                "t": round(now - self.started_at, 3),
                "nfe": t.nfe,
                "done": t.done,
                "busy": {r: round(v, 4) for r, v in t.busy.items()},
                **({"budget_nfe": t.budget_nfe, "budget_spent": t.budget_spent} if t.budget_nfe else {}),
            }
        )
        if len(self.timeline) > MAX_TIMELINE:  # keep it tiny for hours-long runs: halve the resolution
            self.timeline = self.timeline[::2]
            self.interval *= 2
        self._next_sample = now + self.interval

    def close(self) -> dict[str, Any]:
        """End of the run call: a last timeline sample, the progress display's last word; returns the timeline
        document written to the run folder (`timeline.json`)."""
        self._sample(force=True)
        if self.progress is not None:
            self.progress.close(self.totals, self.elapsed())
        return {
            "version": 1,
            **self.labels,
            "interval_s": self.interval,
            "replicas": sorted(self.totals.busy, key=lambda r: (len(r), r)),
            "samples": self.timeline,
        }
