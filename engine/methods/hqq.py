"""HQQ (Badri and Shaji 2023): each group's scale and zero-point fitted by half-quadratic
splitting under an l_p error (p < 1), without calibration. Same grid and bytes as round to
nearest. Method `hqq` of engine.methods.
"""
from __future__ import annotations

import torch

from engine.formats.grid import (
    FP16_MAX,
    FP16_TINY,
    Grid,
    _grouped,
    code_offset,
    dequantize,
    on_grid,
    quant_params,
    quantize,
)


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """The proximal step of the Lp norm (p < 1) as HQQ takes it: sign(x) relu(|x| - |x|^(p-1) / beta).

    >>> shrink_lp(torch.tensor([0.001, -2.0]), beta=10.0, p=1.0)
    tensor([ 0.0000, -1.9000])
    """
    return torch.sign(x) * torch.relu(x.abs() - (x.abs() + 1e-8).pow(p - 1) / beta)


@torch.no_grad()
def hqq_quantize(w: torch.Tensor, bits: int, granularity: str = "group", group_size: int = 128,
                 symmetric: bool = False, keep: torch.Tensor | None = None, lp: float = 0.7, beta: float = 10.0,
                 kappa: float = 1.01, iters: int = 20):
    """HQQ (Badri & Shaji 2023) on the explorer's own grid: starting from round to nearest's
    (scale, zero-point) per group, alternate
        W_q = clamp(round(W / s) + z)                       the codes
        W_e = shrink_lp(W - (W_q - z) s, beta)              the outliers' share of the error
        z   = round(mean(W_q - (W - W_e) / s))              asymmetric only, kept on the integers
        s   = <W_q - z, W - W_e> / ||W_q - z||^2            the least-squares scale, rounded to fp16
    with beta growing by `kappa` each step; it stops when the sum over groups of |W - W_r|^p
    (W_r the values the codes stand for) stops falling, and each group keeps the step where its
    own |W - W_r|^p was lowest (round to nearest's grid is step 0, so no group does worse than
    it). The zero-point is a b-bit integer and the scale fp16, as round to nearest stores them:
    the same bytes. Symmetric: the zero-point stays 0 and only the scale is fitted. Pruned
    entries (keep False) take no part and stay zero. Returns (values, (scale, zero)), the grid
    in quant_grid's order.
    """
    W = w.float()
    g, _ = _grouped(W, granularity, group_size)
    ones = torch.ones_like(W) if keep is None else keep.to(W.dtype)
    valid = _grouped(ones, granularity, group_size)[0]  # 0 on pruned and padded entries
    count = valid.sum(1).clamp(min=1)

    def fit(scale, zero):
        offset = code_offset(zero, bits, symmetric)[:, None]
        codes = quantize(g, scale[:, None], offset, bits)
        values = dequantize(codes, scale[:, None], offset)
        return codes, offset, values, ((g - values).abs().pow(lp) * valid).sum(1)

    scale, zero = quant_params(g, bits, symmetric)
    codes, offset, values, err = fit(scale, zero)
    best_scale, best_zero, best_err = scale, zero, err
    total = err.sum()
    for _ in range(iters):
        target = g - shrink_lp(g - values, beta, lp)  # W - W_e
        if not symmetric:
            mean = ((codes - target / scale[:, None]) * valid).sum(1) / count
            zero = mean.round().clamp(0, 2**bits - 1)
            offset = zero[:, None]
        levels = (codes - offset) * valid
        den = levels.square().sum(1)
        new = (levels * target).sum(1) / den.clamp(min=1e-30)
        new = new.clamp(FP16_TINY, FP16_MAX).to(torch.float16).to(W.dtype)
        scale = torch.where((den > 0) & torch.isfinite(new), new, scale)
        codes, offset, values, err = fit(scale, zero)
        better = err < best_err
        best_scale = torch.where(better, scale, best_scale)
        best_zero = torch.where(better, zero, best_zero)
        best_err = torch.minimum(err, best_err)
        beta *= kappa
        if err.sum() >= total:
            break
        total = err.sum()
    out = on_grid(W, best_scale, best_zero, bits, granularity, group_size, symmetric)
    if keep is not None:
        out = out * keep
    return out.to(w.dtype), (best_scale, best_zero)


def quantize_grid(m: torch.Tensor, h: torch.Tensor | None, recipe, keep: torch.Tensor | None):
    """(values, Grid) of `m` with each group's scale and zero-point fitted by HQQ (no calibration)."""
    values, grid = hqq_quantize(m, recipe.bits, recipe.granularity, recipe.group_size, recipe.symmetric, keep)
    return values, Grid(*grid)
