"""GPTQ (Frantar et al. 2022): round column by column, feeding each column's error forward
through the inverse input Hessian H^-1 (H = X^T X / n). Same grid and bytes as round to
nearest; lower output error. Method `gptq` of engine.methods.
"""
from __future__ import annotations

import torch

from engine.formats.ggml import legacy
from engine.formats.ggml.types import TYPES
from engine.formats.grid import Grid, code_offset, dequantize, per_entry, quant_grid, quant_params, quantize
from engine.methods import rtn
from engine.methods.whitened import _damped, inverse_factor


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


def quantize_grid(m: torch.Tensor, h: torch.Tensor | None, recipe, keep: torch.Tensor | None):
    """(values, Grid) of `m` by GPTQ on the recipe's own grid, pruned entries (`keep` False)
    held at zero; without `h` (an embedding), round to nearest."""
    if h is None:
        return rtn.quantize_grid(m, h, recipe, keep)
    values, (scale, zero) = gptq_quantize(m, h, recipe.bits, recipe.granularity, recipe.group_size, recipe.symmetric,
                                          keep, recipe.act_order, return_grid=True)
    return values, Grid(scale, zero)


def quantize_blocks(w: torch.Tensor, fmt: str, h: torch.Tensor | None):
    """(values, raw GGUF blocks) of `w` by GPTQ on the blocks of llama.cpp's legacy type `fmt`,
    each block's scale (and minimum) taken as llama.cpp takes it when GPTQ reaches the block;
    without `h`, llama.cpp's round to nearest."""
    if h is None:
        return rtn.quantize_blocks(w, fmt, h)
    rule = legacy.Grid(fmt)
    values, (d, lo) = gptq_quantize(w, h, TYPES[fmt].bits, "group", TYPES[fmt].block, rule.symmetric,
                                    return_grid=True, rule=rule)
    return values, rule.pack(values.float(), d, lo)
