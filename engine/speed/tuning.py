"""Each kernel against the dense product, timed on this machine: the faster one runs.

A weight-only kernel (int8, int4) reads fewer bytes than the dense product but does more work
per value; which wins depends on the processor and the activations' dtype. On a processor
without native bf16, tinygemm's int4 product with fp32 activations was measured 37x slower than
a dense fp32 product for a 128-token prefill, and slower for one token too: there the kernel would
make the compressed model slower than its original. So the runtime times each kernel and the
dense product of the same shape, for the work the model will do (`Workload`: a prompt's prefill
and N decode steps, or an encoder's batch), the caches flushed before each call as a model larger
than them has its weights read from memory, once per shape on this machine (kept on disk,
engine.hardware.machine.remembered), and keeps the kernel only where it is faster. In an fp32 model the
same kernel with bf16 activations is a candidate too (engine.speed.kernels.InBf16): on a processor
without native bf16, tinygemm's bf16 path was measured faster than its fp32 one.

    workload = Workload.causal(prompt_tokens=128, new_tokens=32)
    module, why = fastest([kernel, kernel_in_bf16], w, torch.float32, workload)   # None: dense runs
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from engine.hardware import machine


@dataclass(frozen=True)
class Workload:
    """Calls of a matmul: each (tokens per call, number of calls)."""

    calls: tuple[tuple[int, int], ...]
    what: str

    @classmethod
    def causal(cls, prompt_tokens: int, new_tokens: int) -> "Workload":
        return cls(((prompt_tokens, 1), (1, new_tokens)),
                   f"a {prompt_tokens}-token prefill and {new_tokens} one-token decode steps")

    @classmethod
    def encoder(cls, tokens: int) -> "Workload":
        return cls(((tokens, 1),), f"a batch of {tokens} tokens")


def _timed(fn, x: torch.Tensor) -> float:
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    t0 = time.perf_counter()
    fn(x)
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
    return time.perf_counter() - t0


def per_call_seconds(fn, x: torch.Tensor, least: int = 5, budget: float = 0.05, cap: float | None = None,
                     flush=None) -> float:
    """The median time of fn(x) over at least `least` calls (more while under `budget` seconds,
    at most 50), after two warm-up calls; where the first call alone takes more than `cap`
    seconds, that first time (a kernel far slower than its rival is not timed further). With
    `flush`, it is called (untimed) before each timed call."""
    times = []
    flush = flush or (lambda: None)
    with torch.inference_mode():
        flush()
        first = _timed(fn, x)
        if cap is not None and first > cap:
            return first
        fn(x)
        start = time.perf_counter()
        while len(times) < least or (time.perf_counter() - start < budget and len(times) < 50):
            flush()
            times.append(_timed(fn, x))
    times.sort()
    return times[len(times) // 2]


def call_seconds(fn, label: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device, tokens: int,
                 cap: float | None = None) -> float:
    """Seconds of one call of `fn`, (tokens, in) -> (tokens, out), timed once per machine and kept
    (engine.hardware.machine.remembered; a kernel's time depends on its shape, not its values)."""
    key = f"matmul {label} {shape[0]}x{shape[1]} {str(dtype).removeprefix('torch.')} {tokens} tokens on {device}, " \
          "caches flushed"

    def measure():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(tokens, shape[1], generator=g).to(device, dtype)
        return per_call_seconds(fn, x, cap=cap, flush=_flusher(device))

    return measure() if device.type != "cpu" else machine.remembered(key, measure)


def _cache_bytes() -> int:
    """The largest CPU cache this machine reports (Linux's sysfs), or 0 where it says nothing."""
    import glob

    sizes = []
    for f in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            text = open(f).read().strip()
        except OSError:
            continue
        unit = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KM")) * unit if text.rstrip("KM").isdigit() else 0)
    return max(sizes, default=0)


def _flusher(device: torch.device):
    """What evicts a matrix from the caches between timed calls: a decode step reads each layer's
    weights from memory (the model is larger than the caches), so a kernel timed with its weights
    cache-resident would be measured for work the model never does (there, a dense product reading
    4 times the bytes of int4 measured faster than it; in the model, slower). Writes a buffer twice
    the largest cache (at least 64 MiB; a GPU's L2 likewise)."""
    if device.type == "cuda":
        size = 2 * torch.cuda.get_device_properties(device).L2_cache_size
    else:
        size = 2 * _cache_bytes()
    buffer = torch.empty(max(size, 64 * 2**20) // 4, dtype=torch.float32, device=device)
    return lambda: buffer.fill_(1.0)


def _workload_seconds(fn, label, shape, dtype, device, workload: Workload, beat: float) -> tuple[float, bool]:
    """Seconds of `fn` for `workload`, and whether that is a lower bound: a call size is timed on an
    eighth of its tokens first, and no further where that alone, times its count, exceeds `beat`."""
    total, at_least = 0.0, False
    for tokens, n in workload.calls:
        if tokens >= 16:
            probe = call_seconds(fn, label, shape, dtype, device, tokens // 8, cap=beat / n)
            if n * probe > beat:
                total, at_least = total + n * probe, True
                continue
        total += n * call_seconds(fn, label, shape, dtype, device, tokens, cap=beat / n)
    return total, at_least


def _ms(seconds: float, at_least: bool) -> str:
    return f"{'over ' if at_least else ''}{seconds * 1e3:.2f} ms"


def fastest(candidates: list, w: torch.Tensor, dtype: torch.dtype, workload: Workload) -> tuple:
    """The fastest of `candidates` (kernels for the matrix `w`, (out, in), taking activations in
    `dtype`; the first is the plain one) and the dense product in `dtype`, for `workload`:
    (the chosen kernel, or None for dense; why, '' where the plain kernel wins)."""
    dense_w = w.to(dtype)
    shape, name = tuple(w.shape), str(dtype).removeprefix("torch.")
    dense = sum(n * call_seconds(lambda x: F.linear(x, dense_w), "dense", shape, dtype, w.device, tokens)
                for tokens, n in workload.calls)
    timed = [(m, *_workload_seconds(m.mm, _label(m), shape, dtype, w.device, workload, dense)) for m in candidates]
    times = ", ".join(f"{_ms(t, low)} for the {m.kernel} kernel" for m, t, low in timed)
    best, t, _ = min(timed, key=lambda r: r[1])
    if t > dense:
        return None, (f"{candidates[0].kernel} kernel measured slower than the dense product here ({times}, "
                      f"against {dense * 1e3:.2f} ms dense, for {workload.what}, {name} activations): dense runs")
    if best is candidates[0]:
        return best, ""
    return best, f"measured fastest here ({times}, {dense * 1e3:.2f} ms dense, for {workload.what})"


def _label(module) -> str:
    """What a kernel's time depends on besides the shape and dtype: its kind and its group."""
    group = getattr(module, "group", None)
    return module.kernel + (f"/g{group}" if group else "")
