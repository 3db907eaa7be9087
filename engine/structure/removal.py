"""How many heads, channels and blocks a recipe removes (the plan), which ones (from their
scores), and the smaller model with them sliced out (the surgery).

    plan = counts(recipe, found)                      # per block: groups and channels to remove
    structure = choose(plan, head_scores, channel_scores, block_scores)
    smaller = remove(model, structure)                # a new model; `model` is not changed

Counts, stated once (engine.drivers.footprint counts from a config with the same rules):
- heads: a block has G key/value groups (a key/value head and the query heads that read it;
  without grouped-query attention, one head each); a fraction f removes floor(f G + 1/2) of
  them, at most G - 1 (a block keeps at least one group). f is the block's own: the recipe's
  `prune_heads`, or a per-layer rule's that matches the block's output projection (o).
- channels: floor(f C + 1/2) of the MLP's C intermediate channels, at most C - 1; f from the
  rule matching the block's down projection. Gate, up and down lose the same channel.
- blocks: `remove_blocks` (explicit indices), or the `prune_blocks` least important ones.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch import nn

from engine.errors import UserError
from engine.structure import blocks as blocks_
from engine.structure.importance import group_columns, lowest


def removed_count(fraction: float, total: int) -> int:
    """How many of `total` parts a fraction removes: floor(f total + 1/2), at most total - 1.

    >>> removed_count(0.25, 3), removed_count(0.5, 3), removed_count(0.25, 1536), removed_count(0.99, 4)
    (1, 2, 384, 3)
    """
    return min(total - 1, math.floor(fraction * total + 0.5))


@dataclass(frozen=True)
class Plan:
    """How many parts to remove: per block of the original, key/value groups and channels; and
    the blocks themselves (explicit indices, or a count of the least important)."""

    blocks: int
    groups: tuple[int, ...]  # per block: groups it has
    channels: tuple[int, ...]  # per block: channels it has
    remove_groups: tuple[int, ...]
    remove_channels: tuple[int, ...]
    remove_blocks: tuple[int, ...] | int

    @property
    def empty(self) -> bool:
        return not (any(self.remove_groups) or any(self.remove_channels) or self.remove_blocks)


def plan_for(recipe, n_blocks: int, groups: int, channels: int, o_name, down_name) -> Plan:
    """The counts of `recipe` for `n_blocks` blocks of `groups` key/value groups and `channels`
    MLP channels each; `o_name(k)` and `down_name(k)` give block k's projection names, which
    the recipe's per-layer rules match."""
    heads = tuple(removed_count(recipe.for_layer(o_name(k)).prune_heads, groups) for k in range(n_blocks))
    mlp = tuple(removed_count(recipe.for_layer(down_name(k)).prune_channels, channels) for k in range(n_blocks))
    if recipe.remove_blocks:
        drop: tuple[int, ...] | int = recipe.block_indices()
        bad = [k for k in drop if k >= n_blocks]
        if bad or len(drop) >= n_blocks:
            raise UserError(f"remove_blocks: the model has blocks 0..{n_blocks - 1} and must keep one, "
                            f"got {recipe.remove_blocks}")
    else:
        drop = recipe.prune_blocks
        if drop >= n_blocks:
            raise UserError(f"prune_blocks: the model has {n_blocks} blocks and must keep one, got {drop}")
    return Plan(n_blocks, (groups,) * n_blocks, (channels,) * n_blocks, heads, mlp, drop)


def counts(recipe, found: blocks_.Found) -> Plan:
    """The plan of `recipe` on the model whose blocks are `found`."""
    b = found.blocks[0]
    q, kv, _ = blocks_.heads(b, found.layout)
    return plan_for(recipe, len(found.blocks), kv, blocks_.channels(b, found.layout),
                    lambda k: found.names(k, found.layout.o)[0], lambda k: found.names(k, found.layout.down)[0])


@dataclass(frozen=True)
class Structure:
    """What a structured recipe keeps, by index into the original: the blocks, and in each kept
    block (in order) its key/value groups and MLP channels."""

    blocks: int  # the original's
    groups: int  # per block in the original
    channels: int
    kept_blocks: tuple[int, ...]
    kept_groups: tuple[tuple[int, ...], ...]  # per kept block
    kept_channels: tuple[tuple[int, ...], ...]
    importance: str

    @property
    def uniform(self) -> bool:
        """Whether every kept block has the same number of groups and of channels (a config holds one of each)."""
        return len({len(g) for g in self.kept_groups}) <= 1 and len({len(c) for c in self.kept_channels}) <= 1

    def to_dict(self) -> dict:
        return {"blocks": self.blocks, "groups": self.groups, "channels": self.channels,
                "kept_blocks": list(self.kept_blocks), "kept_groups": [list(g) for g in self.kept_groups],
                "kept_channels": [list(c) for c in self.kept_channels], "importance": self.importance}

    @classmethod
    def from_dict(cls, d: dict) -> "Structure":
        return cls(d["blocks"], d["groups"], d["channels"], tuple(d["kept_blocks"]),
                   tuple(tuple(g) for g in d["kept_groups"]), tuple(tuple(c) for c in d["kept_channels"]),
                   d["importance"])

    def summary(self) -> dict:
        """Counts for a report: blocks kept, and per kept block its groups and channels kept."""
        return {"blocks": f"{len(self.kept_blocks)} of {self.blocks}",
                "removed_blocks": [k for k in range(self.blocks) if k not in self.kept_blocks],
                "groups_kept": [len(g) for g in self.kept_groups], "groups": self.groups,
                "channels_kept": [len(c) for c in self.kept_channels], "channels": self.channels,
                "importance": self.importance}


def compose(outer: Structure | None, inner: Structure) -> Structure:
    """What of the original a model keeps when `inner` (by index into a model) is cut from a model
    that kept `outer` of the original (None: the original itself).

    >>> outer = Structure(3, 2, 4, (0, 2), ((0, 1), (1,)), ((0, 1, 3), (0, 1, 2, 3)), "magnitude")
    >>> inner = Structure(2, 2, 3, (1,), ((0,),), ((1, 2),), "magnitude")
    >>> c = compose(outer, inner); c.kept_blocks, c.kept_groups, c.kept_channels, c.groups, c.channels
    ((2,), ((1,),), ((1, 2),), 2, 4)
    """
    if outer is None:
        return inner
    at = inner.kept_blocks  # indices into the blocks `outer` kept
    return Structure(outer.blocks, outer.groups, outer.channels, tuple(outer.kept_blocks[k] for k in at),
                     tuple(tuple(outer.kept_groups[i][g] for g in gs) for i, gs in zip(at, inner.kept_groups)),
                     tuple(tuple(outer.kept_channels[i][c] for c in cs) for i, cs in zip(at, inner.kept_channels)),
                     inner.importance)


def choose(plan: Plan, head_scores, channel_scores, block_scores, importance: str) -> Structure:
    """The parts to keep: `block_scores()` (one per block) when blocks are counted, then in each
    kept block k, all but the lowest `head_scores(k)` and `channel_scores(k)` (called only
    where something is removed). Ties go to the lower index (importance.lowest)."""
    if isinstance(plan.remove_blocks, int):
        drop = set(lowest(block_scores(), plan.remove_blocks)) if plan.remove_blocks else set()
    else:
        drop = set(plan.remove_blocks)
    kept = tuple(k for k in range(plan.blocks) if k not in drop)

    def keep(total, count, scores):
        gone = set(lowest(scores(), count)) if count else set()
        return tuple(i for i in range(total) if i not in gone)

    return Structure(plan.blocks, plan.groups[0], plan.channels[0], kept,
                     tuple(keep(plan.groups[k], plan.remove_groups[k], lambda k=k: head_scores(k)) for k in kept),
                     tuple(keep(plan.channels[k], plan.remove_channels[k], lambda k=k: channel_scores(k))
                           for k in kept), importance)


def _rows(width: int, kept: tuple[int, ...], device) -> torch.Tensor:
    """The indices of the rows of the kept groups of `width` rows each."""
    return torch.cat([torch.arange(group_columns(g, width).start, group_columns(g, width).stop, device=device)
                      for g in kept])


def _sliced(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new nn.Linear holding `linear`'s kept rows (outputs) and columns (inputs)."""
    w = linear.weight.detach()
    w = w if rows is None else w.index_select(0, rows)
    w = w if cols is None else w.index_select(1, cols)
    new = nn.Linear(w.shape[1], w.shape[0], bias=linear.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if linear.bias is not None:
            new.bias.copy_(linear.bias.detach() if rows is None else linear.bias.detach().index_select(0, rows))
    new.requires_grad_(linear.weight.requires_grad)
    return new


def _set(block: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(block.get_submodule(parent) if parent else block, child, module)


def remove(model: nn.Module, structure: Structure) -> nn.Module:
    """A copy of `model` with the parts `structure` does not keep removed: blocks out of the
    block list (the rest renumbered for the key/value cache), and in each kept block the
    sliced projections. The copy shares every tensor it does not slice with `model`; its
    config gives the new counts where one number per model holds them (`Structure.uniform`)."""
    memo = {id(t): t for t in [*model.parameters(), *model.buffers()]}
    new = copy.deepcopy(model, memo)
    found = blocks_.find(new)
    layout = found.layout
    kept_blocks = [found.blocks[k] for k in structure.kept_blocks]
    for block, groups, chans in zip(kept_blocks, structure.kept_groups, structure.kept_channels):
        q_heads, kv_heads, d = blocks_.heads(block, layout)
        per = q_heads // kv_heads  # query heads per group
        dev = block.get_submodule(layout.q).weight.device
        if len(groups) < kv_heads:
            q_rows, kv_rows = _rows(per * d, groups, dev), _rows(d, groups, dev)
            for path, rows in ((layout.q, q_rows), (layout.k, kv_rows), (layout.v, kv_rows)):
                _set(block, path, _sliced(block.get_submodule(path), rows=rows))
            _set(block, layout.o, _sliced(block.get_submodule(layout.o), cols=q_rows))
            attn = block.get_submodule(layout.attention)
            for attr, value in (("num_heads", per * len(groups)), ("num_attention_heads", per * len(groups)),
                                ("num_key_value_heads", len(groups)), ("all_head_size", per * len(groups) * d)):
                if hasattr(attn, attr):
                    setattr(attn, attr, value)
        if len(chans) < blocks_.channels(block, layout):
            idx = torch.tensor(chans, device=dev)
            for path in layout.mlp_inputs():
                _set(block, path, _sliced(block.get_submodule(path), rows=idx))
            _set(block, layout.down, _sliced(block.get_submodule(layout.down), cols=idx))
    parent, _, child = found.path.rpartition(".")
    setattr(new.get_submodule(parent) if parent else new, child, nn.ModuleList(kept_blocks))
    for k, block in enumerate(kept_blocks):
        for m in block.modules():
            if hasattr(m, "layer_idx"):
                m.layer_idx = k
    _configure(new.config, structure, kept_blocks[0], layout)
    return new


def _configure(config, structure: Structure, block: nn.Module, layout: blocks_.Layout) -> None:
    """The config of the smaller model: block count (and per-block layer types), and where every
    block has the same counts, the head counts and MLP width (the head width kept explicit)."""
    config.num_hidden_layers = len(structure.kept_blocks)
    if isinstance(getattr(config, "layer_types", None), list):
        config.layer_types = [config.layer_types[k] for k in structure.kept_blocks]
    if not structure.uniform:
        return
    q_heads, kv_heads, d = blocks_.heads(block, layout)
    if q_heads != config.num_attention_heads and hasattr(config, "num_key_value_heads"):
        config.head_dim = d
        config.num_attention_heads, config.num_key_value_heads = q_heads, kv_heads
    config.intermediate_size = blocks_.channels(block, layout)


def config_holds(model: nn.Module) -> bool:
    """Whether `model`'s config describes its shapes (transformers can then build it from the
    config alone): every block with the config's head counts and MLP width."""
    found = blocks_.find(model)
    c = model.config
    return len(found.blocks) == c.num_hidden_layers and all(
        blocks_.heads(b, found.layout)[:2] == (c.num_attention_heads, getattr(c, "num_key_value_heads", None)
                                               or c.num_attention_heads)
        and blocks_.channels(b, found.layout) == c.intermediate_size for b in found.blocks)


def _numel(block: nn.Module, paths, bias: bool = True) -> int:
    out = 0
    for p in paths:
        m = block.get_submodule(p)
        out += m.weight.numel() + (m.bias.numel() if bias and m.bias is not None else 0)
    return out


def each_removes(recipe, found: blocks_.Found) -> dict:
    """What each structured field of `recipe` removes on its own from the model whose blocks are
    `found`, for the app's controls: {'heads' | 'channels' | 'blocks': {'what': words, 'params': n}}
    (only the fields that remove something). A group's parameters are its share of q, k, v (with
    their biases) and of o's columns; a channel's, its rows of gate and up and its column of down;
    a block's, every parameter in it. The whole recipe's count is the applied model's (parts of a
    removed block are not counted twice there)."""
    plan = counts(recipe, found)
    lay, out = found.layout, {}
    b = found.blocks[0]
    groups, chans = plan.groups[0], plan.channels[0]
    per_group = (_numel(b, (lay.q, lay.k, lay.v)) + b.get_submodule(lay.o).weight.numel()) // groups
    per_channel = (_numel(b, lay.mlp_inputs()) + b.get_submodule(lay.down).weight.numel()) // chans
    if any(plan.remove_groups):
        out["heads"] = {"what": _per_block(plan.remove_groups, groups, "key/value groups"),
                        "params": per_group * sum(plan.remove_groups)}
    if any(plan.remove_channels):
        out["channels"] = {"what": _per_block(plan.remove_channels, chans, "MLP channels"),
                           "params": per_channel * sum(plan.remove_channels)}
    n = plan.remove_blocks if isinstance(plan.remove_blocks, int) else len(plan.remove_blocks)
    if n:
        out["blocks"] = {"what": f"{n} of {plan.blocks} blocks", "params": n * sum(p.numel() for p in b.parameters())}
    return out


def _per_block(removed: tuple[int, ...], total: int, what: str) -> str:
    """'1 of 3 key/value groups in each of 30 blocks', or a range where rules make blocks differ."""
    lo, hi = min(removed), max(removed)
    return (f"{lo} of {total} {what} in each of {len(removed)} blocks" if lo == hi
            else f"{lo} to {hi} of {total} {what} per block")


def describe(s: dict) -> str:
    """A workspace report's 'structure' in one line: 'smaller model: 26 of 30 blocks (removed 13,
    14, 15, 17); 2 of 3 key/value groups per block; 1152 of 1536 MLP channels per block; ...'."""
    def per_block(kept, total, what):
        lo, hi = min(kept), max(kept)
        return f"{lo} of {total} {what} per block" if lo == hi else f"{lo} to {hi} of {total} {what} per block"

    removed = f" (removed {', '.join(map(str, s['removed_blocks']))})" if s["removed_blocks"] else ""
    return (f"smaller model: {s['blocks']} blocks{removed}; {per_block(s['groups_kept'], s['groups'], 'key/value groups')}"
            f"; {per_block(s['channels_kept'], s['channels'], 'MLP channels')}; {s['params']:,} of "
            f"{s['original_params']:,} parameters (importance: {s['importance']})")
