"""Each kernel against the dense product, timed on this machine: the faster one runs.

A weight-only kernel (int8, int4) reads fewer bytes than the dense product but does more work
per value; which wins depends on the processor and the activations' dtype. On a processor
without native bf16, tinygemm's int4 product with fp32 activations was measured 37x slower than
a dense fp32 product for a 128-token prefill, and slower for one token too: there the kernel would
make the compressed model slower than its original. So the runtime times each kernel and the
dense product of the same shape, for the work the model will do (`Workload`: a prompt's prefill
and N decode steps, or an encoder's batch), once per shape on this machine (kept on disk,
engine.machine.remembered), and keeps the kernel only where it is faster:

    workload = Workload.causal(prompt_tokens=128, new_tokens=32)
    note = slower_than_dense(kernel_module, w, torch.float32, workload)   # '' where the kernel wins
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import machine


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


def per_call_seconds(fn, x: torch.Tensor, least: int = 5, budget: float = 0.05, cap: float | None = None) -> float:
    """The median time of fn(x) over at least `least` calls (more while under `budget` seconds,
    at most 50), after two warm-up calls; where the first call alone takes more than `cap`
    seconds, that first time (a kernel far slower than its rival is not timed further)."""
    times = []
    with torch.inference_mode():
        first = _timed(fn, x)
        if cap is not None and first > cap:
            return first
        fn(x)
        start = time.perf_counter()
        while len(times) < least or (time.perf_counter() - start < budget and len(times) < 50):
            times.append(_timed(fn, x))
    times.sort()
    return times[len(times) // 2]


def _label(module) -> str:
    """What a kernel's time depends on besides the shape and dtype: its kind and its group."""
    group = getattr(module, "group", None)
    return module.kernel + (f"/g{group}" if group else "")


def call_seconds(fn, label: str, shape: tuple[int, int], dtype: torch.dtype, device: torch.device, tokens: int,
                 cap: float | None = None) -> float:
    """Seconds of one call of `fn`, (tokens, in) -> (tokens, out), timed once per machine and kept
    (engine.machine.remembered; a kernel's time depends on its shape, not its values)."""
    key = f"matmul {label} {shape[0]}x{shape[1]} {str(dtype).removeprefix('torch.')} {tokens} tokens on {device}"

    def measure():
        g = torch.Generator().manual_seed(0)
        x = torch.randn(tokens, shape[1], generator=g).to(device, dtype)
        return per_call_seconds(fn, x, cap=cap)

    return measure() if device.type != "cpu" else machine.remembered(key, measure)


def slower_than_dense(module, w: torch.Tensor, dtype: torch.dtype, workload: Workload) -> str:
    """'' where `module` (a kernel for the matrix `w`, (out, in)) is at least as fast as the dense
    product in `dtype` for `workload`; else why the dense product runs instead."""
    dense_w = w.to(dtype)
    shape = tuple(w.shape)
    dense = sum(n * call_seconds(lambda x: F.linear(x, dense_w), "dense", shape, dtype, w.device, tokens)
                for tokens, n in workload.calls)
    kernel, at_least = 0.0, False
    for tokens, n in workload.calls:
        if tokens >= 16:  # an eighth of the tokens first: where that alone loses, the whole call does too
            probe = call_seconds(module.mm, _label(module), shape, dtype, w.device, tokens // 8, cap=dense / n)
            if n * probe > dense:
                kernel, at_least = kernel + n * probe, True
                continue
        kernel += n * call_seconds(module.mm, _label(module), shape, dtype, w.device, tokens, cap=dense / n)
    if kernel <= dense:
        return ""
    return (f"{module.kernel} kernel measured slower than the dense product here ({'over ' if at_least else ''}"
            f"{kernel * 1e3:.2f} ms against "
            f"{dense * 1e3:.2f} ms for {workload.what}, {str(dtype).removeprefix('torch.')} activations): "
            "dense runs")
