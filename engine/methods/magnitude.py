"""Magnitude pruning: the entries of smallest |W| zeroed, unstructured or N:M.

Method `magnitude` of engine.methods; `nm_mask` also picks the N of every M for the scores of Wanda.
"""
from __future__ import annotations

import torch


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


def prune_matrix(m: torch.Tensor, h: torch.Tensor | None, sparsity: float, nm: tuple[int, int] | None,
                 sorted_abs=None):
    """(values, keep) of `m` with its smallest |m| zeroed: round(sparsity x n) of them, or all
    but the N largest of every M (`nm`). `sorted_abs`: None, or a function that gives |m|
    flattened and sorted (or None), cached by the caller: the threshold is then a lookup."""
    keep = nm_mask(m, *nm) if nm is not None else magnitude_mask(m, sparsity, sorted_abs() if sorted_abs else None)
    return m * keep, keep
