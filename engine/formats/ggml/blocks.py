"""GGUF block layouts (ggml-common.h) of the k-quants and the legacy 32-value types: codes and
scales -> block bytes, batched over blocks. Codes come in as float or integer tensors holding
small non-negative integers; all bit twiddling is done in int32 and truncated to bytes as C's
uint8_t stores do.

Super-block layouts (256 values, fp16 little-endian):
- q2_K (84 B):  scales[16] (low nibble scale, high nibble min), qs[64] (2-bit codes), d, dmin
- q3_K (110 B): hmask[32] (bit k of byte m: third bit of value 32k + m), qs[64] (low 2 bits),
                scales[12] (16 six-bit scales), d
- q4_K (144 B): d, dmin, scales[12] (8 six-bit scales and 8 six-bit mins), qs[128] (4-bit codes)
- q5_K (176 B): d, dmin, scales[12], qh[32] (fifth bits), qs[128]
- q6_K (210 B): ql[128] (low 4 bits), qh[64] (high 2 bits), scales[16] (int8), d
2-bit and 4-bit codes of a 128 (64) value half sit in 32-byte rows: byte l holds values l, l+32,
l+64, l+96 (l, l+32) from the low bits up.
Legacy (32 values): d, [m], [qh: uint32 of fifth bits], qs[16] (values j and j+16 in byte j).
"""
from __future__ import annotations

import torch

I32 = torch.int32


def _i(t: torch.Tensor) -> torch.Tensor:
    return t.to(I32)


def u8(t: torch.Tensor) -> torch.Tensor:
    """C's store into a uint8_t: the low 8 bits of an integer tensor."""
    return (_i(t) & 255).to(torch.uint8)


def half_bytes(t: torch.Tensor) -> torch.Tensor:
    """(n,) float16 -> (n, 2) little-endian bytes."""
    return t.to(torch.float16).contiguous().view(torch.uint8).reshape(-1, 2)


def _shifted_or(parts: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """OR of the slices along `dim`, slice k shifted left by k * bits."""
    shifts = torch.arange(parts.shape[dim], device=parts.device, dtype=I32) * bits
    shape = [1] * parts.dim()
    shape[dim] = -1
    return (_i(parts) << shifts.reshape(shape)).sum(dim)  # disjoint bits: sum == or


def pack_2bit(L: torch.Tensor) -> torch.Tensor:
    """(S, 256) codes < 4 -> (S, 64): byte 32h + l = L[128h + l] | L[.. + 32] << 2 | ... << 6."""
    return u8(_shifted_or(L.reshape(-1, 2, 4, 32), 2, 2).reshape(-1, 64))


def pack_4bit(L: torch.Tensor) -> torch.Tensor:
    """(S, 256) codes < 16 -> (S, 128): byte 32h + l = L[64h + l] | L[64h + l + 32] << 4."""
    return u8(_shifted_or(L.reshape(-1, 4, 2, 32), 4, 2).reshape(-1, 128))


def k_scales_pack(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """q4_K/q5_K: 8 scales and 8 mins (uint8 values, 6 bits meant) -> 12 bytes, as ggml writes them:
    b[j] = ls[j] | (ls[j+4] >> 4) << 6, b[j+4] = lm[j] | (lm[j+4] >> 4) << 6,
    b[j+8] = (ls[j+4] & 15) | (lm[j+4] & 15) << 4, for j < 4 (each truncated to 8 bits)."""
    ls, lm = _i(ls) & 255, _i(lm) & 255
    lo_s, hi_s, lo_m, hi_m = ls[:, :4], ls[:, 4:], lm[:, :4], lm[:, 4:]
    return u8(torch.cat([lo_s | ((hi_s >> 4) << 6), lo_m | ((hi_m >> 4) << 6),
                         (hi_s & 15) | ((hi_m & 15) << 4)], dim=1))


def k_scales_unpack(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ggml's get_scale_min_k4 for j = 0..7: (S, 12) bytes -> (scales (S, 8), mins (S, 8)) int32."""
    b = _i(b)
    s0, m0, q = b[:, :4], b[:, 4:8], b[:, 8:]
    sc = torch.cat([s0 & 63, (q & 15) | ((s0 >> 6) << 4)], dim=1)
    mn = torch.cat([m0 & 63, (q >> 4) | ((m0 >> 6) << 4)], dim=1)
    return sc, mn


def q3_scales_pack(l: torch.Tensor) -> torch.Tensor:
    """q3_K: 16 six-bit scales (offset by 32) -> 12 bytes: b[j] = (l[j] & 15) | (l[j+8] & 15) << 4
    for j < 8, b[8 + k] = OR over g of (l[4g + k] >> 4) << 2g."""
    l = _i(l)
    low = (l[:, :8] & 15) | ((l[:, 8:] & 15) << 4)
    high = _shifted_or((l >> 4).reshape(-1, 4, 4), 2, 1)  # [S, g, k] -> (S, 4)
    return u8(torch.cat([low, high], dim=1))


def q3_scales_unpack(b: torch.Tensor) -> torch.Tensor:
    """(S, 12) bytes -> the 16 stored six-bit scales (S, 16) int32 (0..63, 32 meaning zero)."""
    b = _i(b)
    low = torch.cat([b[:, :8] & 15, b[:, :8] >> 4], dim=1)
    shifts = torch.arange(4, device=b.device, dtype=I32) * 2
    high = ((b[:, None, 8:] >> shifts[None, :, None]) & 3).reshape(-1, 16)  # j = 4g + k
    return low | (high << 4)


def pack_q2_k(L, scales, d, dmin) -> torch.Tensor:
    """(S, 256) codes 0..3, (S, 16) scale bytes, fp16 d and dmin (S,) -> (S, 84)."""
    return torch.cat([u8(scales), pack_2bit(L), half_bytes(d), half_bytes(dmin)], dim=1)


def pack_q3_k(L, scales, d) -> torch.Tensor:
    """(S, 256) codes 0..7 (value + 4), (S, 12) scale bytes, fp16 d -> (S, 110)."""
    Li = _i(L)
    hmask = u8(_shifted_or((Li >> 2).reshape(-1, 8, 32), 1, 1))
    return torch.cat([hmask, pack_2bit(Li & 3), u8(scales), half_bytes(d)], dim=1)


def pack_q4_k(L, scales, d, dmin) -> torch.Tensor:
    """(S, 256) codes 0..15, (S, 12) scale bytes, fp16 d and dmin -> (S, 144)."""
    return torch.cat([half_bytes(d), half_bytes(dmin), u8(scales), pack_4bit(L)], dim=1)


def pack_q5_k(L, scales, d, dmin) -> torch.Tensor:
    """(S, 256) codes 0..31 -> (S, 176): qh byte l bit (2h + k) = fifth bit of value 64h + 32k + l."""
    Li = _i(L)
    qh = u8(_shifted_or((Li >> 4).reshape(-1, 8, 32), 1, 1))
    return torch.cat([half_bytes(d), half_bytes(dmin), u8(scales), qh, pack_4bit(Li & 15)], dim=1)


def pack_q6_k(L, scales, d) -> torch.Tensor:
    """(S, 256) codes 0..63 (value + 32), (S, 16) int8 scales, fp16 d -> (S, 210). In each 128 half:
    ql[l] = L[l] & 15 | (L[l+64] & 15) << 4, ql[l+32] = L[l+32] & 15 | (L[l+96] & 15) << 4,
    qh[l] = OR over k of (L[l + 32k] >> 4) << 2k."""
    Li = _i(L).reshape(-1, 2, 4, 32)
    low = Li & 15
    ql = torch.cat([low[:, :, 0] | (low[:, :, 2] << 4), low[:, :, 1] | (low[:, :, 3] << 4)], dim=2)
    qh = _shifted_or(Li >> 4, 2, 2)
    return torch.cat([u8(ql.reshape(-1, 128)), u8(qh.reshape(-1, 64)), u8(scales), half_bytes(d)], dim=1)


def pack_legacy(fmt: str, L, d, m=None) -> torch.Tensor:
    """(n, 32) codes, fp16 d (and m for q4_1 / q5_1) -> (n, 18 / 20 / 22 / 24) GGUF blocks."""
    Li = _i(L)
    parts = [half_bytes(d)] + ([half_bytes(m)] if fmt in ("q4_1", "q5_1") else [])
    if fmt in ("q5_0", "q5_1"):  # uint32 qh, bit j = fifth bit of value j, little-endian bytes
        parts.append(u8(_shifted_or((Li >> 4).reshape(-1, 4, 8), 1, 2)))
    low = Li & 15
    parts.append(u8(low[:, :16] | (low[:, 16:] << 4)))
    return torch.cat(parts, dim=1)
