"""Which llama.cpp format to pick, answered on the offline models: quality against bytes.

For each model: llama.cpp's mixes (Q8_0 ... Q2_K, with the per-tensor types its quantize
chooses; embeddings and head included), each by round to nearest and with an importance matrix
from the calibration text; its legacy types by round to nearest, importance matrix and GPTQ;
and the explorer's own integer grid with the same bytes as Q4_0 and Q8_0 (symmetric, groups
of 32). Every row: the bytes of the whole model (everything not compressed at fp16), the bits
per weight of the compressed layers, the full evaluation protocol, the seconds to apply.
smollm2's baseline is itself a 4-bit model dequantized to fp32 (its weights come from a Q4_1
GGUF): every figure is measured against that model, not against SmolLM2's original bf16 weights.

    .venv/bin/python benchmarks/llama_formats.py [--models minilm,smollm2] [--json]
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
from engine.recipe.presets import PRESETS  # noqa: E402
from engine.recipe.recipe import Recipe  # noqa: E402


def recipes(ex: Explorer) -> list[tuple[str, Recipe]]:
    rows = []
    for p in PRESETS:
        rows += [(f"mix {p.upper()}", ex.preset(p)), (f"mix {p.upper()}", ex.preset(p, quant_method="imatrix"))]
    emb = dict(include_embeddings=True)
    for fmt in ("q8_0", "q5_1", "q5_0", "q4_1", "q4_0"):
        for method in ("rtn", "imatrix", "gptq"):
            if not (fmt == "q8_0" and method == "imatrix"):  # q8_0 takes no importance matrix in llama.cpp
                rows.append((f"type {fmt.upper()}", Recipe(number_format=fmt, quant_method=method, **emb)))
        if fmt in ("q8_0", "q4_0"):
            bits = 8 if fmt == "q8_0" else 4
            rows.append((f"type {fmt.upper()}", Recipe(bits=bits, group_size=32, **emb)))
            rows.append((f"type {fmt.upper()}", Recipe(bits=bits, group_size=32, quant_method="gptq", **emb)))
    return rows


def run_model(ref: str) -> dict:
    ex = Explorer.open(ref)
    work = ex.workspace()
    ev = ex.evaluator()
    cal = ex.calibration()
    rows = []
    for label, recipe in recipes(ex):
        t0 = time.perf_counter()
        applied = work.apply(recipe)
        seconds = time.perf_counter() - t0
        layers = [r for r in applied.memory.layers if r.compressed]
        bpw = 8 * sum(r.bytes.compressed_bytes for r in layers) / sum(r.info.params for r in layers)
        method = {"imatrix": "importance matrix", "gptq": "GPTQ"}.get(recipe.quant_method, "round to nearest")
        grid = "explorer's int grid" if recipe.number_format == "int" else "llama.cpp"
        rows.append({"setting": label, "grid": grid, "method": method, "recipe": recipe.describe(),
                     "bytes": applied.memory.compressed_bytes, "bpw": bpw, "apply_s": seconds, **work.evaluate()})
    return {"model": ref, "note": ex.loaded.note, "primary": ev.primary, "baseline": ev.baseline(),
            "original_bytes": 2 * ex.total_params, "calibration": cal.to_dict(), "rows": rows}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,smollm2")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    print(header(), file=sys.stderr if getattr(args, 'json', False) else sys.stdout, flush=True)
    results = [run_model(m) for m in args.models.split(",")]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for res in results:
        metrics = [k for k in res["baseline"] if k != res["primary"]]
        print(f"\n{res['model']}: baseline {res['primary']} {res['baseline'][res['primary']]:.4g}, "
              f"{res['original_bytes'] / 2**20:.2f} MiB at fp16; calibration {res['calibration']['samples']} "
              f"sequences, {res['calibration']['tokens']} tokens" + (f"; note: {res['note']}" if res["note"] else ""))
        print(f"| setting | grid | method | MiB | bits/weight | {res['primary']} | " + " | ".join(metrics)
              + " | apply s |")
        print("|---|---|---|---:|---:|---:|" + "---:|" * len(metrics) + "---:|")
        for r in res["rows"]:
            print(f"| {r['setting']} | {r['grid']} | {r['method']} | {r['bytes'] / 2**20:.2f} | {r['bpw']:.3f} | "
                  f"{r[res['primary']]:.4g} | " + " | ".join(f"{r[m]:.4g}" for m in metrics)
                  + f" | {r['apply_s']:.1f} |")


if __name__ == "__main__":
    main()
