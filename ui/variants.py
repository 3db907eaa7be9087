"""The Trade-offs page's variants: the methods put side by side on one grid, and llama.cpp's
mixes and types, each its own points."""
from __future__ import annotations

from engine.ggml.presets import PRESETS
from engine.recipe import Recipe
from engine.recipe_values import LEGACY_FORMATS

METHOD_VARIANTS = {
    "As in the sidebar": None,
    "Plain (SVD, magnitude, round to nearest)": {"lowrank_method": "svd", "prune_method": "magnitude",
                                                 "quant_method": "rtn", "act_order": False},
    "Calibrated (whitened SVD, Wanda, GPTQ)": {"lowrank_method": "whitened", "prune_method": "wanda",
                                               "quant_method": "gptq", "act_order": False},
    "k-means weight sharing": {"quant_method": "kmeans", "act_order": False},
}


# llama.cpp's formats, beside the grid: each its own points (the grid's values do not apply)
LLAMA_VARIANTS = {
    "llama.cpp's mixes (Q8_0 … Q2_K)": "rtn",
    "llama.cpp's mixes, importance matrix": "imatrix",
    "llama.cpp's Q4_0 … Q8_0 by GPTQ": "gptq",
}


def llama_points(variant: str, explorer) -> list[Recipe]:
    """The recipes of a llama.cpp variant on the explorer's model: each mix (embeddings and head
    included), or each legacy type by GPTQ (the embeddings, which have no calibration inputs,
    by round to nearest)."""
    method = LLAMA_VARIANTS[variant]
    if method == "gptq":
        return [Recipe(number_format=f, quant_method="gptq", include_embeddings=True) for f in LEGACY_FORMATS]
    return [explorer.preset(p, quant_method=method) for p in PRESETS]


def with_methods(recipe: Recipe, variant: str, sidebar: Recipe) -> Recipe:
    """`recipe` with the methods of a Trade-offs variant (the sidebar's for 'As in the sidebar')."""
    fields = METHOD_VARIANTS[variant] or {k: getattr(sidebar, k) for k in
                                          ("lowrank_method", "prune_method", "quant_method", "act_order")}
    if fields["quant_method"] == "imatrix" and recipe.number_format == "int":  # the grid's points are int
        fields = {**fields, "quant_method": "rtn"}
    return Recipe.from_dict({**recipe.to_dict(), **fields})


