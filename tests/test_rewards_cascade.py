"""Verifier cascades: passed rows keep the expensive score, the rest fall strictly below every passed row, the final
choice is the expensive reward's whenever its best candidate passes, and the stages' calls are counted."""

import math

import pytest
import torch

from flowscale_ray.core.dynamics import SamplerSpec
from flowscale_ray.execution import InProcessExecutor, ParticleEngine, SearchTask
from flowscale_ray.models import build_model
from flowscale_ray.prompts import Prompt
from flowscale_ray.rewards import Reward, build_reward
from flowscale_ray.rewards.cascade import Cascade, top_rows
from flowscale_ray.search import METHODS


class Column(Reward):
    """Reads its score from one column of the samples (so a test chooses every score), counting its rows."""

    def __init__(self, col: int) -> None:
        self.col, self.name, self.rows = col, f"col{col}", 0

    def __call__(self, samples, prompts):
        self.rows += samples.shape[0]
        return samples[:, self.col].double()


class Recorded(Reward):
    """Wraps a reward and keeps every call's samples and values."""

    def __init__(self, inner: Reward) -> None:
        self.inner, self.name, self.log = inner, inner.name, []

    def __call__(self, samples, prompts):
        values = self.inner(samples, prompts)
        self.log.append((samples.clone(), torch.as_tensor(values).double().clone()))
        return values


def table(cheap, expensive):
    return torch.stack(
        [torch.as_tensor(cheap, dtype=torch.float64), torch.as_tensor(expensive, dtype=torch.float64)], 1
    )


def test_top_rows_takes_the_ceiling_and_breaks_ties_by_position():
    assert top_rows([1.0, 3.0, 2.0, 3.0], 0.5) == [1, 3]
    assert top_rows([1.0, 3.0, 2.0, 3.0], 0.25) == [1]
    assert top_rows([5.0, 1.0, 2.0], 0.01) == [0]  # at least one
    assert top_rows([0.0] * 10, 0.3) == [0, 1, 2]  # 0.3 x 10 is 3, not 4, despite rounding
    assert len(top_rows([0.0] * 30, 0.1)) == 3


def test_passed_rows_keep_the_expensive_score_and_the_rest_fall_below():
    cheap, expensive = Column(0), Column(1)
    cascade = Cascade(cheap, expensive, top_fraction=0.5, floor=-10.0)
    x = table([0.1, 0.9, 0.5, -3.0], [-9.5, 2.0, 7.0, 100.0])
    prompts = [Prompt("p", "x")] * 4
    out = cascade(x, prompts)
    assert out[1] == 2.0 and out[2] == 7.0  # the two best cheap scores pass, with their expensive scores
    assert -11 < out[0] < -10 and -11 < out[3] < -10 and out[0] > out[3]  # cheap order kept below the floor
    assert cheap.rows == 4 and expensive.rows == 2 and cascade.calls == {"cheap": 4, "expensive": 2}
    # Rows of different prompts in one call: the fraction applies per prompt.
    two = cascade(x, [Prompt("a", "x"), Prompt("a", "x"), Prompt("b", "y"), Prompt("b", "y")])
    assert two[1] == 2.0 and two[2] == 7.0 and two[0] < -10 and two[3] < -10
    # A threshold passes rows by their own cheap score.
    thr = Cascade(Column(0), Column(1), threshold=0.5, floor=-10.0)
    out = thr(x, prompts)
    assert out[1] == 2.0 and out[2] == 7.0 and out[0] < -10 and out[3] < -10
    none = thr(table([0.0, 0.1], [1.0, 2.0]), prompts[:2])
    assert (none < -10).all() and none[1] > none[0]


def test_an_expensive_score_below_the_floor_is_refused():
    cascade = Cascade(Column(0), Column(1), top_fraction=1.0, floor=0.0)
    with pytest.raises(ValueError, match=r"reward\.floor: the expensive reward scored -1, below floor 0"):
        cascade(table([1.0], [-1.0]), [Prompt("p", "x")])


def test_not_passed_stays_below_the_floor_even_for_huge_cheap_scores():
    cascade = Cascade(Column(0), Column(1), threshold=1e300, floor=-1e6)
    out = cascade(table([1e299, -1e299, -math.inf, 0.0], [0.0] * 4), [Prompt("p", "x")] * 4)
    assert (out < -1e6).all() and (out >= -1e6 - 1).all() and out[0] > out[3] > out[1] >= out[2]


@pytest.mark.parametrize("mode", ["top_fraction", "threshold"])
def test_the_final_choice_is_the_expensive_choice_whenever_its_best_passes(mode):
    """Property test over random scores: the cascade's argmax equals the expensive reward's whenever the expensive
    reward's best candidate passes the cheap filter; passed rows always beat the others, across calls too."""
    g = torch.Generator().manual_seed(0)
    checked = 0
    passed_values, failed_values = [], []
    for trial in range(400):
        n = int(torch.randint(1, 40, (1,), generator=g))
        cheap = torch.randn(n, generator=g, dtype=torch.float64) * 3
        expensive = torch.randn(n, generator=g, dtype=torch.float64) * float(
            10 ** torch.randint(-2, 4, (1,), generator=g)
        )
        if trial % 5 == 0:  # ties in both stages
            cheap, expensive = cheap.round(), expensive.round()
        if mode == "top_fraction":
            option = {"top_fraction": float(torch.rand(1, generator=g)) * 0.99 + 0.01}
        else:
            option = {"threshold": float(torch.randn(1, generator=g)) * 3}
        cascade = Cascade(Column(0), Column(1), floor=-1e6, **option)
        out = cascade(table(cheap, expensive), [Prompt("p", "x")] * n)
        passed = out >= -1e6
        assert int(passed.sum()) == cascade.calls["expensive"]
        if mode == "top_fraction":
            assert int(passed.sum()) == max(1, math.ceil(option["top_fraction"] * n - 1e-9))
        else:
            assert torch.equal(passed, cheap >= option["threshold"])
        torch.testing.assert_close(out[passed], expensive[passed], atol=0, rtol=0)
        passed_values += out[passed].tolist()
        failed_values += out[~passed].tolist()
        best = int(torch.argmax(expensive))  # first maximum, as the methods break ties
        if passed[best]:
            assert int(torch.argmax(out)) == best
            checked += 1
        elif passed.any():
            assert passed[int(torch.argmax(out))]
    assert checked > 100  # the property was exercised
    assert max(failed_values) < min(passed_values)


def test_a_real_search_ends_where_the_expensive_reward_alone_ends_when_its_best_passes():
    """Best-of-N on the built-in model: the cascade (pixel counter cheap, CNN counter expensive) picks the same
    sample as the CNN counter alone on every prompt whose CNN-best candidate is in the cheap stage's top half."""
    model = build_model("shapes")
    spec = SamplerSpec(interpolant="linear", sde=True, steps=4)
    method = METHODS["bon"](METHODS["bon"].Config(n=8))
    prompts = [
        Prompt(f"p{i}", t)
        for i, t in enumerate(
            [
                "2 red circles",
                "1 blue square and 3 yellow circles",
                "4 green squares",
                "3 red squares and 2 blue circles",
            ]
        )
    ]
    expensive_alone = build_reward("counting_heldout")
    cheap = Recorded(build_reward("counting"))
    expensive = Recorded(build_reward("counting_heldout"))
    cascade = Cascade(cheap, expensive, top_fraction=0.5, floor=0.0)  # the CNN's probability is >= 0
    ran = {}
    for name, reward in (("alone", expensive_alone), ("cascade", cascade)):
        ex = InProcessExecutor(ParticleEngine(model, spec), reward)
        ran[name] = {r.prompt.id: r for r in ex.run([SearchTask(p, method, seed=3) for p in prompts])}
    # One search call of 8 candidates per prompt, then one final call: cheap 8 + 1, expensive 4 + 1 per prompt.
    assert cascade.calls == {"cheap": 9 * len(prompts), "expensive": 5 * len(prompts)}
    # The compute accounting charges the expensive stage: 4 passed candidates and the final score per prompt.
    assert all(r.verifier_calls == 5 for r in ran["cascade"].values())
    assert all(r.verifier_calls == 9 for r in ran["alone"].values())
    search_calls = [(x, v) for x, v in cheap.log if x.shape[0] == 8]
    same = 0
    for i, p in enumerate(prompts):
        a, c = ran["alone"][p.id], ran["cascade"][p.id]
        x, cheap_values = search_calls[i]
        cnn = expensive_alone(x, [p] * 8)
        best = int(torch.argmax(cnn))
        in_top_half = best in top_rows(cheap_values.tolist(), 0.5)
        assert c.reward >= 0  # the final sample passed (alone in its call): its reward is the CNN's
        if in_top_half:
            assert c.lineage == a.lineage and torch.equal(c.image, a.image)
            same += 1
        else:  # the cascade's choice is the CNN-best among the cheap stage's top half
            top = top_rows(cheap_values.tolist(), 0.5)
            assert c.best.search_reward == pytest.approx(float(cnn[top].max()))
    assert same >= 1


def test_cascade_options_are_checked_by_name():
    cheap, expensive = {"name": "counting"}, {"name": "counting_heldout"}
    for bad, match in [
        ({}, r"exactly one of top_fraction and threshold"),
        ({"top_fraction": 0.5, "threshold": 0.0}, r"exactly one of top_fraction and threshold"),
        ({"top_fraction": 0.0}, r"reward\.top_fraction: expected a number in \(0, 1\]"),
        ({"top_fraction": 1.5}, r"reward\.top_fraction"),
        ({"threshold": float("nan")}, r"reward\.threshold: expected a finite number"),
        ({"threshold": 0.0, "floor": "low"}, r"reward\.floor"),
    ]:
        with pytest.raises(ValueError, match=match):
            build_reward("cascade", {"cheap": cheap, "expensive": expensive, **bad})
    with pytest.raises(ValueError, match=r"reward\.cheap: unknown key\(s\) weight; allowed: name, options"):
        build_reward("cascade", {"cheap": {**cheap, "weight": 1}, "expensive": expensive, "threshold": 0})
    with pytest.raises(ValueError, match=r"reward\.expensive: expected a mapping with 'name'"):
        build_reward("cascade", {"cheap": cheap, "expensive": "counting_heldout", "threshold": 0})
    ok = build_reward("cascade", {"cheap": cheap, "expensive": expensive, "top_fraction": 0.25, "floor": 0})
    assert isinstance(ok, Cascade) and ok.cheap.name == "counting" and ok.expensive.name == "counting_heldout"


@pytest.mark.slow
@pytest.mark.parametrize("reward_actors", [0, 1])
def test_a_threshold_cascade_gives_the_same_rows_on_ray(tmp_path, local_ray, reward_actors):
    """A threshold depends on each row alone: Ray (2 replicas; rewards on the replicas or on a reward actor) writes
    the same rows as the in-process executor."""
    import json

    import pyarrow.dataset as ds

    from flowscale_ray.config import load_job
    from flowscale_ray.run import run_job
    from tests.test_io_run import job_doc

    reward = {
        "name": "cascade",
        "options": {
            "cheap": {"name": "tests.test_io_run:green"},
            "expensive": {"name": "tests.test_io_run:red"},
            "threshold": 0.5,
            "floor": -1.0,  # red is a mean of values in (0, 1)
        },
    }
    rows = {}
    for kind in ("inprocess", "ray"):
        executor = {"in_flight": 3}
        if kind == "ray":
            executor.update(kind="ray", replicas=2, num_cpus=0.5, reward_actors=reward_actors)
        doc = job_doc(tmp_path / kind, reward=reward, method={"name": "bon", "n": 6}, executor=executor)
        run_job(load_job(json.loads(json.dumps(doc))), base_dir=tmp_path)
        table = ds.dataset(str(tmp_path / kind / "toy" / "data"), format="parquet").to_table().to_pylist()
        rows[kind] = sorted(table, key=lambda r: r["prompt_id"])
    same = ("prompt_id", "status", "reward", "search_reward", "held_out", "nfe", "verifier_calls", "lineage", "image")
    for a, b in zip(rows["ray"], rows["inprocess"], strict=True):
        assert {k: a[k] for k in same} == {k: b[k] for k in same}
    # Charged: the expensive stage's calls only, the same count on Ray, some candidates not passed.
    calls = [r["verifier_calls"] for r in rows["ray"]]
    assert all(0 <= c <= 6 + 1 for c in calls) and sum(calls) < 7 * len(calls)
    assert any(r["reward"] > -1 for r in rows["ray"])  # passed: the expensive (red) score


def test_charging_counts_the_expensive_stage_from_the_scores_alone():
    from flowscale_ray.rewards.base import charge_for, charged_calls

    cascade = Cascade(Column(0), Column(1), threshold=0.5, floor=-10.0)
    values = cascade(table([0.1, 0.9, 0.5, -3.0], [-9.5, 2.0, 7.0, 100.0]), [Prompt("p", "x")] * 4).tolist()
    assert charged_calls(cascade, values) == cascade.verifier_calls(values) == cascade.calls["expensive"] == 2
    # The Ray driver holds no reward: the same count from the name and options, without building the stages.
    charge = charge_for("cascade", {"cheap": {"name": "x"}, "expensive": {"name": "y"}, "floor": -10.0})
    assert charge(values) == 2
    assert charge_for("cascade", {})([-1e6, -1e6 - 0.5, 3.0]) == 2  # the default floor
    # Any other reward: one call per row.
    assert charge_for("counting", {})(values) == 4 and charged_calls(Column(0), values) == 4
    assert charge_for("tests.test_io_run:red", {})(values) == 4 and charge_for("no_such_reward", {})(values) == 4
