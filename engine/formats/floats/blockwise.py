"""NF4 and FP4 in bitsandbytes' 4-bit layout, and QLoRA's double quantization of their scales.

The matrix is flattened and cut into blocks of 64 values (the last one may be shorter); each
block keeps its absmax as fp32 and each value the 4-bit code of the level nearest value / absmax:
NF4's 16 levels (bitsandbytes' table, the quantiles of a normal distribution, exact 0 and +-1),
or the OCP E2M1 levels (0, 0.5, 1, 1.5, 2, 3, 4, 6 and negatives) over 6, so that the block's
largest value lands on 6 (bitsandbytes' own FP4 table differs; these are the OCP levels). Codes
are packed two to a byte, the first value in the high half, as bitsandbytes packs them.

Double quantization (QLoRA): the blocks' fp32 absmax values, minus their mean (kept as one
fp32), are quantized to 8 bits in blocks of 256, each with one fp32 scale (the block of 256's
absmax / 127). bitsandbytes codes them on its dynamic 8-bit map; here the codes are linear
symmetric int8 (round(x / scale), -127 ... 127). The 4-bit codes are chosen against the exact
absmax, as bitsandbytes chooses them, and the values are the levels times the absmax as stored.
"""
from __future__ import annotations

import torch

BLOCK = 64
DQ_BLOCK = 256
# bitsandbytes' NF4 table (functional.get_4bit_type("nf4")): code -> level
NF4 = (-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
       -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
       0.24611230850219727, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
       0.7229568362236023, 1.0)
E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)  # E2M1 bit pattern (sign bit 3 clear) -> value


def levels(fmt: str, device=None) -> torch.Tensor:
    """The 16 values a code stands for, as a fraction of the block's absmax (code order)."""
    if fmt == "nf4":
        return torch.tensor(NF4, dtype=torch.float32, device=device)
    half = torch.tensor(E2M1, dtype=torch.float32, device=device) / 6
    return torch.cat([half, -half])


def e2m1_code(x: torch.Tensor) -> torch.Tensor:
    """The E2M1 code (sign << 3 | magnitude's bit pattern) of each value of x, rounded to the
    nearest E2M1 value, ties to the even mantissa, beyond 6 clamped to 6 (compressed-tensors'
    cast_to_fp4 thresholds); a negative value that rounds to zero keeps its sign (code 8)."""
    # the magnitude's code counts the midpoints it passes: above 0.25, 1.25, 2.5 and 5 (a tie stays
    # on the even value below), at or above 0.75, 1.75 and 3.5 (a tie goes to the even value above)
    below = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], device=x.device)
    below[1::2] = torch.nextafter(below[1::2], torch.zeros(3, device=x.device))
    mag = torch.bucketize(x.abs().float(), below).to(torch.uint8)  # the count of thresholds strictly below
    return mag | ((x < 0).to(torch.uint8) << 3)


def e2m1_value(code: torch.Tensor) -> torch.Tensor:
    table = torch.tensor(E2M1, dtype=torch.float32, device=code.device)
    mag = table[(code & 7).long()]
    return torch.where(code >= 8, -mag, mag)


def pack(codes: torch.Tensor, high_first: bool) -> torch.Tensor:
    """4-bit codes (flat, even count) -> bytes, two to a byte."""
    c = codes.reshape(-1, 2).to(torch.uint8)
    return (c[:, 0] << 4 | c[:, 1]) if high_first else (c[:, 0] | c[:, 1] << 4)


def unpack(raw: torch.Tensor, high_first: bool) -> torch.Tensor:
    """bytes -> their 4-bit codes (flat, uint8)."""
    hi, lo = raw.flatten() >> 4, raw.flatten() & 15
    return torch.stack([hi, lo] if high_first else [lo, hi], 1).flatten()


def _blocks(flat: torch.Tensor, size: int) -> torch.Tensor:
    """flat, zero-padded to whole blocks of `size`, as (blocks, size)."""
    pad = -flat.numel() % size
    return torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, size)


def _nearest(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """The code of the level nearest each value of x (x in [-1, 1], a fraction of its absmax)."""
    if fmt == "fp4":
        return e2m1_code(x * 6)
    table = levels(fmt, x.device)
    mids = (table[1:] + table[:-1]) / 2  # levels ascend: the code is the count of midpoints below
    return torch.bucketize(x, mids, right=True).to(torch.uint8)


def quantize_scales(absmax: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """Double quantization of the blocks' absmax (n,) fp32: (its parts: 'absmax_codes' int8 (n,),
    'absmax_scales' fp32 per 256, 'absmax_mean' fp32 (1,)), and the absmax as they store it."""
    mean = absmax.mean().reshape(1)
    centred = _blocks(absmax - mean, DQ_BLOCK)
    scale = centred.abs().amax(1) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(centred / safe[:, None]).clamp(-127, 127).to(torch.int8)
    parts = {"absmax_codes": codes.flatten()[:absmax.numel()].clone(), "absmax_scales": scale, "absmax_mean": mean}
    return parts, stored_scales(parts)


def stored_scales(parts: dict) -> torch.Tensor:
    """The blocks' absmax as double quantization stores them: code x its scale + the mean."""
    codes = parts["absmax_codes"].float()
    scale = parts["absmax_scales"].repeat_interleave(DQ_BLOCK)[:codes.numel()]
    return codes * scale + parts["absmax_mean"]


def quantize(w: torch.Tensor, fmt: str, double_quant: bool = False) -> tuple[torch.Tensor, dict]:
    """(values (rows, cols) float32, parts) of w in nf4 or fp4: 'codes' (ceil(n / 2) bytes),
    'absmax' (fp32 per 64 values), or with `double_quant` the absmax's parts (quantize_scales)."""
    n = w.numel()
    blocks = _blocks(w.flatten(), BLOCK)
    absmax = blocks.abs().amax(1)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    codes = _nearest(blocks / safe[:, None], fmt).flatten()[:n]
    parts = {"codes": pack(torch.cat([codes, codes.new_zeros(n % 2)]), high_first=True)}
    if double_quant:
        scale_parts, absmax = quantize_scales(absmax)
        parts.update(scale_parts)
    else:
        parts["absmax"] = absmax
    return _values(codes, absmax, fmt, w.shape), parts


def _values(codes: torch.Tensor, absmax: torch.Tensor, fmt: str, shape) -> torch.Tensor:
    table = levels(fmt, codes.device)
    per = absmax.repeat_interleave(BLOCK)[:codes.numel()]
    return (table[codes.long()] * per).reshape(shape)


def dequantize(parts: dict, fmt: str, shape: tuple[int, int], double_quant: bool = False) -> torch.Tensor:
    n = shape[0] * shape[1]
    codes = unpack(parts["codes"], high_first=True)[:n]
    absmax = stored_scales(parts) if double_quant else parts["absmax"].float()
    return _values(codes, absmax, fmt, shape)
