"""The dataset budget: allocation within blocks never overspends and follows its rules; a run's rows do not
depend on the prompts in flight, on resuming, or on the executor (in-process vs Ray)."""

from __future__ import annotations

import json
import random
import shutil

import pyarrow.dataset as ds
import pytest
import torch

from flowscale_ray.config import ConfigError, load_job
from flowscale_ray.execution import SearchTask, SelectedSample, TaskResult
from flowscale_ray.io.schema import WALL_CLOCK
from flowscale_ray.prompts import Prompt
from flowscale_ray.run import run_job
from flowscale_ray.run.budget import STOP_BUDGET, STOP_FAILED, STOP_MAX_ROUNDS, STOP_SOLVED, BlockBudget, Target
from flowscale_ray.search import METHODS, SearchOutcome


def result(reward: float, nfe: int, held_out: float | None = None) -> TaskResult:
    sample = SelectedSample(0, torch.zeros(2), torch.zeros(2), reward, held_out, reward, ())
    return TaskResult(Prompt("p", "p"), SearchOutcome(0, reward, nfe, []), (sample,), nfe, 0.0)


# -- allocation ------------------------------------------------------------------------------------------------
def test_first_wave_is_every_prompt_then_the_furthest_first_while_the_budget_lasts():
    budget = BlockBudget([0, 1, 2, 3], mean_nfe=25, base_cost=10, round_cost=10, target=Target(0.0), max_rounds=8)
    assert budget.total == 100
    assert budget.next_wave() == [0, 1, 2, 3] and budget.left == 60
    for i, r in enumerate([0.0, -5.0, -1.0, -3.0]):
        budget.record(i, result(r, 10))
    assert budget.prompts[0].stop == STOP_SOLVED
    assert budget.next_wave() == [1, 3, 2]  # furthest from the target first
    for i, r in [(1, -4.0), (3, 0.0), (2, -2.0)]:
        budget.record(i, result(r, 10))
    assert budget.prompts[3].stop == STOP_SOLVED and budget.left == 30
    assert budget.next_wave() == [1, 2]
    budget.record(1, result(-6.0, 10))  # worse than its best: the best is kept
    budget.record(2, result(-2.0, 10))  # a tie keeps the earlier round
    assert budget.prompts[1].best.reward == -4.0 and budget.prompts[1].rounds == 3
    assert budget.next_wave() == [1]  # 10 NFE left: one more round, for the furthest
    budget.record(1, result(-1.0, 10))
    assert budget.next_wave() == [] and budget.left == 0
    assert budget.prompts[2].stop == STOP_BUDGET
    assert budget.prompts[1].merged().nfe == 40


def test_max_rounds_and_failures_stop_a_prompt():
    budget = BlockBudget([0, 1], mean_nfe=1000, base_cost=10, round_cost=10, target=Target(0.0), max_rounds=2)
    budget.run(lambda wave, n: [(i, result(-1.0, 10)) if i == 0 else (i, ValueError("boom")) for i in wave])
    assert budget.prompts[0].stop == STOP_MAX_ROUNDS and budget.prompts[0].rounds == 2
    assert budget.prompts[1].stop == STOP_FAILED and isinstance(budget.prompts[1].error, ValueError)
    assert budget.charged == 30


def test_a_held_out_target_needs_both_scores():
    t = Target(reward=0.0, held_out=0.5)
    assert t.reached(result(0.0, 1, 0.6)) and not t.reached(result(0.0, 1, 0.4)) and not t.reached(result(0.0, 1))
    assert t.shortfall(result(-2.0, 1, 0.4)) == pytest.approx(2.0)


@pytest.mark.parametrize("seed", range(300))
def test_a_block_never_spends_more_than_its_budget(seed):
    rng = random.Random(seed)
    n = rng.randint(1, 30)
    base, later = rng.randint(1, 50), rng.randint(1, 50)
    mean = base + rng.random() * 100
    budget = BlockBudget(list(range(n)), mean, base, later, Target(0.0), max_rounds=rng.randint(1, 10))
    spent = 0

    def wave(indices, number):
        nonlocal spent
        spent += (base if number == 0 else later) * len(indices)
        return [(i, result(-rng.random() * 3 if rng.random() < 0.8 else 0.0, 1)) for i in indices]

    budget.run(wave)
    assert spent == budget.charged <= budget.total <= mean * n + 1e-6
    assert all(p.stop is not None for p in budget.prompts.values())
    assert budget.left < later or all(p.stop != STOP_BUDGET for p in budget.prompts.values())


def test_later_rounds_draw_fresh_noise_and_round_zero_is_the_method_itself():
    method = METHODS["bon"]()
    p = Prompt("a", "a")
    seeds = [SearchTask(p, method, 7, round=r).effective_seed for r in range(4)]
    assert seeds[0] == 7 and len(set(seeds)) == 4
    assert SearchTask(Prompt("b", "b", seed=3), method, 7, round=0).effective_seed == 3


# -- the job section -------------------------------------------------------------------------------------------
BASE = {
    "model": {"name": "gmm2d"},
    "sampler": {"preset": "linear-sde", "steps": 6},
    "method": {"name": "bon", "n": 2},
    "reward": {"name": "mode_log_density", "options": {"mode": 2}},
    "prompts": ["a"],
}


@pytest.mark.parametrize(
    "budget, message",
    [
        ({"mode": "dataset", "base_nfe": 6, "target_reward": 0}, "budget.mean_nfe: required with mode: dataset"),
        ({"mode": "dataset", "mean_nfe": 20, "base_nfe": 6}, "budget.mode: dataset needs a stopping rule"),
        ({"mode": "dataset", "mean_nfe": 5, "base_nfe": 6, "target_reward": 0}, "budget.base_nfe: must be <= mean"),
        ({"mode": "dataset", "mean_nfe": 20, "base_nfe": 5, "target_reward": 0}, "budget.base_nfe: a round of 5"),
        ({"mean_nfe": 20}, "budget.mean_nfe: only used with mode: dataset"),
        ({"mode": "dataset", "mean_nfe": 20, "base_nfe": 6, "target_held_out": 0}, "budget.target_held_out: needs"),
        ({"mode": "dataset", "mean_nfe": float("nan"), "base_nfe": 6, "target_reward": 0}, "budget.mean_nfe"),
        ({"mode": "everything"}, "budget.mode"),
    ],
)
def test_budget_section_errors_name_the_field(budget, message):
    with pytest.raises(ConfigError) as err:
        load_job({**BASE, "budget": budget})
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_method_that_cannot_take_rounds_is_refused():
    doc = {**BASE, "method": {"name": "sop"}, "budget": {"mode": "dataset", "mean_nfe": 500, "base_nfe": 200}}
    doc["budget"]["target_reward"] = 0
    with pytest.raises(ConfigError, match=r"budget\.base_nfe: sop cannot take a budget per round"):
        load_job(doc)


# -- runs ----------------------------------------------------------------------------------------------------------
def job(out, **changes) -> dict:
    doc = {
        "name": "dsb",
        "seed": 3,
        "model": {"name": "gmm2d"},
        "sampler": {"preset": "linear-sde", "steps": 6},
        "method": {"name": "rbf", "n_chains": 2, "nfe_budget": 30},
        "reward": {"name": "mode_log_density", "options": {"mode": 2}},
        "held_out": {"name": "negative_distance", "options": {"target": [0.5, -3.5]}},
        "prompts": [f"prompt {i}" for i in range(10)],
        "output": {"dir": str(out), "shard_size": 5},
        "executor": {"in_flight": 4, "micro_batch": 8},
        "budget": {"mode": "dataset", "mean_nfe": 40, "base_nfe": 12, "round_nfe": 12, "target_reward": -0.5},
    }
    doc.update(changes)
    return json.loads(json.dumps(doc))


def rows(path) -> list[dict]:
    table = ds.dataset(str(path), format="parquet").to_table()
    out = sorted(table.to_pylist(), key=lambda r: r["prompt_id"])
    for r in out:
        for name in WALL_CLOCK:
            r.pop(name)
    return out


def test_a_dataset_budget_run_spends_at_most_its_budget_and_records_the_allocation(tmp_path):
    report = run_job(load_job(job(tmp_path / "a")))
    got = rows(tmp_path / "a" / "dsb" / "data")
    assert len(got) == 10 and all(r["status"] == "ok" for r in got)
    for shard in (got[:5], got[5:]):
        assert sum(r["nfe"] for r in shard) <= 40 * 5
    assert report.nfe == sum(r["nfe"] for r in got)
    assert {r["budget_stop"] for r in got} <= {STOP_SOLVED, STOP_BUDGET, STOP_MAX_ROUNDS}
    assert any(r["rounds"] > 1 for r in got)  # the leftover funded more rounds
    solved = [r for r in got if r["budget_stop"] == STOP_SOLVED]
    assert solved and all(r["reward"] >= -0.5 for r in solved)
    # a prompt that stopped after one round got exactly the per-prompt method's result at base_nfe
    per_prompt = job(tmp_path / "b", budget={"mode": "per_prompt"}, method={"name": "rbf", "nfe_budget": 12})
    run_job(load_job(per_prompt))
    plain = {r["prompt_id"]: r for r in rows(tmp_path / "b" / "dsb" / "data")}
    for r in got:
        if r["rounds"] == 1:
            assert r["reward"] == plain[r["prompt_id"]]["reward"] and r["lineage"] == plain[r["prompt_id"]]["lineage"]
            assert r["verifier_calls"] == plain[r["prompt_id"]]["verifier_calls"]
        else:
            assert r["reward"] >= plain[r["prompt_id"]]["reward"]  # the best over rounds includes round 0
            assert r["verifier_calls"] > plain[r["prompt_id"]]["verifier_calls"]  # every round's calls are summed


def test_rows_do_not_depend_on_prompts_in_flight_or_on_resuming(tmp_path):
    run_job(load_job(job(tmp_path / "a", executor={"in_flight": 1, "micro_batch": 8})))
    run_job(load_job(job(tmp_path / "b", executor={"in_flight": 7, "micro_batch": 8})))
    a, b = rows(tmp_path / "a" / "dsb" / "data"), rows(tmp_path / "b" / "dsb" / "data")
    assert a == b
    # resume: the second shard is lost (as if the run died before committing it); running again redoes it
    root = tmp_path / "b" / "dsb"
    for p in [root / ".flowscale" / "SUCCESS", root / ".flowscale" / "manifest.json", *root.rglob("*00001*")]:
        p.unlink() if p.is_file() else shutil.rmtree(p)
    report = run_job(load_job(job(tmp_path / "b", executor={"in_flight": 3, "micro_batch": 8})))
    assert report.ran == 5
    assert rows(root / "data") == a


@pytest.mark.slow
def test_the_same_rows_on_ray(tmp_path, local_ray):
    run_job(load_job(job(tmp_path / "local")))
    ray_exec = {"kind": "ray", "replicas": 2, "in_flight": 4, "micro_batch": 8, "num_cpus": 0.5}
    run_job(load_job(job(tmp_path / "ray", executor=ray_exec)))
    assert rows(tmp_path / "ray" / "dsb" / "data") == rows(tmp_path / "local" / "dsb" / "data")


def test_report_shows_the_allocation_and_the_budget_left(tmp_path):
    from flowscale_ray.observe.report import load_runs, write_report

    run_job(load_job(job(tmp_path / "a", metrics={"timeline_interval_s": 1e-6})))
    runs = load_runs(str(tmp_path / "a" / "dsb"), None)
    out = tmp_path / "report.md"
    write_report(runs, out, "md")
    text = out.read_text()
    assert "## Dataset budget: allocation" in text and "| stopped because | prompts |" in text
    assert (tmp_path / "report-budget.png").stat().st_size > 1000
    section = text.split("## Dataset budget: allocation", 1)[1].split("\n\n")[1].splitlines()[2:]
    assert sum(int(line.split("|")[2]) for line in section) == 10  # every prompt, once, by why it stopped


def test_metrics_count_the_budget_and_what_each_prompt_received(tmp_path):
    from flowscale_ray.observe import metrics

    labels = {"method": "rbf", "model": "gmm2d", "reward": "mode_log_density"}

    def value(name, **extra):
        return metrics.REGISTRY.get_sample_value(name, {**labels, **extra}) or 0.0

    before = {
        "budget": value("flowscale_budget_nfe_total"),
        "spent": value("flowscale_budget_spent_nfe_total"),
        "prompts": value("flowscale_prompt_nfe_count"),
        "nfe": value("flowscale_prompt_nfe_sum"),
    }
    report = run_job(load_job(job(tmp_path / "m", metrics={"port": 0, "progress": "off"})))
    got = rows(tmp_path / "m" / "dsb" / "data")
    assert value("flowscale_budget_nfe_total") - before["budget"] == 2 * 40 * 5
    assert value("flowscale_budget_spent_nfe_total") - before["spent"] == report.nfe  # rounds spend what they plan
    assert value("flowscale_prompt_nfe_count") - before["prompts"] == 10
    assert value("flowscale_prompt_nfe_sum") - before["nfe"] == sum(r["nfe"] for r in got)
