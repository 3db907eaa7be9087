"""The Trade-offs page's variants: the methods put side by side on one grid, and llama.cpp's
mixes and types, each its own points."""
from __future__ import annotations

from engine.formats import FORMATS
from engine.recipe.fields import SHARE_BLOCKS, RecipeError
from engine.recipe.presets import PRESETS
from engine.recipe.recipe import Recipe

PLAIN = {"lowrank_method": "svd", "share_blocks": SHARE_BLOCKS, "prune_method": "magnitude", "quant_method": "rtn",
         "act_order": False}

METHOD_VARIANTS = {
    "As in the sidebar": None,
    "Plain (SVD, magnitude, round to nearest)": PLAIN,
    "Calibrated (whitened SVD, Wanda, GPTQ)": {"lowrank_method": "whitened", "prune_method": "wanda",
                                               "quant_method": "gptq", "act_order": False},
    "k-means weight sharing": {"quant_method": "kmeans", "act_order": False},
    "HQQ (half-quadratic fit, no calibration)": {"lowrank_method": "svd", "prune_method": "magnitude",
                                                 "quant_method": "hqq", "act_order": False},
    "AWQ (activation-aware scales)": {"lowrank_method": "svd", "prune_method": "magnitude", "quant_method": "awq",
                                      "act_order": False},
    "SparseGPT (pruning with weight update)": {"lowrank_method": "svd", "prune_method": "sparsegpt",
                                               "quant_method": "rtn", "act_order": False},
    "Basis Sharing (2 blocks share a basis)": {"lowrank_method": "shared", "share_blocks": 2,
                                               "prune_method": "magnitude", "quant_method": "rtn", "act_order": False},
}

# number formats with their own bits and blocks, beside the grid: each its own point
FORMAT_VARIANTS = {"Number formats (NF4, FP4, MXFP4, NVFP4, FP8)": ("nf4", "fp4", "mxfp4", "nvfp4", "fp8_e4m3",
                                                                    "fp8_e5m2")}


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
        return [Recipe(number_format=f, quant_method="gptq", include_embeddings=True) for f in FORMATS if FORMATS[f].legacy]
    return [explorer.preset(p, quant_method=method) for p in PRESETS]


def format_points(variant: str, sidebar: Recipe) -> list[Recipe]:
    """The recipes of a number-format variant: each format on the layers the sidebar selects
    (no low rank or pruning: these formats store every value of a full matrix)."""
    return [Recipe(number_format=f, group=sidebar.group, layers=sidebar.layers,
                   include_embeddings=sidebar.include_embeddings) for f in FORMAT_VARIANTS[variant]]


def with_methods(recipe: Recipe, variant: str, sidebar: Recipe) -> Recipe:
    """`recipe` with the methods of a Trade-offs variant (the sidebar's for 'As in the sidebar').
    Raises RecipeError where the variant's methods cannot take that point (e.g. a shared basis
    with GPTQ)."""
    fields = METHOD_VARIANTS[variant] or {k: getattr(sidebar, k) for k in
                                          ("lowrank_method", "share_blocks", "prune_method", "quant_method",
                                           "act_order")}
    fields = {"share_blocks": SHARE_BLOCKS, **fields}  # the sidebar's only goes with a shared basis
    if fields["quant_method"] == "imatrix" and recipe.number_format == "int":  # the grid's points are int
        fields = {**fields, "quant_method": "rtn"}
    return Recipe.from_dict({**recipe.to_dict(), **fields})


def method_points(grid: list[Recipe], variant: str, sidebar: Recipe) -> tuple[list[Recipe], list[str]]:
    """The grid's points with a variant's methods, and one line for each point they cannot take."""
    points, refused = [], []
    for r in grid:
        try:
            points.append(with_methods(r, variant, sidebar))
        except RecipeError as e:
            refused.append(f"{variant}, {r.describe()}: {e}")
    return points, refused
