"""The budget planner against the setting it competes with, at the same or fewer bytes.

For each model and each reference (uniform 3 and 4 bits in groups of 128; on a model llama.cpp
can hold, its Q4_K_M and Q3_K_M mixes), the planner (engine.studies.planner: a setting per layer type,
measured in context, two rounds) is given the reference's bytes; the plan and the reference are
scored with the full protocol. Printed side by side, with the plan's settings and its time.

    .venv/bin/python benchmarks/planner.py [--models minilm,smollm2] [--refs int3,int4,q4_k_m,q3_k_m]
        [--rounds 2] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.drivers.explorer import Explorer  # noqa: E402
from engine.hardware.machine import header  # noqa: E402
from engine.recipe.presets import preset_recipe  # noqa: E402
from engine.recipe.recipe import Recipe  # noqa: E402
from engine.studies import planner  # noqa: E402

REFS = ("int3", "int4", "q4_k_m", "q3_k_m")


def reference(ex: Explorer, name: str) -> Recipe | None:
    if name.startswith("int"):
        return Recipe(bits=int(name[3:]))
    recipe = preset_recipe(name, ex.layers, ex.loaded.model.config)
    return recipe if ex.loaded.kind == "causal-lm" else None  # llama.cpp runs language models


def run_model(ref: str, refs, rounds: int) -> dict:
    ex = Explorer.open(ref)
    work = ex.workspace()
    ev = ex.evaluator()
    rows = []
    for name in refs:
        recipe = reference(ex, name)
        if recipe is None:
            continue
        if recipe.calibrated:
            ex.calibration()
        t0 = time.perf_counter()
        p = planner.plan(work, recipe, by="type", rounds=rounds)
        rows.append({"reference": name, "recipe": p.reference.describe(), "seconds": time.perf_counter() - t0,
                     "reference_bytes": p.uniform.compressed_bytes, "reference_metrics": p.uniform.metrics,
                     "plan_bytes": p.planned.compressed_bytes, "plan_metrics": p.planned.metrics,
                     "is_reference": p.is_reference, "measured_choices": p.measured_choices,
                     "rounds": [c.to_dict() for c in p.rounds], "choice": {u.unit: u.choice for u in p.units}})
    return {"model": ref, "note": ex.loaded.note, "primary": ev.primary, "baseline": ev.baseline(), "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--refs", default=",".join(REFS))
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(header(), file=sys.stderr if getattr(args, 'json', False) else sys.stdout, flush=True)
    refs = [r for r in args.refs.split(",") if r]
    results = []
    for m in args.models.split(","):
        results.append(run_model(m, refs, args.rounds))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)  # each model as it ends
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for res in results:
        pm = res["primary"]
        metrics = [pm] + [k for k in res["baseline"] if k != pm]
        print(f"\n{res['model']}: baseline {pm} {res['baseline'][pm]:.4g}" + (f"; note: {res['note']}" if res["note"] else ""))
        print("| reference | MiB, reference → plan | " + " | ".join(f"{m}, reference → plan" for m in metrics)
              + " | plan per layer type | measured | s |")
        print("|---|---:|" + "---:|" * len(metrics) + "---|---:|---:|")
        for r in res["rows"]:
            plan = ", ".join(f"{u.split('.')[-2] if u.endswith('.dense') else u.split('.')[-1]} {c}"
                             for u, c in r["choice"].items())
            print(f"| {r['recipe']} | {r['reference_bytes'] / 2**20:.2f} → {r['plan_bytes'] / 2**20:.2f} | "
                  + " | ".join(f"{r['reference_metrics'][m]:.4g} → {r['plan_metrics'][m]:.4g}" for m in metrics)
                  + f" | {plan} | {r['measured_choices']} | {r['seconds']:.0f} |")


if __name__ == "__main__":
    main()
