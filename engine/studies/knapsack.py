"""The budget planner's multiple-choice knapsack (engine.studies.planner): the option per unit with
the least total loss within a budget of bytes, exact, and its choices a few changes from a center.

    least_loss(units, options, loss, cost, budget)          # {unit: option}, or None where nothing fits
    candidates(units, options, loss, cost, budget, center)  # the choices changing 1, 2, 3, 4, 6, ... units
"""
from __future__ import annotations

import math


def least_loss(units: list, options: dict, loss: dict, cost: dict, budget: float, step: float | None = None,
               keep: dict | None = None, max_changes: int | None = None) -> dict | None:
    """The option per unit with the least total `loss` whose total `cost` (bytes, relative to
    the current setting: negative saves) is at most `budget`: a multiple-choice knapsack solved
    exactly by dynamic programming over costs counted in `step`s (default 1/8000 of the widest
    range of costs), each rounded up, so the real total never exceeds what is counted (exact when
    every cost is a multiple of the step). With `max_changes`, at most that many units take an
    option other than their `keep` one. None: nothing fits."""
    step = step or (sum(max(abs(cost[u, o]) for o in options[u]) for u in units) or 1.0) / 8000
    w = {k: math.ceil(c / step - 1e-9) for k, c in cost.items()}
    cap = math.floor(budget / step + 1e-9)
    # the least total still to come, so that states that can no longer fit are dropped
    rest = [0] * (len(units) + 1)
    for i in range(len(units) - 1, -1, -1):
        rest[i] = rest[i + 1] + min(w[units[i], o] for o in options[units[i]])
    best = {(0, 0): (0.0, ())}  # (counted cost, units changed) -> (loss, options so far)
    for i, u in enumerate(units):
        nxt = {}
        for (s, n), (c, picks) in best.items():
            for o in options[u]:
                s2, c2 = s + w[u, o], c + loss[u, o]
                n2 = n + (max_changes is not None and o != keep[u])
                if s2 + rest[i + 1] > cap or (max_changes is not None and n2 > max_changes):
                    continue
                if (s2, n2) not in nxt or c2 < nxt[s2, n2][0]:
                    nxt[s2, n2] = (c2, picks + (o,))
        best = nxt
    if not best:
        return None
    _, picks = min(best.values(), key=lambda v: v[0])
    return dict(zip(units, picks))


def candidates(units: list, options: dict, loss: dict, cost: dict, budget: float, center: dict) -> list[dict]:
    """The knapsack's choices changing at most 1, 2, 3, 4, 6, 8, ... units from `center`, up to
    the unconstrained one, fewest changes first: small moves add up more faithfully than large
    ones, so each is measured, not only the one predicted best."""
    full = least_loss(units, options, loss, cost, budget)
    if full is None:
        return []
    changed = sum(full[u] != center[u] for u in units)
    out, k = [], 1
    while k < changed:
        c = least_loss(units, options, loss, cost, budget, keep=center, max_changes=k)
        if c is not None and c != center and c not in out:
            out.append(c)
        k = k + 1 if k < 4 else k * 2
    return out + ([full] if full not in out else [])
