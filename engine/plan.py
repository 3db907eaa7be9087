"""Sensitivity (one unit of layers compressed at a time) and a memory-budget planner.

    rows = sensitivity(work, Recipe(bits=3), by="type")      # quality change per unit
    p = plan(work, target_ratio=0.6, base=Recipe(bits=4))    # per-unit bits reaching 60% of fp16

A unit is one layer ('layer'), every layer of one transformer block ('block'), or one kind of
layer across the blocks ('type', e.g. every `mlp.down_proj`). The planner measures, for every
unit, the quality loss of each bit width on a ladder with the rest of the model left alone;
treats the losses as additive; and picks the bit width of every unit that fits the target with
the least total loss (a multiple-choice knapsack, solved exactly). The plan is a recipe: the
base recipe at the most common bit width, with a per-layer rule for every unit at another
(`plan_recipe`), which loads, exports and sweeps like any recipe. Then it measures the plan
and the uniform bit width of the nearest size with the full protocol. Give it the ratio of a
uniform setting (`uniform_ratio`) to compare at equal bytes: the plan is then no larger.
"""
from __future__ import annotations

import dataclasses
import math
import re
from collections import OrderedDict

from .errors import UserError
from .glossary import HIGHER_IS_BETTER
from .recipe import BITS, Recipe

UNITS = ("layer", "block", "type")
LADDER = (8, 6, 5, 4, 3, 2)


def units(explorer, recipe: Recipe, by: str = "type") -> "OrderedDict[str, list[str]]":
    """Unit name -> the names of its layers, among the layers `recipe` selects."""
    if by not in UNITS:
        raise UserError(f"--by: must be one of {', '.join(UNITS)}, got {by!r}")
    out: OrderedDict[str, list[str]] = OrderedDict()
    selected = explorer.selected(recipe)
    blocks = {i.name: re.search(r"\.(\d+)\.", f".{i.name}.") for i in selected}
    # the modules that hold numbered blocks: one for most models, two for an encoder-decoder
    stacks = {i.name[:m.start() - 1] for i in selected if (m := blocks[i.name])}
    for info in selected:
        m = blocks[info.name]
        if by == "layer" or (by == "block" and not m):
            key = info.name
        elif by == "block":  # "block 3"; with several stacks the block's path, e.g. "decoder.block.3"
            key = f"block {m.group(1)}" if len(stacks) == 1 else info.name[:m.end(1) - 1]
        else:
            key = re.sub(r"\.\d+\.", ".*.", info.name)
        out.setdefault(key, []).append(info.name)
    return out


def _groups(explorer, recipe: Recipe, by: str) -> "OrderedDict[str, list[str]]":
    groups = units(explorer, recipe, by)
    if not groups:
        raise UserError("the recipe selects no layer")
    return groups


def _ladder(ladder) -> list[int]:
    """The bit widths to choose from, widest first."""
    return sorted({b for b in ladder if b in BITS and b < 16}, reverse=True)


def names_regex(names) -> str:
    """A regular expression that matches exactly these layer names (re.search)."""
    return "^(?:" + "|".join(re.escape(n) for n in names) + ")$"


def unit_regex(unit: str, names: list[str], everything: list[str]) -> str:
    """A rule's regex for a unit: for a layer type ('model.layers.*.mlp.down_proj') the pattern
    with \\d+ for the block number, when among `everything` it matches just `names`; else
    the names themselves."""
    if ".*." in unit:
        pattern = "^" + re.escape(unit).replace(r"\.\*\.", r"\.\d+\.") + "$"
        if [n for n in everything if re.search(pattern, n)] == names:
            return pattern
    return names_regex(names)


def _only(work, names, recipe: Recipe):
    """Apply `recipe` to the layers `names` only (among those it selects), the rest of the
    model left alone."""
    return work.apply(dataclasses.replace(recipe, layers=names_regex(names), distill_steps=0, per_layer=()))


def plan_recipe(base: Recipe, units: dict, choice: dict, everything: list[str]) -> Recipe:
    """The plan as a recipe: `base` at the bit width most units take, and a per-layer rule
    for every unit that takes another."""
    counts: dict = {}
    for u, names in units.items():
        counts[choice[u]] = counts.get(choice[u], 0) + len(names)
    top = max(counts, key=lambda b: (counts[b], b))
    rules = [{"match": unit_regex(u, names, everything), "bits": choice[u]}
             for u, names in units.items() if choice[u] != top]
    return dataclasses.replace(base, bits=top, distill_steps=0, per_layer=rules)


def _loss(metrics: dict, baseline: dict, metric: str) -> float:
    """Quality lost against the baseline on `metric` (positive = worse)."""
    d = metrics[metric] - baseline[metric]
    return -d if HIGHER_IS_BETTER[metric] else d


def sensitivity(work, recipe: Recipe, by: str = "type", quick: bool = True, progress=None) -> dict:
    """Compress one unit at a time under `recipe` (everything else left alone) and measure.
    Returns {'metric', 'baseline', 'by', 'recipe', 'rows': [{'unit', 'layers', 'bytes_saved',
    <metrics>, 'loss'}]}, rows in model order; `loss` is the primary metric's change for the worse."""
    ex = work.explorer
    ev = ex.evaluator()
    baseline = ev.baseline()  # the first estimate of the primary metric is on the same scale
    groups = _groups(ex, recipe, by)
    rows = []
    for k, (unit, names) in enumerate(groups.items()):
        applied = _only(work, names, recipe)
        metrics = work.evaluate(quick=quick)
        rows.append({"unit": unit, "layers": len(names),
                     "bytes_saved": applied.memory.original_bytes - applied.memory.compressed_bytes,
                     **metrics, "loss": _loss(metrics, baseline, ev.primary)})
        if progress:
            progress(k + 1, len(groups), unit)
    return {"metric": ev.primary, "baseline": baseline, "by": by, "recipe": recipe.to_dict(),
            "quick": quick, "rows": rows}


def sensitivity_grid(work, base: Recipe, by: str = "type", ladder=LADDER, progress=None) -> dict:
    """Every unit at every bit width of `ladder` (other fields from `base`), one at a time, on
    the first estimate: {'metric', 'units', 'bits', 'loss': [[per bit width] per unit],
    'bytes_saved': [[...]]}, for a heatmap and for the planner."""
    ex = work.explorer
    ev = ex.evaluator()
    baseline = ev.baseline()
    groups = _groups(ex, base, by)
    ladder = _ladder(ladder)
    loss, saved = [], []
    total, step = len(groups) * len(ladder), 0
    for unit, names in groups.items():
        loss.append([])
        saved.append([])
        for b in ladder:
            applied = _only(work, names, dataclasses.replace(base, bits=b))
            loss[-1].append(_loss(work.evaluate(quick=True), baseline, ev.primary))
            saved[-1].append(applied.memory.original_bytes - applied.memory.compressed_bytes)
            step += 1
            if progress:
                progress(step, total, f"{unit} at {b} bits")
    return {"metric": ev.primary, "by": by, "units": list(groups), "bits": ladder, "loss": loss, "bytes_saved": saved}


def uniform_ratio(work, base: Recipe) -> float:
    """The size (fraction of fp16) of `base` applied to the layers it selects."""
    return work.apply(base).memory.ratio


def _least_loss(unit_names, ladder, cost, saved, need, buckets: int = 4000) -> dict:
    """The bit width per unit with the least total loss whose savings reach `need` bytes: a
    multiple-choice knapsack solved exactly by dynamic programming over savings counted in
    `need / buckets` steps, rounded down (so the real savings are never less than counted)."""
    step = max(need / buckets, 1.0)
    full = math.ceil(need / step) if need > 0 else 0
    best = {0: (0.0, ())}  # savings bucket (capped at full) -> (loss, choices so far)
    for u in unit_names:
        nxt = {}
        for s, (c, picks) in best.items():
            for b in ladder:
                s2 = min(full, s + int(saved[u, b] // step))
                c2 = c + cost[u, b]
                if s2 not in nxt or c2 < nxt[s2][0]:
                    nxt[s2] = (c2, picks + (b,))
        best = nxt
    if full not in best:  # only the smallest setting fits, and rounding hid it
        return {u: ladder[-1] for u in unit_names}
    return dict(zip(unit_names, best[full][1]))


def plan(work, target_ratio: float, base: Recipe, by: str = "type", ladder=LADDER, progress=None) -> dict:
    """Per-unit bit widths (other fields from `base`) reaching `target_ratio` of the fp16 bytes
    with the least estimated quality loss, and, measured with the full protocol, the plan
    beside the uniform bit width whose size is nearest the plan's."""
    if not 0 < target_ratio < 1:
        raise UserError(f"--target-ratio: must be in (0, 1), got {target_ratio!r}")
    ladder = _ladder(ladder)
    ex = work.explorer
    ev = ex.evaluator()
    groups = _groups(ex, base, by)
    layers = [n for names in groups.values() for n in names]
    recipes = {b: dataclasses.replace(base, bits=b) for b in ladder}
    smallest = _only(work, layers, recipes[ladder[-1]])
    if smallest.memory.ratio > target_ratio:
        raise UserError(f"the target {target_ratio} cannot be reached with {ladder[-1]} bits on the selected "
                        f"layers (smallest: {smallest.memory.ratio:.3f} of fp16)")
    baseline = ev.baseline()
    grid = sensitivity_grid(work, base, by, ladder, progress)
    cost = {(u, b): grid["loss"][i][j] for i, u in enumerate(grid["units"]) for j, b in enumerate(ladder)}
    saved = {(u, b): grid["bytes_saved"][i][j] for i, u in enumerate(grid["units"]) for j, b in enumerate(ladder)}
    original = 2 * ex.total_params
    choice = _least_loss(list(groups), ladder, cost, saved, need=original - target_ratio * original)
    recipe = plan_recipe(base, groups, choice, [i.name for i in ex.selected(base)])
    planned = work.apply(recipe)
    plan_metrics = work.evaluate()
    plan_bytes = planned.memory.compressed_bytes
    # each layer's bytes are its own, so a uniform width's size is the sum of the measured savings
    sizes = {b: original - sum(saved[u, b] for u in groups) for b in ladder}
    b = min(ladder, key=lambda b: abs(sizes[b] - plan_bytes))  # the uniform width nearest the plan's size
    _only(work, layers, recipes[b])
    uniform = {"bits": b, "recipe": recipes[b].describe(), "compressed_bytes": sizes[b],
               "ratio": sizes[b] / original, "metrics": work.evaluate()}
    return {
        "metric": ev.primary, "baseline": baseline, "target_ratio": target_ratio, "by": by,
        "base": base.to_dict(), "ladder": ladder, "recipe": recipe.to_dict(),
        "units": [{"unit": u, "layers": groups[u], "bits": choice[u],
                   "loss_by_bits": {b: cost[u, b] for b in ladder}} for u in groups],
        "grid": grid,
        "plan": {"compressed_bytes": plan_bytes, "ratio": planned.memory.ratio, "metrics": plan_metrics},
        "uniform": uniform,
    }
