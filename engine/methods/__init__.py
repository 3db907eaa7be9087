"""Every compression method, in one table: what it does, what it needs, where it runs, its function.

    kind     method     needs H   runs on                    module
    lowrank  svd        no        the explorer's grid        svd
    lowrank  whitened   yes       the explorer's grid        whitened
    lowrank  shared     yes       the explorer's grid        shared
    prune    magnitude  no        the explorer's grid        magnitude
    prune    wanda      yes       the explorer's grid        wanda
    prune    sparsegpt  yes       the explorer's grid        sparsegpt
    quant    rtn        no        every format               rtn
    quant    gptq       yes       the grid, llama.cpp legacy gptq
    quant    kmeans     no        the explorer's grid        kmeans
    quant    imatrix    yes       llama.cpp's types          imatrix
    quant    hqq        no        the explorer's grid        hqq
    quant    awq        yes       the explorer's grid        awq

H is the layer's calibration statistics, X^T X / n of its inputs (engine.models.calibrate).
A method's functions take the matrix and its H (None where there are no statistics, e.g. an
embedding; a calibrated method then falls back to its plain counterpart):

    factors(w, h) -> (U, S, Vh)                                 low rank: A = U_r sqrt(S_r), B = sqrt(S_r) Vh_r
    prune_matrix(m, h, sparsity, nm, sorted_abs) -> (values, keep)  sorted_abs: a function giving sorted |m|, or None
    quantize_grid(m, h, recipe, keep) -> (values, Grid)        on the explorer's own grid
    quantize_blocks(w, fmt, h) -> (values, raw GGUF blocks)    on llama.cpp's blocks

The recipe's choices and checks, the pipeline, the command line, the app and the documentation
read `METHODS`. Adding a method: one module with its function, one `Method` in `_METHODS` (or
`register` from outside the engine), and its tests (tests/methods/test_method_table.py adds one).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from engine.formats import FORMATS
from engine.methods import awq, gptq, hqq, imatrix, kmeans, magnitude, rtn, sparsegpt, svd, wanda, whitened

KINDS = ("lowrank", "prune", "quant")


@dataclass(frozen=True)
class Method:
    """One method a recipe's `lowrank_method`, `prune_method` or `quant_method` may name."""

    name: str
    kind: str  # 'lowrank' | 'prune' | 'quant'
    label: str  # how the app names it
    help: str  # one line: what it does
    calibrated: bool = False  # needs H, the calibration statistics of the layer's inputs
    formats: tuple[str, ...] = ("int",)  # the number formats it runs on
    shared_basis: bool = True  # may run on a basis several layers share (uses no one layer's inputs)
    tag: str = ""  # how Recipe.describe names it ('' for the default)
    stores: str | None = None  # what it stores beside the grid: 'codebook' | 'channel_scales'
    run: Callable | None = None  # factors, prune_matrix or quantize_grid
    blocks: Callable | None = field(default=None, repr=False)  # quantize_blocks, on llama.cpp's types

    def runs_on(self, fmt: str) -> bool:
        return fmt in self.formats


def _every(pred) -> tuple[str, ...]:
    return tuple(f.name for f in FORMATS.values() if pred(f))


_METHODS = (
    Method("svd", "lowrank", "SVD", "plain truncation (default)", run=svd.factors),
    Method("whitened", "lowrank", "Whitened SVD (calibrated)", "truncation-aware SVD on whitened inputs (SVD-LLM)",
           calibrated=True, tag="whitened", run=whitened.factors),
    Method("shared", "lowrank", "Basis shared across blocks (calibrated)",
           "one whitened basis per kind of layer in --share-blocks neighbouring blocks (Basis Sharing)",
           calibrated=True, run=svd.factors),  # a layer of no group; a group's stacked SVD: engine.methods.shared
    Method("magnitude", "prune", "Magnitude", "smallest |W| in the tensor (default)", run=magnitude.prune_matrix),
    Method("wanda", "prune", "Wanda (calibrated)", "|W| x input column norm, per output row", calibrated=True,
           shared_basis=False, tag="Wanda", run=wanda.prune_matrix),
    Method("sparsegpt", "prune", "SparseGPT (calibrated)", "pruning with the OBS weight update", calibrated=True,
           shared_basis=False, tag="SparseGPT", run=sparsegpt.prune_matrix),
    Method("rtn", "quant", "Round to nearest", "round to nearest (default)", formats=tuple(FORMATS),
           run=rtn.quantize_grid, blocks=rtn.quantize_blocks),
    Method("gptq", "quant", "GPTQ (calibrated)", "error feedback through the inverse input Hessian", calibrated=True,
           formats=_every(lambda f: f.family == "int" or f.legacy), shared_basis=False, tag="GPTQ",
           run=gptq.quantize_grid, blocks=gptq.quantize_blocks),
    Method("kmeans", "quant", "k-means codebook", "a per-layer codebook of 2^bits shared values", stores="codebook",
           run=kmeans.quantize_grid),
    Method("imatrix", "quant", "Importance matrix (llama.cpp's imatrix, calibrated)",
           "llama.cpp's search weighted by each input's mean square", calibrated=True,
           formats=_every(lambda f: f.importance), tag="imatrix", blocks=imatrix.quantize_blocks),
    Method("hqq", "quant", "HQQ (half-quadratic fit)", "half-quadratic fit of each group's scale and zero-point",
           tag="HQQ", run=hqq.quantize_grid),
    Method("awq", "quant", "AWQ (calibrated)", "input channels scaled by their activation magnitude",
           calibrated=True, shared_basis=False, tag="AWQ", stores="channel_scales", run=awq.quantize_grid),
)
METHODS: dict[str, Method] = {m.name: m for m in _METHODS}


def register(method: Method) -> None:
    """Add a method to the table (before a recipe names it); a name already taken is refused."""
    if method.name in METHODS:
        raise ValueError(f"method {method.name!r} is already in the table")
    if method.kind not in KINDS:
        raise ValueError(f"method {method.name!r}: kind must be one of {', '.join(KINDS)}")
    METHODS[method.name] = method


def names(kind: str) -> tuple[str, ...]:
    """The methods of one kind, in table order.

    >>> names("prune")
    ('magnitude', 'wanda', 'sparsegpt')
    """
    return tuple(m.name for m in METHODS.values() if m.kind == kind)


def calibrated() -> frozenset[str]:
    """The methods that need the calibration statistics."""
    return frozenset(m.name for m in METHODS.values() if m.calibrated)
