"""k-means quantization (Deep Compression, Han et al. 2016): a per-layer codebook of 2^bits
shared values, fitted by Lloyd's iterations on the kept weights. Method `kmeans` of engine.methods.
"""
from __future__ import annotations

import torch

from engine.formats.grid import Grid, on_codebook


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


def quantize_grid(m: torch.Tensor, h: torch.Tensor | None, recipe, keep: torch.Tensor | None):
    """(values, Grid) of `m` on a codebook of 2^bits values fitted to its kept entries."""
    values, codebook = kmeans_quantize(m, recipe.bits, keep, return_codebook=True)
    return values, Grid(codebook=codebook)
