"""llama.cpp's number formats (GGML types): their blocks, their bytes, their quantizers.

A GGML type stores a row in blocks of `block` consecutive values, `size` bytes each, with
the block's own scale (and minimum) inside it. The legacy types (q4_0 ... q8_0) have blocks of
32 values and one fp16 scale; the k-quants (q2_k ... q6_k) have super-blocks of 256 values
split into sub-blocks of 16 or 32 whose scales (and minimums) are themselves quantized
against an fp16 super-scale; mxfp4 (fp4.py) has blocks of 32 E2M1 floats and a power-of-two
scale.

    values, raw = quantize(w, "q4_k")              # (rows, cols) values, (rows, bytes) GGUF blocks
    fit("q4_k", 576)                               # 'q5_0': llama.cpp's fallback for such rows
    TYPES["q4_k"].bits_per_value                   # 4.5

`raw` is exactly the bytes llama.cpp stores for the tensor (gguf's reference dequantizer
gives `values` back); `values` is what the model computes with.
"""
from __future__ import annotations

import numpy as np
import torch

from engine.formats.ggml import fp4, kquants, legacy, weighted
from engine.formats.ggml.types import K_QUANTS, LEGACY, TYPES, GgmlType, fit, layout_note  # noqa: F401


def quantize(w: torch.Tensor, fmt: str, importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize the (rows, cols) matrix `w` to GGML type `fmt` as llama.cpp's quantize does,
    with `importance` (cols,), an importance matrix (the mean squared input of each column,
    llama.cpp's imatrix) weighting the search, where the type uses one (q8_0 does not).
    Returns (values (rows, cols) float32, raw (rows, row bytes) uint8 GGUF blocks)."""
    if fit(fmt, w.shape[1]) != fmt:
        raise ValueError(f"{fmt}: rows of {w.shape[1]} values do not divide into blocks of {TYPES[fmt].block}")
    w = w.float()
    if fmt == "mxfp4":  # llama.cpp's mxfp4 quantizer takes no importance matrix
        return fp4.quantize(w)
    if fmt in K_QUANTS:
        return kquants.quantize(w, fmt, importance)
    if importance is not None and fmt != "q8_0":
        return weighted.quantize(w, fmt, importance)
    return legacy.quantize(w, fmt)


def dequantize(raw: torch.Tensor, fmt: str, cols: int) -> torch.Tensor:
    """The values of GGUF blocks `raw` (rows, row bytes) of type `fmt`, by the gguf package's
    reference dequantizer (float32, on raw's device)."""
    import gguf

    kind = gguf.GGMLQuantizationType[fmt.upper()]
    values = gguf.quants.dequantize(np.ascontiguousarray(raw.cpu().numpy()), kind)
    return torch.from_numpy(values.reshape(raw.shape[0], cols)).to(raw.device)
