"""`sweep` (a grid of recipes), `sensitivity` (one unit at a time) and `plan` (bit widths per unit)."""
from __future__ import annotations

import csv
import json
import sys

from ..plan import UNITS
from .options import (SWEEP_AXES, Progress, eval_text, floats, mb, model_args, open_explorer, out_path,
                      recipe_args, recipe_from)


def cmd_sweep(args):
    from .. import sweep

    ratios = floats(args.rank_ratio, "--rank-ratio")
    bits = [int(b) for b in floats(args.bits, "--bits")]
    sparsities = floats(args.sparsity, "--sparsity")
    recipes = sweep.grid(ratios, bits, sparsities, recipe_from(args, exclude=SWEEP_AXES))
    text, name = eval_text(args)
    path = out_path(args.out)
    ex = open_explorer(args)
    work = ex.workspace()
    ev = ex.evaluator(text, name)
    from tqdm import tqdm

    writer = None
    with open(path, "w", newline="", encoding="utf-8") as fh:
        for recipe in tqdm(recipes, desc=f"sweep {args.model}", unit="point", file=sys.stderr):
            row = sweep.point(work, recipe, quick=args.quick, eval_text=text, eval_name=name)
            if writer is None:
                writer = csv.DictWriter(fh, fieldnames=list(row))
                writer.writeheader()
            writer.writerow(row)
            fh.flush()
    print(f"wrote {len(recipes)} points to {path} (protocol: {json.dumps(ev.protocol)})", file=sys.stderr)


def cmd_sensitivity(args):
    from .. import plan

    recipe = recipe_from(args)
    path = out_path(args.out)
    ex = open_explorer(args)
    bar = Progress(f"sensitivity {args.model} by {args.by}")
    try:
        result = plan.sensitivity(ex.workspace(), recipe, args.by, quick=not args.full, progress=bar)
    finally:
        bar.close()
    rows = result["rows"]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} units to {path}: {result['metric']} change with only that unit at "
          f"{recipe.describe()} ({'full protocol' if args.full else 'first estimate'})", file=sys.stderr)
    for r in sorted(rows, key=lambda r: -r["loss"])[:5]:
        print(f"  {r['unit']:<52} {result['metric']} loss {r['loss']:+.4g}", file=sys.stderr)


def cmd_plan(args):
    from .. import plan

    base = recipe_from(args)
    ladder = [int(b) for b in floats(args.ladder, "--ladder")]
    path = out_path(args.out) if args.out else None
    ex = open_explorer(args)
    bar = Progress(f"plan {args.model}")
    try:
        result = plan.plan(ex.workspace(), args.target_ratio, base, args.by, ladder, progress=bar)
    finally:
        bar.close()
    if path:  # the plan as a recipe with per-layer rules: --recipe FILE and the app load it
        path.write_text(json.dumps(result["recipe"], indent=2), encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    m = result["metric"]
    print(f"{args.model}: target {args.target_ratio} of fp16, bits per {args.by} from {ladder}")
    for u in result["units"]:
        print(f"  {u['unit']:<52} {u['bits']} bits")
    p, uni = result["plan"], result["uniform"]
    print(f"planned: {mb(p['compressed_bytes'])} (ratio {p['ratio']:.4f}), {m} {p['metrics'][m]:.4g}")
    print(f"uniform {uni['recipe']}: {mb(uni['compressed_bytes'])} (ratio {uni['ratio']:.4f}), "
          f"{m} {uni['metrics'][m]:.4g}; baseline {result['baseline'][m]:.4g}")


def add_parsers(sub) -> None:
    s = sub.add_parser("sweep", help="a grid of recipes, one CSV row per point")
    model_args(s)
    recipe_args(s, sweep=True)
    s.add_argument("--eval-text", help="UTF-8 text file to evaluate on instead of the packaged text")
    s.add_argument("--quick", action="store_true", help="first estimates only")
    s.add_argument("--out", required=True, help="CSV file to write")
    s.set_defaults(fn=cmd_sweep)

    se = sub.add_parser("sensitivity", help="compress one layer, block or layer type at a time; CSV of the quality change")
    model_args(se)
    recipe_args(se)
    se.add_argument("--by", choices=UNITS, default="type",
                    help="unit: one layer, one transformer block, or one kind of layer across blocks (default)")
    se.add_argument("--full", action="store_true", help="full protocol per unit (default: the first estimate)")
    se.add_argument("--out", required=True, help="CSV file to write")
    se.set_defaults(fn=cmd_sensitivity)

    pl = sub.add_parser("plan", help="per-unit bit widths reaching a memory target with the least measured loss")
    model_args(pl)
    recipe_args(pl)
    pl.add_argument("--target-ratio", type=float, required=True, help="compressed / fp16 bytes to reach, in (0, 1)")
    pl.add_argument("--by", choices=UNITS, default="type", help="unit that gets its own bit width")
    pl.add_argument("--ladder", default="8,6,5,4,3,2", help="bit widths to choose from (default 8,6,5,4,3,2)")
    pl.add_argument("--out", help="also write the plan as a recipe JSON file (per-layer rules), to load with "
                                  "--recipe FILE or in the app")
    pl.add_argument("--json", action="store_true", help="print the whole result: units, losses, plan and uniform")
    pl.set_defaults(fn=cmd_plan)
