"""Inside one layer: the numbers behind the pictures that teach each transform.

Every function reads one layer of a workspace with a recipe applied (its stored form,
`Workspace.stored`, against the explorer's fp16 weight, the baseline every figure uses) and
returns plain numbers (lists, floats, strings): the Inside-a-layer page only draws them.

    work.apply(Recipe(bits=3, group_size=64, sparsity=0.5))
    q = quantization(work, "model.layers.0.mlp.down_proj")   # one group, the grid's levels, ...
    pruning(work, name); low_rank(work, name); sharing(work, name); entropy(work, name)

A function whose transform the layer's recipe does not use returns {"applies": False, "why": ...}.
Large matrices are shown as a crop (the top-left `crop` x `crop` values, stated in "crop") and
large heatmaps pooled by rows (stated in "pooled_rows").
"""
from __future__ import annotations

import math

import torch

from engine.formats import FORMATS
from engine.formats.grid import _grouped, code_offset, dequantize, on_grid
from engine.methods.magnitude import magnitude_mask, nm_mask
from engine.storage import codec, huffman

CROP = 48  # values a side of the matrix crops
HEAT_ROWS = 192  # rows of a heatmap before rows are pooled (max over neighbouring rows)


def _layer(work, name: str):
    stored = work.stored.get(name)
    if stored is None:
        raise KeyError(f"{name!r} is not compressed by the applied recipe")
    return stored, work.explorer.fp16_weight(name).float()


def _no(why: str) -> dict:
    return {"applies": False, "why": why}


def _hist(x: torch.Tensor, bins: int = 60, lo: float | None = None, hi: float | None = None) -> dict:
    x = x.detach().double().flatten()
    lo = float(x.min()) if lo is None else lo
    hi = float(x.max()) if hi is None else hi
    hi = hi if hi > lo else lo + 1e-12
    counts = torch.histc(x, bins=bins, min=lo, max=hi)
    step = (hi - lo) / bins
    return {"edges": [lo + i * step for i in range(bins + 1)], "counts": [int(c) for c in counts.tolist()]}


def _pooled(t: torch.Tensor) -> tuple[list, int]:
    """Rows pooled (max) so that at most HEAT_ROWS remain: (values, rows pooled into each)."""
    k = max(1, math.ceil(t.shape[0] / HEAT_ROWS))
    if k > 1:
        pad = (-t.shape[0]) % k
        t = torch.nn.functional.pad(t, (0, 0, 0, pad), value=float("-inf")).reshape(-1, k, t.shape[1]).amax(1)
    return t.tolist(), k


def _crop(t: torch.Tensor, crop: int) -> list:
    return t[:crop, :crop].detach().float().tolist()


def quantization(work, name: str, group: int | None = None) -> dict:
    """One group's weights before and after rounding, the grid's levels for it, the rounding
    error of the whole matrix, and every group's scale (and zero-point) as a (rows x groups) map.
    `group`: the group's index in row-major order (default: the one with the largest scale)."""
    stored, _ = _layer(work, name)
    recipe = stored.recipe
    picks = [(label, m) for label, m in zip(stored.labels, stored.matrices) if m.grid.scale is not None]
    if not picks or recipe.bits >= 16:
        why = (recipe.number_format + "'s float levels" if FORMATS[recipe.number_format].family == "float" else
               "llama.cpp's blocks (" + recipe.number_format + ")" if recipe.number_format != "int" else
               "a k-means codebook (see weight sharing)" if recipe.quant_method == "kmeans" else "16 bits")
        return _no(f"{name} is not on a uniform grid: {why}")
    label, m = picks[-1]
    if m.unquantized is None:
        return _no(f"{name} was read from a file: its values before rounding are not known")
    bits, sym = recipe.bits, recipe.symmetric
    ch = 1.0 if m.grid.channel is None else m.grid.channel.float()  # AWQ: the grid holds W diag(s)
    before, _ = _grouped(m.unquantized.float() * ch, recipe.granularity, recipe.group_size)
    on = m.values.float() if m.grid.channel is None else on_grid(
        m.values.float() * ch, m.grid.scale.float(), m.grid.zero.float(), recipe.bits, recipe.granularity,
        recipe.group_size, recipe.symmetric)  # AWQ: (the grid / s) x s, back on the grid exactly
    after, _ = _grouped(on, recipe.granularity, recipe.group_size)
    scale, zero = m.grid.scale.float(), m.grid.zero.float()
    g = int(scale.argmax()) if group is None else int(group)
    if not 0 <= g < scale.numel():
        raise ValueError(f"group {g} is not one of the {scale.numel()} groups of {name}")
    offset = code_offset(zero[g], bits, sym)
    levels = dequantize(torch.arange(2 ** bits, dtype=torch.float32), scale[g], offset)
    cols = m.values.shape[1]
    gs = min(recipe.group_size, cols)
    per_row = math.ceil(cols / gs) if recipe.granularity == "group" else 1
    rows = scale.numel() // per_row
    size = min(gs, cols - (g % per_row) * gs) if recipe.granularity == "group" else before.shape[1]  # no padding
    scales, pooled = _pooled(scale.reshape(rows, per_row))
    err = (m.values.float() - m.unquantized.float()) * ch
    return {"applies": True, "matrix": label, "bits": bits, "symmetric": sym, "granularity": recipe.granularity,
            "group_size": recipe.group_size, "group": g, "groups": scale.numel(), "row": g // per_row,
            "scale": float(scale[g]), "zero": float(zero[g]), "levels": levels.tolist(),
            "before": before[g, :size].tolist(), "after": after[g, :size].tolist(),
            "error": _hist(err[m.keep] if m.keep is not None else err),
            "max_error": float(err.abs().max()), "half_step_max": float(scale.max()) / 2,
            "scales": scales, "zeros": None if sym else _pooled(zero.reshape(rows, per_row))[0],
            "pooled_rows": pooled, "channel_scaled": m.grid.channel is not None}


def low_rank(work, name: str, crop: int = CROP) -> dict:
    """The matrix, its rank-r reconstruction as the layer computes with it (A @ B, after any
    pruning and quantization of the factors) and their difference, as crops; the singular
    values and the cut; parameters r(m+n) against mn."""
    stored, w = _layer(work, name)
    if stored.rank is None:
        return _no(f"{name} is kept at full rank")
    approx = stored.matrix().float()
    spectrum = work.explorer.spectrum(name, stored.rank)
    (out, inp), r = stored.shape, stored.rank
    return {"applies": True, "rank": r, "full_rank": min(out, inp), "shape": [out, inp], "crop": min(crop, out, inp),
            "original": _crop(w, crop), "approx": _crop(approx, crop), "difference": _crop(w - approx, crop),
            "singular_values": spectrum["singular_values"], "energy_kept": spectrum["energy_kept"],
            "factor_params": r * (out + inp), "dense_params": out * inp,
            "relative_error": float((w - approx).norm() / w.norm())}


def pruning(work, name: str, crop: int = CROP) -> dict:
    """The keep-mask over a crop, the magnitudes kept and removed with the threshold between them,
    and, for a calibrated method, where its mask differs from magnitude's at the same count."""
    stored, w = _layer(work, name)
    m = stored.matrices[0]
    if m.keep is None:
        return _no(f"{name} is not pruned")
    recipe, label = stored.recipe, stored.labels[0]
    base = w if stored.rank is None else (m.unquantized if m.unquantized is not None else m.values).float()
    magnitude = base.abs()
    keep = m.keep.bool()
    hi = float(magnitude.max())
    out = {"applies": True, "matrix": label, "method": recipe.prune_method, "pattern": recipe.pattern,
           "sparsity": 1 - float(keep.float().mean()), "crop": min(crop, *keep.shape),
           "mask": _crop(keep.float(), crop), "values": _crop(base, crop),
           "kept": _hist(magnitude[keep], lo=0.0, hi=hi), "removed": _hist(magnitude[~keep], lo=0.0, hi=hi),
           "threshold": float(magnitude[keep].min()) if keep.any() else None}
    if recipe.prune_method != "magnitude":
        if recipe.pattern == "unstructured":
            plain = magnitude_mask(base, 1 - float(keep.float().mean()))
        else:
            n, mm = (int(x) for x in recipe.pattern.split(":"))
            plain = nm_mask(base, n, mm)
        out["differs_from_magnitude"] = float((plain.bool() != keep).float().mean())
        out["magnitude_mask"] = _crop(plain.float(), crop)
    return out


def sharing(work, name: str) -> dict:
    """The k-means codebook over the histogram of the values it replaces, and how many values
    each shared value stands for."""
    stored, _ = _layer(work, name)
    m = stored.matrices[-1]
    if m.grid.codebook is None:
        return _no(f"{name} has no codebook (k-means is not its quantization method)")
    book = m.grid.codebook.float()
    before = (m.unquantized if m.unquantized is not None else m.values).float()
    sel = m.keep.bool() if m.keep is not None else torch.ones_like(before, dtype=torch.bool)
    codes = codec.codes(m.values, m.keep, m.grid, stored.recipe)
    return {"applies": True, "bits": stored.recipe.bits, "codebook": book.tolist(),
            "histogram": _hist(before[sel]), "counts": torch.bincount(codes, minlength=book.numel()).tolist()}


def entropy(work, name: str) -> dict:
    """The codes' counts, their Huffman code lengths, and the entropy against the fixed width,
    in bits per value (over the values stored: the kept ones)."""
    stored, _ = _layer(work, name)
    recipe = stored.recipe
    m = stored.matrices[-1]
    if recipe.bits >= 16 or m.grid.ggml is not None or m.grid.floats is not None or (m.grid.scale is None and m.grid.codebook is None):
        return _no(f"{name} stores no b-bit codes to entropy-code")
    codes = codec.codes(m.values, m.keep, m.grid, recipe)
    counts = torch.bincount(codes, minlength=1 << recipe.bits)
    lengths = huffman.code_lengths(counts).long()
    p = counts.double() / counts.sum()
    nz = p > 0
    return {"applies": True, "bits": recipe.bits, "counts": counts.tolist(), "lengths": lengths.tolist(),
            "entropy": float(-(p[nz] * p[nz].log2()).sum()), "huffman": float((p * lengths).sum()),
            "fixed": recipe.bits, "values": int(counts.sum())}
