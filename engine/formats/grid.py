"""The explorer's own number format: a uniform integer grid per group, or a codebook.

A b-bit grid stores codes q in [0, 2^b - 1] and, per group of values, an fp16 scale s and a
zero-point z: the value of code q is (q - z) s. `Grid` says where one stored matrix's values
lie, whatever the format (this grid, a codebook, llama.cpp's blocks, a float format, fp16).

Every function takes a weight matrix in (out, in) layout (GPT-2's Conv1D weights are
transposed before they get here) and takes device and dtype from its inputs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FP16_TINY, FP16_MAX = 2.0**-14, 65504.0  # the normal fp16 range: a stored scale stays in it

# ---------------------------------------------------------------------------------------
# Low rank
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------
# Quantization
# ---------------------------------------------------------------------------------------


def _grouped(w: torch.Tensor, granularity: str, group_size: int) -> tuple[torch.Tensor, int]:
    """(out, in) -> (groups, size) view padded with zeros, and the padding added per row."""
    rows, cols = w.shape
    if granularity == "tensor":
        return w.reshape(1, -1), 0
    if granularity == "channel":
        return w, 0
    g = min(group_size, cols)
    pad = (-cols) % g
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(-1, g), pad


def quant_params(w: torch.Tensor, bits: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (rounded to fp16, as stored) and integer zero-point for each row of a (groups, size) view.

    Symmetric: scale = max|w| / (2^(b-1) - 1), zero-point 0, codes in [-2^(b-1), 2^(b-1) - 1].
    Asymmetric: the range [min(w, 0), max(w, 0)] is split into 2^b - 1 steps and the
    zero-point z (in [0, 2^b - 1]) is the code of 0.0, so zero stays exact.
    Either way the range holds 0, so pruned (zeroed) entries neither widen it nor move.
    """
    if symmetric:
        scale = w.abs().amax(dim=1) / (2 ** (bits - 1) - 1)
        zero = torch.zeros_like(scale)
    else:
        lo = w.amin(dim=1).clamp(max=0)
        hi = w.amax(dim=1).clamp(min=0)
        scale = (hi - lo) / (2**bits - 1)
        zero = None
    # stored as fp16; an all-zero group gets scale 1 (any scale codes zeros exactly)
    scale = scale.to(torch.float16).to(w.dtype)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if zero is None:
        zero = (-lo / scale).round().clamp(0, 2**bits - 1)
    return scale, zero


def fake_quantize(
    w: torch.Tensor,
    bits: int,
    granularity: str = "group",
    group_size: int = 128,
    symmetric: bool = True,
) -> torch.Tensor:
    """Round-to-nearest quantize, then dequantize: the values the stored codes stand for.

    w: (out, in). Granularity 'tensor' | 'channel' (one scale per output row) | 'group'
    (one scale per `group_size` consecutive input values of a row). Zeros come back exactly
    zero, so quantizing after pruning keeps the mask.

    >>> fake_quantize(torch.tensor([[-1.0, 0.3, 0.5, 1.0]]), bits=2, granularity="tensor")
    tensor([[-1.,  0.,  0.,  1.]])
    """
    if bits >= 16:
        return w
    return on_grid(w, *quant_grid(w, bits, granularity, group_size, symmetric), bits, granularity, group_size,
                   symmetric)


def quant_grid(w: torch.Tensor, bits: int, granularity: str = "group", group_size: int = 128,
               symmetric: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The round-to-nearest grid of w: (scale, zero-point), one per group, in the order of
    _grouped's rows (row-major: group j of row i is i * groups_per_row + j)."""
    return quant_params(_grouped(w, granularity, group_size)[0], bits, symmetric)


def per_entry(grid: tuple[torch.Tensor, ...], rows: int, cols: int, granularity: str = "group",
              group_size: int = 128) -> list[torch.Tensor]:
    """Per-group tensors in quant_grid's order (scale, zero-point) -> per-entry (rows, cols) ones."""
    if granularity == "tensor":
        return [t.reshape(1, 1).expand(rows, cols) for t in grid]
    if granularity == "channel":
        return [t[:, None].expand(rows, cols) for t in grid]
    g = min(group_size, cols)
    pad = (-cols) % g
    return [t[:, None].expand(-1, g).reshape(rows, cols + pad)[:, :cols].contiguous() for t in grid]


def code_offset(zero: torch.Tensor, bits: int, symmetric: bool) -> torch.Tensor:
    """The code of 0.0 in the stored unsigned b-bit codes: 2^(b-1) when symmetric (the grid's
    zero-point is then 0: signed codes shifted up), else the grid's own zero-point."""
    return zero + 2 ** (bits - 1) if symmetric else zero


def quantize(w: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor, bits: int) -> torch.Tensor:
    """The stored codes of w: round(w / scale) + offset, clamped to [0, 2^b - 1] (as floats).

    >>> quantize(torch.tensor([-1.0, 0.3, 1.0]), torch.tensor(0.5), torch.tensor(2.0), 2)
    tensor([0., 3., 3.])
    """
    return ((w / scale).round() + offset).clamp(0, 2**bits - 1)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """The values codes stand for: (code - offset) x scale."""
    return (codes - offset) * scale


def on_grid(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int, granularity: str = "group",
            group_size: int = 128, symmetric: bool = True) -> torch.Tensor:
    """w rounded to a given grid (per-group scale and zero-point, as quant_grid gives them)
    and dequantized: a value already on the grid stays exactly where it is."""
    rows, cols = w.shape
    g, pad = _grouped(w, granularity, group_size)
    scale, offset = scale[:, None], code_offset(zero[:, None], bits, symmetric)
    out = dequantize(quantize(g, scale, offset, bits), scale, offset)
    if granularity == "group":
        out = out.reshape(rows, cols + pad)[:, :cols]
    return out.reshape(rows, cols)


# ---------------------------------------------------------------------------------------
# Error of a compressed weight, without a forward pass
# ---------------------------------------------------------------------------------------


def error_stats(w: torch.Tensor, w_hat: torch.Tensor, signal: float | None = None) -> tuple[float, float]:
    """(relative Frobenius error ||W - W'|| / ||W||, SQNR in dB = 10 log10(||W||^2 / ||W - W'||^2)).

    Norms are taken in the inputs' dtype (float32: relative precision ~1e-6, enough to show);
    `signal`, if given, is ||W||^2 computed once by the caller.
    """
    if signal is None:
        signal = torch.linalg.vector_norm(w).item() ** 2
    noise = torch.linalg.vector_norm(w - w_hat).item() ** 2
    rel = math.sqrt(noise / signal) if signal > 0 else 0.0
    sqnr = math.inf if noise == 0 else 10 * math.log10(signal / noise) if signal > 0 else -math.inf
    return rel, sqnr


def codebook_index(w: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """For every value of w, the index of the nearest of `centers` (ascending)."""
    return torch.bucketize(w.contiguous(), (centers[1:] + centers[:-1]) / 2)


def on_codebook(w: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Every value of w replaced by the nearest of `centers` (ascending)."""
    return centers[codebook_index(w, centers)]


@dataclass(frozen=True)
class Grid:
    """Where the values of one stored matrix may lie: a uniform grid per group (scale and
    zero-point, as quant_grid orders them), a codebook, llama.cpp's blocks (`ggml`,
    the type, and `raw`, its GGUF bytes (rows, row bytes)), a float format's codes and scales
    (`floats`, the stored format as engine.formats.floats.label names it, and `parts`, its tensors), or,
    with none, the fp16 numbers (a 16-bit value is stored as fp16)."""

    scale: torch.Tensor | None = None
    zero: torch.Tensor | None = None
    codebook: torch.Tensor | None = None
    ggml: str | None = None
    raw: torch.Tensor | None = None
    floats: str | None = None
    parts: dict | None = None
    channel: torch.Tensor | None = None  # AWQ: the fp16 scale of each input column; values = grid / channel

    def snap(self, w: torch.Tensor, recipe) -> torch.Tensor:
        """w moved to the nearest value on the grid: values on it stay exactly where they are
        (`recipe`: the layer's bits, granularity, group_size and symmetric)."""
        if self.ggml is not None or self.floats is not None:  # the recipe refuses what would need it (distillation)
            raise ValueError(f"values are not moved onto {self.ggml or self.floats}'s blocks one by one")
        if self.codebook is not None:
            return on_codebook(w, self.codebook)
        if self.scale is None:
            return w.half().to(w.dtype)
        if self.channel is not None:
            return on_grid(w * self.channel, self.scale, self.zero, recipe.bits, recipe.granularity,
                           recipe.group_size, recipe.symmetric) / self.channel
        return on_grid(w, self.scale, self.zero, recipe.bits, recipe.granularity, recipe.group_size,
                       recipe.symmetric)
