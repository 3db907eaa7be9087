"""Wanda (Sun et al. 2023): prune by |W| x the input column norm, per output row.

No weight update; the score needs only diag(H), each input's mean square on the calibration
text. Method `wanda` of engine.methods.
"""
from __future__ import annotations

import torch

from engine.methods import magnitude


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


def prune_matrix(m: torch.Tensor, h: torch.Tensor | None, sparsity: float, nm: tuple[int, int] | None,
                 sorted_abs=None):
    """(values, keep) of `m` pruned by Wanda's score |W| x sqrt(diag H), per output row or the
    N of every M (`nm`); without `h` (an embedding), by magnitude."""
    if h is None:
        return magnitude.prune_matrix(m, h, sparsity, nm, sorted_abs)
    score = wanda_scores(m, h.diagonal())
    keep = magnitude.nm_mask(score, *nm) if nm is not None else row_mask(score, sparsity)
    return m * keep, keep
