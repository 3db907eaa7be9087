"""A recipe's short human label (Recipe.describe): 'rank x0.5 · int4 g128 · 50% sparse'."""
from __future__ import annotations

from engine.methods import METHODS
from engine.recipe.fields import DISTILL_LR


def label(r) -> str:
    """The label of recipe `r`, its parts in a fixed order joined by ' · '; 'uncompressed' for none.

    >>> from engine.recipe.recipe import Recipe
    >>> label(Recipe(rank_ratio=0.5, bits=4, sparsity=0.5))
    'rank x0.5 · int4 g128 · 50% sparse'
    """
    parts = []

    def tag(method: str) -> str:
        return f" {METHODS[method].tag}" if METHODS[method].tag else ""

    low = f" shared by {r.share_blocks} blocks" if r.lowrank_method == "shared" else tag(r.lowrank_method)
    if r.rank is not None:
        parts.append(f"rank {r.rank}{low}")
    elif r.rank_ratio is not None and r.rank_ratio < 1:
        parts.append(f"rank x{r.rank_ratio:g}{low}")
    if r.number_format != "int":
        parts.append(r.number_format.upper() + tag(r.quant_method) + (" double-quant" if r.double_quant else ""))
    elif r.bits < 16 and METHODS[r.quant_method].stores == "codebook":
        parts.append(f"k-means {r.bits}-bit")
    elif r.bits < 16:
        g = {"tensor": "per-tensor", "channel": "per-channel"}.get(
            r.granularity, f"g{r.group_size}"
        )
        how = tag(r.quant_method) + (" act-order" if r.act_order else "")
        parts.append(f"int{r.bits} {g}{'' if r.symmetric else ' asym'}{how}")
    if r.sparsity > 0:
        parts.append(
            (r.pattern if r.pattern != "unstructured" else f"{r.sparsity:.0%} sparse")
            + tag(r.prune_method)
        )
    if r.prune_heads:
        parts.append(f"{r.prune_heads:.0%} heads removed")
    if r.prune_channels:
        parts.append(f"{r.prune_channels:.0%} MLP channels removed")
    if r.prune_blocks or r.remove_blocks:
        parts.append(f"{r.prune_blocks} blocks removed" if r.prune_blocks
                     else f"blocks {','.join(map(str, r.block_indices()))} removed")
    if r.group != "all":
        parts.append(f"{r.group} layers only")
    if r.layers is not None:
        parts.append(f"layers ~ /{r.layers}/")
    if r.include_embeddings:
        parts.append("with embeddings")
    if r.per_layer:
        parts.append(f"{len(r.per_layer)} per-layer rule{'s' if len(r.per_layer) > 1 else ''}")
    if r.schedule_steps:
        parts.append(f"gradual in {r.schedule_steps} steps")
    if r.distill_steps:
        parts.append(f"distilled {r.distill_steps} steps" + (" after each" if r.schedule_steps else "")
                     + (f" lr {r.distill_lr:g}" if r.distill_lr != DISTILL_LR else ""))
    return " · ".join(parts) or "uncompressed"
