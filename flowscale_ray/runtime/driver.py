"""RayExecutor: the central driver. Many prompts' searches in flight, their requests pooled and sharded over
model replicas, decisions made centrally by the methods, failures recovered by replaying lineage.

Loop: start searches up to `in_flight`; plan each ready batch over the replicas (placement.plan_batch: run an
expansion where its parent lives unless that replica is overloaded, then copy the parent); give every idle
replica all of its queued work in one call (continuous batching: a search advances as soon as all parts of
its batch are back, and the next prompt starts as soon as one finishes); route releases to the replicas that
hold the particles; finalize the selected particle on its holder.

Faults: every call has a deadline. A replica that dies or misses its deadline is restarted by Ray (killed
first if it hung); the particles it held are rebuilt on it from their recorded lineage (same noise keys, so
bit-identical), and the work it lost is sent again. Results equal a run without the fault. A replica that
fails more than `max_restarts` times fails the run with a clear message.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution.tasks import SearchTask, TaskResult, build_result, decision_seed, lineage_of, selected_pids
from flowscale_ray.observe.recorder import CALL_STATS, NULL_RECORDER, CallStats, Recorder
from flowscale_ray.runtime.cluster import start_ray  # noqa: F401  (flowscale_ray/job.py imports it from here)
from flowscale_ray.runtime.messages import ComponentSpec, ParticleResult
from flowscale_ray.runtime.placement import batch_cost, plan_batch
from flowscale_ray.runtime.replica import ReplicaWorker
from flowscale_ray.search.protocol import Batch, Evaluation, Expand, Init, SearchContext, SearchGenerator

log = logging.getLogger("flowscale_ray.runtime")


class RuntimeFailure(RuntimeError):
    """The run cannot continue (a replica keeps dying, or failed to start)."""


@dataclass(frozen=True)
class RuntimeOptions:
    replicas: int = 1
    in_flight: int = 8
    micro_batch: int | None = None
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    call_timeout_s: float = 600.0
    start_timeout_s: float = 300.0
    max_restarts: int = 3
    slack: float | None = None  # rows a parent's replica may be above the least-loaded one; None: micro_batch or 8
    delay_per_call: float = 0.0  # replicas sleep this long per call (stand-in for GPU time in benchmarks)
    reward_actors: int = 0  # 0: rewards run inside the model replicas; n: a pool of n reward actors
    reward_num_cpus: float = 1.0
    reward_num_gpus: float = 0.0


@dataclass
class _Task:
    key: int
    task: SearchTask
    gen: SearchGenerator
    batch: Batch | None
    started: float
    holders: dict[int, set[int]] = field(default_factory=dict)  # pid -> replicas holding it
    lineage: dict[int, Init | Expand] = field(default_factory=dict)
    parts: set[int] = field(default_factory=set)  # replicas with outstanding parts of the current batch
    scoring: int = 0  # outstanding reward-actor calls for the current batch
    results: dict[int, ParticleResult] = field(default_factory=dict)
    search_rewards: dict[int, float] = field(default_factory=dict)
    nfe: int = 0
    opened_on: set[int] = field(default_factory=set)


@dataclass
class _Queued:
    key: int
    batch: Batch
    copies: list[tuple[int, int]]  # (pid, source replica) to adopt before running
    rows: float = 0.0  # velocity rows it costs (placement.batch_cost)


@dataclass
class _Call:
    kind: str  # "run" | "finalize" on a replica; "score" | "score_final" on a reward actor
    replica: int  # replica or reward actor index
    items: list[_Queued] = field(default_factory=list)
    key: int | None = None
    deadline: float = math.inf
    args: tuple = ()  # for reward calls: what to send again if the actor fails
    value: Any = None  # score_final: the finalize output waiting for its rewards
    rows: float = 0.0  # run calls: velocity rows in progress (the replica's load until it returns)


class RayExecutor:
    def __init__(
        self,
        model: ComponentSpec,
        sampler: SamplerSpec,
        reward: ComponentSpec,
        held_out: ComponentSpec | None = None,
        options: RuntimeOptions | None = None,
        worker: type = ReplicaWorker,
        top_k: int = 1,
    ) -> None:
        """`worker` is the replica class (ReplicaWorker; DelayReplica stands in for GPUs in benchmarks)."""
        if not ray.is_initialized():
            raise RuntimeFailure("Ray is not initialised: call ray.init() (flowscale run does) first")
        self.options = opts = options or RuntimeOptions()
        self.top_k = top_k
        self._next_key = 0  # task keys are unique for the executor's life, across run() calls
        if opts.replicas < 1 or opts.in_flight < 1:
            raise ValueError("replicas and in_flight must be >= 1")
        self.sampler = sampler
        self.context = SearchContext(grid=sampler.grid_times())
        separate = opts.reward_actors > 0
        self._args = (
            model,
            sampler,
            None if separate else reward,
            None if separate else held_out,
            opts.micro_batch,
            opts.delay_per_call,
        )
        self._cls = ray.remote(worker).options(
            num_cpus=opts.num_cpus, num_gpus=opts.num_gpus, max_restarts=opts.max_restarts, max_task_retries=0
        )
        self.replicas = [self._cls.remote(*self._args) for _ in range(opts.replicas)]
        self.incarnations = self._wait_ready(range(opts.replicas))
        self.model_id = self._model_id
        self.restarts = [0] * opts.replicas
        self.rewarders: list[Any] = []
        self.reward_restarts = [0] * opts.reward_actors
        if separate:
            from flowscale_ray.runtime.rewarder import RewardWorker

            cls = ray.remote(RewardWorker).options(
                num_cpus=opts.reward_num_cpus,
                num_gpus=opts.reward_num_gpus,
                max_restarts=opts.max_restarts,
                max_task_retries=0,
            )
            self.rewarders = [cls.remote(reward, held_out) for _ in range(opts.reward_actors)]
            try:
                ray.get([a.ready.remote() for a in self.rewarders], timeout=opts.start_timeout_s)
            except (RayActorError, RayTaskError) as exc:
                raise RuntimeFailure(f"a reward actor failed to start: {_cause(exc)}") from None
            except GetTimeoutError:
                raise RuntimeFailure(f"reward actors did not start within {opts.start_timeout_s:.0f}s") from None
        self._next_rewarder = 0
        self._previews: dict[Any, Any] = {}  # run-call result ref -> its previews ref
        self.slack = opts.slack if opts.slack is not None else float(opts.micro_batch or 8)
        self.metrics: dict[str, Any] = {"rounds": 0, "replayed_nfe": 0, "restarts": 0, "copies": 0, "calls": 0}
        self._closes: dict[int, list[int]] = {}  # replica -> finished task keys to close there
        self.recorder: Recorder = NULL_RECORDER  # metrics and progress hooks (flowscale_ray.observe)
        gc.freeze()  # libraries loaded so far live forever: keep them out of the driver's GC scans

    # -- start-up and health ---------------------------------------------------------------------------------
    def _wait_ready(self, indices: Iterable[int]) -> list[str]:
        indices = list(indices)
        refs = [self.replicas[i].ready.remote() for i in indices]
        try:
            infos = ray.get(refs, timeout=self.options.start_timeout_s)
        except GetTimeoutError:
            raise RuntimeFailure(
                f"model replicas did not start within {self.options.start_timeout_s:.0f}s "
                "(not enough resources for them, or a model that takes too long to load?)"
            ) from None
        except (RayActorError, RayTaskError) as exc:
            raise RuntimeFailure(f"a model replica failed to start: {_cause(exc)}") from None
        self._model_id = infos[0]["model"]
        return [i["incarnation"] for i in infos]

    def _wait_restarted(self, r: int) -> str:
        """Poll a restarting replica until its new incarnation answers (Ray re-runs its constructor)."""
        deadline = time.monotonic() + self.options.start_timeout_s
        while True:
            try:
                info = ray.get(self.replicas[r].ready.remote(), timeout=max(1.0, deadline - time.monotonic()))
                return info["incarnation"]
            except ActorUnavailableError:
                if time.monotonic() > deadline:
                    raise RuntimeFailure(
                        f"replica {r} did not come back within {self.options.start_timeout_s:.0f}s"
                    ) from None
                time.sleep(0.2)
            except GetTimeoutError:
                raise RuntimeFailure(
                    f"replica {r} did not come back within {self.options.start_timeout_s:.0f}s"
                ) from None
            except (ActorDiedError, RayActorError, RayTaskError) as exc:
                raise RuntimeFailure(f"replica {r} could not be restarted: {_cause(exc)}") from None

    def shutdown(self) -> None:
        for actor in [*self.replicas, *self.rewarders]:
            ray.kill(actor, no_restart=True)
        self.replicas, self.rewarders = [], []

    def stats(self) -> list[dict[str, Any]]:
        return ray.get([r.stats.remote() for r in self.replicas], timeout=self.options.call_timeout_s)

    # -- the loop -------------------------------------------------------------------------------------------
    def run(self, tasks: Iterable[SearchTask]) -> Iterator[TaskResult]:
        """Yield one TaskResult per task, in completion order. If the caller stops early or an error
        escapes, the unfinished tasks are closed on the replicas."""
        running: dict[int, _Task] = {}
        try:
            yield from self._loop(tasks, running)
        finally:
            self._abandon(running)

    def _loop(self, tasks: Iterable[SearchTask], running: dict[int, _Task]) -> Iterator[TaskResult]:
        pending = iter(tasks)
        ready: deque[int] = deque()  # tasks whose next batch waits to be planned
        queues: dict[int, list[_Queued]] = {r: [] for r in range(len(self.replicas))}
        releases: dict[int, dict[int, list[int]]] = {r: {} for r in range(len(self.replicas))}
        calls: dict[Any, _Call] = {}
        busy: set[int] = set()
        exhausted = False

        def advanced(t: _Task) -> None:
            """After t's batch is complete: the next batch is ready, or the search finished."""
            finished = self._advance(t, releases)
            if finished is not None:
                calls[finished[0]] = finished[1]
            elif t.batch is not None:
                ready.append(t.key)

        while True:
            while not exhausted and len(running) < self.options.in_flight:
                task = next(pending, None)
                if task is None:
                    exhausted = True
                    break
                key, self._next_key = self._next_key, self._next_key + 1
                gen = task.method.search(self.context, decision_seed(task.effective_seed, task.prompt.id))
                running[key] = _Task(key=key, task=task, gen=gen, batch=next(gen), started=time.perf_counter())
                ready.append(key)
            if not running and not calls:
                return
            if ready:
                # A replica's load is its queued rows plus the rows of its call in progress: counting only the
                # queue would make a replica that just returned look overloaded next to busy ones, and copy its
                # particles to replicas that cannot start them before their own call (and the export) is done.
                loads = [sum(q.rows for q in queues[r]) for r in range(len(self.replicas))]
                for c in calls.values():
                    if c.kind == "run":
                        loads[c.replica] += c.rows
                # Searches still to be planned in this pass count on the replica holding their particles already,
                # so that a replica whose searches come later in the pass does not look idle to earlier ones.
                reserved: dict[int, tuple[int, float]] = {}
                for key in ready:
                    t = running[key]
                    if t.batch is not None and not t.parts and t.batch.expands and key not in reserved:
                        owners = t.holders.get(t.batch.expands[0].parent)
                        if owners:
                            home, rows = min(owners), float(batch_cost(t.batch))
                            loads[home] += rows
                            reserved[key] = (home, rows)
                while ready:
                    key = ready.popleft()
                    t = running[key]
                    if key in reserved:
                        home, rows = reserved.pop(key)
                        loads[home] -= rows
                    if t.batch is None or t.parts:
                        continue
                    if len(t.batch) == 0:  # releases only: nothing to compute
                        advanced(t)
                    else:
                        self._plan(t, queues, loads)
            for r in range(len(self.replicas)):  # feed idle replicas everything queued for them
                if r not in busy and queues[r]:
                    ref = self._send(r, queues[r], releases[r], running)
                    calls[ref] = _Call(
                        "run",
                        r,
                        items=queues[r],
                        deadline=time.monotonic() + self.options.call_timeout_s,
                        rows=sum(q.rows for q in queues[r]),
                    )
                    queues[r], releases[r] = [], {}
                    busy.add(r)
            if not calls:
                continue
            timeout = max(0.0, min(c.deadline for c in calls.values()) - time.monotonic())
            done, rest = ray.wait(list(calls), num_returns=1, timeout=timeout)
            if not done:
                for ref in [ref for ref, c in calls.items() if c.deadline <= time.monotonic()]:
                    call = calls.pop(ref)
                    if call.kind in ("score", "score_final"):
                        ray.kill(self.rewarders[call.replica], no_restart=False)
                        self._rewarder_failed(call, calls)
                        continue
                    log.warning(
                        "replica %d missed its %.0fs deadline; restarting it", call.replica, self.options.call_timeout_s
                    )
                    ray.kill(self.replicas[call.replica], no_restart=False)
                    self._recover(call, running, queues, releases, calls, busy)
                continue
            if rest:  # drain everything else that has finished too
                more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
                done += more
            for ref in done:
                call = calls.pop(ref, None)
                if call is None:  # dropped by a recovery in this same pass
                    continue
                try:
                    value = ray.get(ref)
                    if call.kind == "run":
                        value = value[0] if isinstance(value, tuple) else value
                except RayActorError:
                    if call.kind in ("score", "score_final"):
                        self._rewarder_failed(call, calls)
                    else:
                        self._recover(call, running, queues, releases, calls, busy)
                    continue
                except RayTaskError as exc:
                    raise RuntimeFailure(f"replica {call.replica} failed: {_cause(exc)}") from None
                if call.kind == "run":
                    busy.discard(call.replica)
                    self.metrics["rounds"] += 1
                    stats = value.pop(CALL_STATS, None)
                    if stats is not None:
                        self.recorder.replica_call(call.replica, CallStats.from_dict(stats))
                    previews = self._previews.pop(ref, None)
                    if not self.rewarders:
                        previews = None
                    to_score = []
                    for item in call.items:
                        t = running[item.key]
                        rows = []
                        for row in value.get(item.key, ()):
                            res = ParticleResult(*row)
                            t.results[res.pid] = res
                            t.holders[res.pid] = {call.replica}
                            if res.preview is not None and previews is not None:
                                rows.append((res.pid, res.preview))
                                res.preview = None
                        if rows:
                            to_score.append((t, rows))
                        t.parts.discard(call.replica)
                    if to_score:
                        args = (
                            [(t.key, t.task.prompt, [row for _, row in rows]) for t, rows in to_score],
                            previews,
                        )
                        pids = {t.key: [pid for pid, _ in rows] for t, rows in to_score}
                        for t, _ in to_score:
                            t.scoring += 1
                        self._score(calls, "score", args, payload=pids)
                    for item in call.items:
                        t = running[item.key]
                        if not t.parts and t.scoring == 0:
                            advanced(t)
                elif call.kind == "score":
                    sent = call.deadline - self.options.call_timeout_s
                    self.recorder.reward_call(call.replica, time.monotonic() - sent)
                    for key, rewards in value.items():
                        t = running[key]
                        for pid, reward in zip(call.value[key], rewards, strict=True):
                            t.results[pid].reward = reward
                        t.scoring -= 1
                        if not t.parts and t.scoring == 0:
                            advanced(t)
                elif call.kind == "finalize" and self.rewarders:
                    t = running[call.key]  # type: ignore[index]
                    self._score(calls, "score_final", (t.task.prompt, value["images"]), payload=value, key=t.key)
                else:
                    if call.kind == "score_final":
                        value = {**call.value, **value}
                    t = running.pop(call.key)  # type: ignore[arg-type]
                    for r in t.opened_on:
                        self._closes.setdefault(r, []).append(t.key)
                    result = self._result(t, value)
                    yield result
            self._flush_closes(releases)

    def _abandon(self, running: dict[int, _Task]) -> None:
        """Close every unfinished task on the replicas (the generator was closed or an error escaped)."""
        for t in running.values():
            for r in t.opened_on:
                self._closes.setdefault(r, []).append(t.key)
        for r in list(self._closes):
            keys = self._closes.pop(r)
            with contextlib.suppress(Exception):  # a dead replica has nothing to close
                self.replicas[r].close.remote(keys)

    # -- helpers ---------------------------------------------------------------------------------------------
    def _plan(self, t: _Task, queues: dict[int, list[_Queued]], loads: list[float]) -> None:
        batch = t.batch
        assert batch is not None
        for req in (*batch.inits, *batch.expands):
            t.lineage[req.pid] = req
        plan = plan_batch(Batch(inits=batch.inits, expands=batch.expands), t.holders, loads, self.slack)
        copies: dict[int, list[tuple[int, int]]] = {}
        for pid, src, dst in plan.copies:
            copies.setdefault(dst, []).append((pid, src))
            self.metrics["copies"] += 1
        for r, reqs in plan.requests.items():
            sub = Batch(
                inits=tuple(q for q in reqs if isinstance(q, Init)),
                expands=tuple(q for q in reqs if isinstance(q, Expand)),
            )
            queues[r].append(_Queued(t.key, sub, copies.get(r, []), plan.rows[r]))
            t.parts.add(r)
        t.results = {}

    def _send(self, r: int, items: list[_Queued], releases: dict[int, list[int]], running: dict[int, _Task]) -> Any:
        opens, adopt = [], []
        for item in items:
            t = running[item.key]
            if r not in t.opened_on:
                opens.append((t.key, t.task.prompt, t.task.effective_seed))
                t.opened_on.add(r)
            by_src: dict[int, list[int]] = {}
            for pid, src in item.copies:
                by_src.setdefault(src, []).append(pid)
                t.holders.setdefault(pid, set()).add(r)
            for src, pids in by_src.items():
                adopt.append((item.key, self.replicas[src].export.remote(item.key, pids)))
        self.metrics["calls"] += 1
        rel = [(k, v) for k, v in releases.items() if v]
        work = [(i.key, i.batch.pack()) for i in items]
        results, previews = (
            self.replicas[r]
            .run.options(num_returns=2)
            .remote(work, opens, rel, [k for k, _ in adopt], *[ref for _, ref in adopt])
        )
        self._previews[results] = previews  # owned by the driver; never fetched here
        return results

    def _advance(self, t: _Task, releases: dict[int, dict[int, list[int]]]) -> tuple[Any, _Call] | None:
        """All parts of t's batch are back: feed the method; queue releases; finalize when it returns."""
        batch = t.batch
        assert batch is not None
        evals = {}
        for req in (*batch.inits, *batch.expands):
            res = t.results[req.pid]
            t.nfe += res.nfe
            t.search_rewards[req.pid] = res.reward
            evals[req.pid] = Evaluation(pid=req.pid, reward=res.reward, s=res.s, nfe=res.nfe)
        self.recorder.batch_evaluated(sum(e.nfe for e in evals.values()), [e.reward for e in evals.values()])
        for pid in batch.release:
            t.search_rewards.pop(pid, None)
            for r in t.holders.pop(pid, set()):
                releases[r].setdefault(t.key, []).append(pid)
        t.results = {}
        try:
            t.batch = t.gen.send(evals)
            return None
        except StopIteration as stop:
            t.batch = None
            t.outcome = stop.value  # type: ignore[attr-defined]
            return self._finalize(t)

    def _finalize(self, t: _Task) -> tuple[Any, _Call]:
        """Finalize the top-k selected particles, all on one replica (copies come along if needed)."""
        pids = selected_pids(t.outcome, self.top_k)  # type: ignore[attr-defined]
        holder = min(t.holders[pids[0]])
        missing = [p for p in pids if holder not in t.holders.get(p, set())]
        adopt = []
        if missing:
            by_src: dict[int, list[int]] = {}
            for p in missing:
                by_src.setdefault(min(t.holders[p]), []).append(p)
            adopt = [self.replicas[src].export.remote(t.key, ps) for src, ps in by_src.items()]
        ref = self.replicas[holder].finalize.remote(t.key, pids, *adopt)
        return ref, _Call("finalize", holder, key=t.key, deadline=time.monotonic() + self.options.call_timeout_s)

    def _result(self, t: _Task, value: dict[str, Any]) -> TaskResult:
        outcome = t.outcome  # type: ignore[attr-defined]
        pids = selected_pids(outcome, self.top_k)
        return build_result(
            t.task,
            outcome,
            pids,
            value["samples"],
            value["images"],
            value["rewards"],
            value.get("held_out"),
            t.lineage,
            t.search_rewards,
            t.nfe,
            t.started,
        )

    def _flush_closes(self, releases: dict[int, dict[int, list[int]]]) -> None:
        """Close finished tasks on their replicas (drops all their particles there)."""
        for r in list(self._closes):
            keys = self._closes.pop(r)
            for k in keys:
                releases[r].pop(k, None)
            self.replicas[r].close.remote(keys)  # fire and forget: runs before the replica's next call

    def _score(self, calls: dict[Any, _Call], kind: str, args: tuple, payload: Any, key: int | None = None) -> None:
        """Send a scoring call to the next reward actor (round robin)."""
        a = self._next_rewarder % len(self.rewarders)
        self._next_rewarder += 1
        method = self.rewarders[a].score if kind == "score" else self.rewarders[a].score_final
        ref = method.remote(*args)
        deadline = time.monotonic() + self.options.call_timeout_s
        calls[ref] = _Call(kind, a, key=key, deadline=deadline, args=args, value=payload)

    def _rewarder_failed(self, call: _Call, calls: dict[Any, _Call]) -> None:
        a = call.replica
        self.reward_restarts[a] += 1
        self.metrics["restarts"] += 1
        self.recorder.replica_restart(a, "reward")
        if self.reward_restarts[a] > self.options.max_restarts:
            raise RuntimeFailure(
                f"reward actor {a} failed {self.reward_restarts[a]} times (max_restarts={self.options.max_restarts}); "
                "giving up"
            )
        log.warning("reward actor %d died; sending its scoring call again", a)
        self._score(calls, call.kind, call.args, payload=call.value, key=call.key)

    # -- recovery --------------------------------------------------------------------------------------------
    def _recover(
        self,
        call: _Call,
        running: dict[int, _Task],
        queues: dict[int, list[_Queued]],
        releases: dict[int, dict[int, list[int]]],
        calls: dict[Any, _Call],
        busy: set[int],
    ) -> None:
        r = call.replica
        self.restarts[r] += 1
        self.metrics["restarts"] += 1
        self.recorder.replica_restart(r, "model")
        if self.restarts[r] > self.options.max_restarts:
            raise RuntimeFailure(
                f"replica {r} failed {self.restarts[r]} times (max_restarts={self.options.max_restarts}); giving up. "
                "Check the replica's log for the cause (out of memory, a crashing model, a broken GPU)."
            )
        log.warning(
            "replica %d died (failure %d of at most %d); rebuilding its particles",
            r,
            self.restarts[r],
            self.options.max_restarts,
        )
        # Every other outstanding call to r failed too: collect them.
        lost = [call]
        for ref in [ref for ref, c in calls.items() if c.replica == r and c.kind in ("run", "finalize")]:
            lost.append(calls.pop(ref))
            self._previews.pop(ref, None)
        self.incarnations[r] = self._wait_restarted(r)
        busy.discard(r)
        releases[r] = {}
        self._closes.pop(r, None)
        # Forget what r held; rebuild particles that now live nowhere.
        for t in running.values():
            t.opened_on.discard(r)
            orphans = []
            for pid, owners in t.holders.items():
                if r in owners:
                    owners.discard(r)
                    if not owners:
                        orphans.append(pid)
            if orphans:
                self._replay(t, r, orphans)
        # Send the lost work again.
        for c in lost:
            if c.kind == "run":
                queues[r] = c.items + queues[r]
            else:
                ref, new_call = self._finalize(running[c.key])  # type: ignore[index]
                calls[ref] = new_call

    def _replay(self, t: _Task, r: int, pids: list[int]) -> None:
        needed: dict[int, Init | Expand] = {}
        for pid in pids:
            for req in lineage_of(t.lineage, pid):
                needed[req.pid] = req
        requests = [needed[p] for p in sorted(needed)]  # parents have smaller pids than their children
        ref = self.replicas[r].replay.remote(t.key, t.task.prompt, t.task.effective_seed, requests, pids)
        try:
            self.metrics["replayed_nfe"] += ray.get(ref, timeout=self.options.call_timeout_s)
        except (RayActorError, GetTimeoutError) as exc:
            raise RuntimeFailure(f"replica {r} failed while rebuilding particles: {_cause(exc)}") from None
        t.opened_on.add(r)
        for pid in pids:
            t.holders[pid] = {r}


def _cause(exc: BaseException) -> str:
    """The first line of the underlying error (an actor's __init__ exception, a task's exception)."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}".splitlines()[0]
    text = str(exc).strip().splitlines()
    for line in reversed(text):
        if "Error" in line or "error" in line:
            return line.strip()
    return text[0] if text else type(exc).__name__
