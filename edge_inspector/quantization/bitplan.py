"""HQS bit allocation: an exact multiple-choice knapsack under a weight budget, then a greedy accuracy repair.

Each unit picks one precision: ``w4a8``, ``w8a8`` or ``keep`` (FP32 on CPU, FP16 on GPU; costed at 32 bits so the
budget means stored bytes on the CPU bundle). Choosing precision ``p`` for unit ``u`` costs ``params_u * bits_p``
bits and a penalty ``penalty_u[p]`` (its HQS score at that precision; 0 for ``keep``). ``allocate`` returns the plan
with the smallest summed penalty whose cost fits the budget. It is exact: a dynamic programme over the Pareto front
of (cost, penalty), which never drops a partial plan that could still be part of the optimum. RAAD's step function
(sort layers by score, low-scoring ones get fewer bits) is the special case where the penalty is a threshold on one
sorted score; the knapsack also accounts for how big each layer is.

``keep`` is left out of the allocation by default (``allow_keep``) and reached only through repair: the budget
prices a unit by its stored bytes, so FP32 looks cheap exactly where it is most expensive to run, in the small,
high-resolution first layers (measured on HaloAE-lite's location graph: the allocator kept the stem and the first
two MBConv blocks FP32, and the HQS graph ran 1.29x *slower* than FP32: most of the compute stayed float, and every
float island adds a quantize / dequantize pair).

``repair`` then measures the real validation AUROC drop and, while it exceeds the tolerance, promotes the unit with
the best estimated gain per extra byte (4 -> 8 bits, then 8 bits -> keep).

``allocate_step`` is RAAD's own rule, offered beside the knapsack (``calibrate --allocation raad``) and compared
with it in ``benchmarks/bench_hqs.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from edge_inspector.errors import ConfigError
from edge_inspector.quantization.fakequant import PRECISION_WEIGHT_BITS, Precision

ORDER: tuple[Precision, ...] = ("w4a8", "w8a8", "keep")


@dataclass
class UnitCost:
    """What the allocator knows about one unit.

    Attributes:
        name: unit name.
        params: weight elements.
        penalty: precision -> cost in score units (missing precisions are not allowed for this unit).
        min_bits: 8 pins the unit to ``w8a8`` or ``keep``.
    """

    name: str
    params: int
    penalty: dict[str, float]
    min_bits: int = 4
    keep_bits: int = PRECISION_WEIGHT_BITS["keep"]
    """What ``keep`` costs per weight: 32 (FP32 on the CPU) or 16 (FP16 on TensorRT)."""

    def bits(self, precision: Precision) -> int:
        return self.keep_bits if precision == "keep" else PRECISION_WEIGHT_BITS[precision]

    def choices(self, allow_keep: bool = True) -> list[Precision]:
        allowed = [p for p in ORDER if p in self.penalty or p == "keep"]
        allowed = [p for p in allowed if PRECISION_WEIGHT_BITS[p] >= self.min_bits]  # a pin to keep says 32
        if not allow_keep and len(allowed) > 1:  # a unit with no quantized option still gets keep
            allowed.remove("keep")
        return allowed

    def cost_of(self, precision: Precision) -> float:
        return 0.0 if precision == "keep" else self.penalty[precision]


def plan_bits(units: list[UnitCost], plan: dict[str, Precision]) -> int:
    """Total weight bits of ``plan``."""
    return sum(u.params * u.bits(plan[u.name]) for u in units)


def capacity_bits(units: list[UnitCost], budget_bits: float | None = None, budget_bytes: int | None = None) -> int:
    """The budget in bits, from an average weight bit-width or a number of weight bytes (exactly one given)."""
    if (budget_bits is None) == (budget_bytes is None):
        raise ConfigError("give exactly one budget: average weight bits (--budget-bits) or bytes (--budget-bytes)")
    if budget_bits is not None:
        if not 4 <= budget_bits <= 32:
            raise ConfigError(f"--budget-bits must be between 4 and 32 (average weight bits), got {budget_bits}")
        return int(budget_bits * sum(u.params for u in units))
    if budget_bytes <= 0:
        raise ConfigError(f"--budget-bytes must be positive, got {budget_bytes}")
    return int(budget_bytes) * 8


def allocate(units: list[UnitCost], capacity: int, allow_keep: bool = False) -> dict[str, Precision]:
    """The plan with the smallest summed penalty whose weight bits fit ``capacity`` (ties: fewer bits).

    ``allow_keep``: let the allocation itself choose ``keep`` (FP32) for a unit; by default only repair does.

    Raises:
        ConfigError: no plan fits (names the smallest budget that would).
    """
    # Pareto front of partial plans over the units seen so far: (bits, penalty, choice indices), bits ascending
    # and penalty strictly descending. Any plan off the front is beaten by one on it with the same remaining choices.
    front: list[tuple[int, float, tuple[int, ...]]] = [(0, 0.0, ())]
    for unit in units:
        options = unit.choices(allow_keep)
        candidates = [
            (bits + unit.params * unit.bits(p), pen + unit.cost_of(p), picks + (ORDER.index(p),))
            for bits, pen, picks in front
            for p in options
        ]
        candidates = [c for c in candidates if c[0] <= capacity]
        if not candidates:
            least = sum(u.params * min(u.bits(p) for p in u.choices(allow_keep)) for u in units)
            raise ConfigError(
                f"the budget ({capacity} bits = {capacity / 8:.0f} bytes) is below the smallest possible plan "
                f"({least} bits = {least / 8:.0f} bytes, every unit at its lowest allowed precision)"
            )
        candidates.sort(key=lambda c: (c[0], c[1]))
        front = []
        for cand in candidates:
            if not front or cand[1] < front[-1][1] - 1e-12:
                front.append(cand)
    best = min(front, key=lambda c: (c[1], c[0]))
    return {u.name: ORDER[i] for u, i in zip(units, best[2])}


def allocate_step(units: list[UnitCost], capacity: int) -> dict[str, Precision]:
    """RAAD's step function: units sorted by their 4-bit score, those below a threshold get 4 bits, the rest 8; the
    threshold is the lowest that fits ``capacity`` (units are lowered in score order until the plan fits).

    Unlike ``allocate`` it ignores how many weights a unit holds: a large insensitive unit and a small one are
    lowered in the same order. ``keep`` only where a unit is pinned to it.

    Raises:
        ConfigError: even every lowerable unit at 4 bits does not fit.
    """
    plan: dict[str, Precision] = {}
    for unit in units:
        allowed = unit.choices(allow_keep=False)
        plan[unit.name] = "w8a8" if "w8a8" in allowed else allowed[0]
    lowerable = sorted((u for u in units if "w4a8" in u.choices(allow_keep=False) and plan[u.name] != "w4a8"),
                       key=lambda u: u.penalty["w4a8"])
    for unit in lowerable:
        if plan_bits(units, plan) <= capacity:
            break
        plan[unit.name] = "w4a8"
    if plan_bits(units, plan) > capacity:
        least = plan_bits(units, plan)
        raise ConfigError(f"the budget ({capacity} bits = {capacity / 8:.0f} bytes) is below the smallest step "
                          f"plan ({least} bits = {least / 8:.0f} bytes)")
    return plan


ALLOCATIONS = ("knapsack", "raad")
"""``--allocation``: the exact knapsack (``allocate``), or RAAD's step function on sorted scores (``allocate_step``)."""


@dataclass
class RepairStep:
    promoted: str
    precision: Precision
    drop_before: float
    drop_after: float


@dataclass
class RepairResult:
    plan: dict[str, Precision]
    drop: float
    steps: list[RepairStep] = field(default_factory=list)
    within_tolerance: bool = True


def _promotion(unit: UnitCost, current: Precision) -> tuple[Precision, float, float] | None:
    """(next precision, estimated penalty gain, extra bytes) or None when already at ``keep``."""
    if current == "keep":
        return None
    nxt: Precision = "w8a8" if current == "w4a8" else "keep"
    if nxt != "keep" and nxt not in unit.penalty:
        nxt = "keep"
    gain = unit.cost_of(current) - unit.cost_of(nxt)
    extra = unit.params * (unit.bits(nxt) - unit.bits(current)) / 8
    return nxt, gain, extra


def repair(
    units: list[UnitCost],
    plan: dict[str, Precision],
    evaluate_drop: Callable[[dict[str, Precision]], float],
    tolerance: float,
    max_steps: int = 100,
) -> RepairResult:
    """Promote units (best estimated gain per extra byte first) until ``evaluate_drop(plan) <= tolerance``.

    Args:
        evaluate_drop: measures the validation AUROC drop (in AUROC points) of a plan against FP32.
        tolerance: allowed drop, same units.
    """
    plan = dict(plan)
    drop = evaluate_drop(plan)
    result = RepairResult(plan, drop)
    for _ in range(max_steps):
        if drop <= tolerance:
            break
        best = None
        for unit in units:
            step = _promotion(unit, plan[unit.name])
            if step is None:
                continue
            nxt, gain, extra = step
            ratio = max(gain, 0.0) / max(extra, 1e-9)
            if best is None or ratio > best[0] or (ratio == best[0] and extra < best[3]):
                best = (ratio, unit, nxt, extra)
        if best is None:
            break
        _, unit, nxt, _ = best
        plan[unit.name] = nxt
        new_drop = evaluate_drop(plan)
        result.steps.append(RepairStep(unit.name, nxt, drop, new_drop))
        drop = new_drop
    result.plan, result.drop, result.within_tolerance = plan, drop, drop <= tolerance
    return result
