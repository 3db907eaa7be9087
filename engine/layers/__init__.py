"""Every kind of layer the explorer compresses, in one table, and the matrices found of each kind.

    role        kind              where its matrix lives
    linear      LayerKind         nn.Linear's weight (out, in)
    head        LayerKind         the output head, an nn.Linear
    conv1d      Conv1DKind        GPT-2's Conv1D weight, stored (in, out)
    embedding   EmbeddingKind     nn.Embedding's weight (vocabulary, hidden)
    expert      StackedKind       one expert's slice of a 3-D parameter (engine.layers.experts)
    expert_t    StackedKind       the same, stored (in, out)
    router      StackedKind       a router's 2-D weight that is not an nn.Linear

Adding a kind: a LayerKind subclass (engine.layers.kinds) and one entry here; engine.layers.find
finds its layers by type.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.layers.experts import STACKED_KINDS
from engine.layers.kinds import Conv1DKind, EmbeddingKind, LayerKind

KINDS: dict[str, LayerKind] = {"linear": LayerKind(), "head": LayerKind(), "conv1d": Conv1DKind(),
                               "embedding": EmbeddingKind(), **STACKED_KINDS}


@dataclass(frozen=True)
class LayerInfo:
    """A compressible matrix of the model."""

    name: str  # module path, e.g. 'encoder.layer.0.attention.self.query'
    shape: tuple[int, int]  # (out, in) as the matrix is used: y = x W^T
    role: str  # 'linear' | 'conv1d' | 'embedding' | 'head' | 'expert' | 'expert_t' | 'router'
    tied_to: str | None = None  # a head (or another embedding module) that shares the embedding's weight
    group: str = "other"  # 'attention' | 'mlp' | 'experts' | 'router' | 'other', see layer_group()
    index: int | None = None  # an expert: its index in the 3-D parameter (name: '<parameter>.<index>')

    @property
    def full_rank(self) -> int:
        return min(self.shape)

    @property
    def params(self) -> int:
        return self.shape[0] * self.shape[1]

    @property
    def kind(self) -> "LayerKind":
        return KINDS[self.role]

    @property
    def param_name(self) -> str:
        """The name of the parameter that holds the matrix (an expert's: the 3-D parameter)."""
        return self.name.rpartition(".")[0] if self.index is not None else f"{self.name}.weight"
