"""AWQ at equal bytes: the input-channel scales folded into the module before the layer, as
AutoAWQ and llm-compressor do, where the architecture allows (engine.structure.blocks.fold_groups).

A group of layers that read one input (q, k, v; gate, up; down alone; o alone without grouped-query
attention) shares one scale vector s (engine.methods.awq.fold_scales): each stores the grid of
W diag(s), rounded to nearest, with no scale of its own, and the module before divides its output
by s (a norm's weight and bias, or a linear's rows and bias). The model then computes exactly
what AWQ with stored scales computes for that s, in the bytes of round to nearest. A group folds
when every layer in it and its absorbing linear (if any) are compressed on the explorer's own
grid, dense and unpruned, its layers by AWQ on one grid; every other AWQ layer keeps its stored
scales (`kept_scales` names them).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.methods import awq
from engine.structure.blocks import FoldGroup, fold_groups


def _dense(r) -> bool:
    return r.number_format == "int" and r.rank is None and (r.rank_ratio is None or r.rank_ratio >= 1) \
        and r.sparsity == 0


def eligible(model, recipe, selected: set[str]) -> list[FoldGroup]:
    """The fold groups of `model` that fold under `recipe` (`selected`: the layers it compresses)."""
    out = []
    for g in fold_groups(model):
        rs = [recipe.for_layer(n) for n in g.layers]
        grids = {(r.bits, r.granularity, r.group_size, r.symmetric) for r in rs}
        ok = (all(n in selected for n in g.layers) and all(r.quant_method == "awq" and r.bits < 16 and _dense(r)
                                                           for r in rs) and len(grids) == 1)
        if ok and g.kind == "rows":
            ok = g.absorber in selected and _dense(recipe.for_layer(g.absorber))
        if ok:
            out.append(g)
    return out


@dataclass(frozen=True)
class Fold:
    """How a layer's matrix is transformed before it is compressed: its columns times `cols` (its
    group's folded AWQ scales; None: not folded) and its rows divided by `rows` (the scales of the
    group that reads its output; None: none). Quantized, it computes in the folded basis."""

    cols: torch.Tensor | None = None
    rows: torch.Tensor | None = None
    absorber: str | None = None  # where `cols` went

    def apply(self, w: torch.Tensor) -> torch.Tensor:
        """diag(1/rows) W diag(cols): the matrix compressed in the layer's place."""
        w = w if self.cols is None else w * self.cols.to(w.dtype)
        return w if self.rows is None else w / self.rows.to(w.dtype)[:, None]

    def original(self, m: torch.Tensor) -> torch.Tensor:
        """A matrix of the folded basis in the original's: diag(rows) M diag(1/cols)."""
        m = m if self.rows is None else m * self.rows.to(m.dtype)[:, None]
        return m if self.cols is None else m / self.cols.to(m.dtype)


@dataclass(frozen=True)
class Folds:
    """What AWQ folds under one recipe: each transformed layer's Fold, each absorbing norm's scales
    (module name -> s), and the AWQ layers that keep their stored scales."""

    layers: dict
    norms: dict
    kept_scales: tuple[str, ...]


def plan(explorer, recipe) -> Folds:
    """The folds of `recipe` on the explorer's model, their scales searched on the calibration
    statistics (H of the group's shared input) and the original weights."""
    selected = {i.name for i in explorer.selected(recipe)}
    groups = eligible(explorer.loaded.model, recipe, selected)
    layers, norms = {}, {}
    cols, rows = {}, {}
    for g in groups:
        r = recipe.for_layer(g.layers[0])
        h = explorer.hessian(g.layers[0])
        if h is None:
            continue
        s, _ = awq.fold_scales([explorer.weight(n) for n in g.layers], h, r.bits, r.granularity, r.group_size,
                               r.symmetric)
        for n in g.layers:
            cols[n] = (s, g.absorber)
        if g.kind == "norm":
            norms[g.absorber] = s
        else:
            rows[g.absorber] = s
    for n in set(cols) | set(rows):
        c = cols.get(n)
        layers[n] = Fold(None if c is None else c[0], rows.get(n), None if c is None else c[1])
    kept = tuple(n for n in sorted(selected) if recipe.for_layer(n).quant_method == "awq"
                 and recipe.for_layer(n).bits < 16 and n not in cols)
    return Folds(layers, norms, kept)


def fold_norm(module: torch.nn.Module, s: torch.Tensor) -> dict[str, torch.Tensor]:
    """The parameters of a norm whose output is divided by s: its weight (and bias) over s."""
    return {name: p.detach() / s.to(p.dtype) for name, p in module.named_parameters(recurse=False)}
