"""The roofline: how fast a model can run on a device, from its exact bytes and FLOPs.

A decode step reads every stored weight once (of an input embedding table, only the row it
looks up) and the key/value cache so far; it cannot be faster than those bytes over the
memory bandwidth. A prefill of P tokens does 2 x P multiply-adds per stored weight of every
matmul (a low-rank layer: r (m + n) of them) plus attention's 2 x 2 x P^2 / 2 x width per layer
(causal); it cannot be faster than those FLOPs over the matmul throughput, nor than its bytes.

    machine(device)                          # this machine: bandwidth and matmul throughput, measured
    model_costs(explorer, memory, dtype)     # bytes per decode token, FLOPs per prefill
    bound(costs, bandwidth, flops, ...)      # the lower bounds on time, and tokens/s
    HARDWARE                                 # published figures of common GPUs and CPUs
"""
from __future__ import annotations

import time

import torch

def hardware() -> list[dict]:
    """The shipped list (engine.hardware.published): name, memory bandwidth (bytes/s), dense bf16
    matmul FLOP/s, source; a small device's memory and llama.cpp's decode there."""
    from engine.hardware.published import devices

    return devices()


def median_seconds(fn, repeats: int, device: torch.device) -> float:
    """The median time of `repeats` calls of `fn` after one warm-up call (CUDA synchronized)."""
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return times[len(times) // 2]


def machine(device: torch.device | str, repeats: int = 5) -> dict:
    """This machine, measured: read bandwidth (the sum of a 256 MiB tensor, far larger than any
    cache) and matmul throughput (square products, n = 1,024 on the CPU, 8,192 on a GPU) in fp32
    and bf16, with torch's threads as set. A CPU is measured once and remembered
    (engine.hardware.machine.remembered: per processor, torch build and threads)."""
    device = torch.device(device)
    if device.type == "cpu":
        from engine.hardware import machine as this

        return this.remembered("roofline", lambda: _measure(device, repeats))
    return _measure(device, repeats)


def _measure(device: torch.device, repeats: int) -> dict:
    size = 256 * 2**20
    read = median_seconds(torch.ones(size // 4, device=device).sum, repeats, device)
    out = {"device": str(device), "threads": torch.get_num_threads(), "bandwidth_bytes_per_s": size / read,
           "bandwidth_measure": "median time of summing a 256 MiB fp32 tensor (bytes read / s)"}
    n = 1024 if device.type == "cpu" else 8192
    flops = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, device=device).to(dtype)
        flops[name] = 2 * n**3 / median_seconds(lambda a=a: a @ a, repeats, device)
    out["matmul_flops_per_s"] = flops
    out["matmul_measure"] = f"median time of a {n} x {n} by {n} x {n} product"
    return out


def _attention_width(config) -> tuple[int, int]:
    c = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(c, "num_hidden_layers", None) or getattr(c, "num_layers", 0)
    heads = getattr(c, "num_attention_heads", None) or getattr(c, "num_heads", 1)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads if hasattr(c, "hidden_size") else 0
    return layers, heads * head_dim


def model_costs(explorer, memory, bytes_per_value: float | None = None) -> dict:
    """Bytes a decode step reads in weights, and multiply-adds per token of the matmuls, of the
    model as `memory` (a MemoryReport) stores it; with `bytes_per_value` (4 for fp32, 2 for
    bf16), of the original at that width instead."""
    by_name = {r.info.name: r for r in memory.layers}
    tied = {r.info.tied_to for r in memory.layers if r.info.tied_to}

    def stored(r):
        if bytes_per_value is not None or not r.compressed:
            return int(r.info.params * (bytes_per_value or 2))
        return r.bytes.compressed_bytes

    def macs(r):
        rank = r.bytes.rank if r.compressed and bytes_per_value is None else None
        out, inp = r.info.shape
        return out * inp if rank is None else rank * (out + inp)

    if bytes_per_value is None:
        total = memory.compressed_bytes
    else:
        total = int(memory.total_params * bytes_per_value)
    lookups = [r for r in memory.layers if r.info.role == "embedding" and r.info.name not in tied]
    table = sum(stored(r) for r in lookups)
    mac = sum(macs(by_name.get(r.info.tied_to, r)) for r in memory.layers if r.info.role != "embedding")
    layers, width = _attention_width(explorer.loaded.model.config)
    return {"decode_weight_bytes": total - table, "embedding_table_bytes": table, "macs_per_token": mac,
            "attention_layers": layers, "attention_width": width}


def bound(costs: dict, bandwidth: float, flops: float | None, prompt_tokens: int, context: int,
          kv_bytes_per_token: int) -> dict:
    """Lower bounds on time: one decode step at `context` tokens of cache, and a prefill of
    `prompt_tokens`; as tokens/s."""
    decode_bytes = costs["decode_weight_bytes"] + kv_bytes_per_token * context
    p = prompt_tokens
    prefill_flops = 2 * p * costs["macs_per_token"] + 2 * costs["attention_layers"] * p * p * costs["attention_width"]
    prefill_bytes = costs["decode_weight_bytes"] + kv_bytes_per_token * p
    prefill_s = max(prefill_bytes / bandwidth, prefill_flops / flops if flops else 0.0)
    return {"decode_bytes_per_token": decode_bytes, "decode_tokens_per_s": bandwidth / decode_bytes,
            "prefill_flops": prefill_flops, "prefill_tokens_per_s": p / prefill_s,
            "prefill_bound": "compute" if flops and prefill_flops / flops > prefill_bytes / bandwidth else "memory"}
