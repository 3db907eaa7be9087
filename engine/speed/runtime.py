"""The compressed model on real kernels, built from a workspace's stored layers.

    rt = build(work, torch.bfloat16)
    rt.model(ids)          # computes what the workspace computes, each layer on its kernel
    rt.layers              # one row per layer: its kernel(s) and why
    rt.counts()            # kernel -> layers

Every compressible layer the workspace stored goes through engine.speed.kernels (per stored matrix:
W, or the factors B then A of a low-rank layer); a layer left at 16 bits is a dense matmul in
the runtime's dtype; an embedding looks its rows up in a dense table; the experts of a
mixture-of-experts model compute with their stored values, dense. The runtime shares nothing
it could change with the workspace: its tensors are its own, in its dtype, on the workspace's
device.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.drivers.workspace import module_copy, set_parameters
from engine.layers.experts import materialize
from engine.layers.find import replace_module
from engine.layers.kinds import CompressedEmbedding, CompressedLinear
from engine.speed import choosing, kernels


class KernelLinear(nn.Module):
    """y = x W^T + bias, W stored as (W,) or factors (A, B), each on its kernel (B, then A)."""

    def __init__(self, mats: list[kernels.Matmul], bias: torch.Tensor | None):
        super().__init__()
        self.mats = nn.ModuleList(mats)
        self.bias = bias

    @property
    def label(self) -> str:
        names = [m.kernel for m in self.mats]
        return names[0] if len(names) == 1 else f"low rank ({names[1]}, {names[0]})"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.mats) == 1 and isinstance(self.mats[0], kernels.Dense):  # one product, the bias fused in
            return F.linear(x, self.mats[0].w, self.bias)
        for m in reversed(self.mats):
            x = m(x)
        return x if self.bias is None else x + self.bias


class Gather(nn.Module):
    """An embedding: rows of a dense table in the runtime's dtype (times `embed_scale`)."""

    label = "embedding lookup"

    def __init__(self, table: torch.Tensor, padding_idx, embed_scale):
        super().__init__()
        self.register_buffer("table", table)
        self.padding_idx, self.embed_scale = padding_idx, embed_scale

    def forward(self, ids):
        rows = F.embedding(ids, self.table, self.padding_idx)
        return rows if self.embed_scale is None else rows * self.embed_scale


@dataclass(frozen=True)
class LayerKernel:
    name: str
    kernel: str  # 'int4', 'int8', 'csr', '2:4', 'dense', 'dense fallback', 'low rank (B's, A's)', ...
    note: str  # why: the format, or why no faster kernel


@dataclass
class Runtime:
    model: nn.Module
    dtype: torch.dtype
    layers: list[LayerKernel]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.layers:
            out[row.kernel] = out.get(row.kernel, 0) + 1
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def held_bytes(self) -> int:
        return held_bytes(self.model)


def held_bytes(model: nn.Module) -> int:
    """Bytes of every tensor a model holds (each storage once; a CSR matrix by its parts)."""
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers(), *_sparse_tensors(model)]:
        key = id(t) if t.is_sparse_csr or hasattr(t, "__tensor_flatten__") else t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += _nbytes(t)
    return total


def _sparse_tensors(model):
    for m in model.modules():
        if isinstance(m, (kernels.Csr, kernels.SemiStructured)):
            yield m.w


def _nbytes(t: torch.Tensor) -> int:
    if t.is_sparse_csr:
        return sum(x.numel() * x.element_size() for x in (t.values(), t.col_indices(), t.crow_indices()))
    if hasattr(t, "__tensor_flatten__"):  # a tensor subclass (2:4 semi-structured): its inner tensors
        inner = [getattr(t, name) for name in t.__tensor_flatten__()[0]]
        return sum(_nbytes(x) for x in inner if x is not None)
    return t.untyped_storage().nbytes()


def cast(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """A copy of `model` computing in `dtype`: its parameters its own, the original's untouched."""
    copy = module_copy(model)
    set_parameters(copy, lambda name, p: nn.Parameter(p.detach().to(dtype), requires_grad=False))
    return copy


def build(work, dtype: torch.dtype = torch.bfloat16, workload=None) -> Runtime:
    """The runtime model of the recipe `work` holds (uncompressed before any apply). With a
    `workload` (engine.speed.tuning.Workload), each int8 or int4 kernel runs only where it is measured
    at least as fast as the dense product on this machine (choosing.matmul)."""
    ex = work.explorer
    model = cast(work.model, dtype)
    rows, stacked = [], set()
    bases: dict[tuple, kernels.Matmul] = {}  # a basis shared by a group of layers (engine.methods.shared): one module
    for info in ex.layers:
        if info.index is not None or info.role == "router":  # a matrix inside a parameter
            module_name = info.param_name.rpartition(".")[0]
            if module_name not in stacked:
                stacked.add(module_name)
                materialize(model.get_submodule(module_name), dtype)
            rows.append(LayerKernel(info.name, "dense (experts)" if info.index is not None else "dense",
                                    "the experts module computes with its stored values"))
            continue
        module = model.get_submodule(info.name)
        stored = work.stored.get(info.tied_to or info.name)
        if isinstance(module, CompressedEmbedding):
            new = Gather(module.stored.matrix().detach().to(dtype), module.padding_idx, module.embed_scale)
            rows.append(LayerKernel(info.name, new.label, "rows read from a dense table"))
        elif isinstance(module, CompressedLinear):
            bias = None if module.bias is None else module.bias.detach().to(dtype)
            if stored is None:
                mats = [kernels.Dense(module.stored.matrix().detach(), dtype, "left at 16 bits")]
            else:
                group = stored.share.group if stored.share is not None else None
                mats = [bases[group] if k == 1 and group in bases
                        else choosing.matmul(m, stored.recipe, dtype, workload) for k, m in enumerate(stored.matrices)]
                if group is not None:
                    bases.setdefault(group, mats[1])
            new = KernelLinear(mats, bias)
            rows.append(LayerKernel(info.name, new.label, "; ".join(m.note for m in reversed(mats) if m.note)))
        else:
            continue
        replace_module(model, info.name, new)
    model.eval()
    return Runtime(model, dtype, rows)
