"""Bit allocation: exact against brute force, budget respected, pins honoured, greedy repair."""

from __future__ import annotations

import itertools
import random

import pytest

from edge_inspector.errors import ConfigError
from edge_inspector.quantization.bitplan import (
    ORDER,
    UnitCost,
    allocate,
    allocate_step,
    capacity_bits,
    plan_bits,
    repair,
)


def _random_units(rng: random.Random, n: int) -> list[UnitCost]:
    units = []
    for i in range(n):
        p4 = rng.uniform(0, 10)
        units.append(UnitCost(f"u{i}", rng.choice([9, 27, 64, 100, 250, 576]), {"w4a8": p4, "w8a8": p4 * rng.uniform(0, 0.3)},
                              min_bits=8 if rng.random() < 0.2 else 4))
    return units


def _brute_force(units: list[UnitCost], capacity: int, allow_keep: bool) -> float | None:
    best = None
    for combo in itertools.product(*(u.choices(allow_keep) for u in units)):
        plan = dict(zip((u.name for u in units), combo))
        if plan_bits(units, plan) <= capacity:
            pen = sum(u.cost_of(p) for u, p in zip(units, combo))
            best = pen if best is None else min(best, pen)
    return best


@pytest.mark.parametrize("allow_keep", [False, True])
@pytest.mark.parametrize("seed", range(30))
def test_allocation_matches_brute_force(seed, allow_keep):
    rng = random.Random(seed)
    units = _random_units(rng, rng.randint(1, 7))
    total = sum(u.params for u in units)
    capacity = int(rng.uniform(4, 14) * total)
    expected = _brute_force(units, capacity, allow_keep)
    if expected is None:
        with pytest.raises(ConfigError, match="below the smallest possible plan"):
            allocate(units, capacity, allow_keep)
        return
    plan = allocate(units, capacity, allow_keep)
    assert plan_bits(units, plan) <= capacity
    assert sum(u.cost_of(plan[u.name]) for u in units) == pytest.approx(expected, abs=1e-9)
    for u in units:
        assert plan[u.name] in u.choices(allow_keep)
        if u.min_bits == 8:
            assert plan[u.name] != "w4a8"


def test_budget_units_and_pins():
    units = [UnitCost("first", 100, {"w4a8": 0.1, "w8a8": 0.0}, min_bits=8),
             UnitCost("mid", 1000, {"w4a8": 1.0, "w8a8": 0.1}),
             UnitCost("big", 1000, {"w4a8": 0.5, "w8a8": 0.05})]
    assert capacity_bits(units, budget_bits=5.0) == 5 * 2100
    assert capacity_bits(units, budget_bytes=1000) == 8000
    # 6.2 bits on average: only one of the two big units fits at 8 bits (the more sensitive one); the pinned one has 8
    plan = allocate(units, capacity_bits(units, budget_bits=6.2))
    assert plan == {"first": "w8a8", "mid": "w8a8", "big": "w4a8"}
    # unlimited: by default the allocation stays quantized (FP32 only through repair) ...
    assert allocate(units, capacity_bits(units, budget_bits=32)) == {"first": "w8a8", "mid": "w8a8", "big": "w8a8"}
    # ... allowed to keep, everything with a penalty is kept; "first" costs nothing at 8 bits, ties go to fewer bits
    assert allocate(units, capacity_bits(units, budget_bits=32), allow_keep=True) == {
        "first": "w8a8", "mid": "keep", "big": "keep"}
    for bad in ({}, {"budget_bits": 5, "budget_bytes": 10}, {"budget_bits": 2.0}, {"budget_bytes": -1}):
        with pytest.raises(ConfigError):
            capacity_bits(units, **bad)


def test_repair_promotes_best_gain_per_byte_until_within_tolerance():
    units = [UnitCost("a", 100, {"w4a8": 1.0, "w8a8": 0.0}),  # gain/byte 1/200
             UnitCost("b", 10, {"w4a8": 0.5, "w8a8": 0.0}),  # gain/byte 0.5/20: promoted first
             UnitCost("c", 1000, {"w4a8": 0.2, "w8a8": 0.1})]
    true_drop = {"a": 2.0, "b": 1.0, "c": 0.5}

    def drop(plan):
        return sum(true_drop[n] for n, p in plan.items() if p == "w4a8")

    result = repair(units, {u.name: "w4a8" for u in units}, drop, tolerance=1.0)
    assert [s.promoted for s in result.steps] == ["b", "a"]
    assert result.within_tolerance and result.drop == 0.5
    assert result.plan == {"a": "w8a8", "b": "w8a8", "c": "w4a8"}
    # an unreachable tolerance stops when everything is kept, and says so
    stuck = repair(units, {u.name: "w4a8" for u in units}, lambda plan: 5.0, tolerance=1.0)
    assert not stuck.within_tolerance and set(stuck.plan.values()) == {"keep"}
    assert len(stuck.steps) == 2 * len(units)
    assert ORDER == ("w4a8", "w8a8", "keep")


def test_raad_step_function_lowers_units_in_score_order_until_the_budget_fits():
    units = [UnitCost("a", 100, {"w4a8": 5.0, "w8a8": 0.1}), UnitCost("b", 100, {"w4a8": 1.0, "w8a8": 0.0}),
             UnitCost("c", 1000, {"w4a8": 3.0, "w8a8": 0.0}), UnitCost("d", 100, {"w4a8": 0.5, "w8a8": 0.0}, 8)]
    total = sum(u.params for u in units)
    # every unit at 8 bits fits: nothing is lowered
    assert allocate_step(units, 8 * total) == {"a": "w8a8", "b": "w8a8", "c": "w8a8", "d": "w8a8"}
    # lowering b (lowest 4-bit score of the lowerable units; d is pinned) is not enough, c next is
    plan = allocate_step(units, 8 * total - 1000)
    assert plan == {"a": "w8a8", "b": "w4a8", "c": "w4a8", "d": "w8a8"}
    # a step on the sorted scores: every lowered unit scores below every kept lowerable one
    assert max(u.penalty["w4a8"] for u in units if plan[u.name] == "w4a8") < units[0].penalty["w4a8"]
    # the knapsack, which counts sizes, lowers c (1000 weights) alone at a penalty of 3 instead of 1 + 3
    knapsack = allocate(units, 8 * total - 1000)
    assert knapsack == {"a": "w8a8", "b": "w8a8", "c": "w4a8", "d": "w8a8"}
    with pytest.raises(ConfigError, match="smallest step plan"):
        allocate_step(units, 4 * total)


def test_tensorrt_keep_costs_fp16_bits():
    unit = UnitCost("u", 10, {"w8a8": 1.0}, min_bits=8, keep_bits=16)
    assert unit.choices() == ["w8a8", "keep"] and plan_bits([unit], {"u": "keep"}) == 160
    # repair promotes it to FP16 at 8 extra bits per weight
    result = repair([unit], {"u": "w8a8"}, lambda plan: 2.0 if plan["u"] == "w8a8" else 0.0, tolerance=1.0)
    assert result.plan == {"u": "keep"} and result.within_tolerance
