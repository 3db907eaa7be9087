"""llama.cpp's k-quant quantizers (ggml-quants.c), vectorized over all 256-value super-blocks.

Dispatch as quantize_q2_K ... quantize_q6_K: without an importance vector quantize_row_*_K_ref,
with one quantize_row_*_K_impl (importance = llama.cpp's imatrix: one weight per column).

Per super-block x (256 values) and its sub-blocks (16 of 16 values, or 8 of 32):
- q2_K ref: make_qkx2_quants(nmax 3, weights |x|, rmin -0.5, rdelta 0.1, 15 steps, MAD) per 16;
  scales and mins to 4 bits against d = max scale / 15, dmin = max min / 15 (fp16).
  impl: weights qw sqrt(sigma2 + x^2), sigma2 = sum x^2 / 256; make_qkx3_quants(3, -0.9, 0.05,
  36 steps, squared error); the 16 scales and mins are quantized by make_qp_quants(15) weighted by
  each sub-block's weight sum.
- q3_K ref: make_q3_quants(nmax 4, rmse) per 16; scales to 6 bits signed with d = -max / 32 (the
  scale of largest |.| gets -32). impl: weights qw sqrt(sigma2 + x^2), sigma2 = 2 sum x^2 / 256;
  make_qx_quants(4) per 16, then make_qx_quants(32) of the 16 scales weighted by the weight sums.
- q4_K / q5_K ref: weights av + |x| with av = sqrt(sum x^2 / 32) of the sub-block;
  make_qkx2_quants(nmax 15 / 31, rmin -1 / -0.5, rdelta 0.1, 20 / 15 steps); scales and mins
  to 6 bits against max / 63. impl: weights qw sqrt(sigma2 + x^2), sigma2 = 2 sum x^2 / 256;
  make_qkx3_quants(-0.9, 0.05, 36); scales and mins by make_qp_quants(63).
- q6_K: make_qx_quants(nmax 32, rmse_type 1; weights x^2, or the importance itself) per 16;
  scales to int8 with d = -max / 128 (the scale of largest |.| gets -128, then min(127, .)).
Then every type re-rounds the values on the stored (fp16 super-scale x integer sub-scale) grid,
l = nearest_int((x + dmin_j) / d_j) (or x / d_j), clamped; a sub-block whose d_j is 0 keeps the
search's codes. `values` is ggml's dequantization of the stored blocks: d_j q - dmin_j, d_j (q - off).
"""
from __future__ import annotations

import torch

from engine.formats.ggml import blocks as bk
from engine.formats.ggml.search import (
    F32,
    const,
    first_absmax,
    make_q3_quants,
    make_qkx2_quants,
    make_qkx3_quants,
    make_qp_quants,
    make_qx_quants,
    nearest_int,
    seqsum,
    sqrtf,
)

QK = 256
SIZES = {"q2_k": 84, "q3_k": 110, "q4_k": 144, "q5_k": 176, "q6_k": 210}
# elements of the largest intermediate per super-block: make_qx_quants' (sub-blocks, 19 grids, 16)
# candidates (q3_K impl, q6_K), else make_qkx_quants' (n, 3, sub-blocks) summands or the 256 values
_QX_WORK, _WORK = 16 * 19 * 16, 3 * QK
BUDGET = 1 << 22  # elements of the largest intermediate per chunk (a 16 MB float32 tensor)


def quantize(w: torch.Tensor, fmt: str, importance: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantize the (rows, cols) matrix w (cols % 256 == 0) to k-quant `fmt` ("q2_k" ... "q6_k") as
    llama.cpp's ggml_quantize_chunk does, with `importance` (cols,) as its imatrix, or None.
    Returns (values (rows, cols) float32: ggml's dequantization of the blocks,
    raw (rows, cols / 256 * type size) uint8: the GGUF blocks)."""
    if fmt not in SIZES:
        raise ValueError(f"not a k-quant type: {fmt!r}")
    if w.dim() != 2 or w.shape[1] % QK:
        raise ValueError(f"{fmt}: rows of {tuple(w.shape)[1:]} values do not divide into blocks of {QK}")
    rows, cols = w.shape
    x = w.detach().to(F32).contiguous().reshape(-1, QK)
    nb = cols // QK
    qw = None
    if importance is not None:
        if importance.shape != (cols,):
            raise ValueError(f"importance has shape {tuple(importance.shape)}, expected ({cols},)")
        qw = importance.detach().to(device=w.device, dtype=F32).reshape(nb, QK)
    fn = _IMPL[fmt] if qw is not None else _REF[fmt]
    values = torch.empty_like(x)
    raw = torch.empty((x.shape[0], SIZES[fmt]), dtype=torch.uint8, device=w.device)
    qx = fmt == "q6_k" or (fmt == "q3_k" and qw is not None)
    step = max(1, BUDGET // (_QX_WORK if qx else _WORK))
    for s in range(0, x.shape[0], step):
        xs = x[s:s + step]
        if qw is None:
            v, r = fn(xs)
        else:
            idx = torch.arange(s, s + xs.shape[0], device=w.device) % nb
            v, r = fn(xs, qw[idx])
        values[s:s + step], raw[s:s + step] = v, r
    return values.reshape(rows, cols), raw.reshape(rows, nb * SIZES[fmt])


def _max0(t: torch.Tensor) -> torch.Tensor:
    """C's `m = 0; for (...) if (t[j] > m) m = t[j];` over the last dim (+0.0 when none is > 0)."""
    m = t.amax(dim=-1)
    return torch.where(m > 0, m, 0.0)


def _sigma2(x: torch.Tensor, factor: int) -> torch.Tensor:
    """factor * (sum of x^2 over the super-block, summed in order) / 256, shape (S, 1)."""
    return (factor * seqsum(x * x, dim=1) / QK)[:, None]


def _requant(x, d, dm, L, lo, hi):
    """Re-round sub-blocks (S, k, n) on their stored grids d, dm (S, k): nearest_int((x + dm) / d)
    clamped to [lo, hi], where d != 0 (else the search's codes L stay)."""
    new = nearest_int((x + dm[..., None]) / d[..., None]).clamp_(lo, hi)
    return torch.where(d[..., None] != 0, new, L)


def _finish_min(x, L, sc, mn, d16, dmin16, nsub, hi):
    """Shared end of q2_K/q4_K/q5_K: d_j = d sc_j, dm_j = dmin m_j (float32), re-round, values."""
    S = x.shape[0]
    d = d16.to(F32)[:, None] * sc.to(F32)
    dm = dmin16.to(F32)[:, None] * mn.to(F32)
    xs = x.reshape(S, nsub, -1)
    L = _requant(xs, d, dm, L.reshape(S, nsub, -1), 0, hi)
    values = d[..., None] * L - dm[..., None]
    return values.reshape(S, QK), L.reshape(S, QK)


# ---------------------------------------------------------------- q2_K

def _q2_k_ref(x):
    S = x.shape[0]
    x16 = x.reshape(-1, 16)
    scales, mins, L = make_qkx2_quants(x16, x16.abs(), 3, -0.5, 0.1, 15, True)
    scales, mins = scales.reshape(S, 16), mins.reshape(S, 16)
    max_scale, max_min = _max0(scales), _max0(mins)
    has_s, has_m = max_scale > 0, max_min > 0
    ls = torch.where(has_s[:, None], nearest_int((const(15.0, max_scale) / max_scale)[:, None] * scales), 0)
    lm = torch.where(has_m[:, None], nearest_int((const(15.0, max_min) / max_min)[:, None] * mins), 0)
    d16 = torch.where(has_s, max_scale / 15, 0.0).half()
    dmin16 = torch.where(has_m, max_min / 15, 0.0).half()
    sc = (ls.to(torch.int32) & 255) | (lm.to(torch.int32) << 4)  # 4-bit fields of a uint8 (truncated)
    return _q2_k_end(x, L, sc & 255, d16, dmin16)


def _q2_k_impl(x, qw):
    S = x.shape[0]
    weight = qw * sqrtf(_sigma2(x, 1) + x * x)
    sw = seqsum(weight.reshape(S, 16, 16))
    scales, mins, L = make_qkx3_quants(x.reshape(-1, 16), weight.reshape(-1, 16), 3, -0.9, 0.05, 36, False)
    dm, Ls = make_qp_quants(scales.reshape(S, 16), 15, sw)
    mm, Lm = make_qp_quants(mins.reshape(S, 16), 15, sw)
    sc = (Ls.to(torch.int32) | (Lm.to(torch.int32) << 4)) & 255
    return _q2_k_end(x, L, sc, dm.half(), mm.half())


def _q2_k_end(x, L, sc, d16, dmin16):
    values, L = _finish_min(x, L, sc & 15, sc >> 4, d16, dmin16, 16, 3)
    return values, bk.pack_q2_k(L, sc, d16, dmin16)


# ---------------------------------------------------------------- q3_K

def _q3_k_ref(x):
    S = x.shape[0]
    scales, L = make_q3_quants(x.reshape(-1, 16), 4, True)
    scales = scales.reshape(S, 16)
    max_scale = first_absmax(scales)
    nz = max_scale != 0
    iscale = const(-32.0, max_scale) / max_scale
    l = nearest_int(iscale[:, None] * scales).to(torch.int32)
    l = ((l + 128) & 255) - 128  # int8_t
    l = torch.where(nz[:, None], l.clamp(-32, 31) + 32, 0)
    d16 = torch.where(nz, const(1.0, iscale) / iscale, 0.0).half()
    return _q3_k_end(x, L, l, d16)


def _q3_k_impl(x, qw):
    S = x.shape[0]
    weight = qw * sqrtf(_sigma2(x, 2) + x * x)
    sw = seqsum(weight.reshape(S, 16, 16))
    scales, L = make_qx_quants(x.reshape(-1, 16), 4, 1, weight.reshape(-1, 16))
    d_block, Ls = make_qx_quants(scales.reshape(S, 16), 32, 1, sw)
    return _q3_k_end(x, L, Ls.to(torch.int32), d_block.half())


def _q3_k_end(x, L, l, d16):
    S = x.shape[0]
    packed = bk.q3_scales_pack(l)
    sc = bk.q3_scales_unpack(packed) - 32
    d = d16.to(F32)[:, None] * sc.to(F32)
    L = L.reshape(S, 16, 16)
    new = nearest_int(x.reshape(S, 16, 16) / d[..., None]).clamp_(-4, 3) + 4
    L = torch.where(d[..., None] != 0, new, L)
    values = (d[..., None] * (L - 4)).reshape(S, QK)
    return values, bk.pack_q3_k(L.reshape(S, QK), packed, d16)


# ---------------------------------------------------------------- q4_K / q5_K

def _q45_k_ref(x, nmax, rmin, nstep):
    S = x.shape[0]
    x32 = x.reshape(-1, 32)
    av_x = sqrtf(seqsum(x32 * x32) / 32)
    scales, mins, L = make_qkx2_quants(x32, av_x[:, None] + x32.abs(), nmax, rmin, 0.1, nstep, False)
    scales, mins = scales.reshape(S, 8), mins.reshape(S, 8)
    max_scale, max_min = _max0(scales), _max0(mins)
    inv_scale = torch.where(max_scale > 0, const(63.0, max_scale) / max_scale, 0.0)
    inv_min = torch.where(max_min > 0, const(63.0, max_min) / max_min, 0.0)
    ls = (nearest_int(inv_scale[:, None] * scales).to(torch.int32) & 255).clamp(max=63)
    lm = (nearest_int(inv_min[:, None] * mins).to(torch.int32) & 255).clamp(max=63)
    return _q45_k_end(x, L, ls, lm, (max_scale / 63).half(), (max_min / 63).half(), nmax)


def _q45_k_impl(x, qw, nmax):
    S = x.shape[0]
    weight = qw * sqrtf(_sigma2(x, 2) + x * x)
    sw = seqsum(weight.reshape(S, 8, 32))
    scales, mins, L = make_qkx3_quants(x.reshape(-1, 32), weight.reshape(-1, 32), nmax, -0.9, 0.05, 36, False)
    d_block, Ls = make_qp_quants(scales.reshape(S, 8), 63, sw)
    m_block, Lm = make_qp_quants(mins.reshape(S, 8), 63, sw)
    ls, lm = Ls.to(torch.int32), Lm.to(torch.int32)
    if nmax == 31:  # q5_K_impl clamps to 63, q4_K_impl stores the uint8 as it is
        ls, lm = ls.clamp(max=63), lm.clamp(max=63)
    return _q45_k_end(x, L, ls, lm, d_block.half(), m_block.half(), nmax)


def _q45_k_end(x, L, ls, lm, d16, dmin16, nmax):
    packed = bk.k_scales_pack(ls, lm)
    sc, mn = bk.k_scales_unpack(packed)
    values, L = _finish_min(x, L, sc, mn, d16, dmin16, 8, nmax)
    pack = bk.pack_q4_k if nmax == 15 else bk.pack_q5_k
    return values, pack(L, packed, d16, dmin16)


# ---------------------------------------------------------------- q6_K

def _q6_k(x, qw=None):
    S = x.shape[0]
    scales, L = make_qx_quants(x.reshape(-1, 16), 32, 1, None if qw is None else qw.reshape(-1, 16))
    scales = scales.reshape(S, 16)
    max_scale = first_absmax(scales)
    zero = max_scale.abs() < 1e-15
    iscale = const(-128.0, max_scale) / max_scale
    d16 = torch.where(zero, 0.0, const(1.0, iscale) / iscale).half()
    sc = nearest_int(iscale[:, None] * scales).clamp(max=127).to(torch.int32)
    sc = torch.where(zero[:, None], 0, ((sc + 128) & 255) - 128)  # int8_t
    d = d16.to(F32)[:, None] * sc.to(F32)
    new = nearest_int(x.reshape(S, 16, 16) / d[..., None]).clamp_(-32, 31) + 32
    L = torch.where(d[..., None] != 0, new, L.reshape(S, 16, 16))
    L = torch.where(zero[:, None, None], 0.0, L)  # an all-zero super-block is stored as zeros
    values = (d[..., None] * (L - 32)).reshape(S, QK)
    return values, bk.pack_q6_k(L.reshape(S, QK), sc, d16)


_REF = {"q2_k": _q2_k_ref, "q3_k": _q3_k_ref, "q4_k": lambda x: _q45_k_ref(x, 15, -1.0, 20),
        "q5_k": lambda x: _q45_k_ref(x, 31, -0.5, 15), "q6_k": _q6_k}
_IMPL = {"q2_k": _q2_k_impl, "q3_k": _q3_k_impl, "q4_k": lambda x, q: _q45_k_impl(x, q, 15),
         "q5_k": lambda x, q: _q45_k_impl(x, q, 31), "q6_k": _q6_k}
