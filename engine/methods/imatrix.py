"""llama.cpp's importance matrix (imatrix): its quantizers' scale search weighted by how much
each input matters, diag(H), the mean square of each input on the calibration text.

Same blocks and bytes as llama.cpp's plain quantize; only its own types take it (not the
explorer's grid, not mxfp4 or the float formats). Method `imatrix` of engine.methods.
"""
from __future__ import annotations

import torch

from engine.formats import ggml


def quantize_blocks(w: torch.Tensor, fmt: str, h: torch.Tensor | None):
    """(values, raw GGUF blocks) of `w` in `fmt`, the search weighted by diag(h) (plain without h)."""
    return ggml.quantize(w, fmt, None if h is None else h.diagonal())
