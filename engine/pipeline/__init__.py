"""The layer pipeline: one matrix and its recipe in, what the compressed layer stores out.

    compress  StoredLayer and StoredMatrix; compress (low rank, pruning, quantization, by the
              methods of engine.methods.METHODS), requantize, and predict: the same bytes from a
              shape alone. The workspace, offloading, the exports and the config-only count all
              go through it.
    tally     a model's bytes summed over its layers (LayerReport, MemoryReport)
"""
