"""Units of layers, and their sensitivity: one unit compressed at a time, the rest left alone.

    rows = sensitivity(work, Recipe(bits=3), by="type")      # quality change per unit

A unit is one layer ('layer'), every layer of one transformer block ('block'), or one kind of
layer across the blocks ('type', e.g. every `mlp.down_proj`). The planner (engine.studies.planner)
works on the same units, but measures each one in context: with the rest of the model at the
setting it competes with.
"""
from __future__ import annotations

import dataclasses
import re
from collections import OrderedDict

from engine.errors import UserError
from engine.glossary import HIGHER_IS_BETTER
from engine.recipe.recipe import Recipe

UNITS = ("layer", "block", "type")


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


def _loss(metrics: dict, baseline: dict, metric: str) -> float:
    """Quality lost against the baseline on `metric` (positive = worse)."""
    d = metrics[metric] - baseline[metric]
    return -d if HIGHER_IS_BETTER[metric] else d


def unit_task(worker, job) -> dict:
    """A runner's task (engine.studies.runner): one unit's layers `names` under `recipe`, the rest
    left alone, measured: its row without the loss."""
    unit, names, recipe, quick = job
    applied = _only(worker.work, names, recipe)
    metrics = worker.work.evaluate(quick=quick)
    return {"unit": unit, "layers": len(names),
            "bytes_saved": applied.memory.original_bytes - applied.memory.compressed_bytes, **metrics}


def jobs(explorer, recipe: Recipe, by: str = "type", quick: bool = True) -> dict:
    """The units as a runner's jobs, each under its name."""
    return {unit: (unit, names, recipe, quick) for unit, names in _groups(explorer, recipe, by).items()}


def sensitivity(work, recipe: Recipe, by: str = "type", quick: bool = True, progress=None, runner=None,
                done: dict | None = None, on_result=None) -> dict:
    """Compress one unit at a time under `recipe` (everything else left alone) and measure.
    Returns {'metric', 'baseline', 'by', 'recipe', 'rows': [{'unit', 'layers', 'bytes_saved',
    <metrics>, 'loss'}]}, rows in model order; `loss` is the primary metric's change for the worse.
    The units run on `runner` (default: this process, on `work`); `done` (rows already measured,
    by unit) and `on_result(unit, row, worker)` (each new row as it arrives) are
    engine.studies.runner.gather's."""
    from engine.studies.runner import Local, gather

    ex = work.explorer
    ev = ex.evaluator()
    baseline = ev.baseline()  # the first estimate of the primary metric is on the same scale

    def row(measured: dict) -> dict:
        return {**measured, "loss": _loss(measured, baseline, ev.primary)}

    tell = on_result and (lambda unit, measured, worker: on_result(unit, row(measured), worker))
    measured = gather(runner or Local(ex, work), unit_task, jobs(ex, recipe, by, quick), done, tell, progress)
    rows = [row({k: v for k, v in m.items() if k != "loss"}) for m in measured.values()]
    return {"metric": ev.primary, "baseline": baseline, "by": by, "recipe": recipe.to_dict(),
            "quick": quick, "rows": rows}
