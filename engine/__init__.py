"""The compression explorer's engine: compress a real transformer, count its bytes, measure it.

    from engine import Explorer, Recipe
    explorer = Explorer.open("minilm")                       # one loaded model, shared
    work = explorer.workspace()                              # one user's working copy
    applied = work.apply(Recipe(rank_ratio=0.5, bits=4, sparsity=0.5))
    applied.memory.compressed_bytes, work.stored, work.evaluate(quick=True)

The layers, from primitives to drivers (each imports only from the layers above it):

1. Primitives, pure functions on tensors: `transforms` (SVD, masks, the quantization grid:
   quantize and dequantize written once), `methods` (whitened SVD, Wanda, GPTQ, k-means, the
   stacked SVD of Basis Sharing), `methods_more` (HQQ, AWQ, SparseGPT), `memory` (the byte rules:
   every figure counts bytes as it says), `ggml` (llama.cpp's number formats: their blocks,
   bytes and quantizers, byte for byte with llama.cpp's; its mixes), `floats` (NF4, FP4, FP8,
   NVFP4 and double quantization).
2. The recipe: `recipe` (a frozen, validated description of a setting, per-layer rules
   included; its fields declared once in `recipe_values`, from which the command line, the
   app and the sweep derive theirs).
3. Layers: `layers` (which matrices are compressible, found by type; a `LayerKind` per kind
   of layer says where its matrix comes from and goes back to).
4. The layer pipeline: `pipeline` (one matrix and its recipe in, a `StoredLayer` out: values,
   grids, masks, factors and the bytes of each; also the same bytes from a shape alone).
   Every consumer below goes through it.
5. Storage: `storage` (bit packing, Huffman coding, the codec of one stored matrix, and the
   export formats that write and read whole models).
6. Models and data: `models` (loading, aliases), `data` (the packaged public text),
   `calibrate` (input statistics), `evaluate` (the quality protocols), `distill`, `compare`.
7. Drivers: `session` (Explorer: a loaded model and its caches), `workspace` (Workspace: a
   working copy that recipes are applied to), `offload` (a model larger than memory,
   compressed in place), `footprint` (planning from a config, without weights), `plan`
   (units of layers and their sensitivity), `planner` (the budget planner), `sharing` (which
   layers share one basis), `sweep`, `bench`, `report` (what `run` prints);
   speed: `kernels` (a stored matrix on the kernel its format allows), `runtime` (the model
   on those kernels, built from a workspace's stored layers), `roofline`, `speed`.
8. The command line: `cli` (`python -m engine`).

Everywhere: `errors` (UserError, bad input said in one line; `failure`, the one line anything
else that fails is reported in).

The engine never imports streamlit; the app (app.py, pages/, ui/) calls it and draws.
"""
import importlib

# the public API, name -> its module; imported on first use, so `import engine.recipe` stays light
_API = {"Recipe": "recipe.recipe", "UserError": "errors", "Explorer": "drivers.explorer",
        "Workspace": "drivers.workspace", "Applied": "drivers.workspace", "StoredLayer": "pipeline.compress",
        "StoredMatrix": "pipeline.compress", "compress": "pipeline.compress", "predict": "pipeline.compress"}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
