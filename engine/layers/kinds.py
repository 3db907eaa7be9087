"""Which layers can be compressed, and the one place that changes a model's modules.

Layers are found by type, never by an architecture path: `nn.Linear`, GPT-2's
`transformers.pytorch_utils.Conv1D` (whose weight is stored (in, out), transposed), and the
experts of mixture-of-experts models, one matrix per expert of a 3-D parameter (engine.layers.experts).
Input embeddings and the output head are reported and left alone unless asked for; so are
the routers of mixture-of-experts models.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers.pytorch_utils import Conv1D

# ---------------------------------------------------------------------------------------
# Layer kinds: where a kind of layer's matrix comes from and goes back to
# ---------------------------------------------------------------------------------------


class LayerKind:
    """A kind of compressible layer. `read` gives its matrix as (out, in), `to_param` turns an
    (out, in) matrix back into the layout of its parameter, and `stand_in` makes the module
    that computes with a Stored holder in its place. Adding a kind is one subclass here and
    one entry in engine.layers.KINDS. `info`, where a method takes it,
    is the layer's LayerInfo (engine.layers)."""

    module_type: type = nn.Linear

    def shape(self, module: nn.Module) -> tuple[int, int]:
        return tuple(self.read(module).shape)

    def read(self, module: nn.Module) -> torch.Tensor:
        return module.weight

    def to_param(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix

    def from_param(self, param: torch.Tensor) -> torch.Tensor:
        return self.to_param(param)  # every layout here is its own inverse

    def matrix(self, model: nn.Module, info) -> torch.Tensor:
        """The layer's (out, in) matrix in `model`."""
        return self.read(model.get_submodule(info.name))

    def install(self, model: nn.Module, info) -> "Stored":
        """Put a holder in the layer's place in `model` (module surgery) and return it."""
        module = model.get_submodule(info.name)
        stored = Stored(self.read(module).detach())
        replace_module(model, info.name, self.stand_in(module, stored))
        return stored

    def stand_in(self, module: nn.Module, stored: "Stored") -> nn.Module:
        return CompressedLinear(stored, module.bias)


class Conv1DKind(LayerKind):
    """GPT-2's Conv1D: y = x W + b with W stored (in, out), so the matrix is its transpose."""

    module_type = Conv1D

    def shape(self, module: nn.Module) -> tuple[int, int]:
        return (module.nf, module.weight.shape[0])

    def read(self, module: nn.Module) -> torch.Tensor:
        return module.weight.t()

    def to_param(self, matrix: torch.Tensor) -> torch.Tensor:
        return matrix.t()


class EmbeddingKind(LayerKind):
    """The input embeddings: a (vocab, dim) table looked up by row."""

    module_type = nn.Embedding

    def stand_in(self, module: nn.Module, stored: "Stored") -> nn.Module:
        # a scaled embedding (BART's, Gemma's) multiplies its rows by embed_scale: so does its stand-in
        return CompressedEmbedding(stored, module.padding_idx, getattr(module, "embed_scale", None))


def weight_matrix(module: nn.Module) -> torch.Tensor:
    """The weight as an (out, in) matrix; Conv1D stores (in, out) and is transposed (a view)."""
    return (Conv1DKind() if isinstance(module, Conv1D) else LayerKind()).read(module)


# ---------------------------------------------------------------------------------------
# The compressed stand-ins
# ---------------------------------------------------------------------------------------


class Stored(nn.Module):
    """What a compressed matrix holds: a dense W (out, in), or factors A (out, r) and B (r, in)."""

    def __init__(self, w: torch.Tensor):
        super().__init__()
        self.set(w)

    def set(self, w: torch.Tensor | None = None, a: torch.Tensor | None = None, b: torch.Tensor | None = None):
        self.w, self.a, self.b = w, a, b

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """What is stored: (W,) or (A, B)."""
        return (self.w,) if self.a is None else (self.a, self.b)

    def fill(self, tensors) -> None:
        """Store (W,) or (A, B)."""
        self.set(w=tensors[0]) if len(tensors) == 1 else self.set(a=tensors[0], b=tensors[1])

    def matrix(self) -> torch.Tensor:
        return self.w if self.a is None else self.a @ self.b  # (out, r) @ (r, in)

    def linear(self, x: torch.Tensor) -> torch.Tensor:
        if self.a is None:
            return F.linear(x, self.w)
        return F.linear(F.linear(x, self.b), self.a)  # x B^T A^T


class CompressedLinear(nn.Module):
    """Stands in for nn.Linear / Conv1D: y = x W^T + bias, with W as `stored` holds it."""

    def __init__(self, stored: Stored, bias: torch.Tensor | None):
        super().__init__()
        self.stored = stored
        self.bias = bias

    @property
    def weight(self) -> torch.Tensor:  # some models read linear.weight (T5's feed-forward: its dtype)
        return self.stored.matrix()  # W, or A @ B computed on each read

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stored.linear(x)
        return y if self.bias is None else y + self.bias


class CompressedEmbedding(nn.Module):
    """Stands in for nn.Embedding: row lookup in W, or in A then times B (then times the
    module's `embed_scale`, for a scaled embedding)."""

    def __init__(self, stored: Stored, padding_idx: int | None, embed_scale=None):
        super().__init__()
        self.stored = stored
        self.padding_idx = padding_idx
        self.embed_scale = embed_scale

    @property
    def weight(self) -> torch.Tensor:  # some models read embedding.weight directly
        return self.stored.matrix()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        s = self.stored
        if s.a is None:
            rows = F.embedding(ids, s.w, self.padding_idx)
        else:
            rows = F.embedding(ids, s.a) @ s.b  # (..., r) @ (r, dim)
        return rows if self.embed_scale is None else rows * self.embed_scale




def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)
