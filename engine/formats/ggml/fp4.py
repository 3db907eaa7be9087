"""MXFP4: 4-bit floats in blocks of 32 with one shared power-of-two scale (OCP microscaling).

Each value is an E2M1 float (sign, 2 exponent bits, 1 mantissa bit: 0, 0.5, 1, 1.5, 2, 3, 4,
6 and their negatives) times its block's E8M0 scale, a byte holding only an exponent. Stored as
llama.cpp's GGML type MXFP4 (gpt-oss's weights): per block the scale byte, then 16 bytes of
4-bit codes, value j in the low half of byte j and value j + 16 in its high half: 17 bytes per 32
values, 4.25 bits a value. llama.cpp keeps the E2M1 values doubled (0, 1, 2, 3, 4, 6, 8, 12) with
the scale halved, the same products.

The quantizer is llama.cpp's (quantize_row_mxfp4_ref): the scale is 2^(floor(log2 amax) - 2),
so the block's largest value lands between 4 and 8 doubled steps, and each value takes the
nearest of the 16 codes (the first on a tie). It uses no importance matrix.
"""
from __future__ import annotations

import torch

BLOCK = 32
KVALUES = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)  # code -> doubled E2M1 value
_CHUNK = 1 << 14  # blocks searched at a time (their 32 x 16 distances held at once)


def e8m0_half(e: torch.Tensor) -> torch.Tensor:
    """E8M0 scale bytes -> half the scale, 2^(e - 128), as float32 (ggml's E8M0_TO_FP32_HALF,
    exact down to e = 0, which is a subnormal)."""
    e = e.to(torch.int32)
    bits = torch.where(e < 2, torch.full_like(e, 0x00200000) << e, (e - 1) << 23)
    return bits.view(torch.float32)


def quantize(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(values (rows, cols) float32, raw (rows, cols / 32 * 17) uint8 MXFP4 blocks) of w."""
    rows, cols = w.shape
    if cols % BLOCK:
        raise ValueError(f"mxfp4: rows of {cols} values do not divide into blocks of {BLOCK}")
    blocks = w.detach().float().reshape(-1, BLOCK)
    amax = blocks.abs().amax(1)
    e = torch.where(amax > 0, torch.log2(amax).floor() - 2 + 127, torch.zeros_like(amax)).clamp(0, 255).to(torch.uint8)
    d = e8m0_half(e)
    k = torch.tensor(KVALUES, dtype=torch.float32, device=w.device)
    codes = torch.empty(blocks.shape, dtype=torch.uint8, device=w.device)
    for s in range(0, blocks.shape[0], _CHUNK):
        part, dp = blocks[s:s + _CHUNK], d[s:s + _CHUNK]
        codes[s:s + _CHUNK] = (dp[:, None, None] * k - part[:, :, None]).abs().argmin(-1).to(torch.uint8)
    half = BLOCK // 2
    qs = codes[:, :half] | (codes[:, half:] << 4)
    raw = torch.cat([e[:, None], qs], 1).reshape(rows, cols // BLOCK * (1 + half))
    values = (d[:, None] * k[codes.long()]).reshape(rows, cols)
    return values, raw
