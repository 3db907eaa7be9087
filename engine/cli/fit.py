"""`python -m engine fit`: memory planning from a config alone (engine.drivers.footprint)."""
from __future__ import annotations

import json

from engine.cli.options import recipe_args, recipe_from


def _size(n: int) -> str:
    return f"{n / 2**30:,.2f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def cmd_fit(args):
    from engine.drivers import footprint

    recipe = recipe_from(args)
    if args.model is None:
        print("shipped configs (no weights, no network needed):")
        for name, hub in footprint.shipped().items():
            print(f"  {name:<14} {hub}")
        return
    sk = footprint.open_skeleton(args.model, args.trust_remote_code)
    fp = footprint.footprint(sk, recipe, args.batch, args.context, args.kv_bits)
    rows = footprint.fitting(sk, args.batch, args.context, args.kv_bits)
    small = footprint.small_devices(sk, recipe, args.batch, args.context, args.kv_bits)
    if args.json:
        print(json.dumps({**fp, "devices": rows, "ladder": [r.describe() for r in footprint.LADDER],
                          "small_devices": small}, indent=2))
        return
    w, kv, act, big = fp["weights"], fp["kv_cache"], fp["activations"], fp["largest_layer"]
    print(f"{args.model} ({sk.source}): {sk.kind}, {sk.total_params:,} parameters, built from its config without weights")
    if sk.note:
        print(f"note: {sk.note}")
    print(f"weights, {recipe.describe()}: {w['compressed_bytes']:,} bytes = {_size(w['compressed_bytes'])} "
          f"(fp16 {_size(w['original_bytes'])}, ratio {w['ratio']:.4f})")
    print(f"largest layer: {big['name']} {big['shape'][0]} x {big['shape'][1]}, {_size(big['fp16_bytes'])} at fp16")
    print(f"KV cache: {_size(kv['bytes'])} = {kv['formula']}")
    if "note" in kv:
        print(f"  {kv['note']}")
    print(f"activations (an estimate): {_size(act['bytes'])} = {act['formula']}")
    for note in fp["notes"]:
        print(f"note: {note}")
    print(f"total: {_size(fp['total_bytes'])}; not counted: {fp['not_counted']}")
    print("will it fit? the mildest recipe of the ladder that fits each device, at this batch and context:")
    for r in rows:
        what = "nothing on the ladder fits" if r["recipe"] is None else \
            f"{r['recipe']}: {_size(r['total_bytes'])}, {_size(r['headroom_bytes'])} to spare"
        print(f"  {r['device']:<40} {what}")
    print(f"phones, boards and laptops, this recipe ({_size(fp['total_bytes'])} at this batch and context; an app "
          "gets less than a phone's whole memory):")
    for r in small:
        print(f"  {r['device']:<40} {_size(r['memory_bytes']):>10}  {'fits' if r['fits'] else 'does not fit'}")


def add_parser(sub) -> None:
    f = sub.add_parser("fit", help="plan memory from a config alone (no weights): weights under a recipe, "
                                   "KV cache, and which GPUs it fits")
    f.add_argument("model", nargs="?", help="a shipped config (run `fit` alone to list them), a config.json file, "
                                            "an alias, a model folder or a hub id (reads its config only)")
    f.add_argument("--trust-remote-code", action="store_true", help="allow code from the model's repository")
    recipe_args(f)
    f.add_argument("--batch", type=int, default=1, help="sequences at once (default 1)")
    f.add_argument("--context", type=int, default=4096, help="tokens per sequence: prompt and output (default 4096)")
    f.add_argument("--kv-bits", type=int, default=16, choices=(16, 8, 4), help="bits per cached key/value (default 16)")
    f.add_argument("--json", action="store_true")
    f.set_defaults(fn=cmd_fit)
