"""The math of compression: pure functions from tensors to tensors.

Every function takes a weight matrix in (out, in) layout (GPT-2's Conv1D weights are
transposed before they get here) and takes device and dtype from its inputs.
"""
from __future__ import annotations

import math

import torch

# ---------------------------------------------------------------------------------------
# Low rank
# ---------------------------------------------------------------------------------------


def svd(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of an (out, in) matrix: U (out, k), S (k,), Vh (k, in), k = min(out, in)."""
    return torch.linalg.svd(w.float(), full_matrices=False)


def low_rank_factors(
    u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of the best rank-r approximation, W ~= A @ B, with A (out, r) and B (r, in).

    The singular values are split evenly, A = U_r sqrt(S_r) and B = sqrt(S_r) Vh_r, so that
    both factors have the same scale (which suits quantizing them).
    """
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def energy_kept(s: torch.Tensor, rank: int) -> float:
    """Fraction of the squared Frobenius norm kept by the top `rank` singular values."""
    e = s.double().square()
    total = e.sum().item()
    return 1.0 if total == 0 else e[:rank].sum().item() / total


def effective_rank(s: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank: exp of the entropy of the normalized singular values.

    >>> effective_rank(torch.tensor([1.0, 1.0, 0.0]))  # two equal values
    2.0
    """
    p = s.double() / s.double().sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def break_even_rank(out_features: int, in_features: int) -> float:
    """The rank at which factors A and B hold as many values as W: r (m + n) = m n."""
    return out_features * in_features / (out_features + in_features)


# ---------------------------------------------------------------------------------------
# Pruning
# ---------------------------------------------------------------------------------------


def kth_smallest(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th smallest value (1-based) of a 1-D tensor; same result as x.kthvalue(k).

    For large tensors a strided sample brackets the answer first, so that the exact
    selection runs on the few values inside the bracket; if the bracket misses, it falls
    back to the full selection. Either way the answer is exact.
    """
    n = x.numel()
    if n <= 1 << 16:
        return x.kthvalue(k).values
    sample = x[:: n // 4096].sort().values
    pos = (k - 0.5) / n * sample.numel()
    lo = sample[max(int(pos) - 64, 0)]
    hi = sample[min(int(pos) + 64, sample.numel() - 1)]
    below = int((x < lo).sum())
    band = x[(x >= lo) & (x <= hi)]
    if below < k <= below + band.numel():
        return band.kthvalue(k - below).values
    return x.kthvalue(k).values


def magnitude_mask(w: torch.Tensor, sparsity: float, sorted_abs: torch.Tensor | None = None) -> torch.Tensor:
    """Keep-mask that zeroes exactly round(sparsity * n) entries of smallest |w|.

    Ties at the threshold are broken by position (earlier entries are pruned first), so the
    count is exact even for weights with many equal magnitudes. `sorted_abs`, if given, is
    |w| flattened and sorted ascending (cached by the caller): the threshold is then a lookup.

    >>> magnitude_mask(torch.tensor([[3.0, -1.0], [0.5, 2.0]]), 0.5)
    tensor([[ True, False],
            [False,  True]])
    """
    n = w.numel()
    k = round(sparsity * n)
    if k <= 0:
        return torch.ones_like(w, dtype=torch.bool)
    a = w.abs().flatten()
    threshold = kth_smallest(a, k) if sorted_abs is None else sorted_abs[k - 1]
    keep = a > threshold
    ties = ~keep & (a == threshold)
    excess = n - int(keep.sum()) - k  # entries at the threshold that must stay
    if excess > 0:  # keep the last `excess` tied entries, prune the earlier ones
        keep[ties.nonzero().squeeze(1)[-excess:]] = True
    return keep.view_as(w)


def nm_mask(w: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep-mask with the N largest |w| in every M consecutive input values of each row.

    A row length not divisible by M leaves a last, shorter group, which keeps
    min(N, its length) values: no M consecutive entries ever hold more than N non-zeros.
    """
    rows, cols = w.shape
    pad = (-cols) % m
    a = w.abs()
    if pad:  # padded slots are -1, so never among the kept
        a = torch.nn.functional.pad(a, (0, pad), value=-1.0)
    groups = a.view(rows, -1, m)
    idx = groups.topk(n, dim=-1).indices
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, idx, True)
    keep &= groups >= 0
    return keep.view(rows, -1)[:, :cols]


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
