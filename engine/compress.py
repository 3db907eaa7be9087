"""One matrix through the recipe: low rank, then pruning, then quantization; and its bytes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .memory import LayerBytes, tensor_bytes
from .recipe import Recipe
from .transforms import fake_quantize, low_rank_factors, magnitude_mask, nm_mask

Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # U (out, k), S (k,), Vh (k, in)


@dataclass(frozen=True)
class CompressedMatrix:
    """What a layer stores after a recipe: (W,) or (A, B), as the dequantized values they code."""

    tensors: tuple[torch.Tensor, ...]
    bytes: LayerBytes
    zeros: int  # stored values that are zero after pruning
    stored: int  # stored values in all

    @property
    def sparsity(self) -> float:
        return self.zeros / self.stored


def compress_matrix(
    name: str, w: torch.Tensor, recipe: Recipe, factors: Callable[[], Factors],
    sorted_abs: Callable[[], torch.Tensor] | None = None,
) -> CompressedMatrix:
    """Apply `recipe` to the (out, in) matrix `w`; `factors()` gives its SVD when a rank needs it,
    `sorted_abs()` (optional) |w| flattened and sorted, to prune the dense matrix without a selection.

    Composition: low rank first (A = U_r sqrt(S_r), B = sqrt(S_r) Vh_r); pruning then zeroes
    entries of each stored matrix; quantization then codes the kept values.
    """
    out_f, in_f = w.shape
    rank = recipe.rank_for(min(out_f, in_f))
    mats = (w,) if rank is None else low_rank_factors(*factors(), rank)
    nm = recipe.nm
    results, parts, zeros = [], [], 0
    for m in mats:
        keep = None
        if nm is not None:
            keep = nm_mask(m, *nm)
        elif recipe.sparsity > 0:
            keep = magnitude_mask(m, recipe.sparsity, sorted_abs() if sorted_abs and rank is None else None)
        kept = m.numel() if keep is None else int(keep.sum())
        if keep is not None:
            m = m * keep
        m = fake_quantize(m, recipe.bits, recipe.granularity, recipe.group_size, recipe.symmetric)
        zeros += m.numel() - kept
        results.append(m)
        parts.append(tensor_bytes(m.shape[0], m.shape[1], kept, recipe.bits, recipe.granularity,
                                  recipe.group_size, recipe.symmetric, nm))
    stored = sum(m.numel() for m in mats)
    return CompressedMatrix(tuple(results), LayerBytes(name, (out_f, in_f), rank, tuple(parts)), zeros, stored)
