"""Choose one measured candidate per attention/MLP block so the decoder hits the target bpw.

The problem is exllamav2's (conversion/optimize.py): the budget is
int(target_bpw * numel of every decoder Linear); each block offers its measured
candidates as (total_bits, error = 1 - accuracy); minimise the sum of
error^norm within the budget, with `norm` chosen (over exllamav2's interval
1.5..3.5) to minimise the worst block's error. exllamav2 searches with
simulated annealing; quantkit solves each norm's multiple-choice knapsack
exactly by dynamic programming over costs rounded up to 1/RESOLUTION of the
budget (rounding up keeps every answer within the true budget), then spends any
budget left over the way exllamav2 does: step blocks to their next candidate
while it still fits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NORMS = tuple(1.5 + 0.25 * i for i in range(9))  # exllamav2's first-stage interval, 1.5 .. 3.5
RESOLUTION = 20000


@dataclass
class Choice:
    picks: list[int]  # candidate index per block
    bits: int
    norm: float
    max_err: float


def _knapsack(costs: list[np.ndarray], values: list[np.ndarray], budget_units: int) -> list[int] | None:
    """Multiple-choice knapsack, minimising summed values with integer costs <= budget_units."""
    inf = np.inf
    best = np.zeros(budget_units + 1)
    choice = []
    for cost, val in zip(costs, values):
        new = np.full(budget_units + 1, inf)
        arg = np.full(budget_units + 1, -1, dtype=np.int32)
        for j, (c, v) in enumerate(zip(cost, val)):
            if c > budget_units:
                continue
            cand = np.full(budget_units + 1, inf)
            cand[c:] = best[: budget_units + 1 - c] + v
            better = cand < new
            new[better] = cand[better]
            arg[better] = j
        best = new
        choice.append(arg)
    if not np.isfinite(best[-1]):
        return None
    # best[u] is the optimum using at most u units (monotone because best starts at zeros for every u)
    u = budget_units
    picks = []
    for arg, cost in zip(reversed(choice), reversed(costs)):
        j = int(arg[u])
        picks.append(j)
        u -= int(cost[j])
    return picks[::-1]


def optimize(slots: list[list[tuple[int, float]]], budget: int) -> Choice:
    """slots: per block, its candidates as (total_bits, error), cheapest first."""
    unit = max(budget / RESOLUTION, 1.0)
    costs = [np.array([math.ceil(c / unit) for c, _ in s], dtype=np.int64) for s in slots]
    best: Choice | None = None
    for norm in NORMS:
        values = [np.array([max(e, 1e-12) ** norm for _, e in s]) for s in slots]
        picks = _knapsack(costs, values, int(budget // unit))
        if picks is None:
            continue
        max_err = max(slots[i][j][1] for i, j in enumerate(picks))
        bits = sum(slots[i][j][0] for i, j in enumerate(picks))
        if best is None or (max_err, bits * -1) < (best.max_err, best.bits * -1):
            best = Choice(picks, bits, norm, max_err)
    if best is None:
        cheapest = sum(min(c for c, _ in s) for s in slots)
        raise ValueError(f"the smallest candidates need {cheapest} bits, over the budget of {budget}")
    _spend_leftover(slots, best, budget)
    return best


def _spend_leftover(slots: list[list[tuple[int, float]]], choice: Choice, budget: int) -> None:
    """exllamav2's final tweak: move blocks one candidate up while the budget allows."""
    again = True
    while again:
        again = False
        for i, j in enumerate(choice.picks):
            if j + 1 < len(slots[i]):
                delta = slots[i][j + 1][0] - slots[i][j][0]
                if choice.bits + delta <= budget:
                    choice.bits += delta
                    choice.picks[i] = j + 1
                    again = True
    choice.max_err = max(slots[i][j][1] for i, j in enumerate(choice.picks))
