"""SparseGPT (Frantar and Alistarh 2023): pruning with the weight update of the GPTQ loop,
the mask picked per block of columns by w^2 / [H^-1]_jj^2. Same count and bytes as magnitude
pruning. Method `sparsegpt` of engine.methods.
"""
from __future__ import annotations

import torch

from engine.methods import magnitude
from engine.methods.whitened import _damped, inverse_factor


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
    length), as engine.methods.magnitude.nm_mask). Returns (values, keep-mask); pruned values are 0.
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


def prune_matrix(m: torch.Tensor, h: torch.Tensor | None, sparsity: float, nm: tuple[int, int] | None,
                 sorted_abs=None):
    """(values, keep) of `m` pruned by SparseGPT (the kept weights updated through H^-1);
    without `h` (an embedding), by magnitude."""
    if h is None:
        return magnitude.prune_matrix(m, h, sparsity, nm, sorted_abs)
    return sparsegpt_prune(m, h, sparsity, nm)
