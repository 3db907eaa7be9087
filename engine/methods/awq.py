"""AWQ (Lin et al. 2024): input channels scaled by their activation magnitude before round to
nearest, the scale's exponent alpha searched on the output error tr(D H D^T). The fp16
channel scales are stored beside the grid. Method `awq` of engine.methods.
"""
from __future__ import annotations

import torch

from engine.formats.grid import FP16_MAX, FP16_TINY, Grid, on_grid, quant_grid


def awq_channel_scales(h_diag: torch.Tensor, alpha: float) -> torch.Tensor:
    """AWQ's per-input-channel scales s = m^alpha with m = sqrt(diag H), each channel's mean
    input magnitude, normalized by sqrt(max s x min s) and rounded to fp16 (as stored);
    alpha = 0 gives s = 1 exactly."""
    mag = h_diag.float().clamp(min=0).sqrt()
    live = mag > 0
    floor = mag[live].min() if live.any() else mag.new_ones(())
    s = torch.where(live, mag, floor).pow(alpha)
    s = s / (s.max() * s.min()).sqrt()
    return s.clamp(FP16_TINY, FP16_MAX).to(torch.float16).to(h_diag.dtype)


def output_error(d: torch.Tensor, h: torch.Tensor) -> float:
    """tr(D H D^T) = ||D X^T||^2 / n: the output error of the weight change D."""
    d = d.double()
    return float(((d @ h.double()) * d).sum())


@torch.no_grad()
def awq_quantize(w: torch.Tensor, h: torch.Tensor | None, bits: int, granularity: str = "group", group_size: int = 128,
                 symmetric: bool = True, keep: torch.Tensor | None = None, grid: int = 20):
    """AWQ (Lin et al. 2023) for one matrix: scale input channel j by s_j = m_j^alpha (see
    awq_channel_scales), round W diag(s) to nearest on the recipe's grid, and compute with
    Q(W diag(s)) diag(s)^-1; alpha is searched over `grid` points of [0, 1] for the least output
    error tr(D H D^T), D = W - Q(W diag(s)) diag(s)^-1. alpha = 0 is round to nearest itself, and
    a tie keeps the smaller alpha, so the output error is never above round to nearest's. Pruned
    (zero) entries stay zero. Returns (values, (scale, zero, s), alpha): the grid of W diag(s) in
    quant_grid's order and the fp16 channel scales s (in,), which the layer stores beside it.
    Without `h` (an embedding has no inputs to measure): alpha 0, s = 1, round to nearest.
    """
    W = w.float()
    H = None if h is None else h.float()
    best = None
    for alpha in torch.linspace(0, 1, grid).tolist() if H is not None else [0.0]:
        s = awq_channel_scales(H.diagonal(), alpha) if H is not None else W.new_ones(W.shape[1])
        ws = W * s
        scale, zero = quant_grid(ws, bits, granularity, group_size, symmetric)
        values = on_grid(ws, scale, zero, bits, granularity, group_size, symmetric) / s
        err = output_error(W - values, H) if H is not None else 0.0
        if best is None or err < best[0]:
            best = (err, values, (scale, zero, s), alpha)
    _, values, grid_, alpha = best
    if keep is not None:
        values = values * keep
    return values.to(w.dtype), grid_, alpha


def quantize_grid(m: torch.Tensor, h: torch.Tensor | None, recipe, keep: torch.Tensor | None):
    """(values, Grid) of `m` by AWQ: the grid and the fp16 scale of each input column. Without
    `h` (an embedding): alpha 0, channel scales of 1, round to nearest."""
    values, (scale, zero, channel), _ = awq_quantize(m, h, recipe.bits, recipe.granularity, recipe.group_size,
                                                     recipe.symmetric, keep)
    return values, Grid(scale, zero, channel=channel)


@torch.no_grad()
def fold_scales(ws: list[torch.Tensor], h: torch.Tensor, bits: int, granularity: str = "group", group_size: int = 128,
                symmetric: bool = True, grid: int = 20) -> tuple[torch.Tensor, float]:
    """One set of input-channel scales for matrices that read one input (q, k and v; gate and up),
    so that the module before them can absorb it (AutoAWQ's and llm-compressor's folding):
    s = awq_channel_scales(diag H, alpha), alpha searched over `grid` points of [0, 1] for the
    least summed output error tr(D H D^T) of the matrices, each rounded to nearest as W diag(s)
    and computed with Q(W diag(s)) diag(s)^-1. alpha = 0 (s = 1, round to nearest) wins ties.
    Returns (s, alpha).

    >>> h = torch.diag(torch.tensor([100.0, 1.0]))
    >>> s, alpha = fold_scales([torch.tensor([[0.30, 0.9], [0.12, -0.5]])], h, 2, "channel")
    >>> alpha > 0 and bool(s[0] > s[1])   # the channel with the larger inputs is scaled up
    True
    """
    H = h.float()
    best = None
    for alpha in torch.linspace(0, 1, grid).tolist():
        s = awq_channel_scales(H.diagonal(), alpha)
        err = 0.0
        for w in ws:
            ws_ = w.float() * s
            scale, zero = quant_grid(ws_, bits, granularity, group_size, symmetric)
            err += output_error(w.float() - on_grid(ws_, scale, zero, bits, granularity, group_size, symmetric) / s, H)
        if best is None or err < best[0]:
            best = (err, s, alpha)
    return best[1], best[2]
