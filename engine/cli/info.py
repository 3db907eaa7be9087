"""`info`, `models`, `inspect` and `bench`: this machine, what is there, what a model holds, how
fast the engine is."""
from __future__ import annotations

import json

from engine.cli.options import mb, model_args, open_explorer


def cmd_info(args):
    from engine.hardware.machine import describe
    from engine.speed.probes import kernel_probes

    d = describe(args.device)
    d["kernels"] = kernel_probes(d["device"])
    if args.json:
        print(json.dumps(d, indent=2))
        return
    print(f"CPU        {d['cpu']} ({d['architecture']})")
    print(f"cores      {d['usable_cores']} usable of {d['cores']}; torch uses {d['threads']} threads "
          f"({d['threads_why']})")
    print(f"features   {', '.join(d['features']) or 'none of those the engine looks for'}")
    print(f"torch      {d['torch']}, CPU capability {d['torch_cpu_capability']}, "
          f"CUDA {d['cuda'] or 'not built in'}")
    print(f"bf16       {'native' if d['native_bf16'] else 'not native'} on {d['device']}")
    print(f"runtime    {d['runtime_dtype']} activations by default: {d['runtime_dtype_why']}")
    print("kernels    (each built on a small matrix here and checked against the dense product)")
    for k in d["kernels"]:
        print(f"  {k['kernel']:<5} {k['dtype']:<5} {'works' if k['works'] else 'no: ' + k['why']}")
    print("  speed also times each int8/int4 kernel against the dense product, per shape, and runs the faster")
    if d["gpus"]:
        for g in d["gpus"]:
            print(f"GPU {g['index']}      {g['name']}, {g['memory_bytes'] / 2**30:.0f} GiB, compute capability "
                  f"{g['compute_capability']}, bf16 {'yes' if g['bf16'] else 'no'}")
    else:
        print("GPUs       none visible to torch")


def cmd_models(args):
    from engine.hardware.machine import cache_dir
    from engine.models.loading import alias_status

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


def inspect(ex, model: str, spectra: bool = True) -> dict:
    """Every layer of an Explorer: role, shape, parameters, fp16 bytes, and (spectra) a summary
    of its singular values."""
    from engine.methods.svd import break_even_rank, effective_rank, energy_kept

    rows = []
    for info in ex.layers:
        row = {"name": info.name, "role": info.role, "shape": list(info.shape), "params": info.params,
               "bytes_fp16": 0 if info.tied_to else 2 * info.params, "tied_to": info.tied_to,
               "full_rank": info.full_rank, "break_even_rank": round(break_even_rank(*info.shape), 1)}
        if spectra and info.role not in ("embedding", "head"):
            s = ex.factors(info.name)[1]
            row.update(effective_rank=round(effective_rank(s), 1),
                       energy_at_half_rank=round(energy_kept(s, max(1, info.full_rank // 2)), 4),
                       top_singular_value=round(s[0].item(), 4))
        rows.append(row)
    return {"model": model, "source": ex.loaded.source, "kind": ex.kind, "note": ex.loaded.note,
            "parameters": ex.total_params, "bytes_fp16": 2 * ex.total_params, "bytes_fp32": 4 * ex.total_params,
            "layers": rows}


def cmd_inspect(args):
    ex = open_explorer(args)
    out = inspect(ex, args.model, spectra=not args.no_spectra)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{args.model}: {ex.kind}, {ex.total_params:,} parameters, {mb(2 * ex.total_params)} at fp16 "
          f"({mb(4 * ex.total_params)} at fp32)")
    if ex.loaded.note:
        print(f"note: {ex.loaded.note}")
    print(f"{'layer':<52} {'role':<9} {'shape':>12} {'params':>11} {'eff.rank':>8} {'E@r/2':>6}")
    for r in out["layers"]:
        shape = "x".join(map(str, r["shape"]))
        extra = f"{r.get('effective_rank', ''):>8} {r.get('energy_at_half_rank', ''):>6}"
        tied = f" (tied to {r['tied_to']})" if r["tied_to"] else ""
        print(f"{r['name']:<52} {r['role']:<9} {shape:>12} {r['params']:>11,} {extra}{tied}")
    print("eff.rank: effective rank of the singular values; E@r/2: energy kept at half the full rank."
          " Embeddings and the output head are left alone unless --include-embeddings.")


def cmd_bench(args):
    from engine.speed.bench import format_table, run_bench

    models = args.models.split(",")
    result = run_bench(models, device=args.device, repeats=args.repeats)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


def add_info(sub) -> None:
    i = sub.add_parser("info", help="this machine: CPU, cores and threads, features, torch's build, which kernels "
                                    "work here, GPUs")
    i.add_argument("--device", help="the device the kernels are probed on (default: the GPU when there is one)")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_info)


def add_models(sub) -> None:
    m = sub.add_parser("models", help="aliases, what each is, what is cached")
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_models)


def add_inspect(sub) -> None:
    i = sub.add_parser("inspect", help="layers, shapes, parameters, bytes, spectrum summary")
    model_args(i)
    i.add_argument("--no-spectra", action="store_true", help="skip the SVDs")
    i.add_argument("--json", action="store_true")
    i.set_defaults(fn=cmd_inspect)


def add_bench(sub) -> None:
    b = sub.add_parser("bench", help="time load, factorize, apply and evaluate against the naive way")
    b.add_argument("--models", default="minilm,smollm2")
    b.add_argument("--device")
    b.add_argument("--repeats", type=int, default=1, help="passes over the benchmark recipes")
    b.add_argument("--json", action="store_true")
    b.set_defaults(fn=cmd_bench)
