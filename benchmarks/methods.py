"""Each better-than-naive method against the plain one, at equal bytes, on the offline models.

For each model and each pair, the plain recipe and the method's recipe are applied to the same
workspace and scored with the full evaluation protocol; the compressed bytes of both are printed
(and must be equal). Low rank "keeping 80% of the parameters": the rank ratio at which the
factors of all compressible layers hold 80% of their parameters in all (the planner is
measured by benchmarks/planner.py). Distillation: an aggressive recipe (3 bits, group 128, 50% unstructured) scored before and
after DISTILL_STEPS steps of knowledge distillation on the calibration text ("apply s" is
then the distillation's time). HQQ is measured on the asymmetric grid (its zero-point is what
it fits) beside round to nearest and GPTQ on the same grid; AWQ beside round to nearest on the
symmetric grid, storing more than it by exactly its fp16 channel scales where nothing before a
layer absorbs them (2 bytes per input column of those matrices; the script checks that difference). Basis sharing: per-layer
whitened SVD at that rank ratio beside one basis shared by 2 and by 3 neighbouring blocks, whose
rank stores no more (engine.methods.shared): the shared rows may hold a few bytes fewer (the rank is
rounded down), never more; and sharing split as the authors' configurations split it (the
attention output and down projections keep per-layer whitened SVD).

    .venv/bin/python benchmarks/methods.py [--models minilm,smollm2] [--only pairs] [--pairs hqq4,sharing] [--json]
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
from engine.recipe.recipe import Recipe  # noqa: E402


def ratio_for_params(ex: Explorer, fraction: float) -> float:
    """The rank ratio whose factors hold `fraction` of the compressible layers' parameters."""
    layers = ex.selected(Recipe())
    total = sum(i.params for i in layers)
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        r = Recipe(rank_ratio=round(mid, 6))
        held = sum((r.rank_for(i.full_rank) or i.full_rank) * sum(i.shape) for i in layers)
        lo, hi = (mid, hi) if held < fraction * total else (lo, mid)
    return round(lo, 4)


def pairs(ex: Explorer, only: list[str] | None = None) -> list[tuple[str, Recipe, list[Recipe]]]:
    """The pairs keyed in PAIRS (`only`: those keys, in that order), each (label, plain recipe,
    method recipes)."""
    keyed = dict(zip(PAIRS, _pairs(ex, only)))
    return [keyed[key] for key in (only or PAIRS)]


PAIRS = ("prune50", "prune24", "q4", "q3", "lowrank", "hqq4", "hqq3", "awq4", "awq3", "sharing", "split")
# the layers the authors of Basis Sharing keep apart (their configs' private_part): the attention
# output and the MLP's down projection (BERT's attention.output.dense and output.dense, Llama's o_proj
# and down_proj); every other layer shares
OWN_BASIS = r"output\.dense$|o_proj$|down_proj$"


def _pairs(ex: Explorer, only: list[str] | None):
    ratio = ratio_for_params(ex, 0.8) if only is None or {"lowrank", "sharing", "split"} & set(only) else None
    return [
        ("50% unstructured", Recipe(sparsity=0.5), [Recipe(sparsity=0.5, prune_method="wanda"),
                                                    Recipe(sparsity=0.5, prune_method="sparsegpt")]),
        ("2:4", Recipe(pattern="2:4"), [Recipe(pattern="2:4", prune_method="wanda"),
                                        Recipe(pattern="2:4", prune_method="sparsegpt")]),
        ("4 bits, group 128", Recipe(bits=4),
         [Recipe(bits=4, quant_method="gptq"), Recipe(bits=4, quant_method="gptq", act_order=True)]),
        ("3 bits, group 128", Recipe(bits=3),
         [Recipe(bits=3, quant_method="gptq"), Recipe(bits=3, quant_method="gptq", act_order=True)]),
        (f"low rank, 80% of parameters (ratio {ratio})", Recipe(rank_ratio=ratio),
         [Recipe(rank_ratio=ratio, lowrank_method="whitened")]) if ratio else None,
        *[(f"{b} bits, group 128, asymmetric", Recipe(bits=b, symmetric=False),
           [Recipe(bits=b, symmetric=False, quant_method="hqq"), Recipe(bits=b, symmetric=False, quant_method="gptq")])
          for b in (4, 3)],
        *[(f"{b} bits, group 128 (AWQ)", Recipe(bits=b), [Recipe(bits=b, quant_method="awq")]) for b in (4, 3)],
        (f"basis sharing, low rank at 80% of parameters (ratio {ratio})",
         Recipe(rank_ratio=ratio, lowrank_method="whitened"),
         [Recipe(rank_ratio=ratio, lowrank_method="shared", share_blocks=n) for n in (2, 3)]) if ratio else None,
        (f"basis sharing, the authors' split (o and down per layer), 80% of parameters (ratio {ratio})",
         Recipe(rank_ratio=ratio, lowrank_method="whitened"),
         [Recipe(rank_ratio=ratio, lowrank_method="shared",
                 per_layer=[{"match": OWN_BASIS, "lowrank_method": "whitened"}])]) if ratio else None,
    ]


def awq_extra(ex: Explorer, recipe: Recipe) -> int:
    """The bytes AWQ stores beyond round to nearest: an fp16 scale per input column of each
    matrix where nothing before it can absorb the scales (engine.drivers.awq_fold; the pairs here
    use no low rank: one matrix per layer)."""
    if recipe.quant_method != "awq":
        return 0
    return 2 * sum(ex.layer(n).shape[1] for n in ex.awq_folds(recipe).kept_scales)


DISTILL_RECIPE = Recipe(bits=3, sparsity=0.5)
DISTILL_STEPS = 64  # two passes over the 128 calibration paragraphs, 4 per step


def run_model(ref: str, with_pairs: bool = True, with_distill: bool = True, only: list[str] | None = None) -> dict:
    ex = Explorer.open(ref)
    work = ex.workspace()
    ev = ex.evaluator()
    cal = ex.calibration()
    rows = []
    for label, plain, others in (pairs(ex, only) if with_pairs else []):
        for recipe in (plain, *others):
            t0 = time.perf_counter()
            applied = work.apply(recipe)
            apply_s = time.perf_counter() - t0
            rows.append({"setting": label, "recipe": recipe.describe(), "bytes": applied.memory.compressed_bytes,
                         "apply_s": apply_s, "extra": awq_extra(ex, recipe), **work.evaluate()})
            print(f"{ref} | {label} | {recipe.describe()} | {rows[-1]['bytes']} B | {apply_s:.1f} s | "
                  + " ".join(f"{k} {v:.4g}" for k, v in rows[-1].items() if isinstance(v, float) and k != "apply_s"),
                  file=sys.stderr, flush=True)
        sizes = [r["bytes"] - r["extra"] for r in rows if r["setting"] == label]
        if "sharing" in label:  # the shared rank is rounded down: never more bytes than the plain
            assert max(sizes[1:]) <= sizes[0], f"{label}: more bytes than the plain"
        else:
            assert len(set(sizes)) == 1, f"{label}: bytes differ"
    if with_distill:
        label = f"distillation, {DISTILL_STEPS} steps"
        applied = work.apply(DISTILL_RECIPE)
        rows.append({"setting": label, "recipe": DISTILL_RECIPE.describe(), "bytes": applied.memory.compressed_bytes,
                     "apply_s": applied.seconds, **work.evaluate()})
        applied = work.distill(DISTILL_STEPS, DISTILL_RECIPE.distill_lr)
        rows.append({"setting": label, "recipe": applied.recipe.describe(), "bytes": applied.memory.compressed_bytes,
                     "apply_s": applied.distillation.seconds, **work.evaluate()})
    return {"model": ref, "note": ex.loaded.note, "primary": ev.primary, "baseline": ev.baseline(),
            "original_bytes": 2 * ex.total_params, "calibration": cal.to_dict(), "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--only", choices=("pairs", "distill"), help="only the method pairs, or only distillation")
    ap.add_argument("--pairs", help=f"only these pairs, comma-separated, of {','.join(PAIRS)}")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(header(), file=sys.stderr if getattr(args, 'json', False) else sys.stdout, flush=True)
    parts = [("pairs" if args.pairs else args.only) in (None, k) for k in ("pairs", "distill")]  # --pairs: pairs only
    only = None if not args.pairs else args.pairs.split(",")
    if only and not set(only) <= set(PAIRS):
        ap.error(f"--pairs: unknown {', '.join(sorted(set(only) - set(PAIRS)))}; known: {', '.join(PAIRS)}")
    results = [run_model(m, *parts, only=only) for m in args.models.split(",")]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for res in results:
        metrics = [k for k in res["baseline"] if k != res["primary"]]
        print(f"\n{res['model']}: baseline {res['primary']} {res['baseline'][res['primary']]:.4g}; "
              f"calibration {res['calibration']['samples']} sequences, {res['calibration']['tokens']} tokens"
              + (f"; note: {res['note']}" if res["note"] else ""))
        print(f"| setting | method | MiB | {res['primary']} | " + " | ".join(metrics) + " | apply s |")
        print("|---|---|---:|---:|" + "---:|" * len(metrics) + "---:|")
        for r in res["rows"]:
            print(f"| {r['setting']} | {r['recipe']} | {r['bytes'] / 2**20:.2f} | {r[res['primary']]:.4g} | "
                  + " | ".join(f"{r[m]:.4g}" for m in metrics) + f" | {r['apply_s']:.1f} |")


if __name__ == "__main__":
    main()
