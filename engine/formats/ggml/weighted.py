"""llama.cpp's importance-weighted quantizers of the legacy 32-value types (ggml-quants.c's
quantize_row_q4_0_impl, q4_1_impl, q5_0_impl, q5_1_impl), vectorized over all blocks.

quantize_q4_0 ... quantize_q5_1 use them only when given an importance vector (imatrix, one
weight per column); without one they use the round-to-nearest *_ref (engine.formats.ggml.legacy).

Per row: sigma2 = sum x^2 / n_per_row (summed in order over the whole row). Per block of 32:
weights w_j = qw_j sqrt(sigma2 + x_j^2), then
- q4_0 / q5_0: make_qx_quants(nmax 8 / 16, rmse_type 1, w): symmetric codes L = l + nmax,
  l in [-nmax, nmax - 1], the best of 19 grids by weighted least squares; value = (L - nmax) d.
- q4_1 / q5_1: make_qkx3_quants(nmax 15 / 31, w, rmin -0.9, rdelta 0.05, 36 steps, squared error):
  codes L in [0, nmax] and a minimum m <= 0; value = L d + m.
d (and m) are stored as fp16; the codes are those of the search (no re-rounding on the fp16 grid).
"""
from __future__ import annotations

import torch

from engine.formats.ggml import blocks as bk
from engine.formats.ggml.search import F32, make_qkx3_quants, make_qx_quants, seqsum, sqrtf

SIZES = {"q4_0": 18, "q4_1": 20, "q5_0": 22, "q5_1": 24}
NMAX = {"q4_0": 8, "q5_0": 16, "q4_1": 15, "q5_1": 31}
BUDGET = 1 << 22  # elements of the largest intermediate per chunk: make_qx_quants' (blocks, 19, 32)


def quantize(w: torch.Tensor, fmt: str, importance: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize the (rows, cols) matrix w (cols % 32 == 0) to `fmt` ("q4_0", "q4_1", "q5_0", "q5_1")
    as llama.cpp's ggml_quantize_chunk does with the imatrix `importance` (cols,). Without one,
    llama.cpp's plain round-to-nearest (engine.formats.ggml.legacy). Returns (values (rows, cols) float32,
    raw (rows, cols / 32 * type size) uint8 GGUF blocks)."""
    if fmt not in SIZES:
        raise ValueError(f"not a weighted legacy type: {fmt!r}")
    if w.dim() != 2 or w.shape[1] % 32:
        raise ValueError(f"{fmt}: rows of {tuple(w.shape)[1:]} values do not divide into blocks of 32")
    if importance is None:
        from engine.formats.ggml import legacy
        return legacy.quantize(w.detach().to(F32), fmt)
    rows, cols = w.shape
    if importance.shape != (cols,):
        raise ValueError(f"importance has shape {tuple(importance.shape)}, expected ({cols},)")
    w = w.detach().to(F32).contiguous()
    nb = cols // 32
    qw = importance.detach().to(device=w.device, dtype=F32).reshape(nb, 32)
    sigma2 = seqsum(w * w, dim=1) / cols  # C: sum_x2 / n_per_row, summed over the row in order
    x = w.reshape(-1, 32)
    values = torch.empty_like(x)
    raw = torch.empty((x.shape[0], SIZES[fmt]), dtype=torch.uint8, device=w.device)
    step = max(1, BUDGET // (19 * 32))
    for s in range(0, x.shape[0], step):
        xs = x[s:s + step]
        idx = torch.arange(s, s + xs.shape[0], device=w.device)
        weight = qw[idx % nb] * sqrtf(sigma2[idx // nb][:, None] + xs * xs)
        values[s:s + step], raw[s:s + step] = _block(xs, weight, fmt)
    return values.reshape(rows, cols), raw.reshape(rows, nb * SIZES[fmt])


def _block(x: torch.Tensor, weight: torch.Tensor, fmt: str) -> tuple[torch.Tensor, torch.Tensor]:
    nmax = NMAX[fmt]
    if fmt in ("q4_0", "q5_0"):
        d, L = make_qx_quants(x, nmax, 1, weight)
        d16 = d.half()
        return (L - nmax) * d16.to(F32)[:, None], bk.pack_legacy(fmt, L, d16)
    d, the_min, L = make_qkx3_quants(x, weight, nmax, -0.9, 0.05, 36, False)
    d16, m16 = d.half(), (-the_min).half()
    return L * d16.to(F32)[:, None] + m16.to(F32)[:, None], bk.pack_legacy(fmt, L, d16, m16)
