"""More methods better than the plain ones, as pure functions from tensors to tensors (the
rest are in engine.methods.calibrated): HQQ and AWQ for quantization, SparseGPT for pruning.

As there, a weight matrix is (out, in) and H = X^T X / n (in, in) is the mean outer product of
the layer's inputs; the output error of a weight change D is tr(D H D^T).
"""
from __future__ import annotations

import torch

from engine.methods.calibrated import _damped, inverse_factor
from engine.formats.grid import _grouped, code_offset, dequantize, on_grid, quant_grid, quant_params, quantize

FP16_TINY, FP16_MAX = 2.0**-14, 65504.0  # the normal fp16 range: a stored scale stays in it

# ---------------------------------------------------------------------------------------
# HQQ: half-quadratic fit of each group's scale and zero-point (no calibration)
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# AWQ: activation-aware scaling of the input channels before round to nearest
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# SparseGPT: pruning with the weight update through the inverse Hessian
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def sparsegpt_prune(w: torch.Tensor, h: torch.Tensor, sparsity: float, nm: tuple[int, int] | None = None,
                    block: int = 128, damp: float = 0.01) -> tuple[torch.Tensor, torch.Tensor]:
    """SparseGPT (Frantar & Alistarh 2023): go through the columns as GPTQ does; zero the pruned
    entries of each column and spread what they held over the columns not yet reached, through
    the Cholesky factor of (H + damp mean diag H I)^-1, so the output error tr(D H D^T) stays
    small. The mask is chosen per block of columns by w^2 / [H^-1]_jj^2 on the weights as
    updated so far: unstructured, block b prunes its share of round(sparsity x n) (cumulative
    rounding, so the total is exactly magnitude pruning's); N:M keeps the N of every M
    consecutive inputs of a row with the highest score (a short last group keeps min(N, its
    length), as engine.formats.grid.nm_mask). Returns (values, keep-mask); pruned values are 0.
    """
    rows, cols = w.shape
    W = w.float().clone(memory_format=torch.contiguous_format)
    hinv = inverse_factor(_damped(h.float(), damp))
    if nm is not None:
        n, m = nm
        block = max(m, block // m * m)  # an N:M group never crosses a block
    total, done = round(sparsity * rows * cols), 0
    prune = torch.zeros_like(W, dtype=torch.bool)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        d = Hinv1.diagonal()
        err1 = torch.zeros_like(W1)
        mask1 = torch.zeros(W1.shape, dtype=torch.bool, device=W1.device)
        if nm is None:
            share = round(total * i2 / cols) - done
            done += share
            score = (W1.square() / d.square()[None, :]).flatten()
            mask1.view(-1)[score.argsort(stable=True)[:share]] = True
        for i in range(i2 - i1):
            if nm is not None and i % m == 0:
                width = min(m, i2 - i1 - i)
                if width > n:
                    score = W1[:, i:i + width].square() / d[i:i + width].square()[None, :]
                    drop = score.topk(width - n, dim=1, largest=False).indices
                    mask1[:, i:i + width].scatter_(1, drop, True)
            col = W1[:, i]
            q = torch.where(mask1[:, i], torch.zeros_like(col), col)
            e = (col - q) / Hinv1[i, i]
            W1[:, i:] -= e[:, None] * Hinv1[i, i:][None, :]
            W1[:, i] = q
            err1[:, i] = e
        W[:, i1:i2] = W1
        W[:, i2:] -= err1 @ hinv[i1:i2, i2:]
        prune[:, i1:i2] = mask1
    keep = ~prune
    return (W * keep).to(w.dtype), keep
