"""`sweep` (a grid of recipes), `sensitivity` (one unit at a time) and `plan` (a setting per unit)."""
from __future__ import annotations

import json
import sys

from engine.cli import cluster_options
from engine.cli.options import (
    SWEEP_AXES,
    Progress,
    check_preset,
    eval_text,
    floats,
    mb,
    model_args,
    open_explorer,
    out_path,
    recipe_args,
    recipe_from,
    with_preset,
)
from engine.errors import UserError
from engine.studies.sensitivity import UNITS


def cmd_sweep(args):
    from engine.studies import sweep
    from engine.studies.results_file import ResultsFile
    from engine.studies.runner import gather

    ratios = floats(args.rank_ratio, "--rank-ratio")
    bits = [int(b) for b in floats(args.bits, "--bits")]
    sparsities = floats(args.sparsity, "--sparsity")
    recipes = sweep.grid(ratios, bits, sparsities, recipe_from(args, exclude=SWEEP_AXES))
    text, name = eval_text(args)
    jobs, task = sweep.jobs(recipes, args.quick, text, name), sweep.point_task
    if args.max_memory:  # each point loads the model within --max-memory, on whichever worker runs it
        if args.device:
            raise UserError("--max-memory places the model itself (GPUs first, then the CPU, then disk): drop --device")
        from engine.drivers.offload import check, parse_max_memory

        parse_max_memory(args.max_memory)
        for r in recipes:
            check(r)
        extra = (args.model, args.max_memory, args.offload_folder, args.trust_remote_code)
        jobs, task = {k: (*job, *extra) for k, job in jobs.items()}, sweep.offloaded_task
    elif args.offload_folder:
        raise UserError("sweep: --offload-folder needs --max-memory")
    out = ResultsFile.open(out_path(args.out), jobs, args.resume, key_column="recipe")
    if out.done:
        print(f"{args.out}: {len(out.done)} of {len(jobs)} points already measured, kept", file=sys.stderr)
    runner = cluster_options.runner(args, load=not args.max_memory)
    bar = Progress(f"sweep {args.model}", "point")
    try:
        gather(runner, task, jobs, out.done, lambda key, row, worker: out.add(key, row), bar,
               {k: job[0].describe() for k, job in jobs.items()})
        protocol = None if args.max_memory else gather(runner, sweep.protocol_task, {"p": (text, name)})["p"]
    finally:
        bar.close()
        runner.close()
    out.finish(jobs)
    print(f"wrote {len(recipes)} points to {args.out} "
          + (f"(protocol: {json.dumps(protocol)})" if protocol else "(each on the offload path, within --max-memory)"),
          file=sys.stderr)


def cmd_sensitivity(args):
    from engine.studies import sensitivity as plan
    from engine.studies.results_file import ResultsFile
    from engine.studies.sweep import number

    recipe = recipe_from(args)
    path = out_path(args.out)
    ex = open_explorer(args)
    units = plan.jobs(ex, recipe, args.by)
    out = ResultsFile.open(path, units, args.resume, key_column="unit")
    done = {u: {k: number(v) for k, v in row.items()} for u, row in out.done.items()}
    runner = cluster_options.runner(args, explorer=ex)
    bar = Progress(f"sensitivity {args.model} by {args.by}", "unit")
    try:
        result = plan.sensitivity(ex.workspace(), recipe, args.by, quick=not args.full, progress=bar, runner=runner,
                                  done=done, on_result=lambda unit, row, worker: out.add(unit, row))
    finally:
        bar.close()
        runner.close()
    out.finish(units)
    rows = result["rows"]
    print(f"wrote {len(rows)} units to {path}: {result['metric']} change with only that unit at "
          f"{recipe.describe()} ({'full protocol' if args.full else 'first estimate'})", file=sys.stderr)
    for r in sorted(rows, key=lambda r: -r["loss"])[:5]:
        print(f"  {r['unit']:<52} {result['metric']} loss {r['loss']:+.4g}", file=sys.stderr)


def cmd_plan(args):
    from engine.studies import planner
    from engine.studies.results_file import ResultsFile

    check_preset(args)
    reference = recipe_from(args)
    ladder = planner.parse_ladder(args.ladder) if args.ladder else None
    path = out_path(args.out) if args.out else None
    if args.resume and not path:
        raise UserError("--resume: needs --out (the measurements are kept beside it, in OUT.measurements.jsonl)")
    ex = open_explorer(args)
    reference = with_preset(args, reference, ex)
    journal = path and ResultsFile.open(path.with_name(path.name + ".measurements.jsonl"), None, args.resume)
    runner = cluster_options.runner(args, explorer=ex)
    bar = Progress(f"plan {args.model}")
    try:
        result = planner.plan(ex.workspace(), reference, args.target_ratio, args.by, ladder, args.rounds,
                              progress=bar, runner=runner, measured=journal and journal.done,
                              on_result=journal and (lambda key, row, worker: journal.add(key, row)))
    finally:
        bar.close()
        runner.close()
    if path:  # the plan as a recipe with per-layer rules: --recipe FILE and the app load it
        path.write_text(json.dumps(result.recipe.to_dict(), indent=2), encoding="utf-8")
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return
    m, p, uni = result.metric, result.planned, result.uniform
    budget = "the bytes of the reference" if args.target_ratio is None else f"target {args.target_ratio} of fp16"
    print(f"{args.model}: a setting per {args.by} from {', '.join(result.ladder)}, within {budget}")
    for u in result.units:
        print(f"  {u.unit:<52} {u.choice}")
    print(f"planned: {mb(p.compressed_bytes)} (ratio {p.ratio:.4f}), {m} {p.metrics[m]:.4g}"
          + (" (no mix measured better: the plan is the reference)" if result.is_reference else ""))
    print(f"reference {result.reference.describe()}: {mb(uni.compressed_bytes)} (ratio {uni.ratio:.4f}), "
          f"{m} {uni.metrics[m]:.4g}; baseline {result.baseline[m]:.4g}")


def add_parsers(sub) -> None:
    s = sub.add_parser("sweep", help="a grid of recipes, one CSV row per point")
    model_args(s)
    recipe_args(s, sweep=True)
    s.add_argument("--eval-text", help="UTF-8 text file to evaluate on instead of the packaged text")
    s.add_argument("--quick", action="store_true", help="first estimates only")
    s.add_argument("--out", required=True, help="CSV file to write, a row as each point is measured")
    s.add_argument("--max-memory", help="the offload path, as `run` takes it: each point loads the model within "
                                        "DEVICE=SIZE,... (on a cluster, each worker's own: 0 is its GPU), compresses "
                                        "it in place and lets it go")
    s.add_argument("--offload-folder", help="with --max-memory: where offloaded weights go (default: a temporary folder)")
    cluster_options.cluster_args(s)
    s.set_defaults(fn=cmd_sweep)

    se = sub.add_parser("sensitivity", help="compress one layer, block or layer type at a time; CSV of the quality change")
    model_args(se)
    recipe_args(se)
    se.add_argument("--by", choices=UNITS, default="type",
                    help="unit: one layer, one transformer block, or one kind of layer across blocks (default)")
    se.add_argument("--full", action="store_true", help="full protocol per unit (default: the first estimate)")
    se.add_argument("--out", required=True, help="CSV file to write, a row as each unit is measured")
    cluster_options.cluster_args(se)
    se.set_defaults(fn=cmd_sensitivity)

    pl = sub.add_parser("plan", help="a setting per unit of layers that beats the reference at its bytes "
                                      "(or a target size), measured in context")
    model_args(pl)
    recipe_args(pl, preset=True)
    pl.add_argument("--target-ratio", type=float,
                    help="compressed / fp16 bytes to stay within, in (0, 1) (default: the reference's bytes)")
    pl.add_argument("--by", choices=UNITS, default="type", help="unit that gets its own setting")
    pl.add_argument("--ladder", help="options per unit, comma-separated: bits (4), bits in groups of N (3/g64), "
                                     "per channel (3/ch), each with +z for a zero-point per group (3/g256+z), /rX for a "
                                     "rank ratio and /sX for a sparsity (4/r0.5, 4/g64/s0.5), "
                                     "llama.cpp types (q4_k); default for b bits: b-1/ch, b/ch, b/g64, b/g32, "
                                     "b+1/ch, b+1/g128, b/g128+z, b/g256+z, or the k-quants and q8_0 for a "
                                     "llama.cpp reference")
    pl.add_argument("--rounds", type=int, default=2, help="rounds of measuring around the best plan (default 2)")
    pl.add_argument("--out", help="also write the plan as a recipe JSON file (per-layer rules), to load with "
                                  "--recipe FILE or in the app")
    pl.add_argument("--json", action="store_true", help="print the whole result: units, losses, plan and reference")
    cluster_options.cluster_args(pl, resume="keep the measurements already made, kept beside --out in OUT.measurements.jsonl, and "
                                                "make only the rest (default: start anew)")
    pl.set_defaults(fn=cmd_plan)
