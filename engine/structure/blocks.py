"""Where a transformer block's projections are, for the block classes structured pruning knows.

A model's blocks are the children of the nn.ModuleList whose modules are of a class in LAYOUTS
(found by type, as every layer is); each layout names, inside the block, the four attention
projections and the MLP's (a gated MLP has three). Adding a family is one row.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    ...                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=50))
    >>> found = find(m)
    >>> found.path, len(found.blocks), found.layout.q, heads(found.blocks[0], found.layout)
    ('model.layers', 2, 'self_attn.q_proj', (4, 2, 8))
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from engine.errors import UserError


@dataclass(frozen=True)
class Layout:
    """Paths inside one block: the attention projections (q, k, v take the hidden state, o writes
    it back), the attention module that holds the head counts, and the MLP's projections (up and
    down; `gate` beside up in a gated MLP, None otherwise)."""

    q: str
    k: str
    v: str
    o: str
    attention: str
    up: str
    down: str
    gate: str | None = None
    attn_norm: str | None = None  # a pre-norm block's norms, whose outputs only q, k, v (and gate, up) read
    mlp_norm: str | None = None
    linear_mlp_product: bool = False  # the down projection reads act(gate) x up: linear in up's rows

    def mlp_inputs(self) -> tuple[str, ...]:
        """The projections whose output rows are the MLP's channels (gate and up, or up)."""
        return (self.gate, self.up) if self.gate else (self.up,)


_DECODER = Layout("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "self_attn",
                  "mlp.up_proj", "mlp.down_proj", "mlp.gate_proj", "input_layernorm", "post_attention_layernorm",
                  True)
_BERT = Layout("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
               "attention.self", "intermediate.dense", "output.dense")

LAYOUTS: dict[str, Layout] = {
    "LlamaDecoderLayer": _DECODER,
    "MistralDecoderLayer": _DECODER,
    "Qwen2DecoderLayer": _DECODER,
    "Qwen3DecoderLayer": _DECODER,
    "BertLayer": _BERT,
}


@dataclass(frozen=True)
class Found:
    """A model's blocks: the ModuleList's path, its blocks in order, and their layout."""

    path: str
    blocks: tuple[nn.Module, ...]
    layout: Layout

    def names(self, k: int, *parts: str) -> tuple[str, ...]:
        """Full module names of `parts` (layout paths) in block k."""
        return tuple(f"{self.path}.{k}.{p}" for p in parts)


def find(model: nn.Module) -> Found:
    """The model's blocks, or a UserError naming the block classes structured pruning knows."""
    for path, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and type(module[0]).__name__ in LAYOUTS:
            return Found(path, tuple(module), LAYOUTS[type(module[0]).__name__])
    raise UserError(f"structured pruning: {type(model).__name__} has no blocks of a known layout "
                    f"(it knows {', '.join(LAYOUTS)})")


@dataclass(frozen=True)
class FoldGroup:
    """Layers that read one input, and the module that makes it: scaling their input columns by s
    is exact when that module's output is divided by s. `kind` 'norm': a norm's weight (and bias)
    divided by s; 'rows': a linear's rows (and bias) divided by s."""

    layers: tuple[str, ...]
    absorber: str
    kind: str


def fold_groups(model: nn.Module) -> list[FoldGroup]:
    """Where input scales (AWQ's) can be folded into the module before, in a model of a known
    layout (none otherwise): a pre-norm block's q, k, v into its attention norm and gate, up into
    its MLP norm (their outputs feed nothing else: the residual is taken before the norm); the
    down projection into up's rows (it reads act(gate) x up); the attention output into v's rows
    where each query head has its own value head (no grouped-query attention: the attention is
    then linear in each value row). BERT's norms also feed the residual, and its MLP has a GELU
    between up and down: only its attention output folds, into the value rows.

    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> m = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
    ...                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=50))
    >>> [(g.layers[-1].split(".")[-1], g.absorber.split(".")[-1], g.kind) for g in fold_groups(m)]
    [('v_proj', 'input_layernorm', 'norm'), ('up_proj', 'post_attention_layernorm', 'norm'), ('down_proj', 'up_proj', 'rows')]
    """
    try:
        found = find(model)
    except UserError:
        return []
    lay, out = found.layout, []
    for k, block in enumerate(found.blocks):
        def name(*parts):
            return found.names(k, *parts)
        if lay.attn_norm:
            out.append(FoldGroup(name(lay.q, lay.k, lay.v), name(lay.attn_norm)[0], "norm"))
        q_heads, kv_heads, _ = heads(block, lay)
        if q_heads == kv_heads:
            out.append(FoldGroup(name(lay.o), name(lay.v)[0], "rows"))
        if lay.mlp_norm:
            out.append(FoldGroup(name(*lay.mlp_inputs()), name(lay.mlp_norm)[0], "norm"))
        if lay.linear_mlp_product:
            out.append(FoldGroup(name(lay.down), name(lay.up)[0], "rows"))
    return out


def head_dim(block: nn.Module, layout: Layout) -> int:
    """The width of one attention head."""
    attn = block.get_submodule(layout.attention)
    return int(getattr(attn, "head_dim", None) or attn.attention_head_size)


def heads(block: nn.Module, layout: Layout) -> tuple[int, int, int]:
    """(query heads, key/value heads, head width) of a block, read from its projections' shapes."""
    d = head_dim(block, layout)
    return (block.get_submodule(layout.q).out_features // d, block.get_submodule(layout.k).out_features // d, d)


def channels(block: nn.Module, layout: Layout) -> int:
    """The MLP's intermediate width."""
    return block.get_submodule(layout.down).in_features
