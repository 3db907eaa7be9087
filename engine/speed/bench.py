"""`python -m engine bench`: the engine's speed, measured side by side with the naive way.

For each model: load, first factorization (all SVDs, once per model), then a walk over
BENCH_RECIPES. For every recipe, in the same run:
- naive: recompute the SVD of every compressible layer (as a page without a factor cache must,
  to draw spectra and truncate), apply, full evaluation;
- fast: apply with the cached factors, then the first estimate (the app's quick slice).
Figures are medians over the recipes (and repeats).
"""
from __future__ import annotations

import platform
import statistics
import time

from engine.drivers.explorer import Explorer
from engine.hardware.machine import describe, header
from engine.methods import svd
from engine.recipe.recipe import Recipe

BENCH_RECIPES = (
    Recipe(bits=8),
    Recipe(bits=4),
    Recipe(bits=4, sparsity=0.3),
    Recipe(bits=8, sparsity=0.5),
    Recipe(rank_ratio=0.9, bits=8),
    Recipe(rank_ratio=0.75, bits=8, sparsity=0.2),
    Recipe(pattern="2:4", bits=8),
)


def bench_model(ref: str, device: str | None = None, repeats: int = 1, recipes=BENCH_RECIPES) -> dict:
    t0 = time.perf_counter()
    ex = Explorer.open(ref, device)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ev = ex.evaluator()
    reference_s = time.perf_counter() - t0
    factorize_s = ex.factorize()
    work = ex.workspace()
    primary = ev.primary
    rows = []
    for _ in range(repeats):
        for recipe in recipes:
            # the naive way: every SVD again, apply, full evaluation
            fresh = {}

            def recompute(name, method="svd"):  # the benchmark recipes use the plain SVD
                if name not in fresh:
                    fresh[name] = svd.svd(ex.weight(name))
                return fresh[name]

            t0 = time.perf_counter()
            for info in ex.selected(Recipe()):
                recompute(info.name)
            work.apply(recipe, factors=recompute)
            t1 = time.perf_counter()
            full = work.evaluate(quick=False)
            t2 = time.perf_counter()
            naive_s, full_s = t2 - t0, t2 - t1
            fresh.clear()  # free the recomputed factors
            # the engine's way: cached factors, first estimate
            applied = work.apply(recipe)
            t0 = time.perf_counter()
            quick = work.evaluate(quick=True)
            evaluate_s = time.perf_counter() - t0
            rows.append({
                "recipe": recipe.describe(),
                "apply_s": applied.seconds,
                "evaluate_s": evaluate_s,
                "full_evaluate_s": full_s,
                "naive_s": naive_s,
                "estimate": quick[primary],
                "full": full[primary],
                "estimate_error": abs(quick[primary] - full[primary]) / abs(full[primary]),
                "estimate_low": quick.get(primary + "_low"), "estimate_high": quick.get(primary + "_high"),
                "ratio": applied.memory.ratio,
            })
    med = {k: statistics.median(r[k] for r in rows) for k in ("apply_s", "evaluate_s", "full_evaluate_s", "naive_s")}
    return {
        "load_s": load_s,
        "factorize_s": factorize_s,
        "reference_s": reference_s,
        **med,
        "speedup": med["naive_s"] / (med["apply_s"] + med["evaluate_s"]),
        "estimate_error": max(r["estimate_error"] for r in rows),
        # how often the full figure falls inside the first estimate's stated 95% interval
        "estimate_coverage": sum(r["estimate_low"] <= r["full"] <= r["estimate_high"] for r in rows) / len(rows),
        "primary_metric": primary,
        "quick_slice": ev.protocol["quick"],
        "layers": len(ex.selected(Recipe())),
        "device": str(ex.loaded.device),
        "recipes": rows,
    }


def run_bench(models, device=None, repeats=1) -> dict:
    out = {name: bench_model(name, device, repeats) for name in models}
    out["machine"] = {**describe(), "python": platform.python_version(), "header": header()}
    return out


def format_table(result: dict) -> str:
    keys = ("load_s", "factorize_s", "apply_s", "evaluate_s", "full_evaluate_s", "naive_s", "speedup", "estimate_error",
            "estimate_coverage")
    models = [m for m in result if m != "machine"]
    lines = [f"{'':<16}" + "".join(f"{m:>12}" for m in models)]
    for k in keys:
        lines.append(f"{k:<16}" + "".join(f"{result[m][k]:>12.3f}" for m in models))
    lines.append("")
    for m in models:
        lines.append(f"{m}: medians over {len(result[m]['recipes'])} recipe changes; "
                     f"first estimate = {result[m]['quick_slice']}")
        for r in result[m]["recipes"]:
            inside = "inside" if r["estimate_low"] <= r["full"] <= r["estimate_high"] else "OUTSIDE"
            lines.append(f"  {r['recipe']:<34} apply {r['apply_s']:.3f}s  estimate {r['estimate']:.4g} "
                         f"(95%: {r['estimate_low']:.4g} to {r['estimate_high']:.4g}) vs full {r['full']:.4g} "
                         f"({r['estimate_error']:.1%}, {inside})")
    lines.append(result["machine"]["header"])
    return "\n".join(lines)
