"""FP8 per output channel and NVFP4, as compressed-tensors quantizes and stores them.

FP8 (E4M3 or E5M2): each row's scale is its absmax over the format's largest value (448 for
E4M3, 57344 for E5M2), in fp32; each value is w / scale cast to torch's float8 dtype (round to
nearest even, clamped to the largest value first). Stored: the float8 bytes and the fp32 scales.
A zero row takes the scale fp32's epsilon, as compressed-tensors' calculate_qparams does.

NVFP4: one fp32 global scale per tensor, g = 448 x 6 / absmax(tensor) (the number
compressed-tensors stores as `weight_global_scale`: the reciprocal of the per-tensor scale
absmax / (448 x 6)); per block of 16 values in a row, the scale e4m3(g x absmax(block) / 6)
(0.125, E4M3's epsilon, where that is 0); each value the E2M1 code of w / (scale / g), rounded to
nearest, ties to even (compressed-tensors' cast_to_fp4). Values: E2M1 x scale / g. Stored: the
codes two to a byte (the first value in the low half, compressed-tensors' pack_fp4_to_uint8),
the E4M3 scale bytes and the fp32 global scale.
"""
from __future__ import annotations

import torch

from engine.formats.floats.blockwise import e2m1_code, e2m1_value, pack, unpack

FP8 = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
NV_BLOCK = 16
E4M3_MAX, E2M1_MAX = 448.0, 6.0


def fp8(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, dict]:
    """(values, parts: 'codes' (rows, cols) uint8 float8 bytes, 'scales' (rows,) fp32) of w."""
    dtype = FP8[fmt]
    top = torch.finfo(dtype).max
    scale = w.abs().amax(1) / top
    scale = torch.where(scale == 0, torch.full_like(scale, torch.finfo(torch.float32).eps), scale)
    q = (w / scale[:, None]).clamp(-top, top).to(dtype)
    parts = {"codes": q.view(torch.uint8), "scales": scale}
    return q.float() * scale[:, None], parts


def fp8_values(parts: dict, fmt: str) -> torch.Tensor:
    return parts["codes"].view(FP8[fmt]).float() * parts["scales"].float()[:, None]


def nvfp4(w: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """(values, parts: 'codes' (rows, cols / 2) uint8, 'scales' (rows, cols / 16) uint8 E4M3 bytes,
    'global_scale' (1,) fp32) of w, whose rows divide into blocks of 16."""
    rows, cols = w.shape
    amax = w.abs().amax().clamp(min=torch.finfo(torch.float32).tiny)
    g = torch.nan_to_num(E4M3_MAX * E2M1_MAX / amax, nan=1.0, posinf=1.0, neginf=1.0).reshape(1)
    blocks = w.reshape(rows, cols // NV_BLOCK, NV_BLOCK)
    scale = (g * (blocks.abs().amax(-1) / E2M1_MAX)).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float()
    scale = torch.where(scale == 0, torch.full_like(scale, 0.125), scale)
    step = scale / g
    codes = e2m1_code((blocks / step[..., None]).clamp(-E2M1_MAX, E2M1_MAX)).reshape(rows, cols)
    parts = {"codes": pack(codes, high_first=False).reshape(rows, cols // 2),
             "scales": scale.to(torch.float8_e4m3fn).view(torch.uint8), "global_scale": g}
    return _values(codes, step), parts


def _values(codes: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    rows, groups = step.shape
    return (e2m1_value(codes).reshape(rows, groups, NV_BLOCK) * step[..., None]).reshape(rows, groups * NV_BLOCK)


def nvfp4_values(parts: dict, shape: tuple[int, int]) -> torch.Tensor:
    rows, cols = shape
    codes = unpack(parts["codes"], high_first=False).reshape(rows, cols)
    step = parts["scales"].view(torch.float8_e4m3fn).float() / parts["global_scale"].float()
    return _values(codes, step)
