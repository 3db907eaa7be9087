"""Better than naive: the methods the literature shows beat plain SVD, magnitude pruning and
round-to-nearest, as pure functions from tensors to tensors.

Every function takes a weight matrix in (out, in) layout and, where it uses activations,
H = X^T X / n (in, in): the mean outer product of the layer's inputs over the calibration
tokens (see engine.models.calibrate). The output error of a weight change D is then
tr(D H D^T) = ||(W - W') X^T||^2 / n.
"""
from __future__ import annotations

import torch

from engine.formats.grid import code_offset, dequantize, per_entry, quant_grid, quant_params, quantize

# ---------------------------------------------------------------------------------------
# Low rank: truncation-aware SVD on whitened inputs (SVD-LLM)
# ---------------------------------------------------------------------------------------


def _damped(h: torch.Tensor, damp: float) -> torch.Tensor:
    """H + damp * mean(diag H) * I, with dead inputs (zero diagonal) given a unit diagonal."""
    h = h.clone()
    diag = h.diagonal()
    diag[diag <= 0] = 1.0
    diag += damp * diag.mean()
    return h


def inverse_factor(h: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor of H^-1 (H damped, see _damped): the rows GPTQ and SparseGPT
    spread each column's error along."""
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def whitened_svd(w: torch.Tensor, h: torch.Tensor, damp: float = 1e-4):
    """Factors of W whose truncation minimizes the output error ||(W - W') X^T||, not ||W - W'||.

    With H = S S^T (Cholesky, S lower-triangular): SVD of W S = U diag(s) V^T; returns
    (U, s, V^T S^-1) so that low_rank_factors(U, s, V^T S^-1, r) gives W' = U_r diag(s_r) V_r^T S^-1,
    the best rank-r output approximation; at full rank it is W again (the whitening undone).
    """
    s_chol = torch.linalg.cholesky(_damped(h.double(), damp))
    u, s, vh = torch.linalg.svd(w.double() @ s_chol, full_matrices=False)
    # (k, in) @ S^-1: solve X S = V^T
    vh_unwhite = torch.linalg.solve_triangular(s_chol, vh, upper=False, left=False)
    return u.to(w.dtype), s.to(w.dtype), vh_unwhite.to(w.dtype)


def shared_whitened_svd(ws: list[torch.Tensor], hs: list[torch.Tensor | None], damp: float = 1e-4) -> list:
    """Basis Sharing (Wang et al. 2024): one basis for the (out_i, in) matrices `ws` whose
    inputs have the statistics `hs`. The SVD of the stacked [W_1; ...; W_N] S, with the summed
    H = sum_i H_i = S S^T (inputs without statistics count as none; with none at all, the plain
    SVD), is U diag(s) V^T; returns per layer (U_i, s, V^T S^-1), U_i its rows of U, so that
    low_rank_factors gives every layer its own A_i and one and the same B (the basis)."""
    known = [h for h in hs if h is not None]
    w = torch.cat(list(ws))
    if known:
        u, s, vh = whitened_svd(w, sum(known[1:], known[0]), damp)
    else:
        u, s, vh = (t.to(w.dtype) for t in torch.linalg.svd(w.double(), full_matrices=False))
    return [(ui, s, vh) for ui in u.split([m.shape[0] for m in ws])]


# ---------------------------------------------------------------------------------------
# Pruning: Wanda (|W| x input column norm, per output row)
# ---------------------------------------------------------------------------------------


def wanda_scores(w: torch.Tensor, h_diag: torch.Tensor) -> torch.Tensor:
    """|W_ij| * ||X_j||: a weight matters as much as the inputs it multiplies (Sun et al. 2023).
    `h_diag` is diag(H), the mean squared input per column (the norm up to a constant)."""
    return w.abs() * h_diag.clamp(min=0).sqrt()[None, :]


def row_mask(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Keep-mask zeroing the lowest-scoring entries of every row, round(sparsity * n) in all
    (the same count as magnitude pruning of the whole tensor, so the bytes are equal): each
    row loses k // rows, and the first k % rows rows one more.

    >>> row_mask(torch.tensor([[1.0, 4.0, 2.0, 3.0]]), 0.5)
    tensor([[False,  True, False,  True]])
    """
    rows, cols = score.shape
    k = round(sparsity * score.numel())
    per_row = torch.full((rows,), k // rows, device=score.device)
    per_row[: k % rows] += 1
    order = score.argsort(dim=1)  # ascending: the first per_row[i] of row i go
    drop = torch.arange(cols, device=score.device)[None, :] < per_row[:, None]
    keep = torch.ones_like(score, dtype=torch.bool)
    keep.scatter_(1, order, ~drop)
    return keep


# ---------------------------------------------------------------------------------------
# Quantization: GPTQ (rounding with error feedback through the inverse Hessian)
# ---------------------------------------------------------------------------------------


class IntGrid:
    """GPTQ's grid rule for the explorer's own integer grid: a group's (scale, zero-point) from
    its weights (`params`, (rows, size) -> two (rows,)), and a column rounded onto it (`quant`).
    engine.formats.ggml.legacy.Grid is the same rule for llama.cpp's legacy types."""

    def __init__(self, bits: int, symmetric: bool):
        self.bits, self.symmetric = bits, symmetric

    def params(self, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return quant_params(group, self.bits, self.symmetric)

    def quant(self, col: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> torch.Tensor:
        offset = code_offset(zero, self.bits, self.symmetric)
        return dequantize(quantize(col, scale, offset, self.bits), scale, offset)


@torch.no_grad()
def gptq_quantize(
    w: torch.Tensor, h: torch.Tensor, bits: int, granularity: str = "group", group_size: int = 128,
    symmetric: bool = True, keep: torch.Tensor | None = None, act_order: bool = False,
    damp: float = 0.01, block: int = 128, return_grid: bool = False, rule=None,
):
    """GPTQ (Frantar et al. 2022): quantize W column by column; after each column, spread its
    rounding error over the columns not yet quantized, through the Cholesky factor of H^-1,
    so that the output error tr(D H D^T) stays small. Returns the dequantized values, on the
    same grid (bits, groups, fp16 scales) as round-to-nearest: same bytes.

    Group scales are taken from each group's weights as updated when the group is reached;
    with `act_order` the columns go by decreasing diag(H) and the scales are fixed from the
    original weights first (static groups), so the stored layout does not change. `keep`:
    a pruning mask whose zeros stay zero. With `return_grid`, returns (values, (scale, zero)):
    the grid it used, per group in quant_grid's order. `rule`: another grid of groups (an
    object with IntGrid's `params` and `quant`, e.g. llama.cpp's q4_0); its groups are dynamic
    (no act-order) and `return_grid` gives its params. On 2 columns with H = [[1, c], [c, 1]] the second
    column absorbs -c times the first column's rounding error (see the tests).
    """
    rows, cols = w.shape
    rule = rule or IntGrid(bits, symmetric)
    W = w.clone().float()
    H = _damped(h.float(), damp)
    perm = torch.argsort(H.diagonal(), descending=True) if act_order else None
    static = act_order or granularity != "group"
    if static:
        grid = quant_grid(W, bits, granularity, group_size, symmetric)
        scale, zero = per_entry(grid, rows, cols, granularity, group_size)
    if perm is not None:
        W, H = W[:, perm], H[perm][:, perm]
        scale, zero = scale[:, perm], zero[:, perm]
        keep = None if keep is None else keep[:, perm]
    hinv = inverse_factor(H)
    g = min(group_size, cols)
    block = block if static else g
    Q = torch.zeros_like(W)
    dynamic = []  # per block (one group): its (scale, zero)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        err1 = torch.zeros_like(W1)
        if not static:  # this block is one group: its scale from the weights as updated so far
            s_g, z_g = rule.params(W1)
            dynamic.append((s_g, z_g))
        for i in range(i2 - i1):
            col = W1[:, i]
            if static:
                q = rule.quant(col, scale[:, i1 + i], zero[:, i1 + i])
            else:
                q = rule.quant(col, s_g, z_g)
            if keep is not None:
                q = q * keep[:, i1 + i]
            Q[:, i1 + i] = q
            e = (col - q) / Hinv1[i, i]
            W1[:, i:] -= e[:, None] * Hinv1[i, i:][None, :]
            err1[:, i] = e
        W[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    if perm is not None:
        Q = Q[:, torch.argsort(perm)]
    if not return_grid:
        return Q.to(w.dtype)
    if not static:  # (rows, groups) -> row-major
        grid = tuple(torch.stack([d[k] for d in dynamic], 1).reshape(-1) for k in (0, 1))
    return Q.to(w.dtype), grid


# ---------------------------------------------------------------------------------------
# Weight sharing: a k-means codebook per layer (Deep Compression)
# ---------------------------------------------------------------------------------------


@torch.no_grad()
def kmeans_quantize(w: torch.Tensor, bits: int, keep: torch.Tensor | None = None, iters: int = 100,
                    max_fit: int = 1 << 16, return_codebook: bool = False):
    """Replace every kept value by the nearest of 2^b shared values (its codebook), found by
    1-D k-means (Lloyd) from a linear initialization over [min, max] (Han et al. 2016); the
    codebook is stored at fp16, so the returned values are fp16-exact. Pruned entries
    (keep False) stay zero and take no part. The codebook is fitted on at most `max_fit`
    values (an evenly strided sample); every value is then coded by its nearest center.
    With `return_codebook`, returns (values, codebook): the centers, ascending.

    >>> kmeans_quantize(torch.tensor([[0.0, 0.1, 1.0, 1.1]]), bits=1)
    tensor([[0.0500, 0.0500, 1.0498, 1.0498]])
    """
    x = w.flatten().float() if keep is None else w.flatten()[keep.flatten()].float()
    if x.numel() == 0:
        return (w, w.new_zeros(1)) if return_codebook else w
    k = 2**bits
    xd = x.double()
    centers = torch.linspace(x.min().item(), x.max().item(), k, dtype=xd.dtype, device=xd.device)
    fit = xd if xd.numel() <= max_fit else xd[:: -(-xd.numel() // max_fit)].contiguous()  # a strided sample fits
    for _ in range(iters):
        idx = torch.bucketize(fit, (centers[1:] + centers[:-1]) / 2)
        sums = fit.new_zeros(k).scatter_add_(0, idx, fit)
        counts = fit.new_zeros(k).scatter_add_(0, idx, torch.ones_like(fit))
        new = torch.where(counts > 0, sums / counts.clamp(min=1), centers)
        new, _ = new.sort()
        if torch.equal(new, centers):
            break
        centers = new
    centers = centers.to(torch.float16).double().unique()  # as stored; merged duplicates shrink it
    coded = on_codebook(xd, centers).to(w.dtype)
    out = torch.zeros_like(w).flatten()
    if keep is None:
        out = coded
    else:
        out[keep.flatten()] = coded
    return (out.view_as(w), centers.to(w.dtype)) if return_codebook else out.view_as(w)


def codebook_index(w: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """For every value of w, the index of the nearest of `centers` (ascending)."""
    return torch.bucketize(w.contiguous(), (centers[1:] + centers[:-1]) / 2)


def on_codebook(w: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """Every value of w replaced by the nearest of `centers` (ascending)."""
    return centers[codebook_index(w, centers)]
