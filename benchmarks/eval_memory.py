"""Peak memory of the quality evaluation of a causal LM (default smollm2), measured in this
fresh process: the resident set's high-water mark (engine.hardware.peak), reset before each step.

    .venv/bin/python benchmarks/eval_memory.py [--model smollm2] [--chunk 256]

Prints, in MiB: the resident set with the weights loaded (and read once: the weights'
files are mapped, and resident only once read), and the peak each step adds to what
was resident when it began: building the evaluator (the reference log-probabilities, kept in
fp16), then one full evaluation of a 4-bit working copy.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.drivers.explorer import Explorer  # noqa: E402
from engine.hardware.machine import header  # noqa: E402
from engine.hardware.peak import Peak, _status  # noqa: E402
from engine.quality import causal
from engine.recipe.recipe import Recipe  # noqa: E402

MIB = 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--chunk", type=int, default=causal.TOKEN_CHUNK, help="scored tokens per piece")
    args = ap.parse_args()
    print(header(), file=sys.stderr if getattr(args, 'json', False) else sys.stdout, flush=True)
    ex = Explorer.open(args.model, "cpu")
    for p in ex.loaded.model.parameters():  # read every weight once: loaded files are mapped, resident when read
        p.sum()
    weights = _status("VmRSS")
    with Peak("cpu") as built:
        ev = causal.CausalLMEval(ex.loaded, chunk=args.chunk)
    work = ex.workspace()
    work.apply(Recipe(bits=4))
    with Peak("cpu") as full:
        metrics = ev(work.model)
    b, f = built.to_dict(), full.to_dict()
    print(f"{args.model}, chunk {args.chunk} tokens: weights loaded {weights / MIB:.0f} MiB resident")
    print(f"  building the evaluator: +{b['added_bytes'] / MIB:.0f} MiB peak "
          f"({(b['peak_bytes'] - weights) / MIB:.0f} MiB above the weights)")
    print(f"  full evaluation (int4): +{f['added_bytes'] / MIB:.0f} MiB peak over {f['start_bytes'] / MIB:.0f} MiB "
          f"resident ({(f['peak_bytes'] - weights) / MIB:.0f} MiB above the weights, the working copy included)")
    print(f"  metrics: {metrics}")


if __name__ == "__main__":
    main()
