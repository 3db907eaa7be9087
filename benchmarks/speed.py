"""The compressed model's speed on real kernels against the goals of the README's *How fast it
runs*: each recipe timed beside the original (fp32 and bf16) in one `engine.speed.measure.measure` run,
with llama.cpp on the same GGUF file where llama-cpp-python is installed.

    .venv/bin/python benchmarks/speed.py [--model smollm2] [--repeats 5] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import Explorer, Recipe  # noqa: E402
from engine.hardware.machine import header  # noqa: E402
from engine.speed.measure import SpeedSettings, measure  # noqa: E402

RECIPES = [  # (recipe, the figure its goal is about, the goal)
    (Recipe(bits=4, group_size=32, include_embeddings=True), "decode_vs_fp32", 2.0),
    (Recipe(bits=4, group_size=32, include_embeddings=True), "decode_vs_bf16", 1.3),
    (Recipe(bits=8, granularity="channel"), "decode_vs_fp32", 1.5),
    (Recipe(rank_ratio=0.5), "prefill_vs_bf16", None),  # goal: the FLOP ratio, within 30%
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    print(header(), file=sys.stderr if args.json else sys.stdout, flush=True)
    ex = Explorer.open(args.model)
    settings = SpeedSettings(repeats=args.repeats)
    reports, rows = {}, []
    for recipe, figure, goal in RECIPES:
        key = recipe.describe()
        if key not in reports:
            reports[key] = measure(ex, recipe, settings)
        r = reports[key]
        got = r["speedup"].get(figure)
        if goal is None:  # the FLOP ratio of the original to the compressed model
            models = r["roofline"]["models"]
            goal = models["original bf16"]["macs_per_token"] / models["compressed"]["macs_per_token"]
            met = got is not None and abs(got / goal - 1) <= 0.3 and got > 1
        else:
            met = got is not None and got >= goal
        rows.append({"recipe": key, "figure": figure, "measured": got, "goal": goal, "met": met})
    anchor = next(iter(reports.values()))["llama_cpp"]
    if args.json:
        print(json.dumps({"rows": rows, "reports": reports}, indent=2, default=str))
        return
    for row in rows:
        if row["measured"] is None:  # against bf16, on a machine without native bf16: no such original
            print(f"{row['recipe']:<34} {row['figure']:<18} not measured: this machine has no native bf16")
            continue
        print(f"{row['recipe']:<34} {row['figure']:<18} {row['measured']:>6.2f}x  goal {row['goal']:.2f}x  "
              f"{'met' if row['met'] else 'NOT MET'}")
    for key, r in reports.items():
        c = r["compressed"]
        print(f"{key:<34} runtime {r['runtime_dtype']} ({r['runtime_dtype_why']}); decode "
              f"{c['decode_tokens_per_s']:.1f} tok/s, prefill {c['prefill_tokens_per_s']:.1f}; original fp32 "
              f"{r['original']['fp32']['decode_tokens_per_s']:.1f} / {r['original']['fp32']['prefill_tokens_per_s']:.1f}; "
              "kernels " + ", ".join(f"{k} {v}" for k, v in r["kernels"].items()))
    if anchor and anchor.get("installed"):
        for key, r in reports.items():
            print(f"{key:<34} decode {r['compressed']['decode_tokens_per_s']:.1f} tok/s; llama.cpp "
                  f"{anchor['decode_tokens_per_s']:.1f} ({r['speedup']['decode_vs_llama_cpp']:.2f}x)")
    elif anchor:
        print(f"llama.cpp: {anchor['note']}")


if __name__ == "__main__":
    main()
