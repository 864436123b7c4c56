"""The counting studies' own helpers (benchmarks/): the hard tuning set's rule, which runs a study cell may reuse,
and the held-out comparison on pairs that are both exact. The studies' figures rest on them."""

from __future__ import annotations

import math

import pytest

from benchmarks.counting_adaptive import both_exact, effective
from benchmarks.sampler_sweep import hard_tuning_prompts
from flowscale_ray.builtin import shapes


def test_hard_tuning_prompts_follow_the_rule_and_avoid_the_evaluation_set():
    prompts = hard_tuning_prompts(118)
    assert len(set(prompts)) == 118
    evaluation = shapes.evaluation_prompt_keys()
    for text in prompts:
        groups = shapes.parse_prompt(text)
        assert len(groups) == 2, text
        assert groups[0].shape != groups[1].shape and groups[0].colour != groups[1].colour, text
        assert sum(g.count for g in groups) in (7, 8), text
        assert shapes.prompt_key(groups) not in evaluation, text
    assert hard_tuning_prompts(10) == prompts[:10]  # a fixed order: a smaller set is a prefix
    with pytest.raises(ValueError, match="only 118 hard tuning prompts"):
        hard_tuning_prompts(119)


def test_a_cell_reuses_runs_only_with_the_same_method_sampler_and_settings():
    assert effective("vt_scaled", 300) == effective("vt", 300)  # 12 chains capped at 8: vt's settings
    assert effective("vt_scaled", 100) == effective("vt4", 100)  # 4 chains at 100 NFE
    assert effective("vt_scaled", 500) != effective("vt4", 500)
    assert effective("bon_vp", 300) != effective("bon", 300)  # same method and budget, another sampler
    assert effective("bon_vp", 300)[1] == "vp" and effective("bon", 300)[1] == "ode"


def test_held_out_on_pairs_that_are_both_exact():
    cell = {"accuracy": {"a": [1, 1, 0], "b": [1, 0, 1]}, "held_out": {"a": [0.5, 0.9, 0.1], "b": [0.4, 0.2, 0.3]}}
    bon_accuracy = {"a": [1, 0, 1], "b": [1, 1, 1]}
    bon_held = {"a": [0.3, 0.8, 0.7], "b": [0.6, 0.5, 0.5]}
    n, mean, se = both_exact(cell, bon_accuracy, bon_held)
    d = [0.5 - 0.3, 0.4 - 0.6, 0.3 - 0.5]  # (a, seed 0), (b, seed 0), (b, seed 2)
    assert n == 3
    assert mean == pytest.approx(sum(d) / 3)
    var = sum((x - sum(d) / 3) ** 2 for x in d) / 2
    assert se == pytest.approx(math.sqrt(var / 3))
    assert both_exact({"accuracy": {"a": [0]}, "held_out": {"a": [0.1]}}, {"a": [1]}, {"a": [0.2]}) is None


def test_best_of_n_stopping_at_its_first_exact_sample():
    from benchmarks.counting_adaptive import BUDGETS, stop_at_first_exact

    # prompt a: seed 0 solved from 100 NFE, seed 1 never; prompt b: seed 0 from 50, seed 1 solved at 300 only
    # (not nested: unsolved again at 500 and 1000)
    solved = {"a": [(0, 1, 1, 1, 1), (0, 0, 0, 0, 0)], "b": [(1, 1, 1, 1, 1), (0, 0, 1, 0, 0)]}
    bon = {b: {"accuracy": {p: [v[j][i] for j in range(2)] for p, v in solved.items()}} for i, b in enumerate(BUDGETS)}
    nested, pairs, low, high, acc = stop_at_first_exact(bon, [0, 1])
    assert (nested, pairs) == (3, 4)
    assert low == pytest.approx((60 + 1000 + 10 + 110) / 4) and high == pytest.approx((100 + 1000 + 50 + 300) / 4)
    assert acc == pytest.approx(0.75)  # solved within the cap: a/0, b/0 and b/1
    assert stop_at_first_exact({50: bon[50]}, [0, 1]) is None
