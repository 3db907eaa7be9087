"""The compression explorer's engine: compress a real transformer, count its bytes, measure it.

    from engine import Explorer, Recipe
    explorer = Explorer.open("minilm")                       # one loaded model, shared
    work = explorer.workspace()                              # one user's working copy
    applied = work.apply(Recipe(rank_ratio=0.5, bits=4, sparsity=0.5))
    applied.memory.compressed_bytes, work.stored, work.evaluate(quick=True)

The engine is a stack of layers, one folder each; a module imports only from its own layer
and the layers below it (`LAYERS`, from the bottom up; tests/test_boundaries.py keeps it so).
Methods, number formats and layer kinds are each one table, in their package: `engine.methods.METHODS`,
`engine.formats.FORMATS`, `engine.layers.KINDS`.

The engine never imports streamlit or plotly; the app (app.py, pages/, ui/) calls it and draws.
"""
import importlib

# the public API, name -> its module; imported on first use, so `import engine.recipe` stays light
_API = {"Recipe": "recipe.recipe", "UserError": "errors", "Explorer": "drivers.explorer",
        "Workspace": "drivers.workspace", "Applied": "drivers.workspace", "StoredLayer": "pipeline.compress",
        "StoredMatrix": "pipeline.compress", "compress": "pipeline.compress", "predict": "pipeline.compress"}
__all__ = sorted(_API)

# The layers, bottom up: (the top-level modules or packages of the layer, what it holds).
LAYERS = (
    ("errors glossary lru", "bad input said in one line; the text of every concept; byte-bounded caches"),
    ("hardware", "this machine: its CPU and GPUs, cores, peak memory, its cache folder and kept measurements"),
    ("formats", "number formats and their bytes: the integer grid, llama.cpp's types, the float formats"),
    ("methods", "one module per compression method (SVD, whitened and shared SVD, magnitude, Wanda, SparseGPT, "
                "GPTQ, AWQ, HQQ, k-means) and their table"),
    ("recipe", "the recipe: a frozen, validated setting, its fields declared once; llama.cpp's mixes as recipes"),
    ("layers", "which layers are compressible, found by type: a kind per sort of layer, and their table"),
    ("structure", "structured pruning: where a block's heads and channels are, their importance, the smaller model"),
    ("pipeline", "one matrix and its recipe in, a stored layer out, its bytes counted; a model's tally"),
    ("models", "loading models (aliases, folders, the hub), the packaged text, calibration statistics"),
    ("storage", "bit packing, Huffman coding, and the files: the explorer's own, GGUF, compressed-tensors"),
    ("quality", "quality against the original: one module per kind of model, and the statistics"),
    ("drivers", "the explorer (a loaded model), workspaces, offloading, planning from a config, distillation"),
    ("studies", "studies of many recipes: sweeps, sensitivity, the budget planner, inside one layer"),
    ("cluster", "studies spread over a Ray cluster: workers that each hold the model, results as they arrive"),
    ("speed", "the compressed model on real kernels: kernels, their tuning, the runtime, the roofline"),
    ("cli", "the command line, `python -m engine`"),
    ("__init__ __main__", "the public API"),
)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
