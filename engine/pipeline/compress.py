"""The layer pipeline: one matrix and a recipe in, what a compressed layer stores out.

Every consumer goes through it: the workspace (engine.drivers.explorer), the offloaded model
(engine.drivers.offload), the exports (engine.storage) and the count from shapes alone
(engine.drivers.footprint).

    stored = compress("q", w, Recipe(rank_ratio=0.5, bits=4, sparsity=0.5), factors=lambda: svd(w))
    stored.matrix()                    # (out, in): the values the model computes with, A @ B
    stored.bytes.compressed_bytes      # every byte: codes, scales, zero-points, masks, factors
    storage.codec.encode_layer(stored) # the tensors as stored: packed codes, fp16 scales, ...
    predict(info, recipe).bytes        # the same bytes from the shape alone

On one layer, in this order: low rank (the layer then stores factors A and B), pruning of
what is stored, quantization of the kept values (`shape` then `quantize`).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch

from engine.formats import FORMATS, floats, ggml
from engine.formats.bytes import (
    VALUE_BITS_UNCOMPRESSED,
    LayerBytes,
    TensorBytes,
    float_bytes,
    ggml_bytes,
    kept_count,
    tensor_bytes,
)
from engine.formats.grid import Grid
from engine.methods import METHODS
from engine.methods.shared import SHARED, Share
from engine.methods.svd import low_rank_factors
from engine.pipeline.tally import LayerReport
from engine.recipe.recipe import Recipe

Factors = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # U (out, k), S (k,), Vh (k, in)


@dataclass(frozen=True)
class StoredMatrix:
    """One matrix a compressed layer stores (W, or the factor A or B)."""

    values: torch.Tensor  # (rows, cols): the values its codes stand for, as the model computes with them
    grid: Grid  # where the values lie: per-group scales and zero-points, a codebook, or fp16
    keep: torch.Tensor | None  # the pruning mask (None: nothing pruned)
    kept: int  # values that survive pruning
    bytes: TensorBytes  # its bytes by component, in the cheapest format
    unquantized: torch.Tensor | None = None  # after pruning, before quantization (None: read from a file)


@dataclass(frozen=True)
class StoredLayer:
    """What one compressed layer stores: its recipe (the layer's own, see Recipe.for_layer),
    its rank (None: dense) and its matrices, W or (A, B)."""

    name: str
    shape: tuple[int, int]  # (out, in)
    recipe: Recipe
    rank: int | None
    matrices: tuple[StoredMatrix, ...]
    share: Share | None = None  # the group whose basis B it shares (engine.methods.shared); its B is stored by share.owner
    fold: object = None  # AWQ scales folded around it (engine.drivers.awq_fold.Fold): it holds diag(1/rows) W diag(cols)

    @property
    def bytes(self) -> LayerBytes:
        return LayerBytes(self.name, self.shape, self.rank, tuple(m.bytes for m in self.matrices),
                          1 if self.share is None else len(self.share.group))

    @property
    def sparsity(self) -> float:
        stored = sum(m.values.numel() for m in self.matrices)
        return (stored - sum(m.kept for m in self.matrices)) / stored

    @property
    def labels(self) -> tuple[str, ...]:
        return ("W",) if len(self.matrices) == 1 else ("A", "B")

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """(W,) or (A, B), as the model computes with them."""
        return tuple(m.values for m in self.matrices)

    def matrix(self) -> torch.Tensor:
        """The (out, in) matrix the layer computes with: W, or A @ B."""
        t = self.tensors()
        return t[0] if len(t) == 1 else t[0] @ t[1]  # (out, r) @ (r, in)

    def with_values(self, tensors) -> "StoredLayer":
        """The same layer holding other values on the same grids and masks (after distillation)."""
        return dataclasses.replace(self, matrices=tuple(dataclasses.replace(m, values=v)
                                                        for m, v in zip(self.matrices, tensors)))

    def report(self, info, energy_kept: float | None = None) -> LayerReport:
        return LayerReport(info, True, self.bytes, self.sparsity, _bits(self.recipe, self.shape[1]), energy_kept)


# ---------------------------------------------------------------------------------------
# The pipeline
# ---------------------------------------------------------------------------------------


def _input_hessian(mats, hessian, k):
    """H of the inputs of stored matrix k: W and B see the layer's inputs x (H); A sees B x,
    so its H is B H B^T (from B as stored)."""
    if hessian is None or len(mats) == 1 or k == 1:
        return hessian
    b = mats[1]
    return b @ hessian @ b.T  # (r, in) (in, in) (in, r)


def shape(w: torch.Tensor, recipe: Recipe, factors: Callable[[], Factors],
          sorted_abs: Callable[[], torch.Tensor | None] | None = None,
          hessian: torch.Tensor | None = None, share: Share | None = None) -> tuple[int | None, tuple, tuple]:
    """Low rank, then pruning, of the (out, in) matrix `w`: (rank, matrices, masks). `factors()`
    gives (U, s, V^T) of the recipe's low-rank method when a rank needs it (A = U_r sqrt(s_r),
    B = sqrt(s_r) V_r^T); then a mask zeroes entries of each stored matrix, by magnitude
    (`sorted_abs()`, optional: |w| flattened and sorted, a lookup instead of a selection) or by
    Wanda's score, which needs `hessian` (H of the inputs; None, e.g. for an embedding:
    magnitude instead). B is pruned before A, whose inputs it makes. Depends only on the
    recipe's `structure_key()` (and with `share`, the basis rank of the layer's group)."""
    rank = recipe.rank_for(min(w.shape)) if share is None else share.rank
    mats = [w] if rank is None else list(low_rank_factors(*factors(), rank))
    keeps = [None] * len(mats)
    if recipe.nm is not None or recipe.sparsity > 0:
        prune = METHODS[recipe.prune_method].run
        for k in reversed(range(len(mats))):  # B, then A
            ordered = sorted_abs if rank is None else None  # |W| sorted: for W itself, not for factors
            mats[k], keeps[k] = prune(mats[k], _input_hessian(mats, hessian, k), recipe.sparsity, recipe.nm, ordered)
    return rank, tuple(mats), tuple(keeps)


def quantize(name: str, layer_shape: tuple[int, int], rank: int | None, mats: tuple, keeps: tuple, recipe: Recipe,
             hessian: torch.Tensor | None = None, share: Share | None = None) -> StoredLayer:
    """Quantize the shaped matrices by the recipe's method and count their bytes. GPTQ needs
    `hessian` (without it, e.g. for an embedding, round to nearest is used); for factors it
    quantizes B first and gives A the H of B's quantized outputs. With `share`, B is the group's
    basis (quantized alike in every layer of the group: round to nearest or k-means), whose
    bytes only the group's owner counts."""
    results, grids = list(mats), [Grid()] * len(mats)
    fmt = FORMATS[recipe.number_format]
    method = METHODS[recipe.quant_method]
    for k in reversed(range(len(results))):  # B, then A (whose H is that of B's quantized outputs)
        if recipe.bits >= VALUE_BITS_UNCOMPRESSED:
            results[k] = grids[k].snap(mats[k], recipe)  # fp16
        elif fmt.family == "float":
            results[k], grids[k] = _float(mats[k], recipe)
        elif fmt.family == "ggml":  # llama.cpp's types: a full matrix, never factors
            results[k], grids[k] = _ggml(mats[k], recipe, method, hessian)
        else:
            results[k], grids[k] = method.run(mats[k], _input_hessian(results, hessian, k), recipe, keeps[k])
    kept = [m.numel() if keep is None else int(keep.sum()) for m, keep in zip(mats, keeps)]
    parts = _shared(_bytes([tuple(m.shape) for m in mats], kept, recipe), name, share)
    return StoredLayer(name, tuple(layer_shape), recipe, rank, tuple(
        StoredMatrix(v, g, keep, n, b, u) for v, g, keep, n, b, u in zip(results, grids, keeps, kept, parts, mats)),
        share)


def _shared(parts: tuple, name: str, share: Share | None) -> tuple:
    """A layer's parts with its B counted 0 bytes where another layer of its group stores the basis."""
    return parts if share is None or name == share.owner else (parts[0], SHARED)


def _ggml(w: torch.Tensor, recipe: Recipe, method, hessian: torch.Tensor | None) -> tuple[torch.Tensor, Grid]:
    """`w` in the llama.cpp type its rows take under the recipe's format (engine.formats.ggml.fit;
    fp16 when none fits), by the method's quantizer for llama.cpp's blocks."""
    fmt = ggml.fit(recipe.number_format, w.shape[1])
    if fmt is None:
        return w.half().to(w.dtype), Grid()
    values, raw = method.blocks(w, fmt, hessian)
    return values.to(w.dtype), Grid(ggml=fmt, raw=raw)


def _float(w: torch.Tensor, recipe: Recipe) -> tuple[torch.Tensor, Grid]:
    """`w` in the recipe's float format (engine.formats.floats; fp16 when its blocks do not divide the rows)."""
    fmt = floats.fit(recipe.number_format, w.shape[1])
    if fmt is None:
        return w.half().to(w.dtype), Grid()
    values, parts = floats.quantize(w, fmt, recipe.double_quant)
    return values.to(w.dtype), Grid(floats=floats.label(fmt, recipe.double_quant), parts=parts)


def _fit(fmt: str, cols: int) -> str | None:
    return floats.fit(fmt, cols) if FORMATS[fmt].family == "float" else ggml.fit(fmt, cols)


def _bits(recipe: Recipe, cols: int) -> int:
    """The width a layer's codes have: 16 where a llama.cpp or float format leaves the rows in fp16."""
    if recipe.number_format != "int" and _fit(recipe.number_format, cols) is None:
        return VALUE_BITS_UNCOMPRESSED
    return recipe.bits


def requantize(stored: StoredLayer, recipe: Recipe, hessian: torch.Tensor | None = None) -> StoredLayer:
    """A layer shaped (low rank, pruned) as `stored` is, quantized under `recipe`, whose
    structure_key() must equal that of `stored.recipe`: a new bit width needs no new shaping."""
    mats = tuple(m.unquantized for m in stored.matrices)
    return dataclasses.replace(quantize(stored.name, stored.shape, stored.rank, mats,
                                        tuple(m.keep for m in stored.matrices), recipe, hessian, stored.share),
                               fold=stored.fold)


def reusable(stored: StoredLayer | None, recipe: Recipe, share: Share | None = None, fold=None) -> bool:
    """Whether `requantize(stored, recipe)` gives what `compress` would (with `share`, the
    layer's group under `recipe`; with `fold`, the same folded AWQ scales around it)."""
    return (stored is not None and stored.recipe.structure_key() == recipe.structure_key()
            and stored.share == share and stored.fold is fold and all(m.unquantized is not None for m in stored.matrices))


def compress(name: str, w: torch.Tensor, recipe: Recipe, factors: Callable[[], Factors],
             sorted_abs: Callable[[], torch.Tensor | None] | None = None,
             hessian: torch.Tensor | None = None, share: Share | None = None) -> StoredLayer:
    """Apply `recipe` (one layer's, see Recipe.for_layer) to the (out, in) matrix `w` of layer
    `name`: low rank, then pruning (`shape`), then quantization of the kept values (`quantize`).
    With `share` (engine.methods.shared), `factors()` gives the layer's rows of its group's stacked SVD."""
    rank, mats, keeps = shape(w, recipe, factors, sorted_abs, hessian, share)
    return quantize(name, tuple(w.shape), rank, mats, keeps, recipe, hessian, share)


def _bytes(shapes: list[tuple[int, int]], kept: list[int], recipe: Recipe) -> tuple[TensorBytes, ...]:
    """The bytes of each stored matrix of these shapes and kept counts under `recipe`."""
    family = FORMATS[recipe.number_format].family
    if family == "float":
        return tuple(float_bytes(r, c, floats.fit(recipe.number_format, c), recipe.double_quant) for r, c in shapes)
    if family == "ggml":
        return tuple(ggml_bytes(r, c, ggml.fit(recipe.number_format, c)) for r, c in shapes)
    stores = METHODS[recipe.quant_method].stores if recipe.bits < VALUE_BITS_UNCOMPRESSED else None
    return tuple(tensor_bytes(r, c, k, recipe.bits, recipe.granularity, recipe.group_size, recipe.symmetric,
                              recipe.nm, codebook=stores == "codebook", channel_scales=stores == "channel_scales")
                 for (r, c), k in zip(shapes, kept))


def predict(info, recipe: Recipe, share: Share | None = None) -> LayerReport:
    """A compressed layer's report from its shape alone under its recipe, equal to what
    compressing its weights reports (bar the energy kept, which needs the spectrum): the rank,
    the kept counts and the groups all follow from the shape (with `share`, from its group's)."""
    out, inp = info.shape
    rank = recipe.rank_for(min(out, inp)) if share is None else share.rank
    shapes = [(out, inp)] if rank is None else [(out, rank), (rank, inp)]
    kept = [kept_count(r, c, recipe.sparsity, recipe.nm) for r, c in shapes]
    stored = sum(r * c for r, c in shapes)
    parts = _shared(_bytes(shapes, kept, recipe), info.name, share)
    group = 1 if share is None else len(share.group)
    return LayerReport(info, True, LayerBytes(info.name, info.shape, rank, parts, group),
                       (stored - sum(kept)) / stored, _bits(recipe, inp), None)
