"""Round to nearest: each value to the nearest point of its grid, no calibration.

The plain quantizer, on the explorer's own integer grid (a scale and zero-point per group
from the group's range, engine.formats.grid) or on llama.cpp's blocks as its quantize does
without an importance matrix. Method `rtn` of engine.methods.
"""
from __future__ import annotations

import torch

from engine.formats import ggml
from engine.formats.grid import Grid, quant_grid


def quantize_grid(m: torch.Tensor, h: torch.Tensor | None, recipe, keep: torch.Tensor | None):
    """(values, Grid) of the (rows, cols) matrix `m` on the recipe's own grid (bits, granularity,
    group_size, symmetric); `h` and `keep` are not used (zeros stay zero on any grid)."""
    grid = Grid(*quant_grid(m, recipe.bits, recipe.granularity, recipe.group_size, recipe.symmetric))
    return grid.snap(m, recipe), grid


def quantize_blocks(w: torch.Tensor, fmt: str, h: torch.Tensor | None):
    """(values, raw GGUF blocks) of `w` in llama.cpp's type `fmt`, as its quantize rounds them."""
    return ggml.quantize(w, fmt)
