"""A grid of recipes, one row of plain numbers per point, and the Pareto frontier."""
from __future__ import annotations

import csv
import itertools
import json
import math
import time

from engine.errors import UserError
from engine.recipe.recipe import Recipe


def grid(rank_ratios, bits, sparsities, base: Recipe | None = None) -> list[Recipe]:
    """Every combination, on top of `base`'s other fields. A rank ratio of 1 means no low rank;
    with an N:M base pattern, a sparsity of 0 means no pruning and any other value the pattern."""
    d = (base or Recipe()).to_dict()
    recipes = []
    for r, b, s in itertools.product(rank_ratios, bits, sparsities):
        point = dict(d, rank=None, rank_ratio=None if r == 1 else r, bits=int(b))
        if d["pattern"] != "unstructured":
            point["sparsity"] = 0.0
            if s == 0:
                point["pattern"] = "unstructured"
        else:
            point["sparsity"] = s
        recipe = Recipe.from_dict(point)
        if recipe not in recipes:
            recipes.append(recipe)
    return recipes


def recipe_columns(recipe: Recipe) -> dict:
    """Every recipe field as a CSV cell, in the recipe's order: `per_layer` as compact JSON,
    None as empty."""
    cells = recipe.to_dict()
    cells["per_layer"] = json.dumps(cells["per_layer"], separators=(",", ":"))
    return {k: "" if v is None else v for k, v in cells.items()}


def point(work, recipe: Recipe, quick: bool = False, eval_text: str | None = None,
          eval_name: str | None = None) -> dict:
    """Apply `recipe` to a workspace and evaluate it: one CSV-ready row (the recipe's fields,
    its label, the bytes, the metrics, the seconds, and the recipe as JSON)."""
    applied = work.apply(recipe)
    t0 = time.perf_counter()
    metrics = work.evaluate(quick=quick, eval_text=eval_text, eval_name=eval_name)
    return {
        **recipe_columns(recipe), "label": recipe.describe(),
        "original_bytes": applied.memory.original_bytes,
        "compressed_bytes": applied.memory.compressed_bytes, "ratio": applied.memory.ratio,
        **metrics, "estimate_only": quick, "apply_s": applied.seconds,
        "evaluate_s": time.perf_counter() - t0, "recipe": json.dumps(recipe.to_dict()),
    }


def jobs(recipes: list[Recipe], quick: bool = False, eval_text: str | None = None,
         eval_name: str | None = None) -> dict:
    """The sweep's points as a runner's jobs (engine.studies.runner), each under its recipe as
    JSON (the "recipe" column of its row)."""
    return {json.dumps(r.to_dict()): (r, quick, eval_text, eval_name) for r in recipes}


def point_task(worker, job) -> dict:
    """A runner's task: one point (`jobs`) on the worker's workspace."""
    recipe, quick, eval_text, eval_name = job
    return point(worker.work, recipe, quick, eval_text, eval_name)


def offloaded_task(worker, job) -> dict:
    """A runner's task: one point on the offload path (engine.drivers.run_report.offloaded, as
    `run --max-memory` takes it): the model loaded on the worker within `max_memory`, compressed in
    place, evaluated and let go, for a model larger than the worker's memory. The row `point` gives."""
    from engine.drivers.run_report import offloaded

    recipe, quick, eval_text, eval_name, model, max_memory, offload_folder, trust_remote_code = job
    out = offloaded(model, recipe, max_memory, offload_folder, None, trust_remote_code, quick, eval_text, eval_name)
    memory = out["memory"]
    metrics = {k: v for k, v in out["metrics"].items() if k != "protocol"}
    return {
        **recipe_columns(recipe), "label": recipe.describe(), "original_bytes": memory["original_bytes"],
        "compressed_bytes": memory["compressed_bytes"], "ratio": memory["ratio"], **metrics, "estimate_only": quick,
        "apply_s": out["seconds"]["apply"], "evaluate_s": out["seconds"]["evaluate"],
        "recipe": json.dumps(recipe.to_dict()),
    }


def protocol_task(worker, job) -> dict:
    """A runner's task: the evaluation's protocol on text `job` (text, name)."""
    return worker.explorer.evaluator(*job).protocol


def pareto(points: list[dict], x: str, y: str, higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both fewer `x` and better `y`, by rising x.

    >>> pareto([{"b": 1, "q": 0.5}, {"b": 2, "q": 0.4}, {"b": 3, "q": 0.9}], "b", "q", True)
    [0, 2]
    """
    sign = 1 if higher_is_better else -1
    order = sorted(range(len(points)), key=lambda i: (points[i][x], -sign * points[i][y]))
    front, best = [], None
    for i in order:
        v = sign * points[i][y]
        if best is None or v > best:
            front.append(i)
            best = v
    return front


def fronts(points: list[dict], metric: str, higher_is_better: bool) -> dict[str, list[int]]:
    """One Pareto frontier per method (a point's "method"; one unnamed method without): method ->
    indices into `points` of its frontier, by rising compressed bytes."""
    out = {}
    for method in dict.fromkeys(p.get("method", "") for p in points):
        idx = [i for i, p in enumerate(points) if p.get("method", "") == method]
        out[method] = [idx[j] for j in pareto([points[i] for i in idx], "compressed_bytes", metric, higher_is_better)]
    return out


def number(text: str):
    """A CSV cell as the number it writes, else as it is.

    >>> number("3"), number("0.5"), number("1e-05"), number("int4 g128")
    (3, 0.5, 1e-05, 'int4 g128')
    """
    try:
        v = float(text)
    except ValueError:
        return text
    return int(v) if v.is_integer() and "." not in text and "e" not in text.lower() else v


def read_csv(path: str) -> list[dict]:
    """The points of a CSV written by `sweep` (the recipe's columns, label, bytes and metrics)."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [{k: number(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    except OSError as e:
        raise UserError(f"--sweep: cannot read {path!r} ({e.strerror})") from None
    if not rows or "compressed_bytes" not in rows[0] or "label" not in rows[0]:
        raise UserError(f"--sweep: {path!r} is not a CSV written by `python -m engine sweep`")
    for r in rows:
        r["estimate_only"] = str(r.get("estimate_only")).lower() == "true"
        if any(isinstance(v, float) and math.isnan(v) for v in r.values()):
            raise UserError(f"--sweep: {path!r} has a point without a number ({r['label']})")
    return rows
