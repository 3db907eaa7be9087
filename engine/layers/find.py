"""Finding the compressible layers of a model by type, and the one place that changes its modules.
"""
from __future__ import annotations

from torch import nn

from engine.layers import KINDS, LayerInfo
from engine.layers.experts import is_router, is_transposed, stacked_params
from engine.layers.kinds import Stored, replace_module


def layer_group(model: nn.Module, name: str) -> str:
    """'attention' when an enclosing module's class is an attention module (its class name
    says so: LlamaAttention, GPT2Attention, BertAttention...); 'mlp' for any other layer inside
    a numbered transformer block (feed-forward, gate/up/down, BERT's intermediate/output);
    'other' for the rest (poolers, classifier heads). Experts and routers have their own
    groups (engine.layers.experts).

    >>> class LlamaAttention(nn.ModuleDict): pass
    >>> block = nn.ModuleDict({"self_attn": LlamaAttention({"q_proj": nn.Linear(4, 4)}),
    ...                        "mlp": nn.ModuleDict({"down_proj": nn.Linear(4, 4)})})
    >>> model = nn.ModuleDict({"model": nn.ModuleDict({"layers": nn.ModuleList([block])}),
    ...                        "score": nn.Linear(4, 2)})
    >>> layer_group(model, "model.layers.0.mlp.down_proj")
    'mlp'
    >>> layer_group(model, "model.layers.0.self_attn.q_proj"), layer_group(model, "score")
    ('attention', 'other')
    """
    parts = name.split(".")
    for i in range(len(parts) - 1, 0, -1):
        cls = type(model.get_submodule(".".join(parts[:i]))).__name__.lower()
        if "attention" in cls or cls.endswith("attn"):
            return "attention"
    return "mlp" if any(p.isdigit() for p in parts[:-1]) else "other"


BLOCK_ROLES = ("linear", "conv1d")  # the kinds found anywhere by type (embeddings and head: by position)


def find_layers(model: nn.Module) -> list[LayerInfo]:
    """Every compressible matrix, embeddings, head, experts and routers included (their role
    and group say which), in model order. A head, or another embedding module (T5's and BART's
    encoder and decoder `embed_tokens`), that shares the input embedding's weight is listed as
    tied to it."""
    emb, head = _module(model, "get_input_embeddings"), _module(model, "get_output_embeddings")
    names = {id(m): n for n, m in model.named_modules()}
    stacked, linear_gates = find_experts(model)
    found, by_module = [], {}
    for info in stacked:
        by_module.setdefault(info.param_name.rpartition(".")[0] if info.index is not None else info.name,
                             []).append(info)
    for name, module in model.named_modules():
        if name in by_module:
            found += by_module[name]
        elif module is emb and isinstance(module, nn.Embedding):
            found.append(LayerInfo(name, KINDS["embedding"].shape(module), "embedding"))
        elif module is head and isinstance(module, nn.Linear):
            tied = emb is not None and module.weight is getattr(emb, "weight", None)
            found.append(LayerInfo(name, KINDS["head"].shape(module), "head", names[id(emb)] if tied else None))
        elif isinstance(module, nn.Embedding) and emb is not None and module.weight is getattr(emb, "weight", None):
            found.append(LayerInfo(name, KINDS["embedding"].shape(module), "embedding", names[id(emb)]))
        else:
            role = next((r for r in BLOCK_ROLES if isinstance(module, KINDS[r].module_type)), None)
            if role is not None:
                group = "router" if name in linear_gates else layer_group(model, name)
                found.append(LayerInfo(name, KINDS[role].shape(module), role, group=group))
    return found


def _module(model: nn.Module, getter: str) -> nn.Module | None:
    """model.get_input_embeddings() or get_output_embeddings(); None where the model has none
    (transformers raises NotImplementedError for a model without such a module, e.g. a ResNet)."""
    try:
        return getattr(model, getter)() if hasattr(model, getter) else None
    except NotImplementedError:
        return None


def select(layers: list[LayerInfo], recipe) -> list[LayerInfo]:
    """The layers a recipe compresses: those its group and name pattern select, embeddings and
    head only when it includes them, routers only when its group or name pattern asks for them,
    and never a tied head (it follows its embedding)."""
    return [
        i for i in layers
        if i.tied_to is None and recipe.selects(i.name, i.group)
        and (recipe.include_embeddings or i.role not in ("embedding", "head"))
        and (i.group != "router" or recipe.group == "router" or recipe.layers is not None)
    ]


def install(model: nn.Module, layers: list[LayerInfo]) -> dict[str, Stored]:
    """Module surgery, done once on a working copy: put a `Stored` holder in every layer.

    Returns name -> holder; a tied head or embedding shares its embedding's holder. Holders
    start with the layer's own weight, so the model computes exactly what it did before.
    """
    holders: dict[str, Stored] = {}
    for info in layers:
        if info.tied_to is None:
            holders[info.name] = info.kind.install(model, info)
    for info in layers:
        if info.tied_to is not None:
            holders[info.name] = holders[info.tied_to]
            replace_module(model, info.name, info.kind.stand_in(model.get_submodule(info.name), holders[info.tied_to]))
    return holders


def find_experts(model: nn.Module) -> tuple[list[LayerInfo], dict[str, LayerInfo]]:
    """(expert and router layers, in model order; name -> router info for the nn.Linear gates
    found beside experts). A Linear gate is reported by engine.layers.find.find_layers as a linear
    layer of group 'router'."""
    found, linear_gates = [], {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        stacks = stacked_params(module)
        for pname, p in stacks:
            role = "expert_t" if is_transposed(module) else "expert"
            shape = tuple(p.shape[1:])[::-1] if role == "expert_t" else tuple(p.shape[1:])
            found += [LayerInfo(f"{prefix}{pname}.{e}", shape, role, group="experts", index=e)
                      for e in range(p.shape[0])]
        if is_router(module):
            found.append(LayerInfo(name, tuple(module.weight.shape), "router", group="router"))
        experts = [m for m in module.children() if stacked_params(m)]
        if experts:
            count = stacked_params(experts[0])[0][1].shape[0]
            for child, m in module.named_children():
                if isinstance(m, nn.Linear) and m.out_features <= count:
                    linear_gates[f"{prefix}{child}"] = m
    return found, linear_gates
