"""`python -m engine speed`: the original and the compressed model on real kernels, timed, and
the roofline on the exact bytes (engine.speed.measure)."""
from __future__ import annotations

import json
import sys

from engine.cli.options import check_preset, mb, model_args, open_explorer, recipe_args, recipe_from, with_preset
from engine.errors import UserError


def _rate(n: float) -> str:
    return f"{n:,.1f}" if n < 1000 else f"{n:,.0f}"


def cmd_speed(args):
    from engine.speed.measure import SpeedSettings, measure

    for name in ("prompt_tokens", "new_tokens", "repeats", "batch"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be 1 or more, got {getattr(args, name)}")
    check_preset(args)
    if args.remeasure:
        from engine.hardware.machine import forget

        forget()
    recipe = recipe_from(args)
    explorer = open_explorer(args)
    recipe = with_preset(args, recipe, explorer)
    settings = SpeedSettings(args.prompt_tokens, args.new_tokens, args.batch, args.repeats, args.dtype,
                             timed_kernels=not args.every_kernel, path=args.path,
                             compile=args.compile)
    quiet = args.json or not sys.stderr.isatty()
    report = measure(explorer, recipe, settings,
                     None if quiet else lambda i, n, what: print(f"[{i}/{n}] {what}", file=sys.stderr))
    if args.json:
        print(json.dumps(report, indent=2, default=str))
        return
    causal = report["kind"] == "causal-lm"
    rows = [(f"original {k}", v) for k, v in report["original"].items()] + [("compressed", report["compressed"])]
    print(report["machine"])
    print(f"{report['model']} on {report['device']} ({report['threads']} threads: {report['threads_why']}), "
          f"{recipe.describe()}; "
          f"medians of {settings.repeats} runs")
    print(f"runtime in {report['runtime_dtype']}: {report['runtime_dtype_why']}; kernels: {report['kernel_choice']}")
    joined = ", ".join(f"{k} joined in {v} blocks" for k, v in report["joined"].items() if v)
    print(f"path: {report['path']} ({report['path_why']}{'; ' + joined if joined else ''})")
    if report["compiled"]:
        print("compiled (torch.compile, the one-token step; kept on disk for the next run): " + ", ".join(
            f"{name} {r['compile_seconds']:.1f} s" for name, r in rows if "compile_seconds" in r))
    if causal:
        print(f"{'':<16}{'prefill tok/s':>14}{'decode tok/s':>14}{'peak memory':>14}   "
              f"(prompt {settings.prompt_tokens} tokens, {settings.new_tokens} new)")
        for name, r in rows:
            print(f"{name:<16}{_rate(r['prefill_tokens_per_s']):>14}{_rate(r['decode_tokens_per_s']):>14}"
                  f"{mb(r['peak_memory_bytes']):>14}")
    else:
        print(f"{'':<16}{'sentences/s':>14}{'peak memory':>14}   (batch {settings.batch})")
        for name, r in rows:
            print(f"{name:<16}{_rate(r['sentences_per_s']):>14}{mb(r['peak_memory_bytes']):>14}")
    anchor = report["llama_cpp"]
    if anchor and anchor["installed"]:
        print(f"{'llama.cpp':<16}{_rate(anchor['prefill_tokens_per_s']):>14}{_rate(anchor['decode_tokens_per_s']):>14}"
              f"{'':>14}   ({anchor['file']}, llama-cpp-python {anchor['version']}, {anchor['threads']} threads)")
    elif anchor:
        print(f"llama.cpp: {anchor['note']}")
    print("speedup: " + ", ".join(f"{k.replace('_', ' ')} {v:.2f}x" for k, v in report["speedup"].items()))
    print("kernels (layers): " + ", ".join(f"{k} {v}" for k, v in report["kernels"].items()))
    for kernel, note in sorted({(r["kernel"], r["note"]) for r in report["layers"]
                                if "kernel" in r["note"] or "CSR" in r["note"]}):
        print(f"  {'chosen by timing' if 'measured' in note else 'fallback'}: {note}")
    print(f"outputs: runtime against the workspace, max |difference| of the {report['max_abs_diff_of']}: "
          f"{report['max_abs_diff']:.3g} (the largest |value| is {report['max_abs_output']:.3g})")
    roof = report["roofline"]
    m = roof["machine"]
    print(f"roofline on this machine: {m['bandwidth_bytes_per_s'] / 1e9:,.1f} GB/s read, "
          + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in m["matmul_flops_per_s"].items()))
    if causal:
        for name, b in roof["models"].items():
            frac = f", measured {b['decode_fraction_of_bound']:.0%} of it" if "decode_fraction_of_bound" in b else ""
            print(f"  {name:<14} decode at most {_rate(b['decode_tokens_per_s'])} tok/s "
                  f"({mb(b['decode_bytes_per_token'])} read per token){frac}")
        print("bound on other hardware, decode tok/s (original bf16 -> compressed):")
        for row in roof["hardware"]:
            print(f"  {row['name']:<36} {_rate(row['original bf16']['decode_tokens_per_s']):>10} -> "
                  f"{_rate(row['compressed']['decode_tokens_per_s'])}")


def add_parser(sub) -> None:
    s = sub.add_parser("speed", help="time the original and the compressed model on real kernels (prefill, decode, "
                                     "peak memory) and bound them with a roofline")
    model_args(s)
    recipe_args(s, preset=True)
    s.add_argument("--prompt-tokens", type=int, default=128, help="prompt length for prefill (default 128)")
    s.add_argument("--new-tokens", type=int, default=32, help="greedy tokens decoded with the cache (default 32)")
    s.add_argument("--batch", type=int, default=32, help="sentences per batch, for an encoder (default 32)")
    s.add_argument("--repeats", type=int, default=5, help="timed runs; the median is reported (default 5)")
    s.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                   help="the compressed model's activations (default auto: bf16 where this machine has native bf16 "
                        "matmuls, else fp32; `python -m engine info` says which)")
    s.add_argument("--every-kernel", action="store_true",
                   help="run every int8/int4 kernel the format allows, even where the dense product is faster here "
                        "(default: each is timed against dense once per shape on this machine, the faster runs)")
    s.add_argument("--path", choices=("auto", "transformers"), default="auto",
                   help="a causal LM's forward: auto (default) takes the lean path (a static cache and the layout's "
                        "forward written out over the kernels) for the Llama, Mistral and Qwen2/3 layouts, "
                        "transformers' forward for the others; transformers: always transformers' forward")
    s.add_argument("--compile", action="store_true",
                   help="on the lean path, compile each model's one-token step with torch.compile (inductor's C++ "
                        "on the CPU, CUDA graphs on a GPU) before timing it: faster decode; the compile time is "
                        "reported, and the compiled code kept on disk (about 1.5 minutes a model the first time on "
                        "2 cores, seconds after)")
    s.add_argument("--remeasure", action="store_true",
                   help="measure this machine again (bandwidth, matmul throughput, each kernel against dense): they "
                        "are measured once and kept, so a run on a busy machine is not taken for the machine's speed")
    s.add_argument("--json", action="store_true")
    s.set_defaults(fn=cmd_speed)
