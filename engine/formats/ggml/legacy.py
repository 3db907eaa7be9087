"""llama.cpp's legacy types, round to nearest: q4_0, q4_1, q5_0, q5_1, q8_0 (blocks of 32).

As ggml-quants.c's quantize_row_*_ref (and the gguf package's reference quantizers) do it:
- q4_0 / q5_0: the block's signed extreme x_max gets the code -8 (-16): d = x_max / -8,
  q = min(15, trunc(x / d + 8.5)), value = (q - 8) d. The scale d is stored as fp16, the codes
  are taken with the fp32 d.
- q4_1 / q5_1: d = (max - min) / 15 (31), q = min(15, trunc((x - min) / d + 0.5)),
  value = q d + min, with d and min stored as fp16.
- q8_0: d = max|x| / 127, q = roundf(x / d) (half away from zero), value = q d.

A block's grid (`params`) and the rounding onto it (`codes`) are separate, so that GPTQ can fix
a block's grid from its weights as updated and round each column onto it.

    >>> values, raw = quantize(torch.tensor([[1.0] + [0.5] * 31]), "q4_0")
    >>> values[0, :2], raw.shape        # d = 1 / -8: 1.0 -> code 0, 0.5 -> code 4
    (tensor([1.0000, 0.5000]), torch.Size([1, 18]))
"""
from __future__ import annotations

import torch

from engine.formats.ggml.types import TYPES

_OFFSET = {"q4_0": 8, "q5_0": 16, "q8_0": 0, "q4_1": 0, "q5_1": 0}
_TOP = {"q4_0": 15, "q4_1": 15, "q5_0": 31, "q5_1": 31, "q8_0": 127}


def params(fmt: str, blocks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The grid of each block of a (n, 32) view: (d, minimum), d in fp32 as the codes are taken
    with it (stored as fp16); the minimum, fp16-rounded as stored, is None for the symmetric types."""
    if fmt in ("q4_0", "q5_0"):
        extreme = blocks.gather(1, blocks.abs().argmax(dim=1, keepdim=True)).squeeze(1)  # the first on ties
        return extreme / -(_OFFSET[fmt]), None
    if fmt == "q8_0":
        return blocks.abs().amax(dim=1) / 127, None
    lo, hi = blocks.amin(dim=1), blocks.amax(dim=1)
    return (hi - lo) / _TOP[fmt], lo


def _inverse(d: torch.Tensor) -> torch.Tensor:
    return torch.where(d == 0, torch.zeros_like(d), 1 / torch.where(d == 0, torch.ones_like(d), d))


def codes(fmt: str, x: torch.Tensor, d: torch.Tensor, lo: torch.Tensor | None) -> torch.Tensor:
    """The stored codes (as floats) of the values x (n, k), each row on its block's grid
    (d, minimum) of shape (n, 1); clamped to the type's range (GPTQ's updated values may leave it)."""
    inv = _inverse(d)
    if fmt == "q8_0":
        v = x * inv
        a = v.abs()
        whole = a.floor()
        return (torch.sign(v) * (whole + (2 * (a - whole)).floor())).clamp(-128, 127)  # roundf
    if lo is None:
        return torch.trunc(x * inv + (_OFFSET[fmt] + 0.5)).clamp(0, _TOP[fmt])
    return torch.trunc((x - lo) * inv + 0.5).clamp(0, _TOP[fmt])


def values(fmt: str, q: torch.Tensor, d: torch.Tensor, lo: torch.Tensor | None) -> torch.Tensor:
    """What codes stand for: (q - offset) d16, or q d16 + min16 (float32, as llama.cpp computes)."""
    d16 = d.half().float()
    if lo is None:
        return (q - _OFFSET[fmt]) * d16
    return q * d16 + lo.half().float()


def _half_bytes(t: torch.Tensor) -> torch.Tensor:
    """(n,) -> (n, 2) little-endian fp16 bytes."""
    return t.half().contiguous().view(torch.uint8).reshape(-1, 2)


def pack(fmt: str, q: torch.Tensor, d: torch.Tensor, lo: torch.Tensor | None) -> torch.Tensor:
    """(n, 32) codes and their blocks' (d, minimum) -> (n, block bytes) in GGUF's layout:
    fp16 d, [fp16 min], [32 high bits], then the low 4 bits of value j and j + 16 in byte j."""
    parts = [_half_bytes(d)]
    if lo is not None:
        parts.append(_half_bytes(lo))
    if fmt == "q8_0":
        parts.append(q.to(torch.int8).view(torch.uint8))
    else:
        qi = q.to(torch.uint8)
        if fmt in ("q5_0", "q5_1"):
            high = (qi >> 4).reshape(-1, 4, 8).to(torch.int32)
            weights = 1 << torch.arange(8, device=q.device, dtype=torch.int32)
            parts.append((high * weights).sum(-1).to(torch.uint8))  # bit k of the uint32: value k's fifth bit
        low = qi & 15
        parts.append(low[:, :16] | (low[:, 16:] << 4))
    out = torch.cat(parts, dim=1)
    assert out.shape[1] == TYPES[fmt].size
    return out


def quantize(w: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) float32 with cols % 32 == 0 -> (values (rows, cols), raw (rows, cols / 32 x size))."""
    rows, cols = w.shape
    blocks = w.reshape(-1, 32)
    d, lo = params(fmt, blocks)
    d_, lo_ = d[:, None], None if lo is None else lo[:, None]
    q = codes(fmt, blocks, d_, lo_)
    return values(fmt, q, d_, lo_).reshape(rows, cols), pack(fmt, q, d, lo).reshape(rows, -1)


def recode(fmt: str, v: torch.Tensor, d: torch.Tensor, lo: torch.Tensor | None) -> torch.Tensor:
    """The codes of values already on their blocks' grids ((n, 32), grids (n, 1)): the inverse
    of `values`, exact for them (they are (q - offset) d16 or q d16 + min16)."""
    d16 = d.half().float()
    if lo is None:
        return (v / d16).round().nan_to_num(0) + _OFFSET[fmt]
    return ((v - lo.half().float()) / d16).round().nan_to_num(0)


class Grid:
    """GPTQ's grid rule for a legacy type (see engine.methods.gptq.IntGrid): a block's (d, minimum)
    from its weights as updated so far, each column rounded onto it as llama.cpp rounds."""

    def __init__(self, fmt: str):
        self.fmt, self.symmetric = fmt, TYPES[fmt].symmetric

    def params(self, block: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        d, lo = params(self.fmt, block)
        return d, torch.zeros_like(d) if lo is None else lo

    def quant(self, col: torch.Tensor, d: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
        lo_ = None if self.symmetric else lo[:, None]
        return values(self.fmt, codes(self.fmt, col[:, None], d[:, None], lo_), d[:, None], lo_)[:, 0]

    def pack(self, v: torch.Tensor, d: torch.Tensor, lo: torch.Tensor) -> torch.Tensor:
        """(rows, cols) values from GPTQ and its per-block (d, minimum) -> (rows, row bytes)."""
        rows = v.shape[0]
        lo_ = None if self.symmetric else lo
        blocks = v.reshape(-1, 32)
        q = recode(self.fmt, blocks, d[:, None], None if lo_ is None else lo_[:, None])
        return pack(self.fmt, q, d, lo_).reshape(rows, -1)


def unpack4(fmt: str, raw: torch.Tensor, cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """q4_0 / q4_1 blocks (rows, row bytes) -> codes (rows, cols) uint8, d16 and min16 (rows,
    cols / 32) as float32 (min None for q4_0): the inverse of `pack`."""
    rows = raw.shape[0]
    blocks = raw.reshape(rows, cols // 32, TYPES[fmt].size)
    d = blocks[..., :2].contiguous().view(torch.float16).squeeze(-1).float()
    lo = None if fmt == "q4_0" else blocks[..., 2:4].contiguous().view(torch.float16).squeeze(-1).float()
    qs = blocks[..., -16:]
    q = torch.cat([qs & 15, qs >> 4], dim=-1)  # values j and j + 16 share byte j
    return q.reshape(rows, cols), d, lo
