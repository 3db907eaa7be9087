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

from engine.formats import floats, ggml
from engine.formats.bytes import (
    VALUE_BITS_UNCOMPRESSED,
    LayerBytes,
    TensorBytes,
    float_bytes,
    ggml_bytes,
    kept_count,
    tensor_bytes,
)
from engine.formats.ggml import legacy
from engine.formats.grid import Grid, quant_grid
from engine.methods.awq import awq_quantize
from engine.methods.gptq import gptq_quantize
from engine.methods.hqq import hqq_quantize
from engine.methods.kmeans import kmeans_quantize
from engine.methods.magnitude import magnitude_mask, nm_mask
from engine.methods.shared import SHARED, Share
from engine.methods.sparsegpt import sparsegpt_prune
from engine.methods.svd import low_rank_factors
from engine.methods.wanda import row_mask, wanda_scores
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
    nm = recipe.nm
    wanda = recipe.prune_method == "wanda" and hessian is not None
    sparsegpt = recipe.prune_method == "sparsegpt" and hessian is not None
    if nm is not None or recipe.sparsity > 0:
        for k in reversed(range(len(mats))):  # B, then A
            m = mats[k]
            if sparsegpt:
                mats[k], keeps[k] = sparsegpt_prune(m, _input_hessian(mats, hessian, k), recipe.sparsity, nm)
                continue
            if wanda:
                score = wanda_scores(m, _input_hessian(mats, hessian, k).diagonal())
                keep = nm_mask(score, *nm) if nm is not None else row_mask(score, recipe.sparsity)
            elif nm is not None:
                keep = nm_mask(m, *nm)
            else:
                keep = magnitude_mask(m, recipe.sparsity, sorted_abs() if sorted_abs and rank is None else None)
            mats[k], keeps[k] = m * keep, keep
    return rank, tuple(mats), tuple(keeps)


def quantize(name: str, layer_shape: tuple[int, int], rank: int | None, mats: tuple, keeps: tuple, recipe: Recipe,
             hessian: torch.Tensor | None = None, share: Share | None = None) -> StoredLayer:
    """Quantize the shaped matrices by the recipe's method and count their bytes. GPTQ needs
    `hessian` (without it, e.g. for an embedding, round to nearest is used); for factors it
    quantizes B first and gives A the H of B's quantized outputs. With `share`, B is the group's
    basis (quantized alike in every layer of the group: round to nearest or k-means), whose
    bytes only the group's owner counts."""
    results, grids = list(mats), [Grid()] * len(mats)
    method = recipe.quant_method if recipe.bits < VALUE_BITS_UNCOMPRESSED else "none"
    if method == "gptq" and hessian is None:
        method = "rtn"
    llama_cpp = method != "none" and recipe.number_format != "int"  # its types: a full matrix, never factors
    for k in reversed(range(len(results))):
        m, keep = mats[k], keeps[k]
        if llama_cpp and recipe.number_format in floats.TYPES:
            results[k], grids[k] = _float(m, recipe)
        elif llama_cpp:
            results[k], grids[k] = _ggml(m, recipe, hessian)
        elif method == "gptq":
            results[k], (scale, zero) = gptq_quantize(m, _input_hessian(results, hessian, k), recipe.bits,
                                                      recipe.granularity, recipe.group_size, recipe.symmetric,
                                                      keep, recipe.act_order, return_grid=True)
            grids[k] = Grid(scale, zero)
        elif method == "hqq":
            results[k], grid = hqq_quantize(m, recipe.bits, recipe.granularity, recipe.group_size, recipe.symmetric,
                                            keep)
            grids[k] = Grid(*grid)
        elif method == "awq":  # without H (an embedding): alpha 0, channel scales of 1, round to nearest
            results[k], (scale, zero, channel), _ = awq_quantize(
                m, _input_hessian(results, hessian, k), recipe.bits, recipe.granularity, recipe.group_size,
                recipe.symmetric, keep)
            grids[k] = Grid(scale, zero, channel=channel)
        elif method == "kmeans":
            results[k], codebook = kmeans_quantize(m, recipe.bits, keep, return_codebook=True)
            grids[k] = Grid(codebook=codebook)
        else:
            if method == "rtn":
                grids[k] = Grid(*quant_grid(m, recipe.bits, recipe.granularity, recipe.group_size, recipe.symmetric))
            results[k] = grids[k].snap(m, recipe)
    kept = [m.numel() if keep is None else int(keep.sum()) for m, keep in zip(mats, keeps)]
    parts = _shared(_bytes([tuple(m.shape) for m in mats], kept, recipe), name, share)
    return StoredLayer(name, tuple(layer_shape), recipe, rank, tuple(
        StoredMatrix(v, g, keep, n, b, u) for v, g, keep, n, b, u in zip(results, grids, keeps, kept, parts, mats)),
        share)


def _shared(parts: tuple, name: str, share: Share | None) -> tuple:
    """A layer's parts with its B counted 0 bytes where another layer of its group stores the basis."""
    return parts if share is None or name == share.owner else (parts[0], SHARED)


def _ggml(w: torch.Tensor, recipe: Recipe, hessian: torch.Tensor | None) -> tuple[torch.Tensor, Grid]:
    """`w` in the llama.cpp type its rows take under the recipe's format (engine.formats.ggml.fit; fp16
    when none fits): round to nearest, GPTQ on the legacy types' blocks, or llama.cpp's search
    weighted by the importance matrix diag(H) (its imatrix: each input's mean square)."""
    fmt = ggml.fit(recipe.number_format, w.shape[1])
    if fmt is None:
        return w.half().to(w.dtype), Grid()
    if recipe.quant_method == "gptq" and hessian is not None:
        rule = legacy.Grid(fmt)
        values, (d, lo) = gptq_quantize(w, hessian, ggml.TYPES[fmt].bits, "group", ggml.TYPES[fmt].block,
                                        rule.symmetric, return_grid=True, rule=rule)
        raw = rule.pack(values.float(), d, lo)
    else:
        importance = hessian.diagonal() if recipe.quant_method == "imatrix" and hessian is not None else None
        values, raw = ggml.quantize(w, fmt, importance)
    return values.to(w.dtype), Grid(ggml=fmt, raw=raw)


def _float(w: torch.Tensor, recipe: Recipe) -> tuple[torch.Tensor, Grid]:
    """`w` in the recipe's float format (engine.formats.floats; fp16 when its blocks do not divide the rows)."""
    fmt = floats.fit(recipe.number_format, w.shape[1])
    if fmt is None:
        return w.half().to(w.dtype), Grid()
    values, parts = floats.quantize(w, fmt, recipe.double_quant)
    return values.to(w.dtype), Grid(floats=floats.label(fmt, recipe.double_quant), parts=parts)


def _fit(fmt: str, cols: int) -> str | None:
    return floats.fit(fmt, cols) if fmt in floats.TYPES else ggml.fit(fmt, cols)


def _bits(recipe: Recipe, cols: int) -> int:
    """The width a layer's codes have: 16 where a llama.cpp or float format leaves the rows in fp16."""
    if recipe.number_format != "int" and _fit(recipe.number_format, cols) is None:
        return VALUE_BITS_UNCOMPRESSED
    return recipe.bits


def requantize(stored: StoredLayer, recipe: Recipe, hessian: torch.Tensor | None = None) -> StoredLayer:
    """A layer shaped (low rank, pruned) as `stored` is, quantized under `recipe`, whose
    structure_key() must equal that of `stored.recipe`: a new bit width needs no new shaping."""
    mats = tuple(m.unquantized for m in stored.matrices)
    return quantize(stored.name, stored.shape, stored.rank, mats, tuple(m.keep for m in stored.matrices), recipe,
                    hessian, stored.share)


def reusable(stored: StoredLayer | None, recipe: Recipe, share: Share | None = None) -> bool:
    """Whether `requantize(stored, recipe)` gives what `compress` would (with `share`, the
    layer's group under `recipe`)."""
    return (stored is not None and stored.recipe.structure_key() == recipe.structure_key()
            and stored.share == share and all(m.unquantized is not None for m in stored.matrices))


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
    if recipe.number_format in floats.TYPES:
        return tuple(float_bytes(r, c, floats.fit(recipe.number_format, c), recipe.double_quant) for r, c in shapes)
    if recipe.number_format != "int":
        return tuple(ggml_bytes(r, c, ggml.fit(recipe.number_format, c)) for r, c in shapes)
    codebook = recipe.quant_method == "kmeans" and recipe.bits < VALUE_BITS_UNCOMPRESSED
    awq = recipe.quant_method == "awq"
    return tuple(tensor_bytes(r, c, k, recipe.bits, recipe.granularity, recipe.group_size, recipe.symmetric,
                              recipe.nm, codebook=codebook, channel_scales=awq) for (r, c), k in zip(shapes, kept))


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
