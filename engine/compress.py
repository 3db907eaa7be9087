"""One matrix through the recipe: low rank, then pruning, then quantization; and its bytes."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .memory import LayerBytes, tensor_bytes
from .recipe import Recipe
from .methods import gptq_quantize, kmeans_quantize, on_codebook, row_mask, wanda_scores
from .transforms import low_rank_factors, magnitude_mask, nm_mask, on_grid, quant_grid

Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # U (out, k), S (k,), Vh (k, in)


@dataclass(frozen=True)
class Grid:
    """Where the values of one stored matrix may lie: a uniform grid per group (scale and
    zero-point, as transforms.quant_grid orders them), a codebook, or, with neither, the
    fp16 numbers (a 16-bit value is stored as fp16)."""

    scale: torch.Tensor | None = None
    zero: torch.Tensor | None = None
    codebook: torch.Tensor | None = None

    def snap(self, w: torch.Tensor, recipe: Recipe) -> torch.Tensor:
        """w moved to the nearest value on the grid: values on it stay exactly where they are."""
        if self.codebook is not None:
            return on_codebook(w, self.codebook)
        if self.scale is None:
            return w.half().to(w.dtype)
        return on_grid(w, self.scale, self.zero, recipe.bits, recipe.granularity, recipe.group_size,
                       recipe.symmetric)


@dataclass(frozen=True)
class CompressedMatrix:
    """What a layer stores after a recipe: (W,) or (A, B), as the dequantized values they code,
    and the grid each one's values lie on."""

    tensors: tuple[torch.Tensor, ...]
    bytes: LayerBytes
    zeros: int  # stored values that are zero after pruning
    stored: int  # stored values in all
    grids: tuple[Grid, ...] = ()

    @property
    def sparsity(self) -> float:
        return self.zeros / self.stored


@dataclass(frozen=True)
class Shaped:
    """A matrix after low rank and pruning, before quantization: (W,) or (A, B), masked."""

    rank: int | None
    mats: tuple[torch.Tensor, ...]
    keeps: tuple[torch.Tensor | None, ...]  # the pruning mask of each matrix (None: not pruned)

    @property
    def kept(self) -> tuple[int, ...]:
        return tuple(m.numel() if k is None else int(k.sum()) for m, k in zip(self.mats, self.keeps))


def _input_hessian(mats, hessian, k):
    """H of the inputs of stored matrix k: W and B see the layer's inputs x (H); A sees B x,
    so its H is B H B^T (from B as stored)."""
    if hessian is None or len(mats) == 1 or k == 1:
        return hessian
    b = mats[1]
    return b @ hessian @ b.T  # (r, in) (in, in) (in, r)


def shape_matrix(
    w: torch.Tensor, recipe: Recipe, factors: Callable[[], Factors],
    sorted_abs: Callable[[], torch.Tensor | None] | None = None,
    hessian: torch.Tensor | None = None,
) -> Shaped:
    """Low rank, then pruning, of the (out, in) matrix `w`: `factors()` gives (U, s, V^T) of the
    recipe's low-rank method when a rank needs it (A = U_r sqrt(s_r), B = sqrt(s_r) V_r^T), then
    a mask zeroes entries of each stored matrix, by magnitude (`sorted_abs()`, optional: |w|
    flattened and sorted, a lookup instead of a selection) or by Wanda's score, which needs
    `hessian` (H of the inputs; None, e.g. for an embedding: magnitude instead). B is pruned
    before A, whose inputs it makes. Depends only on the recipe's `structure_key()`."""
    rank = recipe.rank_for(min(w.shape))
    mats = [w] if rank is None else list(low_rank_factors(*factors(), rank))
    keeps = [None] * len(mats)
    nm = recipe.nm
    wanda = recipe.prune_method == "wanda" and hessian is not None
    if nm is not None or recipe.sparsity > 0:
        for k in reversed(range(len(mats))):  # B, then A
            m = mats[k]
            if wanda:
                h = _input_hessian(mats, hessian, k)
                score = wanda_scores(m, h.diagonal())
                keep = nm_mask(score, *nm) if nm is not None else row_mask(score, recipe.sparsity)
            elif nm is not None:
                keep = nm_mask(m, *nm)
            else:
                keep = magnitude_mask(m, recipe.sparsity, sorted_abs() if sorted_abs and rank is None else None)
            mats[k], keeps[k] = m * keep, keep
    return Shaped(rank, tuple(mats), tuple(keeps))


def quantize_shaped(name: str, shape: tuple[int, int], shaped: Shaped, recipe: Recipe,
                    hessian: torch.Tensor | None = None) -> CompressedMatrix:
    """Quantize the shaped matrices by the recipe's method and count their bytes. GPTQ needs
    `hessian` (without it, e.g. for an embedding, round to nearest is used); for factors it
    quantizes B first and gives A the H of B's quantized outputs."""
    results, grids = list(shaped.mats), [Grid()] * len(shaped.mats)
    method = recipe.quant_method if recipe.bits < 16 else "none"
    if method == "gptq" and hessian is None:
        method = "rtn"
    for k in reversed(range(len(results))):
        m, keep = shaped.mats[k], shaped.keeps[k]
        if method == "gptq":
            h = _input_hessian(results, hessian, k)
            results[k], (scale, zero) = gptq_quantize(m, h, recipe.bits, recipe.granularity, recipe.group_size,
                                                      recipe.symmetric, keep, recipe.act_order, return_grid=True)
            grids[k] = Grid(scale, zero)
        elif method == "kmeans":
            results[k], codebook = kmeans_quantize(m, recipe.bits, keep, return_codebook=True)
            grids[k] = Grid(codebook=codebook)
        else:
            if method == "rtn":
                grids[k] = Grid(*quant_grid(m, recipe.bits, recipe.granularity, recipe.group_size, recipe.symmetric))
            results[k] = grids[k].snap(m, recipe)
    parts = tuple(tensor_bytes(m.shape[0], m.shape[1], kept, recipe.bits, recipe.granularity, recipe.group_size,
                               recipe.symmetric, recipe.nm, codebook=method == "kmeans")
                  for m, kept in zip(shaped.mats, shaped.kept))
    stored = sum(m.numel() for m in shaped.mats)
    return CompressedMatrix(tuple(results), LayerBytes(name, tuple(shape), shaped.rank, parts),
                            stored - sum(shaped.kept), stored, tuple(grids))


def compress_matrix(
    name: str, w: torch.Tensor, recipe: Recipe, factors: Callable[[], Factors],
    sorted_abs: Callable[[], torch.Tensor | None] | None = None,
    hessian: torch.Tensor | None = None,
) -> CompressedMatrix:
    """Apply `recipe` to the (out, in) matrix `w`: low rank, then pruning (shape_matrix), then
    quantization of the kept values (quantize_shaped)."""
    shaped = shape_matrix(w, recipe, factors, sorted_abs, hessian)
    return quantize_shaped(name, tuple(w.shape), shaped, recipe, hessian)
