"""`run` (apply a recipe, or load an export, evaluate, report) and `export` (write it packed)."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from engine.cli.options import (
    Progress,
    check_preset,
    distill,
    eval_text,
    mb,
    model_args,
    open_explorer,
    out_path,
    recipe_args,
    recipe_from,
    recipe_options,
    with_preset,
)
from engine.errors import UserError
from engine.recipe.recipe import Recipe


def cmd_run(args):
    from engine.drivers import run_report as report
    from engine.storage import detect as formats
    from engine.storage import explorer_format as export

    kind = formats.kind(args.model)  # an export of any of the three formats, or None
    folder = args.model if kind == "explorer" else None
    shipped = args.model if kind in ("gguf", "compressed-tensors") else None
    if args.max_memory or args.offload_folder:
        if kind:
            raise UserError("run: --max-memory does not apply to an export")
        if not args.max_memory:
            raise UserError("run: --offload-folder needs --max-memory")
    check_preset(args)
    if args.preset and (args.max_memory or kind):
        raise UserError("--preset: not with " + ("--max-memory" if args.max_memory else "an export"))
    if args.calibration_memory and not args.max_memory:
        raise UserError("run: --calibration-memory needs --max-memory")
    if args.max_memory:
        text, name = eval_text(args)
        recipe = recipe_from(args)
        if args.device:
            raise UserError("--max-memory places the model itself (GPUs first, then the CPU, then disk): drop --device")
        out = report.offloaded(args.model, recipe, args.max_memory, args.offload_folder, args.calibration_memory,
                               args.trust_remote_code, args.quick, text, name)
    else:
        manifest = None
        if kind:  # an export names its source model and its recipe
            if recipe_options(args) or args.recipe:
                what = {"explorer": "an export", "gguf": "a GGUF file", "compressed-tensors": "a compressed-tensors "
                        "folder"}[kind]
                raise UserError(f"run: recipe options do not apply to {what} (it holds its recipe)")
            if folder:
                manifest, _ = export.read(folder)  # every file checked before the model loads
            model, recipe = formats.source_of(args.model)
        else:
            recipe, model = recipe_from(args), args.model
        text, name = eval_text(args)
        ex = open_explorer(args, model)
        recipe = with_preset(args, recipe, ex)  # --preset with an export was refused above
        bar = Progress(f"distill {model}")
        try:
            out = report.in_memory(ex, recipe, model, args.quick, text, name, export=folder, manifest=manifest,
                                   progress=bar.loss, shipped=shipped)
        finally:
            bar.close()
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print_run(out)


def left_alone(m: dict) -> str:
    """What the recipe left at 16 bits, as a share of the parameters, by kind."""
    total = m["original_bytes"] // 2
    kinds: dict[str, int] = {}
    for layer in m["layers"]:
        if not layer["compressed"] and not layer["tied_to"]:
            kind = {"embedding": "embeddings", "head": "head", "router": "routers"}.get(layer["role"], "")
            kind = kind or ("routers" if layer["group"] == "router" else "layers not selected")
            kinds[kind] = kinds.get(kind, 0) + layer["shape"][0] * layer["shape"][1]
    kinds["norms, biases and other parameters"] = m["untouched_params"] - sum(kinds.values())
    parts = ", ".join(f"{k} {v / total:.1%}" for k, v in kinds.items() if v)
    return f"left at 16 bits: {m['untouched_params'] / total:.1%} of the parameters ({parts})"


def print_run(out: dict) -> None:
    """The run report (engine.drivers.run_report) as text."""
    from engine.formats.ggml import layout_note
    from engine.structure.removal import describe

    m = out["memory"]
    recipe = Recipe.from_dict(out["recipe"])
    print(f"{out['model']} ({out['kind']}, {out['device']}): {recipe.describe()}")
    if layout_note(recipe):
        print(f"  ({layout_note(recipe)})")
    if out["calibration"]:
        c = out["calibration"]
        print(f"calibration: {c['samples']} sequences, {c['tokens']:,} tokens of {c['source']}"
              + (f"; {c['passes']} pass{'es' if c['passes'] > 1 else ''}, at most {mb(c['stats_budget_bytes'])} of statistics held at once"
                 if "passes" in c else ""))
        if c.get("plain_fallback"):
            print(f"calibration: {len(c['plain_fallback'])} layers (experts no calibration token reached) "
                  f"fell back to the plain method")
    if out["note"]:
        print(f"note: {out['note']}")
    print(f"memory: {mb(m['original_bytes'])} -> {mb(m['compressed_bytes'])} "
          f"(ratio {m['ratio']:.3f}; fp16 baseline, {mb(m['original_bytes_fp32'])} at fp32)")
    print(left_alone(m))
    if m.get("structure"):
        print(describe(m["structure"]))
    if m.get("awq"):
        kept = m["awq"]["scales_kept"]
        print(f"AWQ: scales folded into the module before in {len(m['awq']['folded'])} layers"
              + (f"; stored beside the grid in {len(kept)} (nothing before them can absorb them), e.g. {kept[0]}"
                 if kept else ""))
    st = out["export_stored"]
    if st and st.get("format") in ("gguf", "compressed-tensors"):
        print(f"stored in {out['export']} ({st['format']}): {st['tensor_bytes']:,} bytes of compressed tensors, "
              f"{st['file_bytes']:,} bytes of files in all")
    elif st:
        coded = f"Huffman-coded; {st['predicted_bytes']:,} at fixed width" if st["entropy"] else "fixed width"
        print(f"stored in {out['export']}: {st['tensor_bytes']:,} bytes of tensors ({coded}), "
              f"{st['header_bytes']:,} of safetensors header")
    off = out.get("offload")
    if off:
        print("loaded within --max-memory " + ", ".join(f"{k}={v}" for k, v in off["max_memory"].items()) + ": "
              + ", ".join(f"{mb(b)} on {k}" for k, b in off["placement_bytes"].items())
              + " (fp32), compressed in place one layer at a time")
        c = off["peak_memory_compress"]
        if c:
            print(f"peak memory while compressing: {mb(c['peak_bytes'])} ({c['measure']})")
    p = out["peak_memory"]
    if p:
        print(f"peak memory of the evaluation: {mb(p['peak_bytes'])} ({p['measure']}; "
              f"{mb(p['start_bytes'])} before it, the models in fp32 included)")
    for step in out.get("schedule") or ():
        shown = {k: v for k, v in (step["metrics"] or {}).items() if not k.endswith(("_low", "_high"))}
        print(f"step {step['step']}: {step['share']:.1%} of the target: {step['recipe']}: {mb(step['compressed_bytes'])}"
              + (f", distillation loss {step['distill_loss']:.4f}" if step["distill_loss"] is not None else "")
              + ("; first estimate " + ", ".join(f"{k} {v:.4g}" for k, v in list(shown.items())[:3]) if shown else ""))
    d = out["distillation"]
    if d:
        print(f"distillation: {d['steps']} steps, lr {d['lr']:g}, {d['seconds']:.1f} s; {d['objective']} "
              f"{d['loss_first']:.4f} -> {d['loss_last']:.4f} on {d['text']}")
    print(("quality (baseline -> compressed -> distilled):" if d else "quality (baseline -> compressed):")
          + ("  [first estimate]" if out["metrics"]["protocol"]["estimate_only"] else ""))
    metrics = out["metrics"]
    for k, v in metrics.items():
        if k != "protocol" and not k.endswith(("_low", "_high")):
            before = f"{d['metrics_before'][k]:.4f} -> " if d and k in d["metrics_before"] else ""
            sure = f"  (95%: {metrics[k + '_low']:.4f} to {metrics[k + '_high']:.4f})" if k + "_low" in metrics else ""
            print(f"  {k:<20} {out['baseline_metrics'].get(k, float('nan')):>10.4f} -> {before}{v:.4f}{sure}")
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
    from engine.storage import explorer_format as export

    check_preset(args)
    if args.format != "explorer" and args.entropy:
        raise UserError(f"--entropy: only with --format explorer ({args.format} stores fixed-width codes)")
    if args.format == "explorer" and args.dense_fallback:
        raise UserError("--dense-fallback: only with --format gguf or compressed-tensors")
    recipe = recipe_from(args)
    folder = out_path(args.out)
    ex = open_explorer(args)
    recipe = with_preset(args, recipe, ex)
    work = ex.workspace()
    work.apply(dataclasses.replace(recipe, distill_steps=0))
    if recipe.distill_steps:
        distill(work, recipe, args.model)
    if args.format != "explorer":
        return _shipped(work, folder, recipe, args)
    manifest = export.write(work, folder, entropy=args.entropy)
    on_disk = sum(f["bytes"] for f in manifest["files"].values())
    if args.json:
        print(json.dumps({**manifest, "folder": str(folder), "bytes_on_disk": on_disk}, indent=2))
        return
    print(f"wrote {folder}: {recipe.describe()}")
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
    print(f"  load it back: python -m engine run {folder}")


def _shipped(work, folder, recipe, args) -> None:
    """Write a GGUF file or a compressed-tensors folder, and say what is in it."""
    from engine.storage import ct_file, gguf_file

    gguf = args.format == "gguf"
    report = (gguf_file if gguf else ct_file).write(work, folder, args.dense_fallback)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"wrote {report['file'] if gguf else report['folder']}: {recipe.describe()}")
    if gguf:
        kinds = {}
        for t in report["tensors"]:
            kinds[t["type"]] = kinds.get(t["type"], 0) + 1
        print(f"  {len(report['tensors'])} tensors ({', '.join(f'{n} {k}' for k, n in sorted(kinds.items()))}), "
              f"{report['bytes']:,} bytes; the compressed layers' tensors {report['written_bytes']:,} bytes "
              f"(predicted {report['predicted_bytes']:,}; dense fallbacks added {report['fallback_added_bytes']:,})")
        print(f"  llama.cpp: llama-cli -m {report['file']}; transformers: AutoModelForCausalLM.from_pretrained("
              f"'{folder}', gguf_file='{Path(report['file']).name}')")
    else:
        print(f"  {report['layers']} layers packed ({report['written_bytes']:,} bytes of codes and scales, "
              f"predicted {report['predicted_bytes']:,}), {report['dense_fallback']} dense by the fallback")
        print(f"  transformers (with compressed-tensors): AutoModelForCausalLM.from_pretrained('{folder}'); "
              f"vLLM: vllm serve {folder}")


def add_parsers(sub) -> None:
    r = sub.add_parser("run", help="apply a recipe (or load an export folder), evaluate, report")
    model_args(r)
    recipe_args(r, preset=True)
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
    model_args(e)
    recipe_args(e, preset=True)
    e.add_argument("--out", required=True, help="folder to write (an earlier export there is replaced)")
    e.add_argument("--format", choices=("explorer", "gguf", "compressed-tensors"), default="explorer",
                   help="explorer: this explorer's packed folder (default, every recipe); gguf: a GGUF file llama.cpp "
                        "and transformers load (the Llama family; llama.cpp's types, and the explorer's symmetric "
                        "grid in groups of 32); compressed-tensors: a Hugging Face folder, pack-quantized (symmetric "
                        "4 or 8 bits per group or channel), that transformers loads and vLLM serves")
    e.add_argument("--dense-fallback", action="store_true",
                   help="--format gguf or compressed-tensors: write the layers the format cannot hold (low rank, "
                        "pruned, other grids) dense instead of refusing")
    e.add_argument("--entropy", action="store_true",
                   help="Huffman-code each matrix's b-bit codes where that is smaller; reports coded and fixed-width bytes")
    e.add_argument("--json", action="store_true", help="print the manifest as JSON")
    e.set_defaults(fn=cmd_export)
