"""Run a job: build the components a JobConfig names, run every prompt through an executor, write the
dataset as prompts finish.

Output: `<output.dir>/<run_id>/data/part-NNNNN.parquet` shards with commit markers, then `manifest.json`
and `_SUCCESS` (see flowscale_ray.io.writer and, for the columns, flowscale_ray.io.schema). Running the same
job again resumes: committed shards are skipped. A job whose configuration differs from the run already in
that directory is refused (ask for a new run id).
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

from flowscale_ray.config import ConfigError, JobConfig, PromptFileConfig, StorageConfig, anchored
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask, TaskResult
from flowscale_ray.models import FlowModel, build_model
from flowscale_ray.observe.recorder import NULL_RECORDER, Recorder
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import Reward, build_reward

MAX_CONSECUTIVE_FAILURES = 3  # prompts failing one after another in isolation: the fault is not the prompts'
PREVIEW_ROWS = 20


def load_prompts(
    spec: list[str | dict[str, Any]] | PromptFileConfig,
    base_dir: Path | None = None,
    storage: StorageConfig | None = None,
) -> list[Prompt]:
    """Every prompt of a job, validated (see flowscale_ray.io.prompts)."""
    from flowscale_ray.io.prompts import load_prompts as load

    return load(spec, base_dir, storage)


def _build(kind: str, builder: Callable[[str, dict[str, Any]], Any], name: str, options: dict[str, Any]) -> Any:
    """Build a component; its errors become one-line ConfigErrors under `kind` (or `kind.options`)."""
    try:
        return builder(name, options)
    except ConfigError:
        raise
    except (ValueError, TypeError, KeyError, OSError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if msg.startswith(f"{kind}."):
            raise anchored(kind, msg) from None
        raise ConfigError(f"{kind}.options", f"cannot build {kind} {name!r}: {msg}") from None


def make_executor(job: JobConfig, log: Callable[[str], None] = print) -> tuple[Any, str, str, Callable[[], None]]:
    """The executor the job asks for: (executor, model id, reward name, close)."""
    ex_cfg = job.executor
    if ex_cfg.kind == "inprocess":
        model, reward, held = build_components(job)
        engine = ParticleEngine(model, job.sampler, micro_batch=ex_cfg.micro_batch)
        executor = InProcessExecutor(engine, reward, held, in_flight=ex_cfg.in_flight, top_k=job.output.top_k)
        return executor, model.model_id, reward.name, lambda: None
    from flowscale_ray.runtime.driver import RayExecutor, RuntimeFailure, RuntimeOptions, start_ray
    from flowscale_ray.runtime.messages import ComponentSpec

    started_here = start_ray(ex_cfg.address)
    log(
        f"ray: {'started a local Ray' if started_here else f'connected to {ex_cfg.address or _ray_address()}'}; "
        f"{ex_cfg.replicas} model replica(s)"
    )
    spec = lambda c: None if c is None else ComponentSpec(c.name, dict(c.options))  # noqa: E731
    options = RuntimeOptions(
        replicas=ex_cfg.replicas,
        in_flight=ex_cfg.in_flight,
        micro_batch=ex_cfg.micro_batch,
        num_cpus=ex_cfg.num_cpus,
        num_gpus=ex_cfg.num_gpus,
        call_timeout_s=ex_cfg.call_timeout_s,
        max_restarts=ex_cfg.max_restarts,
        reward_actors=ex_cfg.reward_actors,
    )
    try:
        executor = RayExecutor(
            spec(job.model), job.sampler, spec(job.reward), spec(job.held_out), options, top_k=job.output.top_k
        )
    except RuntimeFailure as exc:
        if started_here:
            import ray

            ray.shutdown()
        raise ConfigError("model", str(exc)) from None

    def close() -> None:
        executor.shutdown()
        if started_here:
            import ray

            ray.shutdown()

    return executor, executor.model_id, job.reward.name, close


def _ray_address() -> str:
    """The cluster that start_ray(None) joined (RAY_ADDRESS, as Ray sets it inside a Ray job)."""
    import os

    return f"the cluster at RAY_ADDRESS={os.environ.get('RAY_ADDRESS', '')}"


def resolve_sampler_shift(job: JobConfig) -> JobConfig:
    """FLUX.1-dev's resolution shift: when the model options ask for it (`resolution_shift: true`) and the job
    leaves `sampler.shift` at 1, fill in the shift the diffusers pipeline would use, read from the model
    folder's JSON configs (no weights). The driver builds the time grid before any replica loads the model,
    so the shift must be known here; it is part of the run's configuration (a resumed run checks it)."""
    if job.model.name not in ("flux", "sd3") or not job.model.options.get("resolution_shift"):
        return job
    if job.sampler.shift != 1.0:
        return job  # set explicitly: the job's value wins
    from flowscale_ray.models.diffusers_common import sampler_shift

    try:
        shift = sampler_shift(job.model.name, dict(job.model.options))
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(
            "sampler.shift",
            f"resolution_shift needs the model's configs to compute the shift ({_one_line(exc)}); "
            "set sampler.shift explicitly (FLUX.1-dev at 1024x1024: 3.1582)",
        ) from None
    return dataclasses.replace(job, sampler=dataclasses.replace(job.sampler, shift=shift))


def build_components(job: JobConfig) -> tuple[FlowModel, Reward, Reward | None]:
    model = _build("model", build_model, job.model.name, job.model.options)
    reward = _build("reward", build_reward, job.reward.name, job.reward.options)
    held = None
    if job.held_out is not None:
        held = _build("held_out", build_reward, job.held_out.name, job.held_out.options)
    return model, reward, held


@dataclass
class RunReport:
    run_id: str
    uri: str  # the run's folder (credentials redacted)
    prompts: int
    ran: int  # prompts run by this call (the rest were committed before)
    manifest: dict[str, Any]
    elapsed: float
    nfe: int  # spent by this call
    failed: int  # prompts of this call whose search raised
    preview: list[TaskResult] = field(default_factory=list)  # the first few results of this call


def describe_job(job: JobConfig, prompts: list[Prompt]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(identity, config): what determines the rows (hashed: resume needs it unchanged) and the whole job as
    recorded in the manifest. Both redacted: no secret is hashed or written."""
    from flowscale_ray.io.prompts import prompts_digest
    from flowscale_ray.io.schema import SCHEMA_VERSION
    from flowscale_ray.io.storage import Redactor, describe_storage

    redact = Redactor.for_storage(job.storage)
    out = job.output
    identity = {
        "schema_version": SCHEMA_VERSION,
        "seed": job.seed,
        "model": asdict(job.model),
        "sampler": asdict(job.sampler),
        "method": job.method.build().settings(),
        "reward": asdict(job.reward),
        "held_out": asdict(job.held_out) if job.held_out is not None else None,
        "prompts": {"count": len(prompts), "digest": prompts_digest(prompts)},
        "output": {
            "save_images": out.save_images,
            "shard_size": out.shard_size,
            "row_group_size": out.row_group_size,
            "top_k": out.top_k,
            "min_reward": out.min_reward,
            "min_held_out": out.min_held_out,
        },
    }
    source = asdict(job.prompts) if isinstance(job.prompts, PromptFileConfig) else {"inline": len(prompts)}
    config = {
        "name": job.name,
        "run_id": job.run_id,
        **{k: v for k, v in identity.items() if k not in ("prompts", "output")},
        "prompts": {**source, **identity["prompts"]},
        "executor": asdict(job.executor),
        "output": asdict(out),
        "storage": describe_storage(job.storage),
    }
    return redact.value(identity), redact.value(config)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("flowscale-ray", "torch", "numpy", "pyarrow", "fsspec", "s3fs"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return out


def open_writer(job: JobConfig, prompts: list[Prompt], log: Callable[[str], None] = print):
    """The run's ShardedWriter over the job's output filesystem (nothing written yet)."""
    from flowscale_ray.io.storage import Redactor, open_filesystem
    from flowscale_ray.io.writer import ShardedWriter

    redact = Redactor.for_storage(job.storage)
    identity, config = describe_job(job, prompts)
    try:
        fs, base = open_filesystem(job.output.dir, job.storage)
    except (ValueError, ImportError) as exc:
        raise ConfigError("output.dir", f"cannot open {redact(job.output.dir)}: {redact(str(exc))}") from None
    return ShardedWriter(
        fs,
        f"{base.rstrip('/')}/{job.run_id}",
        run_id=job.run_id,
        identity=identity,
        config=config,
        num_prompts=len(prompts),
        shard_size=job.output.shard_size,
        row_group_size=job.output.row_group_size,
        retries=job.storage.retries,
        log=log,
        redact=redact,
    )


def run_job(job: JobConfig, base_dir: Path | None = None, log: Callable[[str], None] = print) -> RunReport:
    """Run (or resume) a job; returns what was done. Bad input raises ConfigError before any work."""
    from flowscale_ray.io.storage import Redactor

    redact = Redactor.for_storage(job.storage)
    log = _redacting(log, redact)
    job = resolve_sampler_shift(job)
    prompts = load_prompts(job.prompts, base_dir, job.storage)
    writer = open_writer(job, prompts, log)
    uri = redact(_uri(job, writer.root))
    try:
        exists = writer.check()
    except (FileNotFoundError, PermissionError) as exc:  # no such bucket, access denied: before any work
        raise ConfigError("output.dir", f"cannot use {uri}: {redact(_one_line(exc))}") from None
    if exists:
        done = writer.completed_manifest()
        if done is not None:
            log(f"run {job.run_id} is already complete ({done['counts']['rows']} rows); nothing to do: {uri}")
            return RunReport(job.run_id, uri, len(prompts), 0, done, 0.0, 0, 0)
    method = job.method.build()
    executor, model_id, reward_name, close = make_executor(job, log)
    try:
        return _run(job, prompts, writer, uri, method, executor, model_id, reward_name, log, redact)
    finally:
        close()


def _run(job, prompts, writer, uri, method, executor, model_id, reward_name, log, redact) -> RunReport:
    from flowscale_ray.io.rows import RunInfo, failed_row, rows_for_result
    from flowscale_ray.io.writer import ShardAssembler

    try:
        state = writer.begin()
    except (FileNotFoundError, PermissionError) as exc:
        raise ConfigError("output.dir", f"cannot use {uri}: {redact(_one_line(exc))}") from None
    pending = writer.pending_shards()
    todo = [i for shard in pending for i in writer.shard_prompts(shard)]
    planned = method.planned_nfe(executor.context)
    resumed = (
        f"; resuming: {len(state.committed)} of {writer.num_shards} shards already committed" if state.resumed else ""
    )
    log(
        f"job {job.name}: {len(prompts)} prompts, method {method.name} ({planned} NFE/prompt), "
        f"sampler {job.sampler.label}, model {model_id}, reward {reward_name}, executor {job.executor.kind}{resumed}"
    )
    info = RunInfo.for_job(job, writer.config_hash, model_id, method.settings())
    from flowscale_ray.observe.live import observe_run

    replicas = job.executor.replicas if job.executor.kind == "ray" else 1
    recorder = observe_run(
        job.metrics, method=method.name, model=model_id, reward=reward_name, prompts=len(todo),
        planned_nfe=planned * len(todo), replicas=replicas, log=log,
    )  # fmt: skip
    log = recorder.wrap_log(log)  # a progress bar is cleared before each log line
    executor.recorder = recorder
    writer.on_retry = recorder.storage_retry

    def committed(shard: int, stats) -> None:
        recorder.shard_committed(stats.rows, stats.bytes)
        log(f"shard {shard + 1}/{writer.num_shards} committed: {stats.rows} rows, {stats.bytes / 1e6:.2f} MB")

    assembler = ShardAssembler(writer, on_commit=committed)
    started = time.perf_counter()
    nfe = failed = 0
    preview: list[TaskResult] = []
    # A failed prompt's row is held back until a later prompt succeeds: if the failures go on until the run
    # stops (a broken model, not bad prompts), they are not committed and the resumed run retries them.
    held_back: list[tuple[int, Exception]] = []

    def record_failures() -> None:
        for i, exc in held_back:
            assembler.add(i, [failed_row(prompts[i], info, redact(_one_line(exc)))])
        held_back.clear()

    for index, outcome in run_prompts(executor, method, job.seed, prompts, todo, log, redact, recorder):
        if isinstance(outcome, TaskResult):
            recorder.prompt_finished(outcome)
            record_failures()
            nfe += outcome.nfe
            if len(preview) < PREVIEW_ROWS:
                preview.append(outcome)
            assembler.add(index, rows_for_result(outcome, info))
        else:
            recorder.prompt_failed()
            failed += 1
            held_back.append((index, outcome))
    record_failures()
    writer.put_json("timeline.json", recorder.close())  # replica busy time over the run, for `flowscale report`
    manifest = writer.finish(versions())
    elapsed = time.perf_counter() - started
    if preview:
        log(format_table(preview))
    rate = nfe / max(elapsed, 1e-9)
    counts = manifest["counts"]
    log(
        f"{len(todo)} prompts run ({failed} failed), {nfe} NFE in {elapsed:.1f}s ({rate:.0f} NFE/s); "
        f"{counts['rows']} rows in {counts['shards']} shards: {uri}"
    )
    return RunReport(job.run_id, uri, len(prompts), len(todo), manifest, elapsed, nfe, failed, preview)


def run_with_baselines(
    job: JobConfig, base_dir: Path | None = None, log: Callable[[str], None] = print
) -> list[RunReport]:
    """Run the job's `compare_with` baselines (each as run `<run_id>-<method>` on the same prompts and seeds),
    then the job itself, and print them side by side; a local output also gets `compare.png` (one row of
    samples per method). Returns the reports, the job's own last."""
    reports = []
    for b in job.compare_with:
        sub = dataclasses.replace(
            job, method=b, compare_with=(), output=dataclasses.replace(job.output, run_id=f"{job.run_id}-{b.name}")
        )
        log(f"--- baseline {b.name} ---")
        reports.append(run_job(sub, base_dir, log))
    if job.compare_with:
        log(f"--- {job.method.name} ---")
    reports.append(run_job(job, base_dir, log))
    if job.compare_with:
        names = [b.name for b in job.compare_with] + [job.method.name]
        reward = _build("reward", build_reward, job.reward.name, job.reward.options)
        log(comparison_table(names, reports, reward))
        root = Path(job.output.dir)
        if "://" not in job.output.dir and all(r.preview for r in reports):
            from flowscale_ray.images import contact_sheet, save_png

            cols = len(reports[-1].preview)
            images = [res.image for r in reports for res in sorted(r.preview, key=lambda x: x.prompt.id)[:cols]]
            if images and images[0].ndim == 3 and images[0].shape[0] in (1, 3):
                path = root / job.run_id / "compare.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                save_png(contact_sheet(images, columns=cols), path, scale=3)
                log(f"contact sheet (one row per method: {', '.join(names)}): {path}")
    return reports


def comparison_table(names: list[str], reports: list[RunReport], reward: Reward) -> str:
    """Prompt by prompt: what each method produced (the reward's own description when it has one, e.g. the
    counts found), its reward, whether it is exact (when the reward defines accuracy) and its NFE."""
    by_method = [{res.prompt.id: res for res in r.preview} for r in reports]
    ids = sorted(by_method[-1])
    describe = getattr(reward, "describe", None)
    accuracy = getattr(reward, "accuracy", None)
    rows = [["prompt", *[f"{n}: {'found' if describe else 'reward'}" for n in names]]]
    if describe:
        rows[0] += [f"{n}: reward" for n in names]
    if accuracy:
        rows[0] += [f"{n}: exact" for n in names]
    rows[0] += [f"{n}: NFE" for n in names]
    totals = {n: [0.0, 0.0] for n in names}
    for pid in ids:
        results = [m.get(pid) for m in by_method]
        if any(r is None for r in results):
            continue
        prompt = results[-1].prompt
        row = [prompt.text]
        if describe:
            row += [describe(r.image[None], [prompt])[0] for r in results]
        row += [f"{r.reward:.3g}" for r in results]
        if accuracy:
            exact = [float(accuracy(r.image[None], [prompt])[0]) for r in results]
            row += ["yes" if e else "no" for e in exact]
            for n, e in zip(names, exact, strict=True):
                totals[n][1] += e
        row += [str(r.nfe) for r in results]
        for n, r in zip(names, results, strict=True):
            totals[n][0] += r.reward
        rows.append(row)
    n_rows = max(1, len(rows) - 1)
    summary = "; ".join(
        f"{n}: mean reward {t[0] / n_rows:.3g}" + (f", accuracy {t[1] / n_rows:.2f}" if accuracy else "")
        for n, t in totals.items()
    )
    widths = [max(len(r[k]) for r in rows) for k in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:], summary])


def run_prompts(
    executor: InProcessExecutor,
    method: Any,
    seed: int,
    prompts: list[Prompt],
    todo: list[int],
    log: Callable[[str], None],
    redact: Callable[[str], str] = str,
    recorder: Recorder = NULL_RECORDER,
) -> Iterator[tuple[int, TaskResult | Exception]]:
    """Run the prompts at `todo`, yielding (index, result) as they finish, or (index, the exception) for a
    prompt whose search raises. When a search raises, the prompts then in flight are rerun one at a time to
    find which one fails; after MAX_CONSECUTIVE_FAILURES failures in a row the error is raised instead (a
    broken model or reward, not a bad prompt): committed shards stay, and the run resumes from there."""
    index_of = {prompts[i].id: i for i in todo}
    queue = deque(todo)
    consecutive = 0

    def task(i: int) -> SearchTask:
        return SearchTask(prompt=prompts[i], method=method, seed=seed)

    while queue:
        pulled: list[int] = []
        done: set[int] = set()

        try:
            for result in executor.run(_pull(queue, pulled, task, recorder)):
                i = index_of[result.prompt.id]
                done.add(i)
                consecutive = 0
                yield i, result
        except Exception as exc:
            suspects = [i for i in pulled if i not in done]
            _reset(executor)
            log(
                f"a search raised ({redact(_one_line(exc))}); rerunning the {len(suspects)} prompts in flight "
                "one at a time"
            )
            for i in suspects:
                try:
                    (result,) = list(executor.run([task(i)]))
                except Exception as single:
                    _reset(executor)
                    consecutive += 1
                    log(f"prompt {prompts[i].id} failed: {redact(_one_line(single))}")
                    if consecutive >= MAX_CONSECUTIVE_FAILURES:
                        raise RuntimeError(
                            f"{consecutive} prompts failed in a row (last: {redact(_one_line(single))}); stopping. "
                            "Committed shards are kept: fix the cause and run the job again to resume."
                        ) from single
                    yield i, single
                else:
                    consecutive = 0
                    yield i, result


def _pull(
    queue: deque[int], pulled: list[int], task: Callable[[int], SearchTask], recorder: Recorder = NULL_RECORDER
) -> Iterator[SearchTask]:
    """Tasks from the queue as the executor asks for them, noting which were handed out."""
    while queue:
        i = queue.popleft()
        pulled.append(i)
        recorder.prompt_started()
        yield task(i)


def _reset(executor: InProcessExecutor) -> None:
    """Drop the state of searches that were cut short by an exception."""
    for key in list(executor.engine.tasks):
        executor.engine.close_task(key)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _uri(job: JobConfig, root: str) -> str:
    if "://" in job.output.dir and not job.output.dir.startswith("file://"):
        return f"{job.output.dir.split('://', 1)[0]}://{root}"
    return root


def _redacting(log: Callable[[str], None], redact: Callable[[str], str]) -> Callable[[str], None]:
    return lambda msg: log(redact(msg))


def format_table(results: list[TaskResult]) -> str:
    held = any(r.held_out is not None for r in results)
    header = f"{'prompt':<40} {'reward':>9} " + (f"{'held-out':>9} " if held else "") + f"{'NFE':>6}"
    lines = [header, "-" * len(header)]
    for r in results:
        text = r.prompt.text if len(r.prompt.text) <= 40 else r.prompt.text[:37] + "..."
        row = f"{text:<40} {r.reward:>9.4f} "
        if held:
            row += f"{r.held_out:>9.4f} " if r.held_out is not None else f"{'-':>9} "
        lines.append(row + f"{r.nfe:>6d}")
    if results:
        mean = sum(r.reward for r in results) / len(results)
        lines.append(f"{'mean':<40} {mean:>9.4f}")
    return "\n".join(lines)
