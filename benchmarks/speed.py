"""The compressed model's decode and prefill against the goals of docs/speed.md, llama.cpp beside it
on the same bytes, measured side by side in one run (`engine.speed.measure.measure` per recipe).

    .venv/bin/python benchmarks/speed.py [--repeats 5] [--no-forced] [--json]

smollm2 (its fp32 weights are the dequantized Q4_1 GGUF), 128 prompt tokens, 32 greedy steps, torch's
threads. On this processor as it is, then the same measurements in a child process forced to run as
a processor without native bf16 does (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 EXPLORER_BF16=0:
torch's kernels limited to AVX2; llama.cpp, built for this processor, is not limited). Each recipe:
the lean path compiled (torch.compile of the one-token step; the compile seconds printed, the code
kept on disk), the lean path without compiling, and transformers' forward (the path before the lean
one). llama.cpp runs the shipped Q4_1 file and the explorer's own GGUF export of the int4 recipe;
the goals against it take three rounds of ours, then both files, in turn (medians), as the machine
drifts between minutes (one file measured 97.5 and 135.6 tok/s in two runs ten minutes apart).
Where a goal is missed, a profile of the compressed model's decode step says where the time goes.
Then structured pruning (`structured`): each smaller dense model of benchmarks/structured.py's
settings (about 25% of the parameters removed), at the runtime's width, beside the original at that
width: its decode and prefill speedups against the ratio of the bytes a decode step reads and of
the multiply-adds a token costs (the goal: within 20% of them). `--only structured` runs that alone.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import Explorer, Recipe  # noqa: E402
from engine.hardware.machine import header  # noqa: E402
from engine.speed import anchor  # noqa: E402
from engine.speed.measure import SpeedSettings, Steps, causal_timing, measure, prompt  # noqa: E402

INT4 = Recipe(bits=4, group_size=32, include_embeddings=True)
INT8 = Recipe(bits=8, granularity="channel")
FORCED = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "EXPLORER_BF16": "0"}
STRUCTURED = (("heads and MLP channels", Recipe(prune_heads=0.25, prune_channels=0.22)),
              ("MLP channels", Recipe(prune_channels=0.33)),
              ("whole blocks", Recipe(prune_blocks=8)))  # about 25% of smollm2's block parameters each


def structured(repeats: int) -> list[dict]:
    """Per structured setting: the smaller model's speedups against the original at the runtime's
    width, and the ratios of decode bytes and of multiply-adds per token (original / smaller)."""
    ex = Explorer.open("smollm2")
    rows = []
    for label, recipe in STRUCTURED:
        print(f"[structured: {label}]", file=sys.stderr, flush=True)
        r = measure(ex, recipe, SpeedSettings(repeats=repeats))
        width = "bf16" if r["runtime_dtype"] == "bf16" else "fp32"
        models = r["roofline"]["models"]
        orig, small = models[f"original {width}"], models["compressed"]
        rows.append({"setting": label, "recipe": recipe.describe(), "runtime": width,
                     "decode_speedup": r["speedup"][f"decode_vs_{width}"],
                     "prefill_speedup": r["speedup"][f"prefill_vs_{width}"],
                     "bytes_ratio": orig["decode_bytes_per_token"] / small["decode_bytes_per_token"],
                     "flops_ratio": orig["macs_per_token"] / small["macs_per_token"],
                     "decode_tokens_per_s": r["compressed"]["decode_tokens_per_s"],
                     "original_decode_tokens_per_s": r["original"][width]["decode_tokens_per_s"]})
    return rows


def _lean(ex, recipe, settings):
    """The compressed model's lean forward as `measure` builds it (the runtime dtype and the kernels
    timed against dense for the same workload), compiled as in `settings`; and the prompt."""
    import torch

    from engine.hardware import machine
    from engine.speed import lean, runtime, tuning

    work = ex.workspace()
    work.apply(recipe)
    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[machine.runtime_dtype("cpu")[0]]
    rt = runtime.build(work, dtype, tuning.Workload.causal(settings.prompt_tokens, settings.new_tokens))
    fast, _ = lean.build(rt.model, settings.prompt_tokens + settings.new_tokens)
    if settings.compile:
        fast.compile()
    return fast, prompt(ex.loaded, settings.prompt_tokens)


def alternating(ex, settings, rounds: int = 3) -> dict:
    """Decode tok/s of the compiled int4 model and of llama.cpp on the shipped Q4_1 file and on the
    explorer's own GGUF export of the same recipe, timed in turn for `rounds` rounds (each figure a
    median of `settings.repeats` runs): the medians of the rounds, so that the machine's drift
    between minutes falls on all three alike."""
    from engine.models.loading import gguf_file
    from engine.storage import gguf_file as gguf_writer

    fast, ids = _lean(ex, INT4, settings)
    work = ex.workspace()
    work.apply(INT4)
    rows = {"explorer int4 (lean, compiled)": [], "llama.cpp, shipped Q4_1": [], "llama.cpp, own export": []}
    with tempfile.TemporaryDirectory() as folder:
        own = gguf_writer.write(work, folder)["file"]
        for _ in range(rounds):
            rows["explorer int4 (lean, compiled)"].append(causal_timing(
                Steps(lean=fast), ids, settings.new_tokens, settings.repeats)["decode_tokens_per_s"])
            for name, path in (("llama.cpp, shipped Q4_1", gguf_file("smollm2")), ("llama.cpp, own export", own)):
                rows[name].append(anchor.gguf_timing(path, ids[0].tolist(), settings.new_tokens,
                                                     settings.repeats)["decode_tokens_per_s"])
    return {k: {"rounds": v, "median": sorted(v)[len(v) // 2]} for k, v in rows.items()}


def profile(ex, recipe, settings) -> dict:
    """Where the compressed model's decode step spends its time on the lean path, not compiled (a
    compiled step hides the products inductor generates inside its own code): the share of self
    time in the kernels' products, in attention, and the rest (norms, rope, the cache, the calls
    between them: what compiling shrinks)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    fast, ids = _lean(ex, recipe, settings)
    with torch.inference_mode():
        logits = fast(ids)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(settings.new_tokens):
                logits = fast(logits.argmax(-1))
    buckets = {"kernels (int4, int8, dense products)": 0.0, "attention": 0.0, "the rest": 0.0}
    total = 0.0
    for e in prof.key_averages():
        name, t = e.key, e.self_cpu_time_total
        total += t
        if any(k in name for k in ("int4pack", "int8pack", "addmm", "aten::mm", "linear", "aten::bmm")):
            buckets["kernels (int4, int8, dense products)"] += t
        elif "attention" in name or "softmax" in name:
            buckets["attention"] += t
        else:
            buckets["the rest"] += t
    per_step = total / settings.new_tokens / 1e3
    return {"ms_per_step": per_step, **{k: v / total for k, v in buckets.items()}}


def measure_all(repeats: int) -> dict:
    """Every figure of one process (this processor as the environment makes it)."""
    ex = Explorer.open("smollm2")
    base = SpeedSettings(repeats=repeats)
    out = {"machine": header(), "runs": {}}
    for label, recipe in (("int4", INT4), ("int8", INT8)):
        for path, kw in (("lean compiled", {"compile": True}), ("lean", {}), ("transformers", {"path": "transformers"})):
            if label == "int8" and path == "transformers":
                continue
            print(f"[{label}, {path}]", file=sys.stderr, flush=True)
            out["runs"][f"{label}, {path}"] = measure(ex, recipe, SpeedSettings(**{**base.__dict__, **kw}))
    ids = prompt(ex.loaded, base.prompt_tokens)[0].tolist()
    missing = anchor.installed()
    if missing is None:
        from engine.storage import gguf_file

        work = ex.workspace()
        work.apply(INT4)
        with tempfile.TemporaryDirectory() as folder:
            written = gguf_file.write(work, folder)
            own = anchor.gguf_timing(written["file"], ids, base.new_tokens, repeats)
            own["types"] = sorted({t["type"] for t in written["tensors"]})
        out["llama_cpp_own_export"] = own
    out["llama_cpp_missing"] = missing
    compiled = SpeedSettings(**{**base.__dict__, "compile": True})
    if missing is None:
        print("[int4 against llama.cpp, alternating]", file=sys.stderr, flush=True)
        out["alternating"] = alternating(ex, compiled)
    out["profile"] = {label: profile(ex, recipe, base) for label, recipe in (("int4", INT4), ("int8", INT8))}
    return out


def goals(native: dict, forced: dict | None) -> list[dict]:
    rows = []

    def add(what, got, goal, where):
        rows.append({"goal": what, "measured": got, "target": goal, "met": got is not None and got >= goal,
                     "where": where})

    c4 = native["runs"]["int4, lean compiled"]
    ab = native.get("alternating")
    rate = lambda r: r["decode_tokens_per_s"]  # noqa: E731
    ours = ab["explorer int4 (lean, compiled)"]["median"] if ab else None
    for name in ("shipped Q4_1", "own export"):
        add(f"int4 g32 decode vs llama.cpp, {name} (alternating rounds)",
            ours / ab[f"llama.cpp, {name}"]["median"] if ab else None, 1.0, "native")
    models = c4["roofline"]["models"]
    add("fp32 original decode, share of its bandwidth bound", models["original fp32"]["decode_fraction_of_bound"],
        0.5, "native")
    add("int4 decode, share of its bandwidth bound", models["compressed"]["decode_fraction_of_bound"], 0.4, "native")
    today = native["runs"]["int4, transformers"]["compressed"]["prefill_tokens_per_s"]
    for path in ("lean compiled", "lean"):
        add(f"int4 prefill, {path} vs transformers' forward",
            native["runs"][f"int4, {path}"]["compressed"]["prefill_tokens_per_s"] / today, 1.0, "native")
    if forced is not None:
        for label in ("int4", "int8"):
            r = forced["runs"][f"{label}, lean compiled"]
            add(f"{label} decode vs the fp32 original, no native bf16", r["speedup"]["decode_vs_fp32"], 2.0, "forced")
            anchor_row = r["llama_cpp"] if r["llama_cpp"] and r["llama_cpp"].get("installed") else None
            add(f"{label} decode vs llama.cpp (shipped Q4_1), no native bf16",
                rate(r["compressed"]) / rate(anchor_row) if anchor_row else None, 0.5, "forced")
    return rows


def _print(name: str, result: dict) -> None:
    print(f"\n{name}: {result['machine']}")
    print(f"{'run':<28}{'model':<16}{'decode tok/s':>14}{'prefill tok/s':>15}{'compile s':>11}")
    for run, r in result["runs"].items():
        for model, figures in [*((f"original {k}", v) for k, v in r["original"].items()), ("compressed", r["compressed"])]:
            comp = f"{figures['compile_seconds']:.1f}" if "compile_seconds" in figures else ""
            print(f"{run:<28}{model:<16}{figures['decode_tokens_per_s']:>14.1f}{figures['prefill_tokens_per_s']:>15.1f}"
                  f"{comp:>11}")
        kernels = ", ".join(f"{k} {v}" for k, v in r["kernels"].items())
        print(f"{'':<28}path {r['path']}, runtime {r['runtime_dtype']}, kernels: {kernels}")
    first = next(iter(result["runs"].values()))
    shipped = first["llama_cpp"]
    if shipped and shipped.get("installed"):
        print(f"{'llama.cpp':<28}{shipped['file']:<16}{shipped['decode_tokens_per_s']:>14.1f}"
              f"{shipped['prefill_tokens_per_s']:>15.1f}   ({shipped['bytes']:,} bytes)")
    own = result.get("llama_cpp_own_export")
    if own:
        print(f"{'llama.cpp':<28}{'own export':<16}{own['decode_tokens_per_s']:>14.1f}{own['prefill_tokens_per_s']:>15.1f}"
              f"   ({own['bytes']:,} bytes, {', '.join(own['types'])})")
    if result.get("llama_cpp_missing"):
        print(f"llama.cpp: {result['llama_cpp_missing']['note']}")
    for name, r in (result.get("alternating") or {}).items():
        print(f"decode, alternating rounds: {name:<34} median {r['median']:.1f} tok/s of "
              + ", ".join(f"{x:.1f}" for x in r["rounds"]))
    for label, p in result["profile"].items():
        print(f"profile of the {label} model's decode step, lean, not compiled ({p['ms_per_step']:.2f} ms of CPU a step, "
              "profiler included): " + ", ".join(f"{k} {v:.0%}" for k, v in p.items() if k != "ms_per_step"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--no-forced", action="store_true", help="skip the run forced to act as a processor without bf16")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    p.add_argument("--only", choices=("structured",), help="only the structured pruning speedups")
    args = p.parse_args()
    if args.only == "structured":
        print(header(), flush=True)
        _print_structured(structured(args.repeats))
        return
    if args.child:
        print(json.dumps(measure_all(args.repeats), default=str))
        return
    print(header(), file=sys.stderr if args.json else sys.stdout, flush=True)
    native = measure_all(args.repeats)
    forced = None
    if not args.no_forced:
        print("[the same, forced to act as a processor without native bf16]", file=sys.stderr, flush=True)
        done = subprocess.run([sys.executable, __file__, "--child", "--repeats", str(args.repeats)],
                              env={**os.environ, **FORCED}, capture_output=True, text=True, check=True)
        forced = json.loads(done.stdout.strip().splitlines()[-1])
    rows = goals(native, forced)
    smaller = structured(args.repeats)
    if args.json:
        print(json.dumps({"goals": rows, "native": native, "forced": forced, "structured": smaller}, indent=2,
                         default=str))
        return
    _print("this processor", native)
    if forced is not None:
        _print("forced without native bf16 (torch limited to AVX2; llama.cpp as built)", forced)
    print("\ngoals:")
    for r in rows:
        got = "not measured (llama.cpp missing)" if r["measured"] is None else f"{r['measured']:.2f}"
        print(f"  {r['goal']:<62} {got:>8}  goal {r['target']:.2f}  {'met' if r['met'] else 'NOT MET'}")
    _print_structured(smaller)


def _print_structured(rows: list[dict]) -> None:
    print("\nstructured pruning on smollm2, lean path (not compiled), speedup against the original at the runtime's "
          "width; goal: within 20% of the ratio of bytes (decode) and of multiply-adds (prefill)")
    for r in rows:
        d, p = r["decode_speedup"] / r["bytes_ratio"], r["prefill_speedup"] / r["flops_ratio"]
        print(f"  {r['setting']:<24} {r['runtime']}: decode {r['decode_speedup']:.2f}x (bytes {r['bytes_ratio']:.2f}x, "
              f"{d:.0%} of it, {'met' if d >= 0.8 else 'NOT MET'}), prefill {r['prefill_speedup']:.2f}x "
              f"(multiply-adds {r['flops_ratio']:.2f}x, {p:.0%} of it, {'met' if p >= 0.8 else 'NOT MET'}); "
              f"{r['original_decode_tokens_per_s']:.1f} -> {r['decode_tokens_per_s']:.1f} tok/s")


if __name__ == "__main__":
    main()
