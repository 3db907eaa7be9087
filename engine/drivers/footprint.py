"""Memory planning without weights: a model built from its config alone, on the meta device.

    skeleton = open_skeleton("llama-3-70b")          # a shipped config: no weights, no network
    fp = footprint(skeleton, Recipe(bits=4), batch=1, tokens=8192)
    fp["weights"]["compressed_bytes"], fp["kv_cache"]["bytes"], fitting(fp)

The transformers model is built with torch's meta device as the default device (in this
thread only): every parameter has a shape and no storage, so a 70B model takes no memory. The layers are found by
type as for a loaded model, and each layer's bytes under a recipe follow from its shape
(engine.pipeline.compress.predict), so the count equals the one made from the weights, byte for byte.
The configs in assets/configs are the published config.json files of a few public models.
"""
from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.drivers import awq_fold
from engine.errors import UserError
from engine.layers import LayerInfo
from engine.layers.find import find_layers, select
from engine.methods import shared as sharing
from engine.models.building import building
from engine.models.loading import auto_class, kind_of, one_line, open_config, read_config
from engine.pipeline.compress import predict as predict_layer
from engine.pipeline.tally import LayerReport, MemoryReport, memory_report
from engine.recipe.recipe import Recipe
from engine.structure import blocks, removal

CONFIGS = Path(__file__).resolve().parents[2] / "assets" / "configs"
GiB = 2**30

# nominal memory of common GPUs (usable memory is a little less: the driver keeps some)
GPUS = (
    ("8 GiB (RTX 4060, RTX 3070)", 8 * GiB),
    ("12 GiB (RTX 3060, RTX 4070)", 12 * GiB),
    ("16 GiB (T4, RTX 4080, V100)", 16 * GiB),
    ("24 GiB (RTX 3090/4090, A10, L4)", 24 * GiB),
    ("40 GiB (A100 40GB)", 40 * GiB),
    ("48 GiB (A6000, L40S)", 48 * GiB),
    ("80 GiB (A100 80GB, H100)", 80 * GiB),
    ("141 GB (H200)", 141 * 10**9),
)

# recipes from the mildest to the harshest: error falls as bits rise (tests/cli/test_cli.py measures
# it on smollm2), and GPTQ with act-order beat round-to-nearest at 4 and 3 bits at the same
# bytes in benchmarks/methods.py
LADDER = (
    Recipe(),
    Recipe(bits=8, granularity="channel"),
    Recipe(bits=6, group_size=128),
    Recipe(bits=4, group_size=128, quant_method="gptq", act_order=True),
    Recipe(bits=3, group_size=128, quant_method="gptq", act_order=True),
)


@dataclass(frozen=True)
class Skeleton:
    """A model's structure without its weights."""

    ref: str
    source: str
    kind: str
    config: object
    layers: list[LayerInfo]
    total_params: int
    note: str | None
    model: object = None  # the model on the meta device
    removed_params: int = 0  # a smaller model's (structured pruning): the original's parameters it lacks


def shipped() -> dict[str, str]:
    """Shipped config name -> the hub id it is the config of."""
    return {p.stem: json.loads(p.read_text()).get("_name_or_path", p.stem) for p in sorted(CONFIGS.glob("*.json"))}


def open_skeleton(ref: str, trust_remote_code: bool = False) -> Skeleton:
    """Build a model from its config alone: a shipped config name, a config.json file, an
    alias, a local model folder or a hub id (a hub id reads only config.json)."""
    note = None
    path = CONFIGS / f"{ref}.json"
    if path.is_file() or (ref.endswith(".json") and os.path.isfile(ref)):
        path = path if path.is_file() else Path(ref)
        config = read_config(str(path), ref, trust_remote_code=trust_remote_code)
        source = f"shipped config of {shipped()[ref]}" if path.parent == CONFIGS else str(path)
    else:
        config, source, note, _ = open_config(ref, trust_remote_code)
    return skeleton_of(config, ref, source, note, trust_remote_code)


def skeleton_of(config, ref: str, source: str, note: str | None = None, trust_remote_code: bool = False) -> Skeleton:
    """The model a config builds, on the meta device, tied as the config says: its layers
    and parameter count."""
    kind = kind_of(config)
    try:
        # torch's meta device as a context is this thread's alone (accelerate's init_empty_weights
        # patches nn.Module for every thread: a session's workspace built meanwhile would get meta tensors)
        with building(), torch.device("meta"):
            model = auto_class(kind).from_config(config, trust_remote_code=trust_remote_code)
        model.tie_weights()  # on the meta device the tie is lost while building; the config says whether to tie
        if getattr(config, "scale_decoder_outputs", None) is False:
            _untie_head(model)
    except Exception as e:  # noqa: BLE001 -- a config transformers cannot build from
        raise UserError(f"cannot build {ref!r} from its config: {one_line(e)}") from None
    total = sum(p.numel() for p in model.parameters())
    return Skeleton(ref, source, kind, config, find_layers(model), total, note, model)


def smaller(skeleton: Skeleton, recipe: Recipe) -> Skeleton:
    """The skeleton of the smaller model a structured recipe makes (engine.structure): which heads,
    channels and blocks go needs the weights, but not their shapes or bytes, so the first ones by
    index stand for them. The skeleton itself for a recipe that removes nothing."""
    if not recipe.structured:
        return skeleton
    found = blocks.find(skeleton.model)
    plan = removal.counts(recipe, found)
    if plan.empty:
        return skeleton
    structure = removal.choose(plan, lambda k: torch.zeros(plan.groups[k]), lambda k: torch.zeros(plan.channels[k]),
                               lambda: torch.zeros(plan.blocks), recipe.structure_importance)
    model = removal.remove(skeleton.model, structure)
    total = sum(p.numel() for p in model.parameters())
    return Skeleton(skeleton.ref, skeleton.source, skeleton.kind, model.config, find_layers(model), total,
                    skeleton.note, model, skeleton.total_params - total)


def _untie_head(model) -> None:
    """Give the output head a weight of its own. T5's config always says tie_word_embeddings
    (transformers forces it); a T5 v1.1 or Flan-T5 checkpoint, whose config.json said False
    (kept as scale_decoder_outputs=False), stores a separate head that loading keeps apart."""
    head = model.get_output_embeddings()
    if head is not None:
        head.weight = torch.nn.Parameter(torch.empty_like(head.weight, device="meta"), requires_grad=False)


def predict(skeleton: Skeleton, recipe: Recipe) -> MemoryReport:
    """The memory report of a recipe from the shapes alone: what applying it to the weights reports."""
    skeleton = smaller(skeleton, recipe)
    selected = select(skeleton.layers, recipe)
    chosen, shares = {i.name for i in selected}, sharing.groups(selected, recipe)
    folded = {n for g in awq_fold.eligible(skeleton.model, recipe, chosen) for n in g.layers}  # AWQ: no scales stored

    def layer_recipe(name):
        r = recipe.for_layer(name)
        return r.updated(quant_method="rtn") if name in folded else r

    reports = [predict_layer(i, layer_recipe(i.name), shares.get(i.name)) if i.name in chosen
               else LayerReport.left_alone(i) for i in skeleton.layers if i.tied_to is None]
    return memory_report(skeleton.layers, skeleton.total_params, reports, skeleton.removed_params)


def _text_config(config):
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def kv_cache(skeleton: Skeleton, batch: int, tokens: int, bytes_per_value: float = 2) -> dict:
    """The key and value cache of generation: 2 x layers x kv heads x head dim x bytes x
    batch x tokens. An encoder keeps none; an encoder-decoder, see _decoder_kv_cache. A smaller
    model whose blocks keep different numbers of key/value heads: the sum over its blocks."""
    out = kv_cache_of(skeleton.kind, skeleton.config, batch, tokens, bytes_per_value)
    if skeleton.removed_params and skeleton.kind == "causal-lm" and not removal.config_holds(skeleton.model):
        found = blocks.find(skeleton.model)
        per = [blocks.heads(b, found.layout)[1] for b in found.blocks]
        d = blocks.heads(found.blocks[0], found.layout)[2]
        n = 2 * sum(per) * d * batch * tokens
        out.update({"bytes": math.ceil(n * bytes_per_value), "kv_heads": per,
                    "formula": f"2 x ({' + '.join(map(str, per))}) kv heads of its blocks x {d} head dim x "
                               f"{bytes_per_value:g} bytes x {batch} x {tokens} tokens"})
    return out


def kv_cache_of(kind: str, config, batch: int, tokens: int, bytes_per_value: float = 2) -> dict:
    """kv_cache of a model of this kind and config."""
    if kind == "seq2seq":
        return _decoder_kv_cache(config, batch, tokens, bytes_per_value)
    if kind != "causal-lm":
        return {"bytes": 0, "formula": f"none: a model of kind {kind} keeps no key/value cache"}
    c = _text_config(config)
    layers, heads = c.num_hidden_layers, c.num_attention_heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    n = 2 * layers * kv_heads * head_dim * batch * tokens
    out = {"bytes": math.ceil(n * bytes_per_value), "layers": layers, "kv_heads": kv_heads, "head_dim": head_dim,
           "formula": f"2 x {layers} layers x {kv_heads} kv heads x {head_dim} head dim x {bytes_per_value:g} bytes"
                      f" x {batch} x {tokens} tokens"}
    window = getattr(c, "sliding_window", None)
    if window and window < tokens and getattr(c, "use_sliding_window", True):
        out["note"] = (f"the config declares a {window}-token sliding window: a cache that drops older tokens "
                       f"holds {math.ceil(n * window / tokens * bytes_per_value):,} bytes")
    return out


def _decoder_kv_cache(c, batch: int, tokens: int, bytes_per_value: float) -> dict:
    """An encoder-decoder's generation cache: each decoder layer keeps keys and values of its
    self-attention (the output so far) and of its cross-attention (the encoded source), here
    both `tokens` long: 2 x 2 x decoder layers x heads x head dim x bytes x batch x tokens."""
    layers = getattr(c, "num_decoder_layers", None) or getattr(c, "decoder_layers", None) or c.num_hidden_layers
    heads = getattr(c, "decoder_attention_heads", None) or c.num_attention_heads
    head_dim = getattr(c, "d_kv", None) or c.hidden_size // heads
    n = 2 * 2 * layers * heads * head_dim * batch * tokens
    return {"bytes": math.ceil(n * bytes_per_value), "layers": layers, "kv_heads": heads, "head_dim": head_dim,
            "formula": f"2 (self- and cross-attention) x 2 x {layers} decoder layers x {heads} heads x {head_dim} "
                       f"head dim x {bytes_per_value:g} bytes x {batch} x {tokens} tokens (output and source "
                       f"each {tokens} tokens long)"}


def activations(skeleton: Skeleton, batch: int, tokens: int) -> dict:
    """An estimate, not a measurement: the working set of one block during a prefill at fp16 (the
    residual stream and the attention output, 2 x hidden, and the MLP's intermediates,
    3 x intermediate, per token; fused attention adds no tokens x tokens term), and the
    fp32 logits of the last position."""
    c = _text_config(skeleton.config)
    hidden = c.hidden_size
    inter = next((v for v in (getattr(c, k, None) for k in ("intermediate_size", "n_inner", "d_ff", "encoder_ffn_dim"))
                  if v), 4 * hidden)
    per_token = 2 * (2 * hidden + 3 * inter)
    logits = 4 * batch * c.vocab_size if skeleton.kind in ("causal-lm", "seq2seq") else 0
    return {"bytes": per_token * batch * tokens + logits,
            "formula": f"2 bytes x (2 x {hidden} + 3 x {inter}) x {batch} x {tokens} tokens"
                       + (f" + 4 bytes x {batch} x {c.vocab_size} logits" if logits else "")}


def footprint(skeleton: Skeleton, recipe: Recipe, batch: int = 1, tokens: int = 4096,
              kv_bits: int = 16) -> dict:
    """Weights under `recipe` (exact), the KV cache (exact formula) and activations (estimate)."""
    if batch < 1 or tokens < 1:
        raise UserError("batch and context length must be at least 1")
    if kv_bits not in (4, 8, 16):
        raise UserError(f"kv cache bits must be 4, 8 or 16, got {kv_bits}")
    mem = predict(skeleton, recipe)
    skeleton = smaller(skeleton, recipe)  # its cache and activations
    positions = getattr(_text_config(skeleton.config), "max_position_embeddings", None)
    notes = [f"{tokens} tokens exceed the model's {positions} positions"] if positions and tokens > positions else []
    largest = max(skeleton.layers, key=lambda i: i.params)
    kv = kv_cache(skeleton, batch, tokens, kv_bits / 8)
    act = activations(skeleton, batch, tokens)
    weights = mem.to_dict()
    return {
        "model": skeleton.ref, "source": skeleton.source, "kind": skeleton.kind, "note": skeleton.note,
        "recipe": recipe.to_dict(), "describe": recipe.describe(),
        "total_params": skeleton.total_params,
        "largest_layer": {"name": largest.name, "shape": list(largest.shape), "params": largest.params,
                          "fp16_bytes": 2 * largest.params},
        "weights": {k: weights[k] for k in ("original_bytes", "original_bytes_fp32", "compressed_bytes", "ratio",
                                             "untouched_params", "removed_params", "components")},
        "layers": weights["layers"],
        "batch": batch, "tokens": tokens, "kv_bits": kv_bits,
        "kv_cache": kv, "activations": act,
        "total_bytes": mem.compressed_bytes + kv["bytes"] + act["bytes"],
        "notes": notes,
        "not_counted": "the CUDA context and the allocator's reserve (typically a few hundred MiB): "
                       "`python -m engine run` reports the measured peak on your device",
    }


def this_machine() -> list[tuple[str, int]]:
    """This machine's memory: each CUDA GPU's total, and the RAM available now."""
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append((f"this machine: cuda:{i} {props.name}", props.total_memory))
    if sys.platform.startswith("linux"):
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        out.append(("this machine: RAM available now", int(info["MemAvailable"].split()[0]) * 1024))
    return out


def small_devices(skeleton: Skeleton, recipe: Recipe, batch: int = 1, tokens: int = 4096, kv_bits: int = 16) -> list[dict]:
    """Per phone, board or laptop of the shipped list (engine.hardware.published): whether the
    recipe's total (weights, cache, activations) fits in its memory (an app gets less of a phone's)."""
    from engine.hardware.published import small_devices as devices

    total = footprint(skeleton, recipe, batch, tokens, kv_bits)["total_bytes"]
    return [{"device": d["name"], "kind": d["kind"], "memory_bytes": d["memory_bytes"], "total_bytes": total,
             "fits": total <= d["memory_bytes"], "source": d["source"]} for d in devices()]


def fitting(skeleton: Skeleton, batch: int = 1, tokens: int = 4096, kv_bits: int = 16,
            devices=None) -> list[dict]:
    """Per device: the total of each ladder recipe, and the mildest one that fits (None: none does)."""
    devices = list(devices if devices is not None else [*GPUS, *this_machine()])
    totals = [(r, footprint(skeleton, r, batch, tokens, kv_bits)) for r in LADDER]
    rows = []
    for name, capacity in devices:
        fits = next(((r, fp) for r, fp in totals if fp["total_bytes"] <= capacity), None)
        rows.append({"device": name, "capacity_bytes": capacity,
                     "recipe": None if fits is None else fits[0].describe(),
                     "total_bytes": None if fits is None else fits[1]["total_bytes"],
                     "headroom_bytes": None if fits is None else capacity - fits[1]["total_bytes"]})
    return rows
