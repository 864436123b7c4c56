"""Scheduler: the state of one `RayExecutor.run` and one handler per event.

State: the searches running (`Search`), the searches whose next batch waits to be planned (`ready`), per model
replica the work queued for it (`queues`) and the releases to send with its next call (`releases`), the
step calls in progress per replica (`in_progress`), every call in flight by its result reference (`calls`), the
finished searches to close on their replicas (`closes`) and the previews reference of each step call in flight
(`previews`: owned by the driver and handed to a reward actor, never fetched here).

One round of `RayExecutor.run`: `start_searches` up to `in_flight`; `plan_ready` (placement.plan_batch: an
expansion runs where its parent lives unless that replica is overloaded, then the parent is copied); `send` to
every idle replica all of its queued work in one call; `wait` for calls; for each one back, `returned`
classifies the event and calls its handler:

- `step_returned`: a model replica computed a step call. Results go to their searches; previews go to a reward
  actor; a search whose batch is complete (all parts back and scored) advances (`advance`): its method gets the
  evaluations and yields the next batch (back to `ready`), or returns, and the search is finalized.
- `scores_returned`: a reward actor scored a step call's previews.
- `finalized` / `final_scores_returned`: a search's selected particles are at t = 0 (and scored): its
  TaskResult, and the search is closed on every replica that opened it.
- `replica_died`: a model replica died or missed its deadline (`deadlines_passed` kills it first). Ray
  restarts it; the particles only it held are rebuilt on it from their lineage (bit-identical), and its lost
  calls are sent again.
- `reward_actor_died`: the lost scoring call goes to the next reward actor (they are stateless).

What survives a run lives in the executor: the replicas and their restart counts, the reward pool, task keys
(unique for the executor's life), metrics. `discard` drops the rest: it closes every unfinished search on the
replicas (its particles go with it) and forgets the calls in flight.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from flowscale_ray.execution.tasks import (
    SearchTask,
    TaskResult,
    build_result,
    decision_seed,
    lineage_of,
    selected_pids,
)
from flowscale_ray.observe.recorder import CALL_STATS, CallStats
from flowscale_ray.runtime.calls import Call, FinalizeCall, Queued, ScoreCall, ScoreFinalCall, StepCall
from flowscale_ray.runtime.messages import ParticleResult
from flowscale_ray.runtime.options import RuntimeFailure, failure_cause
from flowscale_ray.runtime.placement import Loads, batch_cost, plan_batch
from flowscale_ray.search.protocol import Batch, Evaluation, Expand, Init, SearchGenerator, SearchOutcome

if TYPE_CHECKING:
    from flowscale_ray.runtime.driver import RayExecutor

log = logging.getLogger("flowscale_ray.runtime")


@dataclass
class Search:
    """One running search: its method's generator, the batch in progress, and where its particles live."""

    key: int  # unique for the executor's life
    task: SearchTask
    gen: SearchGenerator
    batch: Batch | None  # the batch in progress or waiting to be planned; None once the method returned
    started: float
    holders: dict[int, set[int]] = field(default_factory=dict)  # pid -> replicas holding it
    lineage: dict[int, Init | Expand] = field(default_factory=dict)  # pid -> the request that created it
    parts: set[int] = field(default_factory=set)  # replicas with outstanding parts of the current batch
    scoring: int = 0  # outstanding reward-actor calls for the current batch
    results: dict[int, ParticleResult] = field(default_factory=dict)  # the current batch's results so far
    search_rewards: dict[int, float] = field(default_factory=dict)  # last search reward of each live particle
    verifier_calls: int = 0  # scored candidates so far
    nfe: int = 0  # charged to the search (replays are not)
    model_seconds: float = 0.0  # its share (by rows) of the replica calls' model time
    reward_seconds: float = 0.0  # its share of the scoring time (in the replica, or the reward actors' calls)
    opened_on: set[int] = field(default_factory=set)  # replicas where the task is open
    outcome: SearchOutcome | None = None  # what the method returned; set when it finishes


class Scheduler:
    def __init__(self, executor: RayExecutor, tasks: Iterable[SearchTask]) -> None:
        self.ex = executor
        n = len(executor.replicas)
        self.pending: Iterator[SearchTask] = iter(tasks)
        self.exhausted = False  # no task left to start
        self.running: dict[int, Search] = {}
        self.ready: deque[int] = deque()  # searches whose next batch waits to be planned
        self.queues: dict[int, list[Queued]] = {r: [] for r in range(n)}
        self.releases: dict[int, dict[int, list[int]]] = {r: {} for r in range(n)}  # replica -> key -> pids
        self.in_progress = [0] * n  # step calls in progress per replica (at most `options.pipeline`)
        self.loads = Loads([0.0] * n)  # rows queued or in progress per replica (placement's view)
        self.calls: dict[Any, Call] = {}  # result reference -> the call in flight
        self.closes: dict[int, list[int]] = {}  # replica -> finished search keys to close there
        self.previews: dict[Any, Any] = {}  # step call result reference -> its previews reference
        self.finalizing = 0  # running searches whose method returned (their finalize is in flight)

    @property
    def done(self) -> bool:
        return not self.running and not self.calls

    # -- a round ---------------------------------------------------------------------------------------------
    def start_searches(self) -> None:
        """Start searches until `in_flight` are searching or no task is left (a search being finalized no longer
        counts: its replica gets the next prompt's work at once instead of waiting for the finalize)."""
        while not self.exhausted and len(self.running) - self.finalizing < self.ex.options.in_flight:
            task = next(self.pending, None)
            if task is None:
                self.exhausted = True
                break
            key = self.ex.new_key()
            gen = task.method.search(self.ex.context, decision_seed(task.effective_seed, task.prompt.id))
            self.running[key] = Search(key=key, task=task, gen=gen, batch=next(gen), started=time.perf_counter())
            self.ready.append(key)

    def plan_ready(self) -> None:
        """Plan every ready search's batch over the replicas (a batch of releases only advances at once)."""
        if not self.ready:
            return
        # A replica's load (`self.loads`, kept up to date) is its queued rows plus the rows of its calls in
        # progress: counting only the queue would make a replica that just returned look overloaded next to busy
        # ones, and copy its particles to replicas that cannot start them before their own call (and the export)
        # is done.
        loads = self.loads
        # Searches still to be planned in this pass count on the replica holding their particles already, so
        # that a replica whose searches come later in the pass does not look idle to earlier ones.
        reserved: dict[int, tuple[int, float]] = {}
        for key in self.ready:
            t = self.running[key]
            if t.batch is not None and not t.parts and t.batch.expands and key not in reserved:
                owners = t.holders.get(t.batch.expands[0].parent)
                if owners:
                    home, rows = min(owners), float(batch_cost(t.batch))
                    loads[home] += rows
                    reserved[key] = (home, rows)
        while self.ready:
            key = self.ready.popleft()
            t = self.running[key]
            if key in reserved:
                home, rows = reserved.pop(key)
                loads[home] -= rows
            if t.batch is None or t.parts:
                continue
            if len(t.batch) == 0:  # releases only: nothing to compute
                self.advance(t)
            else:
                self.plan(t, loads)

    def plan(self, t: Search, loads: Loads) -> None:
        """Queue t's batch on the replicas placement picks (`loads` is updated in place)."""
        batch = t.batch
        assert batch is not None
        requests: tuple[Init | Expand, ...] = (*batch.inits, *batch.expands)
        for req in requests:
            t.lineage[req.pid] = req
        plan = plan_batch(Batch(inits=batch.inits, expands=batch.expands), t.holders, loads, self.ex.slack)
        copies: dict[int, list[tuple[int, int]]] = {}
        for pid, src, dst in plan.copies:
            copies.setdefault(dst, []).append((pid, src))
            self.ex.metrics["copies"] += 1
        for r, reqs in plan.requests.items():
            sub = Batch(
                inits=tuple(q for q in reqs if isinstance(q, Init)),
                expands=tuple(q for q in reqs if isinstance(q, Expand)),
            )
            self.queues[r].append(Queued(t.key, sub, copies.get(r, []), plan.rows[r]))
            t.parts.add(r)
        t.results = {}

    def send_to_idle_replicas(self) -> None:
        """Send each replica its queued work. Without a micro-batch: everything queued, in one call, to every
        idle replica. With one, a replica keeps up to `pipeline` calls in progress, so that the next call is
        already waiting on it while the driver handles the one that came back (the round trip is hidden), and
        calls are cut in whole micro-batches: an idle replica with at least two micro-batches queued gets half
        of them (rounded up to a micro-batch) and then, like a replica with a call in progress, only the queued
        work that fills whole micro-batches; the rest waits for the next call (a padded micro-batch costs as
        much as a full one). An idle replica always gets something."""
        mb = self.ex.options.micro_batch
        depth = max(1, self.ex.options.pipeline) if mb else 1
        for r in range(len(self.ex.replicas)):
            while self.queues[r] and self.in_progress[r] < depth:
                queue = self.queues[r]
                items: list[Queued]
                rest: list[Queued]
                if mb is None or depth == 1:
                    items, rest = queue, []
                else:
                    total = sum(q.rows for q in queue)
                    if self.in_progress[r] == 0:
                        target = mb * -(-total // (2 * mb)) if total >= 2 * mb else total
                    else:
                        target = mb * (total // mb)
                    items, rest = take(queue, target)
                    if not items:
                        if self.in_progress[r]:
                            break
                        items, rest = queue, []
                ref = self.send(r, items)
                deadline = time.monotonic() + self.ex.options.call_timeout_s
                self.calls[ref] = StepCall(r, tuple(items), rows=sum(q.rows for q in items), deadline=deadline)
                self.queues[r], self.releases[r] = rest, {}
                self.in_progress[r] += 1

    def send(self, r: int, items: list[Queued]) -> Any:
        """Send a step call to replica r: its queued work, the tasks to open there, the copies to adopt (exported
        by their holders; Ray resolves them before the call runs) and the releases waiting for r."""
        opens, adopt = [], []
        for item in items:
            t = self.running[item.key]
            if r not in t.opened_on:
                opens.append((t.key, t.task.prompt, t.task.effective_seed))
                t.opened_on.add(r)
            by_src: dict[int, list[int]] = {}
            for pid, src in item.copies:
                by_src.setdefault(src, []).append(pid)
                t.holders.setdefault(pid, set()).add(r)
            for src, pids in by_src.items():
                adopt.append((item.key, self.ex.replicas[src].export.remote(item.key, pids)))
        self.ex.metrics["calls"] += 1
        rel = [(k, v) for k, v in self.releases[r].items() if v]
        work = [(i.key, i.batch.pack()) for i in items]
        results, previews = (
            self.ex.replicas[r]
            .run.options(num_returns=2)
            .remote(work, opens, rel, [k for k, _ in adopt], *[ref for _, ref in adopt])
        )
        self.previews[results] = previews  # owned by the driver; never fetched here
        return results

    def wait(self) -> list[Any]:
        """The calls back (at least one), or none when the nearest deadline passed first."""
        timeout = max(0.0, min(c.deadline for c in self.calls.values()) - time.monotonic())
        done, rest = ray.wait(list(self.calls), num_returns=1, timeout=timeout)
        if done and rest:  # drain everything else that has finished too
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            done += more
        return done

    def returned(self, ref: Any) -> TaskResult | None:
        """Call `ref` is back: fetch it and hand it to its event's handler. A finished search's result."""
        call = self.calls.pop(ref, None)
        if call is None:  # dropped by a recovery in this same pass
            return None
        try:
            value = ray.get(ref)
        except RayActorError:
            match call:
                case StepCall() | FinalizeCall():
                    self.replica_died(ref, call)
                case ScoreCall() | ScoreFinalCall():
                    self.reward_actor_died(call)
            return None
        except RayTaskError as exc:
            match call:
                case StepCall(replica=r) | FinalizeCall(replica=r):
                    raise RuntimeFailure(f"replica {r} failed: {failure_cause(exc)}") from None
                case ScoreCall(actor=a) | ScoreFinalCall(actor=a):
                    raise RuntimeFailure(f"reward actor {a} failed: {failure_cause(exc)}") from None
        match call:
            case StepCall() | FinalizeCall():
                return self.model_call_returned(ref, call, value)
            case ScoreCall() | ScoreFinalCall():
                return self.reward_call_returned(call, value)
        raise TypeError(f"unknown call {call!r}")

    def flush_closes(self) -> None:
        """Close finished searches on their replicas (drops all their particles there)."""
        for r in list(self.closes):
            keys = self.closes.pop(r)
            for k in keys:
                self.releases[r].pop(k, None)
            self.ex.replicas[r].close.remote(keys)  # fire and forget: runs before the replica's next call

    # -- events ----------------------------------------------------------------------------------------------
    def model_call_returned(self, ref: Any, call: StepCall | FinalizeCall, value: Any) -> TaskResult | None:
        match call:
            case StepCall():
                value = value[0] if isinstance(value, tuple) else value
                self.step_returned(ref, call, value)
                return None
            case FinalizeCall(key=key) if self.ex.rewards:
                t = self.running[key]
                ref, scoring = self.ex.rewards.score_final(t.key, t.task.prompt, value)
                self.calls[ref] = scoring
                return None
            case FinalizeCall(key=key):
                return self.finished(key, value)

    def reward_call_returned(self, call: ScoreCall | ScoreFinalCall, value: Any) -> TaskResult | None:
        match call:
            case ScoreCall():
                self.scores_returned(call, value)
                return None
            case ScoreFinalCall(key=key, finalized=finalized):
                return self.finished(key, {**finalized, **value})

    def step_returned(self, ref: Any, call: StepCall, value: dict[Any, Any]) -> None:
        r = call.replica
        self.in_progress[r] -= 1
        self.loads[r] -= call.rows
        self.ex.metrics["rounds"] += 1
        stats = value.pop(CALL_STATS, None)
        if stats is not None:
            self.ex.recorder.replica_call(r, CallStats.from_dict(stats))
        previews = self.previews.pop(ref, None)
        if not self.ex.rewards:
            previews = None
        to_score = []
        if stats is not None:  # the call's time, split by each search's rows in it
            total = sum(len(value.get(item.key, ())) for item in call.items) or 1
            for item in call.items:
                share = len(value.get(item.key, ())) / total
                self.running[item.key].model_seconds += stats["step_seconds"] * share
                self.running[item.key].reward_seconds += (stats.get("reward_seconds") or 0.0) * share
        for item in call.items:
            t = self.running[item.key]
            rows = []
            for row in value.get(item.key, ()):
                res = ParticleResult(*row)
                t.results[res.pid] = res
                t.holders[res.pid] = {r}
                if res.preview is not None and previews is not None:
                    rows.append((res.pid, res.preview))
                    res.preview = None
            if rows:
                to_score.append((t, rows))
            t.parts.discard(r)
        if to_score:
            pids = {t.key: [pid for pid, _ in rows] for t, rows in to_score}
            for t, _ in to_score:
                t.scoring += 1
            ref, scoring = self.ex.rewards.score(
                [(t.key, t.task.prompt, [row for _, row in rows]) for t, rows in to_score], previews, pids
            )
            self.calls[ref] = scoring
        for item in call.items:
            t = self.running[item.key]
            if not t.parts and t.scoring == 0:
                self.advance(t)

    def scores_returned(self, call: ScoreCall, value: dict[int, list[float]]) -> None:
        elapsed = time.monotonic() - call.sent
        self.ex.recorder.reward_call(call.actor, elapsed)
        total = sum(len(rewards) for rewards in value.values()) or 1
        for key, rewards in value.items():
            t = self.running[key]
            t.reward_seconds += elapsed * len(rewards) / total
            for pid, reward in zip(call.pids[key], rewards, strict=True):
                t.results[pid].reward = reward
            t.scoring -= 1
            if not t.parts and t.scoring == 0:
                self.advance(t)

    def finished(self, key: int, value: dict[str, Any]) -> TaskResult:
        """Search `key` is finalized (and scored): its result; it is closed on every replica that opened it."""
        t = self.running.pop(key)
        self.finalizing -= 1
        for r in t.opened_on:
            self.closes.setdefault(r, []).append(t.key)
        assert t.outcome is not None
        pids = selected_pids(t.outcome, self.ex.top_k)
        return build_result(
            t.task,
            t.outcome,
            pids,
            value["samples"],
            value["images"],
            value["rewards"],
            value.get("held_out"),
            t.lineage,
            t.search_rewards,
            t.nfe,
            t.started,
            t.verifier_calls,
            t.model_seconds,
            t.reward_seconds,
            final_calls=self.ex.charge(value["rewards"]),
        )

    def deadlines_passed(self) -> None:
        """Calls past their deadline: kill their replica or reward actor (Ray restarts it) and recover."""
        for ref in [ref for ref, c in self.calls.items() if c.deadline <= time.monotonic()]:
            call = self.calls.pop(ref, None)
            match call:
                case None:  # dropped by the recovery of an earlier call to the same replica
                    continue
                case ScoreCall(actor=a) | ScoreFinalCall(actor=a):
                    self.ex.rewards.kill(a)
                    self.reward_actor_died(call)
                case StepCall(replica=r) | FinalizeCall(replica=r):
                    timeout = self.ex.options.call_timeout_s
                    log.warning("replica %d missed its %.0fs deadline; restarting it", r, timeout)
                    self.ex.kill_replica(r)
                    self.replica_died(ref, call)

    def replica_died(self, ref: Any, call: StepCall | FinalizeCall) -> None:
        """Replica r died (or was killed): wait for Ray to restart it, rebuild the particles that only it held
        from their lineage, and send its lost calls again."""
        r = call.replica
        self.ex.replica_failed(r)  # counts it; fails the run past max_restarts
        # Every other outstanding call to r failed too: collect them.
        self.previews.pop(ref, None)
        lost: list[StepCall | FinalizeCall] = [call]
        for other in [k for k, c in self.calls.items() if isinstance(c, StepCall | FinalizeCall) and c.replica == r]:
            lost.append(self.calls.pop(other))  # type: ignore[arg-type]
            self.previews.pop(other, None)
        self.ex.wait_restarted(r)
        self.in_progress[r] = 0
        self.releases[r] = {}
        self.closes.pop(r, None)
        # Forget what r held; rebuild particles that now live nowhere.
        for t in self.running.values():
            t.opened_on.discard(r)
            orphans = []
            for pid, owners in t.holders.items():
                if r in owners:
                    owners.discard(r)
                    if not owners:
                        orphans.append(pid)
            if orphans:
                self.replay(t, r, orphans)
        # Send the lost work again.
        for c in lost:
            match c:
                case StepCall(items=items):
                    self.queues[r] = [*items, *self.queues[r]]
                case FinalizeCall(key=key):
                    self.finalize(self.running[key])

    def reward_actor_died(self, call: ScoreCall | ScoreFinalCall) -> None:
        """Reward actors are stateless: send the lost call again, to the next actor."""
        self.ex.metrics["restarts"] += 1
        self.ex.recorder.replica_restart(call.actor, "reward")
        self.ex.rewards.failed(call.actor)  # counts it; fails the run past max_restarts
        ref, again = self.ex.rewards.resend(call)
        self.calls[ref] = again

    # -- helpers ---------------------------------------------------------------------------------------------
    def advance(self, t: Search) -> None:
        """All parts of t's batch are back: feed the method, queue the releases; then the next batch is ready,
        or the method returned and the search is finalized."""
        batch = t.batch
        assert batch is not None
        evals = {}
        requests: tuple[Init | Expand, ...] = (*batch.inits, *batch.expands)
        for req in requests:
            res = t.results[req.pid]
            t.nfe += res.nfe
            t.search_rewards[req.pid] = res.reward
            evals[req.pid] = Evaluation(pid=req.pid, reward=res.reward, s=res.s, nfe=res.nfe)
        self.ex.recorder.batch_evaluated(sum(e.nfe for e in evals.values()), [e.reward for e in evals.values()])
        t.verifier_calls += self.ex.charge([evals[req.pid].reward for req in requests if req.score])
        for pid in batch.release:
            t.search_rewards.pop(pid, None)
            for r in t.holders.pop(pid, set()):
                self.releases[r].setdefault(t.key, []).append(pid)
        t.results = {}
        try:
            t.batch = t.gen.send(evals)
        except StopIteration as stop:
            t.batch = None
            t.outcome = stop.value
            self.finalizing += 1
            self.finalize(t)
            return
        if t.batch is not None:
            self.ready.append(t.key)

    def finalize(self, t: Search) -> None:
        """Finalize the top-k selected particles, all on one replica (copies come along if needed)."""
        assert t.outcome is not None
        pids = selected_pids(t.outcome, self.ex.top_k)
        holder = min(t.holders[pids[0]])
        missing = [p for p in pids if holder not in t.holders.get(p, set())]
        adopt = []
        if missing:
            by_src: dict[int, list[int]] = {}
            for p in missing:
                by_src.setdefault(min(t.holders[p]), []).append(p)
            adopt = [self.ex.replicas[src].export.remote(t.key, ps) for src, ps in by_src.items()]
        ref = self.ex.replicas[holder].finalize.remote(t.key, pids, *adopt)
        self.calls[ref] = FinalizeCall(holder, t.key, deadline=time.monotonic() + self.ex.options.call_timeout_s)

    def replay(self, t: Search, r: int, pids: list[int]) -> None:
        """Rebuild particles `pids` of t on replica r from their lineage (not charged to the search)."""
        needed: dict[int, Init | Expand] = {}
        for pid in pids:
            for req in lineage_of(t.lineage, pid):
                needed[req.pid] = req
        requests = [needed[p] for p in sorted(needed)]  # parents have smaller pids than their children
        ref = self.ex.replicas[r].replay.remote(t.key, t.task.prompt, t.task.effective_seed, requests, pids)
        try:
            self.ex.metrics["replayed_nfe"] += ray.get(ref, timeout=self.ex.options.call_timeout_s)
        except (RayActorError, GetTimeoutError) as exc:
            raise RuntimeFailure(f"replica {r} failed while rebuilding particles: {failure_cause(exc)}") from None
        t.opened_on.add(r)
        for pid in pids:
            t.holders[pid] = {r}

    def discard(self) -> None:
        """Drop every unfinished search: close it on the replicas that opened it (its particles go with it), and
        forget the calls in flight (they still run; their results are dropped). Idempotent; the scheduler is
        then done, and starts nothing more."""
        for t in self.running.values():
            for r in t.opened_on:
                self.closes.setdefault(r, []).append(t.key)
        for r in list(self.closes):
            keys = self.closes.pop(r)
            with contextlib.suppress(Exception):  # a dead replica has nothing to close
                self.ex.replicas[r].close.remote(keys)
        self.exhausted = True
        self.finalizing = 0
        self.running.clear()
        self.ready.clear()
        self.calls.clear()
        self.previews.clear()
        self.in_progress = [0] * len(self.in_progress)
        self.loads = Loads([0.0] * len(self.in_progress))
        for r in self.queues:
            self.queues[r], self.releases[r] = [], {}


def take(queue: list[Queued], target: float) -> tuple[list[Queued], list[Queued]]:
    """Queued shares in order while their rows fit in `target` (a share that does not fit is skipped, a later
    smaller one may still fit): (taken, left), both in queue order."""
    taken, left, rows = [], [], 0.0
    for q in queue:
        if rows + q.rows <= target:
            taken.append(q)
            rows += q.rows
        else:
            left.append(q)
    return taken, left
