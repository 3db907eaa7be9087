"""Which kernel a stored matrix runs on (engine.speed.kernels), and why.

`matmul(stored, recipe, dtype)` builds the module for one stored matrix (pipeline.StoredMatrix)
and says which kernel it chose and why: the one its stored format allows, checked on a probe
(else dense, the reason said), and, given a workload, only where it measured at least as fast
as the dense product on this machine (engine.speed.tuning).
"""
from __future__ import annotations

import time

import torch

from engine.formats.grid import code_offset, per_entry, quantize
from engine.speed.kernels import PROBE_TOLERANCE, Csr, Dense, InBf16, Int4, Int8, Matmul, SemiStructured, check

INT4_GROUPS = (32, 64, 128, 256)


def _codes(m, recipe) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The stored codes of a matrix on a uniform grid, with per-entry scale and offset."""
    rows, cols = m.values.shape
    scale, zero = per_entry((m.grid.scale, m.grid.zero), rows, cols, recipe.granularity, recipe.group_size)
    offset = code_offset(zero, recipe.bits, recipe.symmetric)
    return quantize(m.values, scale, offset, recipe.bits), scale, offset


def _quantized(m, recipe, dtype) -> tuple[Matmul | None, str]:
    """The integer kernel for a matrix on a uniform grid, or None and why not."""
    rows, cols = m.values.shape
    b, g = recipe.bits, recipe.granularity
    if b == 8:
        if g != "channel" or not recipe.symmetric:
            return None, f"int8 kernel: per channel and symmetric only (this is {g}, " \
                         f"{'symmetric' if recipe.symmetric else 'asymmetric'})"
        codes, scale, offset = _codes(m, recipe)
        return Int8(codes - offset, scale[:, 0], dtype), ""
    if b <= 4:
        gs = min(recipe.group_size, cols)  # a group wider than the row is the row
        if g != "group" or gs not in INT4_GROUPS:
            return None, f"int4 kernel: groups of {', '.join(map(str, INT4_GROUPS))} only (this is " \
                         f"{g if g != 'group' else f'groups of {gs}'})"
        if cols % gs:
            return None, f"int4 kernel: groups of {gs} do not divide the input width {cols}"
        codes, scale, offset = _codes(m, recipe)
        return Int4(codes, scale[:, ::gs], offset[:, ::gs], gs, dtype, b), ""
    return None, f"no kernel for {b}-bit codes"


def _ggml(m, dtype) -> tuple[Matmul | None, str]:
    """The int4 kernel for llama.cpp's q4_0 / q4_1 blocks, or None and why not."""
    fmt = m.grid.ggml
    if fmt not in ("q4_0", "q4_1"):
        return None, f"no torch kernel for llama.cpp's {fmt} blocks (llama.cpp runs them)"
    from engine.formats.ggml.legacy import unpack4

    q, d, lo = unpack4(fmt, m.grid.raw, m.values.shape[1])
    offset = torch.full_like(d, 8.0) if lo is None else -lo / torch.where(d == 0, torch.ones_like(d), d)
    return Int4(q, d, offset, 32, dtype, 4), ""


def _sparse(w, m, recipe, dtype) -> tuple[Matmul | None, str]:
    """A sparse kernel for a pruned 16-bit matrix, or None and why not."""
    if recipe.nm == (2, 4):
        if w.device.type == "cuda" and torch.cuda.get_device_capability(w.device)[0] >= 8:
            return SemiStructured(w, dtype), ""
        note = "no 2:4 kernel on the CPU" if w.device.type == "cpu" else "no 2:4 kernel on this GPU"
    else:
        note = f"{m.kept / w.numel():.0%} kept"
    if w.device.type != "cpu" or dtype != torch.float32:
        return None, note + "; CSR matmul only in fp32 on the CPU"
    csr, dense = Csr(w, dtype, note + ", CSR measured faster than dense"), Dense(w, dtype)
    if _seconds(csr, w) < _seconds(dense, w):
        return csr, ""
    return None, note + "; CSR measured slower than dense"


def _seconds(module: Matmul, w: torch.Tensor, repeats: int = 5) -> float:
    x = torch.randn(1, w.shape[1], device=w.device, dtype=torch.float32)
    times = []
    with torch.inference_mode():
        for _ in range(repeats):
            t0 = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def matmul(m, recipe, dtype: torch.dtype, workload=None) -> Matmul:
    """The module computing x W^T for one stored matrix `m` under its layer's `recipe`, in `dtype`.
    With a `workload` (engine.speed.tuning.Workload), an int8 or int4 kernel runs only where it is
    measured at least as fast as the dense product on this machine; else dense, saying why."""
    w = m.values
    module, why = None, ""
    try:
        if m.grid.codebook is not None:
            why = "no kernel for k-means codebooks"
        elif m.grid.ggml is not None:
            module, why = _ggml(m, dtype)
        elif m.grid.floats is not None:
            why = f"no torch kernel for {m.grid.floats} (the values run dense)"
        elif m.grid.channel is not None:
            why = "no kernel divides the inputs by AWQ's channel scales"
        elif m.grid.scale is not None:
            module, why = _quantized(m, recipe, dtype)
        elif m.keep is not None:
            module, why = _sparse(w, m, recipe, dtype)
    except RuntimeError as e:  # a kernel's own limits (tinygemm on the CPU: rows in 16s; 2:4: fp16 or bf16)
        kernel = "int4" if m.grid.ggml else f"int{8 if recipe.bits == 8 else 4}" if m.grid.scale is not None \
            else "sparse"
        why = f"{kernel} kernel refused: {str(e).splitlines()[0][:120]}"
    if module is not None:
        why = check(module, w, dtype)
    if module is None or why:
        return Dense(w, dtype, why, fallback=bool(why))
    if workload is not None and isinstance(module, (Int8, Int4)):
        from engine.speed.tuning import fastest

        candidates = [module]
        if dtype == torch.float32:  # the same kernel with bf16 activations, where it computes right
            in_bf16 = _in_bf16(m, recipe, w)
            if in_bf16 is not None:
                candidates.append(in_bf16)
        module, why = fastest(candidates, w, dtype, workload)
        if module is None:
            return Dense(w, dtype, why, timed=True)
        module.note = "; ".join(n for n in (module.note, why) if n)
    return module


def _in_bf16(m, recipe, w) -> InBf16 | None:
    """The matrix's kernel built for bf16 activations, wrapped to take and give fp32; None where it
    cannot be built or computes wrongly."""
    try:
        inner, _ = _ggml(m, torch.bfloat16) if m.grid.ggml is not None else _quantized(m, recipe, torch.bfloat16)
    except RuntimeError:
        return None
    if inner is None:
        return None
    module = InBf16(inner)
    return None if check(module, w, torch.float32, PROBE_TOLERANCE[torch.bfloat16]) else module
