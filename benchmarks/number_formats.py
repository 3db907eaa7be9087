"""The float formats others ship (NF4, FP4, NVFP4, FP8, double quantization) beside llama.cpp's
types and the explorer's integer grid at near-equal bytes, on the offline models.

Every row quantizes every linear layer, the embeddings and the head included, by round to
nearest, and runs the full evaluation protocol (`work.evaluate()`). Around 4.5 bits a weight:
nf4, fp4 (with and without double quantization), nvfp4, mxfp4, q4_0, q4_k and int4 in groups of
64 and 32; around 8: fp8_e4m3, fp8_e5m2, q8_0 and int8 per channel. smollm2's baseline is itself
a 4-bit model dequantized to fp32 (its weights come from a Q4_1 GGUF): every figure is measured
against that model, not against SmolLM2's original bf16 weights.

    .venv/bin/python benchmarks/number_formats.py [--models minilm,smollm2] [--json]
    .venv/bin/python benchmarks/number_formats.py --tables RESULTS.json   # the tables of a --json run
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.drivers.explorer import Explorer  # noqa: E402
from engine.hardware.machine import header  # noqa: E402
from engine.recipe.recipe import Recipe  # noqa: E402

EMB = dict(include_embeddings=True)
RECIPES = [
    ("nf4", Recipe(number_format="nf4", **EMB)),
    ("nf4 + double quant", Recipe(number_format="nf4", double_quant=True, **EMB)),
    ("fp4", Recipe(number_format="fp4", **EMB)),
    ("fp4 + double quant", Recipe(number_format="fp4", double_quant=True, **EMB)),
    ("nvfp4", Recipe(number_format="nvfp4", **EMB)),
    ("mxfp4", Recipe(number_format="mxfp4", **EMB)),
    ("q4_0", Recipe(number_format="q4_0", **EMB)),
    ("q4_k", Recipe(number_format="q4_k", **EMB)),
    ("int4 g64", Recipe(bits=4, group_size=64, **EMB)),
    ("int4 g32", Recipe(bits=4, group_size=32, **EMB)),
    ("fp8_e4m3", Recipe(number_format="fp8_e4m3", **EMB)),
    ("fp8_e5m2", Recipe(number_format="fp8_e5m2", **EMB)),
    ("q8_0", Recipe(number_format="q8_0", **EMB)),
    ("int8 per channel", Recipe(bits=8, granularity="channel", **EMB)),
]


def run_model(ref: str) -> dict:
    ex = Explorer.open(ref)
    work = ex.workspace()
    ev = ex.evaluator()
    rows = []
    for label, recipe in RECIPES:
        applied = work.apply(recipe)
        layers = [r for r in applied.memory.layers if r.compressed and r.info.tied_to is None]
        bpw = 8 * sum(r.bytes.compressed_bytes for r in layers) / sum(r.info.params for r in layers)
        errors = work.layer_errors()
        errs = [e["relative_error"] for e in errors if e["relative_error"] is not None]
        mean_err = sum(errs) / len(errs)
        rows.append({"setting": label, "bytes": applied.memory.compressed_bytes, "bpw": bpw,
                     "weight_error": mean_err, **work.evaluate()})
    return {"model": ref, "note": ex.loaded.note, "primary": ev.primary, "baseline": ev.baseline(),
            "original_bytes": 2 * ex.total_params, "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--tables", metavar="RESULTS.json", help="print the tables of a --json run's output")
    args = ap.parse_args()
    print(header(), file=sys.stderr if getattr(args, 'json', False) else sys.stdout, flush=True)
    if args.tables:
        results = json.loads(Path(args.tables).read_text(encoding="utf-8"))
    else:
        results = [run_model(m) for m in args.models.split(",")]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for res in results:
        metrics = [k for k in res["baseline"] if k != res["primary"]]
        print(f"\n{res['model']}: baseline {res['primary']} {res['baseline'][res['primary']]:.4g}, "
              f"{res['original_bytes'] / 2**20:.2f} MiB at fp16" + (f"; note: {res['note']}" if res["note"] else ""))
        print(f"| format | MiB | bits/weight | mean weight error | {res['primary']} | " + " | ".join(metrics) + " |")
        print("|---|---:|---:|---:|---:|" + "---:|" * len(metrics))
        for r in res["rows"]:
            print(f"| {r['setting']} | {r['bytes'] / 2**20:.2f} | {r['bpw']:.3f} | {r['weight_error']:.4f} | "
                  f"{r[res['primary']]:.4g} | " + " | ".join(f"{r[m]:.4g}" for m in metrics) + " |")


if __name__ == "__main__":
    main()
