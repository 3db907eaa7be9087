"""`python -m engine`: a thin command line over the engine's API."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

from . import cli_fit, cli_offload, sweep
from .peak import Peak
from .errors import UserError
from .plan import UNITS
from .recipe import Recipe, RecipeError

RECIPE_FLAGS = ("rank", "rank_ratio", "bits", "granularity", "group_size", "symmetric",
                "sparsity", "pattern", "include_embeddings", "group", "layers", "lowrank_method",
                "prune_method", "quant_method", "act_order", "distill_steps", "distill_lr")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        raise UserError(f"{self.prog}: {message}")


def _model_args(p):
    p.add_argument("model", help="alias (minilm, smollm2), local folder, Hugging Face hub id, or (run) an export folder")
    p.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    p.add_argument("--trust-remote-code", action="store_true", help="allow code from the model's repository")


def _recipe_args(p, sweep=False):
    g = p.add_argument_group("recipe")
    if sweep:
        g.add_argument("--rank-ratio", default="1", help="comma-separated fractions of full rank (1 = no low rank)")
        g.add_argument("--bits", default="16", help="comma-separated bit widths, 2-8 or 16")
        g.add_argument("--sparsity", default="0", help="comma-separated sparsities in [0, 1)")
    else:
        r = g.add_mutually_exclusive_group()
        r.add_argument("--rank", type=int, help="truncated-SVD rank per layer (capped at its full rank)")
        r.add_argument("--rank-ratio", type=float, help="rank as a fraction of each layer's full rank, (0, 1]")
        g.add_argument("--bits", type=int, help="2-8, or 16 for no quantization (default 16)")
        g.add_argument("--sparsity", type=float, help="fraction of weights pruned by magnitude, [0, 1)")
    g.add_argument("--granularity", choices=("tensor", "channel", "group"), help="one scale per tensor, output channel or group (default group)")
    g.add_argument("--group-size", type=int, help="input values per quantization group (default 128)")
    g.add_argument("--asymmetric", dest="symmetric", action="store_const", const=False, help="add a zero-point per group")
    g.add_argument("--pattern", help="unstructured (default) or N:M, e.g. 2:4")
    g.add_argument("--include-embeddings", action="store_const", const=True, help="also compress embeddings and the output head")
    g.add_argument("--group", choices=("all", "attention", "mlp"),
                   help="compress all layers (default), or only the attention or MLP layers of the blocks")
    g.add_argument("--layers", help="regular expression: compress only layers whose name matches")
    m = p.add_argument_group("methods (whitened, wanda and gptq run the calibration text through the model once)")
    m.add_argument("--lowrank-method", choices=("svd", "whitened"),
                   help="svd: plain truncation (default); whitened: truncation-aware SVD on whitened inputs")
    m.add_argument("--prune-method", choices=("magnitude", "wanda"),
                   help="magnitude (default) or wanda: |W| x input column norm, per output row")
    m.add_argument("--quant-method", choices=("rtn", "gptq", "kmeans"),
                   help="rtn: round to nearest (default); gptq: error feedback; kmeans: shared-value codebook")
    m.add_argument("--act-order", action="store_const", const=True,
                   help="gptq: quantize columns by decreasing input energy")
    m.add_argument("--distill-steps", type=int, metavar="N",
                   help="after compressing, N steps of distillation from the original on calibration text (default 0)")
    m.add_argument("--distill-lr", type=float, metavar="LR", help="learning rate of those steps (Adam, default 1e-4)")
    if not sweep:
        g.add_argument("--recipe", help="a recipe JSON file; flags given here override its fields")


def _recipe_from(args) -> Recipe:
    base = {}
    if getattr(args, "recipe", None):
        path = Path(args.recipe)
        if not path.is_file():
            raise UserError(f"--recipe: no such file {args.recipe!r}")
        try:
            base = Recipe.from_json(path.read_text(encoding="utf-8")).to_dict()
        except UnicodeDecodeError:
            raise RecipeError(f"--recipe: {args.recipe!r} is not a text file") from None
        except RecipeError as e:
            raise RecipeError(f"--recipe {args.recipe}: {e}") from None
    for key in RECIPE_FLAGS:
        value = getattr(args, key, None)
        if value is not None:
            base[key] = value
    if getattr(args, "rank", None) is not None:
        base["rank_ratio"] = None
    if getattr(args, "rank_ratio", None) is not None:
        base["rank"] = None
    if base.get("pattern") not in (None, "unstructured") and getattr(args, "sparsity", None) is None:
        base["sparsity"] = 0.0  # let the pattern set it
    return Recipe.from_dict(base)


def _out_path(out: str) -> Path:
    """--out as a Path, refused at once when its folder does not exist."""
    path = Path(out)
    if path.parent and not path.parent.exists():
        raise UserError(f"--out: folder {str(path.parent)!r} does not exist")
    return path


def _open(args):
    from .session import Explorer

    return Explorer.open(args.model, args.device, args.trust_remote_code)


def _eval_text(args):
    if not getattr(args, "eval_text", None):
        return None, None
    from .data import read_user_text

    return read_user_text(args.eval_text), f"user file {Path(args.eval_text).name}"


# ---------------------------------------------------------------------------------------
# Commands
# ---------------------------------------------------------------------------------------


def cmd_models(args):
    from .models import alias_status, cache_dir

    rows = alias_status()
    if args.json:
        print(json.dumps({"aliases": rows, "cache": str(cache_dir())}, indent=2))
        return
    for r in rows:
        print(f"{r['alias']:<9} {r['kind']:<10} {r['description']}")
        print(f"{'':<9} {'ready' if r['cached'] else 'not yet'}: {r['where']}")
        if r["note"]:
            print(f"{'':<9} note: {r['note']}")
    print(f"cache folder: {cache_dir()}")
    print("Any Hugging Face hub id (with a network) or local model folder works too.")


def cmd_inspect(args):
    ex = _open(args)
    from .transforms import break_even_rank, effective_rank, energy_kept

    rows = []
    want_spectra = not args.no_spectra
    for info in ex.layers:
        row = {"name": info.name, "role": info.role, "shape": list(info.shape), "params": info.params,
               "bytes_fp16": 0 if info.tied_to else 2 * info.params, "tied_to": info.tied_to,
               "full_rank": info.full_rank, "break_even_rank": round(break_even_rank(*info.shape), 1)}
        if want_spectra and info.role not in ("embedding", "head"):
            s = ex.factors(info.name)[1]
            row.update(effective_rank=round(effective_rank(s), 1),
                       energy_at_half_rank=round(energy_kept(s, max(1, info.full_rank // 2)), 4),
                       top_singular_value=round(s[0].item(), 4))
        rows.append(row)
    out = {"model": args.model, "source": ex.loaded.source, "kind": ex.kind, "note": ex.loaded.note,
           "parameters": ex.total_params, "bytes_fp16": 2 * ex.total_params, "bytes_fp32": 4 * ex.total_params,
           "layers": rows}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{args.model}: {ex.kind}, {ex.total_params:,} parameters, {_mb(2 * ex.total_params)} at fp16 "
          f"({_mb(4 * ex.total_params)} at fp32)")
    if ex.loaded.note:
        print(f"note: {ex.loaded.note}")
    print(f"{'layer':<52} {'role':<9} {'shape':>12} {'params':>11} {'eff.rank':>8} {'E@r/2':>6}")
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        extra = f"{r.get('effective_rank', ''):>8} {r.get('energy_at_half_rank', ''):>6}"
        tied = f" (tied to {r['tied_to']})" if r["tied_to"] else ""
        print(f"{r['name']:<52} {r['role']:<9} {shape:>12} {r['params']:>11,} {extra}{tied}")
    print("eff.rank: effective rank of the singular values; E@r/2: energy kept at half the full rank."
          " Embeddings and the output head are left alone unless --include-embeddings.")


def cmd_run(args):
    from .storage import explorer as export

    folder = args.model if export.is_export(args.model) else None
    if args.max_memory or args.offload_folder:
        if folder:
            raise UserError("run: --max-memory does not apply to an export folder")
        if not args.max_memory:
            raise UserError("run: --offload-folder needs --max-memory")
    if args.calibration_memory and not args.max_memory:
        raise UserError("run: --calibration-memory needs --max-memory")
    if args.max_memory:
        text, name = _eval_text(args)
        out = cli_offload.run(args, _recipe_from(args), text, name)
        if args.json:
            print(json.dumps(out, indent=2))
        else:
            _print_run(out)
        return
    if folder:  # an export: its recipe and source model come from its manifest
        if any(getattr(args, k, None) is not None for k in RECIPE_FLAGS) or args.recipe:
            raise UserError("run: recipe options do not apply to an export (it holds its recipe)")
        manifest, _ = export.read(folder)
        recipe = Recipe.from_dict(manifest["recipe"])
        args.model = manifest["model"]["ref"]
    else:
        recipe = _recipe_from(args)
    text, name = _eval_text(args)
    ex = _open(args)
    work = ex.workspace()
    needs_svd = any(recipe.rank_for(i.full_rank) is not None for i in ex.selected(recipe))
    factorize_s = ex.factorize([i.name for i in ex.selected(recipe)]) if needs_svd else 0.0
    t0 = time.perf_counter()
    ev = ex.evaluator(text, name)  # reference outputs of the original model
    reference_s = time.perf_counter() - t0
    calibration = ex.calibration() if recipe.calibrated and ex.selected(recipe) and not folder else None
    if folder:
        applied = export.load_into(work, folder)
        recipe = dataclasses.replace(recipe, distill_steps=0)  # distilled already: the values are in the files
    else:
        applied = work.apply(dataclasses.replace(recipe, distill_steps=0))
    if not ex.selected(recipe):
        logging.getLogger(__name__).warning("the recipe selects no layer: nothing was compressed")
    t0 = time.perf_counter()
    with Peak(ex.loaded.device) as peak:
        metrics = work.evaluate(quick=args.quick, eval_text=text, eval_name=name)
    evaluate_s = time.perf_counter() - t0
    distillation = None
    if recipe.distill_steps and ex.selected(recipe):
        applied = _distill(work, recipe, args.model)
        distillation = {**applied.distillation.to_dict(), "metrics_before": metrics}
        t0 = time.perf_counter()
        metrics = work.evaluate(quick=args.quick, eval_text=text, eval_name=name)
        evaluate_s += time.perf_counter() - t0
    memory = work.report()
    out = {
        "model": args.model,
        "export": str(folder) if folder else None,
        "export_stored": {k: manifest[k] for k in ("tensor_bytes", "header_bytes", "predicted_bytes")} | {
            "entropy": manifest.get("entropy", False)} if folder else None,
        "source": ex.loaded.source,
        "kind": ex.kind,
        "device": str(ex.loaded.device),
        "note": ex.loaded.note,
        "recipe": (manifest["recipe"] if folder else recipe.to_dict()),
        "metrics": {**metrics, "protocol": {**ev.protocol, "estimate_only": args.quick}},
        "baseline_metrics": ev.baseline(),
        "memory": memory,
        "calibration": calibration.to_dict() if calibration else None,
        "distillation": distillation,
        "peak_memory": peak.to_dict(),
        "seconds": {"load": ex.loaded.load_seconds, "factorize": factorize_s, "reference": reference_s,
                    "calibrate": calibration.seconds if calibration else 0.0,
                    "apply": applied.seconds - (distillation["seconds"] if distillation else 0.0),
                    "distill": distillation["seconds"] if distillation else 0.0, "evaluate": evaluate_s},
    }
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        _print_run(out)


def _print_run(out):
    m = out["memory"]
    print(f"{out['model']} ({out['kind']}, {out['device']}): {Recipe.from_dict(out['recipe']).describe()}")
    if out["calibration"]:
        c = out["calibration"]
        print(f"calibration: {c['samples']} sequences, {c['tokens']:,} tokens of {c['source']}"
              + (f"; {c['passes']} pass{'es' if c['passes'] > 1 else ''}, at most {_mb(c['stats_budget_bytes'])} of statistics held at once"
                 if "passes" in c else ""))
    if out["note"]:
        print(f"note: {out['note']}")
    print(f"memory: {_mb(m['original_bytes'])} -> {_mb(m['compressed_bytes'])} "
          f"(ratio {m['ratio']:.3f}; fp16 baseline, {_mb(m['original_bytes_fp32'])} at fp32)")
    st = out["export_stored"]
    if st:
        coded = f"Huffman-coded; {st['predicted_bytes']:,} at fixed width" if st["entropy"] else "fixed width"
        print(f"stored in {out['export']}: {st['tensor_bytes']:,} bytes of tensors ({coded}), "
              f"{st['header_bytes']:,} of safetensors header")
    off = out.get("offload")
    if off:
        print("loaded within --max-memory " + ", ".join(f"{k}={v}" for k, v in off["max_memory"].items()) + ": "
              + ", ".join(f"{_mb(b)} on {k}" for k, b in off["placement_bytes"].items())
              + " (fp32), compressed in place one layer at a time")
        c = off["peak_memory_compress"]
        if c:
            print(f"peak memory while compressing: {_mb(c['peak_bytes'])} ({c['measure']})")
    p = out["peak_memory"]
    if p:
        print(f"peak memory of the evaluation: {_mb(p['peak_bytes'])} ({p['measure']}; "
              f"{_mb(p['start_bytes'])} before it, the models in fp32 included)")
    d = out["distillation"]
    if d:
        print(f"distillation: {d['steps']} steps, lr {d['lr']:g}, {d['seconds']:.1f} s; {d['objective']} "
              f"{d['loss_first']:.4f} -> {d['loss_last']:.4f} on {d['text']}")
    print(("quality (baseline -> compressed -> distilled):" if d else "quality (baseline -> compressed):")
          + ("  [first estimate]" if out["metrics"]["protocol"]["estimate_only"] else ""))
    for k, v in out["metrics"].items():
        if k != "protocol":
            before = f"{d['metrics_before'][k]:.4f} -> " if d else ""
            print(f"  {k:<20} {out['baseline_metrics'].get(k, float('nan')):>10.4f} -> {before}{v:.4f}")
    print(f"{'layer':<48} {'format':<26} {'rank':>5} {'spars':>6} {'bytes':>10} {'rel.err':>8}")
    for layer in m["layers"]:
        if layer["compressed"]:
            err = "" if layer["relative_error"] is None else f"{layer['relative_error']:.4f}"
            flag = " !" if layer["factors_exceed_dense"] else ""
            print(f"{layer['name']:<48} {layer['format']:<26} {layer['rank'] or '-':>5} "
                  f"{layer['sparsity']:>6.3f} {layer['compressed_bytes']:>10,} {err:>8}{flag}")
    s = out["seconds"]
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in s.items()))
    if any(layer["factors_exceed_dense"] for layer in m["layers"]):
        print("! factors hold more values than the dense matrix at this rank (above break-even r(m+n) = mn)")


def cmd_export(args):
    from .storage import explorer as export

    recipe = _recipe_from(args)
    out_path = _out_path(args.out)
    ex = _open(args)
    work = ex.workspace()
    work.apply(dataclasses.replace(recipe, distill_steps=0))
    if recipe.distill_steps:
        _distill(work, recipe, args.model)
    manifest = export.write(work, out_path, entropy=args.entropy)
    on_disk = sum(f["bytes"] for f in manifest["files"].values())
    if args.json:
        print(json.dumps({**manifest, "folder": str(out_path), "bytes_on_disk": on_disk}, indent=2))
        return
    print(f"wrote {out_path}: {recipe.describe()}")
    if args.entropy:
        parts = [p for layer in manifest["layers"] for p in layer["parts"]]
        coded = [p for p in parts if p["coding"] == "huffman"]
        print(f"  tensor data {manifest['tensor_bytes']:,} bytes Huffman-coded, {manifest['predicted_bytes']:,} "
              f"at fixed width ({manifest['tensor_bytes'] / manifest['predicted_bytes']:.3f}); "
              f"{len(coded)} of {len(parts)} matrices coded, their values {sum(p['values'] for p in coded):,} -> "
              f"{sum(p['values_written'] for p in coded):,} bytes")
        print(f"  safetensors header {manifest['header_bytes']:,} bytes")
    else:
        print(f"  tensor data {manifest['tensor_bytes']:,} bytes (predicted {manifest['predicted_bytes']:,}), "
              f"safetensors header {manifest['header_bytes']:,} bytes")
    print("  files: " + ", ".join(f"{n} {f['bytes']:,}" for n, f in manifest["files"].items())
          + f"; {on_disk:,} bytes in all, manifest.json aside")
    print(f"  load it back: python -m engine run {out_path}")


def cmd_sweep(args):
    ratios = _floats(args.rank_ratio, "--rank-ratio")
    bits = [int(b) for b in _floats(args.bits, "--bits")]
    sparsities = _floats(args.sparsity, "--sparsity")
    fixed = {k: getattr(args, k) for k in RECIPE_FLAGS if getattr(args, k, None) is not None}
    fixed.pop("rank_ratio", None), fixed.pop("bits", None), fixed.pop("sparsity", None)
    if fixed.get("pattern", "unstructured") != "unstructured":
        fixed["sparsity"] = 0.0
    recipes = sweep.grid(ratios, bits, sparsities, Recipe.from_dict(fixed))
    text, name = _eval_text(args)
    out_path = _out_path(args.out)
    ex = _open(args)
    work = ex.workspace()
    ev = ex.evaluator(text, name)
    from tqdm import tqdm

    fields = None
    with open(out_path, "w", newline="", encoding="utf-8") as fh:
        for recipe in tqdm(recipes, desc=f"sweep {args.model}", unit="point", file=sys.stderr):
            row = sweep.point(work, recipe, quick=args.quick, eval_text=text, eval_name=name)
            if fields is None:
                fields = list(row)
                writer = csv.DictWriter(fh, fieldnames=fields)
                writer.writeheader()
            writer.writerow(row)
            fh.flush()
    print(f"wrote {len(recipes)} points to {out_path} (protocol: {json.dumps(ev.protocol)})", file=sys.stderr)


def cmd_bench(args):
    from .bench import format_table, run_bench

    models = args.models.split(",")
    result = run_bench(models, device=args.device, repeats=args.repeats)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


def _floats(text: str, flag: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag}: expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise UserError(f"{flag}: give at least one value")
    return values


def _progress_bar(total_desc):
    from tqdm import tqdm

    bar = tqdm(desc=total_desc, unit="step", file=sys.stderr)

    def update(k, n, what):
        bar.total = n
        bar.set_postfix_str(what, refresh=False)
        bar.update(k - bar.n)

    return bar, update


def _distill(work, recipe: Recipe, model: str):
    """The recipe's distillation of the workspace's applied recipe, with a progress bar."""
    bar, update = _progress_bar(f"distill {model}")
    applied = work.distill(recipe.distill_steps, recipe.distill_lr,
                           progress=lambda k, n, loss: update(k, n, f"loss {loss:.4f}"))
    bar.close()
    return applied


def cmd_sensitivity(args):
    from . import plan

    recipe = _recipe_from(args)
    out_path = _out_path(args.out)
    ex = _open(args)
    bar, update = _progress_bar(f"sensitivity {args.model} by {args.by}")
    result = plan.sensitivity(ex.workspace(), recipe, args.by, quick=not args.full, progress=update)
    bar.close()
    rows = result["rows"]
    with open(out_path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {len(rows)} units to {out_path}: {result['metric']} change with only that unit at "
          f"{recipe.describe()} ({'full protocol' if args.full else 'first estimate'})", file=sys.stderr)
    for r in sorted(rows, key=lambda r: -r["loss"])[:5]:
        print(f"  {r['unit']:<52} {result['metric']} loss {r['loss']:+.4g}", file=sys.stderr)


def cmd_plan(args):
    from . import plan

    base = _recipe_from(args)
    ladder = [int(b) for b in _floats(args.ladder, "--ladder")]
    ex = _open(args)
    bar, update = _progress_bar(f"plan {args.model}")
    result = plan.plan(ex.workspace(), args.target_ratio, base, args.by, ladder, progress=update)
    bar.close()
    if args.out:
        Path(args.out).write_text(json.dumps(result["recipe"], indent=2), encoding="utf-8")
    if args.json:
        print(json.dumps(result, indent=2))
        return
    m = result["metric"]
    print(f"{args.model}: target {args.target_ratio} of fp16, bits per {args.by} from {ladder}")
    for u in result["units"]:
        print(f"  {u['unit']:<52} {u['bits']} bits")
    p, uni = result["plan"], result["uniform"]
    print(f"planned: {_mb(p['compressed_bytes'])} (ratio {p['ratio']:.4f}), {m} {p['metrics'][m]:.4g}")
    print(f"uniform {uni['recipe']}: {_mb(uni['compressed_bytes'])} (ratio {uni['ratio']:.4f}), "
          f"{m} {uni['metrics'][m]:.4g}; baseline {result['baseline'][m]:.4g}")


def _mb(n: int) -> str:
    return f"{n / 2**20:,.2f} MiB"


# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m engine", description="Compress a real transformer and measure it honestly.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    m = sub.add_parser("models", help="aliases, what each is, what is cached")
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_models)

    i = sub.add_parser("inspect", help="layers, shapes, parameters, bytes, spectrum summary")
    _model_args(i)
    i.add_argument("--no-spectra", action="store_true", help="skip the SVDs")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_inspect)

    r = sub.add_parser("run", help="apply a recipe (or load an export folder), evaluate, report")
    _model_args(r)
    _recipe_args(r)
    r.add_argument("--eval-text", help="UTF-8 text file to evaluate on instead of the packaged text")
    r.add_argument("--quick", action="store_true", help="first estimate only (the small slice the app shows first)")
    r.add_argument("--max-memory", metavar="SPEC",
                   help="load across devices with accelerate's device_map=auto within these sizes, e.g. cpu=2GiB or "
                        "0=20GiB,cpu=30GiB; the rest is offloaded to disk, and the model is compressed layer by layer")
    r.add_argument("--calibration-memory", metavar="SIZE",
                   help="with --max-memory and a calibrated method: the most input statistics held at once "
                        "(default 1GiB); more passes over the calibration text when they do not fit")
    r.add_argument("--offload-folder", metavar="DIR",
                   help="with --max-memory: where offloaded weights go (default: the system's temporary folder)")
    r.add_argument("--json", action="store_true", help="print one JSON object")
    r.set_defaults(fn=cmd_run)

    e = sub.add_parser("export", help="write the compressed model as it would be stored (packed), to reload with run")
    _model_args(e)
    _recipe_args(e)
    e.add_argument("--out", required=True, help="folder to write (an earlier export there is replaced)")
    e.add_argument("--entropy", action="store_true",
                   help="Huffman-code each matrix's b-bit codes where that is smaller; reports coded and fixed-width bytes")
    e.add_argument("--json", action="store_true", help="print the manifest as JSON")
    e.set_defaults(fn=cmd_export)

    s = sub.add_parser("sweep", help="a grid of recipes, one CSV row per point")
    _model_args(s)
    _recipe_args(s, sweep=True)
    s.add_argument("--eval-text", help="UTF-8 text file to evaluate on instead of the packaged text")
    s.add_argument("--quick", action="store_true", help="first estimates only")
    s.add_argument("--out", required=True, help="CSV file to write")
    s.set_defaults(fn=cmd_sweep)

    se = sub.add_parser("sensitivity", help="compress one layer, block or layer type at a time; CSV of the quality change")
    _model_args(se)
    _recipe_args(se)
    se.add_argument("--by", choices=UNITS, default="type",
                    help="unit: one layer, one transformer block, or one kind of layer across blocks (default)")
    se.add_argument("--full", action="store_true", help="full protocol per unit (default: the first estimate)")
    se.add_argument("--out", required=True, help="CSV file to write")
    se.set_defaults(fn=cmd_sensitivity)

    pl = sub.add_parser("plan", help="per-unit bit widths reaching a memory target with the least measured loss")
    _model_args(pl)
    _recipe_args(pl)
    pl.add_argument("--target-ratio", type=float, required=True, help="compressed / fp16 bytes to reach, in (0, 1)")
    pl.add_argument("--by", choices=UNITS, default="type", help="unit that gets its own bit width")
    pl.add_argument("--ladder", default="8,6,5,4,3,2", help="bit widths to choose from (default 8,6,5,4,3,2)")
    pl.add_argument("--out", help="also write the plan as a recipe (JSON, per-layer rules) to this file")
    pl.add_argument("--json", action="store_true")
    pl.set_defaults(fn=cmd_plan)

    cli_fit.add_parser(sub, _recipe_args, _recipe_from)

    b = sub.add_parser("bench", help="time load, factorize, apply and evaluate against the naive way")
    b.add_argument("--models", default="minilm,smollm2")
    b.add_argument("--device")
    b.add_argument("--repeats", type=int, default=1, help="passes over the benchmark recipes")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv=None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    logging.getLogger("engine").setLevel(logging.INFO)
    try:
        args = build_parser().parse_args(argv)
        args.fn(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    return 0
