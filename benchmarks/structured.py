"""Structured pruning (heads, MLP channels, whole blocks) against unstructured pruning and low rank
at the same bytes, one-shot and after distillation, on the offline models.

For each model: a structured setting removing about TARGET (25%) of the compressible layers'
parameters (the model then stores 25% fewer bytes in those layers, at fp16), its importance by
calibration; beside it Wanda unstructured pruning and whitened low rank whose bytes (their masks
and factors counted) are the structured model's to within 0.5% (found by bisection on the counts
of engine.pipeline.compress.predict; the bytes column shows each). Every recipe is scored with the
full protocol, then again after DISTILL_STEPS steps of distillation from the original (the same
bytes). smollm2's attention holds a quarter of a block, and a block keeps at least one of its
three key/value groups: heads alone can remove at most 17% of its parameters, so the heads row
removes one group (a third of each block's attention) and MLP channels for the rest.

A gradual schedule (`--schedule`, instead of the above): Wanda at 50% unstructured and the MLP
channels setting, each pruned at once and then distilled DISTILL_STEPS steps, beside the same
recipe reached in SCHEDULE_STEPS steps with DISTILL_STEPS / SCHEDULE_STEPS steps of distillation
after each (the same distillation in all, the same bytes).

    .venv/bin/python benchmarks/structured.py [--models minilm,smollm2] [--steps 64] [--schedule] [--json]
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
from engine.pipeline.compress import predict  # noqa: E402
from engine.recipe.recipe import Recipe  # noqa: E402

TARGET = 0.25
SCHEDULE_STEPS = 4
DISTILL_STEPS = 64  # as benchmarks/methods.py: two passes over the calibration paragraphs, 4 per step


def predicted_bytes(ex: Explorer, recipe: Recipe) -> int:
    """The compressed bytes of `recipe` on the (unpruned) model, from the layers' shapes alone."""
    chosen = ex.selected(recipe)
    alone = ex.total_params - sum(i.params for i in chosen)
    return 2 * alone + sum(predict(i, recipe.for_layer(i.name)).bytes.compressed_bytes for i in chosen)


def at_bytes(ex: Explorer, make, target: int, lo: float, hi: float, decreasing: bool) -> Recipe:
    """make(x) at the x in [lo, hi] whose predicted bytes are closest to `target` (bisection;
    `decreasing`: bytes fall as x grows)."""
    for _ in range(30):
        mid = (lo + hi) / 2
        over = predicted_bytes(ex, make(round(mid, 4))) > target
        lo, hi = (mid, hi) if over == decreasing else (lo, mid)
    return make(round((lo + hi) / 2, 4))


def structured(ex: Explorer) -> list[tuple[str, Recipe]]:
    """The structured settings removing about TARGET of the compressible parameters, labelled
    with the share each removes."""
    total = sum(i.params for i in ex.selected(Recipe()))

    def removed(r: Recipe) -> int:
        return sum(row["params"] for row in ex.each_removes(r).values())

    def closest(make, xs) -> Recipe:
        return min((make(x) for x in xs), key=lambda r: abs(removed(r) - TARGET * total))

    fractions = [k / 100 for k in range(1, 91)]
    rows = [("heads and MLP channels", closest(lambda f: Recipe(prune_heads=0.25, prune_channels=f), fractions)),
            ("MLP channels", closest(lambda f: Recipe(prune_channels=f), fractions)),
            ("whole blocks", closest(lambda n: Recipe(prune_blocks=n),
                                     range(1, ex.loaded.model.config.num_hidden_layers)))]
    heads = closest(lambda f: Recipe(prune_heads=f), fractions)
    if abs(removed(heads) - TARGET * total) < 0.02 * total:  # heads alone reach it (not smollm2's: see above)
        rows.insert(0, ("attention heads", heads))
    return [(f"{label} ({removed(r) / total:.1%} of parameters)", r) for label, r in rows]


def run_model(ref: str, steps: int) -> dict:
    ex = Explorer.open(ref)
    ev = ex.evaluator()
    ex.calibration()
    rows = []
    for label, recipe in structured(ex):
        work = ex.workspace()
        size = work.apply(recipe).memory.compressed_bytes
        sparse = at_bytes(ex, lambda s: Recipe(sparsity=s, prune_method="wanda"), size, 0.0, 0.95, True)
        low = at_bytes(ex, lambda r: Recipe(rank_ratio=r, lowrank_method="whitened"), size, 0.05, 1.0, False)
        for name, r in ((label, recipe), ("Wanda unstructured, same bytes", sparse),
                        ("whitened low rank, same bytes", low)):
            t0 = time.perf_counter()
            applied = work.apply(r)
            one_shot = {"bytes": applied.memory.compressed_bytes, "apply_s": time.perf_counter() - t0,
                        **work.evaluate()}
            applied = work.distill(steps, r.distill_lr)
            recovered = {"distill_s": applied.distillation.seconds, **work.evaluate()}
            rows.append({"setting": label, "recipe": r.describe(), "method": name, "one_shot": one_shot,
                         "distilled": recovered})
            print(f"{ref} | {label} | {name}: {r.describe()} | {one_shot['bytes']:,} B | "
                  + " ".join(f"{k} {one_shot[k]:.4g} -> {recovered[k]:.4g}" for k in ev.baseline()),
                  file=sys.stderr, flush=True)
    return {"model": ref, "note": ex.loaded.note, "baseline": ev.baseline(), "original_bytes": 2 * ex.total_params,
            "distill_steps": steps, "rows": rows}


def run_schedule(ref: str, steps: int) -> dict:
    """One-shot then distilled, beside gradual with the same distillation spread over the steps."""
    from engine.drivers import schedule

    ex = Explorer.open(ref)
    ev = ex.evaluator()
    ex.calibration()
    channels = next(r for label, r in structured(ex) if label.startswith("MLP channels"))
    rows = []
    for label, recipe in (("Wanda, 50% unstructured", Recipe(sparsity=0.5, prune_method="wanda")),
                          ("MLP channels", channels)):
        work = ex.workspace()
        t0 = time.perf_counter()
        work.apply(recipe)
        once = {"bytes": work.applied.memory.compressed_bytes, **work.evaluate()}
        work.distill(steps, recipe.distill_lr)
        once_distilled = {"seconds": time.perf_counter() - t0, **work.evaluate()}
        gradual = recipe.updated(schedule_steps=SCHEDULE_STEPS, distill_steps=steps // SCHEDULE_STEPS)
        done = schedule.run(ex, gradual)
        mem = done.workspace.applied.memory
        assert mem.compressed_bytes == once["bytes"], f"{label}: the schedule's bytes differ"
        rows.append({"setting": label, "recipe": recipe.describe(), "gradual": gradual.describe(),
                     "bytes": once["bytes"], "one_shot": once, "one_shot_distilled": once_distilled,
                     "gradual_result": {"seconds": done.seconds, **done.workspace.evaluate()},
                     "steps": done.steps})
        print(f"{ref} | {label} | once {once} | once+distilled {once_distilled} | gradual "
              f"{rows[-1]['gradual_result']}", file=sys.stderr, flush=True)
    return {"model": ref, "baseline": ev.baseline(), "distill_steps": steps, "schedule_steps": SCHEDULE_STEPS,
            "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--steps", type=int, default=DISTILL_STEPS)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--schedule", action="store_true", help="the gradual schedule against pruning at once")
    args = ap.parse_args()
    print(header(), file=sys.stderr)
    if args.schedule:
        out = [run_schedule(m, args.steps) for m in args.models.split(",")]
        if args.json:
            print(json.dumps(out, indent=1))
            return
        for m in out:
            keys = list(m["baseline"])
            print(f"\n{m['model']} (baseline {m['baseline']}); {m['distill_steps']} distillation steps in all")
            print("| setting | MiB | " + " | ".join(f"{k}: at once → distilled / gradual" for k in keys) + " |")
            print("|---|---:|" + "---:|" * len(keys))
            for r in m["rows"]:
                print(f"| {r['setting']} | {r['bytes'] / 2**20:.2f} | " + " | ".join(
                    f"{r['one_shot'][k]:.4g} → {r['one_shot_distilled'][k]:.4g} / {r['gradual_result'][k]:.4g}"
                    for k in keys) + " |")
        return
    out = [run_model(m, args.steps) for m in args.models.split(",")]
    if args.json:
        print(json.dumps(out, indent=1))
        return
    for m in out:
        print(f"\n{m['model']} (baseline {m['baseline']}; {m['original_bytes'] / 2**20:.2f} MiB at fp16)")
        keys = list(m["baseline"])
        print("| setting | method | MiB | " + " | ".join(f"{k}, one-shot → distilled" for k in keys) + " |")
        print("|---|---|---:|" + "---:|" * len(keys))
        for r in m["rows"]:
            print(f"| {r['setting']} | {r['method']}: {r['recipe']} | {r['one_shot']['bytes'] / 2**20:.2f} | "
                  + " | ".join(f"{r['one_shot'][k]:.4g} → {r['distilled'][k]:.4g}" for k in keys) + " |")


if __name__ == "__main__":
    main()
