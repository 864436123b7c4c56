"""Every Prometheus metric flowscale exports, declared once, here (prefix `flowscale_`).

Label keys come from a small fixed set: `method`, `model`, `reward` (what a run is), `replica` (a model
replica's index, or `reward-N` for a reward actor) and `kind` (`model` or `reward` for restarts). Never a
prompt or particle id: series count stays bounded whatever the number of prompts.

The metrics live in their own registry (`REGISTRY`), served by `serve()` from the driver process only.
Actor-side figures (per-call busy time, batch size, step and reward time) come back with the replica
results the driver already receives and are recorded here (see flowscale_ray.observe.recorder).
"""

from __future__ import annotations

import threading
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server

LABEL_KEYS = frozenset({"method", "model", "reward", "replica", "kind", "reason", "part"})
RUN = ("method", "model", "reward")  # the labels of run-level series

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY, namespace="flowscale")

# Reward scales differ between rewards (log densities, counting errors, CLIP-like scores): symmetric,
# roughly logarithmic buckets cover them all.
REWARD_BUCKETS = (-100, -50, -20, -10, -5, -2, -1, -0.5, -0.2, -0.1, 0, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
PROMPT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
ESS_BUCKETS = (1, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)

# -- search (from the methods' own evaluations and StepRecords) ------------------------------------------------
NFE = Counter(
    "flowscale_nfe",
    "Velocity evaluations charged to searches (1 per particle per model evaluation); replays excluded",
    RUN,
    registry=REGISTRY,
)
CANDIDATES = Counter(
    "flowscale_candidates_scored",
    "Candidates the methods scored (sum of StepRecord.candidates)",
    RUN,
    registry=REGISTRY,
)
CANDIDATE_REWARD = Histogram(
    "flowscale_candidate_reward",
    "Reward of every scored candidate particle during search",
    RUN,
    buckets=REWARD_BUCKETS,
    registry=REGISTRY,
)
RBF_ACCEPTS = Counter(
    "flowscale_rbf_accepts",
    "RBF candidates accepted by strict improvement (StepRecord.accepted)",
    RUN,
    registry=REGISTRY,
)
RBF_ROLLOVERS = Counter(
    "flowscale_rbf_rollovers",
    "RBF NFE quota rolled over to the next step (sum of StepRecord.rollover)",
    RUN,
    registry=REGISTRY,
)
SMC_RESAMPLES = Counter(
    "flowscale_smc_resamples", "SMC steps that resampled (StepRecord.resampled)", RUN, registry=REGISTRY
)
SMC_ESS = Histogram(
    "flowscale_smc_ess",
    "SMC effective sample size at each step (StepRecord.ess)",
    RUN,
    buckets=ESS_BUCKETS,
    registry=REGISTRY,
)
BEST_REWARD = Histogram(
    "flowscale_prompt_best_reward",
    "Reward of each finished prompt's selected (best) sample",
    RUN,
    buckets=REWARD_BUCKETS,
    registry=REGISTRY,
)
LAST_BEST_REWARD = Gauge(
    "flowscale_prompt_best_reward_last", "Best reward of the most recently finished prompt", RUN, registry=REGISTRY
)

# -- prompts -----------------------------------------------------------------------------------------------------
PROMPTS_TOTAL = Gauge("flowscale_prompts_total", "Prompts this run call has to do", RUN, registry=REGISTRY)
PROMPTS_STARTED = Counter(
    "flowscale_prompts_started", "Searches started (handed to the executor)", RUN, registry=REGISTRY
)
PROMPTS_FINISHED = Counter("flowscale_prompts_finished", "Prompts whose search finished", RUN, registry=REGISTRY)
PROMPTS_FAILED = Counter("flowscale_prompts_failed", "Prompts whose search raised", RUN, registry=REGISTRY)
PROMPTS_IN_FLIGHT = Gauge("flowscale_prompts_in_flight", "Searches running now", RUN, registry=REGISTRY)
PROMPT_SECONDS = Histogram(
    "flowscale_prompt_seconds", "Wall time of one prompt's search", RUN, buckets=PROMPT_BUCKETS, registry=REGISTRY
)
LAST_PROGRESS = Gauge(
    "flowscale_last_progress_timestamp_seconds",
    "Unix time of the last evaluated batch or finished prompt (a stalled run stops moving it)",
    RUN,
    registry=REGISTRY,
)
RUN_START = Gauge("flowscale_run_start_timestamp_seconds", "Unix time the run call started", RUN, registry=REGISTRY)

# -- replicas (actor-side figures, returned with each call's results) ---------------------------------------------
REPLICAS = Gauge("flowscale_replicas", "Model replicas of the run (1 in-process)", ("model",), registry=REGISTRY)
REPLICA_BUSY = Counter(
    "flowscale_replica_busy_seconds",
    "Seconds a replica spent computing (model steps and in-replica rewards); rate() is its utilization",
    ("model", "replica"),
    registry=REGISTRY,
)
REPLICA_CALLS = Counter("flowscale_replica_calls", "Calls a replica served", ("model", "replica"), registry=REGISTRY)
REPLICA_NFE = Counter(
    "flowscale_replica_nfe",
    "Velocity evaluations a replica computed (includes replays after a restart)",
    ("model", "replica"),
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "flowscale_replica_batch_size",
    "Particles per replica call",
    ("model", "replica"),
    buckets=BATCH_BUCKETS,
    registry=REGISTRY,
)
STEP_SECONDS = Histogram(
    "flowscale_step_seconds",
    "Time of one replica call's model steps (all its particles)",
    ("model", "replica"),
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
REWARD_SECONDS = Histogram(
    "flowscale_reward_seconds",
    "Time to score one call's candidates (in the replica; round trip for reward actors)",
    ("reward", "replica"),
    buckets=LATENCY_BUCKETS,
    registry=REGISTRY,
)
RESTARTS = Counter(
    "flowscale_replica_restarts",
    "Actor failures the driver recovered from (kind: model or reward)",
    ("kind", "replica"),
    registry=REGISTRY,
)

# -- output ------------------------------------------------------------------------------------------------------
ROWS_WRITTEN = Counter("flowscale_rows_written", "Rows committed to the output dataset", RUN, registry=REGISTRY)
BYTES_WRITTEN = Counter("flowscale_bytes_written", "Parquet bytes committed", RUN, registry=REGISTRY)
SHARDS_COMMITTED = Counter("flowscale_shards_committed", "Shards committed", RUN, registry=REGISTRY)
STORAGE_RETRIES = Counter(
    "flowscale_storage_retries", "Storage operations retried after a transient error", RUN, registry=REGISTRY
)

# Dataset budgets (flowscale_ray.run.budget): what each prompt received, and the budget over the run.
NFE_BUCKETS = (10, 20, 50, 100, 200, 300, 500, 1000, 2000, 5000, 10000, 50000)
PROMPT_NFE = Histogram(
    "flowscale_prompt_nfe", "NFE a prompt received under a dataset budget", RUN, buckets=NFE_BUCKETS, registry=REGISTRY
)
PROMPT_ROUNDS = Histogram(
    "flowscale_prompt_rounds", "Rounds a prompt received under a dataset budget", RUN,
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64), registry=REGISTRY,
)  # fmt: skip
PROMPTS_STOPPED = Counter(
    "flowscale_budget_prompts_stopped", "Prompts done under a dataset budget, by why they got no more rounds",
    (*RUN, "reason"), registry=REGISTRY,
)  # fmt: skip
VERIFIER_CALLS = Counter(
    "flowscale_verifier_calls", "Reward evaluations of finished prompts (scored candidates, final scores)", RUN,
    registry=REGISTRY,
)  # fmt: skip
PROMPT_WORK_SECONDS = Counter(
    "flowscale_prompt_work_seconds", "Seconds of model and of reward work of finished prompts (their shares of "
    "pooled batches), by part", (*RUN, "part"), registry=REGISTRY,
)  # fmt: skip
BUDGET_NFE = Counter("flowscale_budget_nfe", "Dataset budget NFE of the blocks started", RUN, registry=REGISTRY)
BUDGET_SPENT = Counter(
    "flowscale_budget_spent_nfe", "Dataset budget NFE charged to rounds (planned NFE)", RUN, registry=REGISTRY
)

_servers: dict[tuple[str, int], tuple[Any, int]] = {}
_lock = threading.Lock()


def serve(port: int, host: str = "127.0.0.1") -> int:
    """Serve REGISTRY at http://host:port/metrics from a daemon thread (port 0: a free port). Idempotent per
    (host, port) in a process: a second run in the same process reuses the server. Returns the bound port."""
    with _lock:
        if (host, port) in _servers:
            return _servers[(host, port)][1]
        server, _thread = start_http_server(port, addr=host, registry=REGISTRY)
        bound = int(server.server_address[1])
        _servers[(host, port)] = (server, bound)
        _servers.setdefault((host, bound), (server, bound))
        return bound


def label_keys() -> set[str]:
    """Every label key used by any flowscale series in REGISTRY (tests check it against LABEL_KEYS)."""
    keys: set[str] = set()
    for family in REGISTRY.collect():
        for sample in family.samples:
            keys |= {k for k in sample.labels if k != "le"}
    return keys
