"""llama.cpp's scale searches (ggml-quants.c), batched over blocks: every function takes x of shape
(blocks, n) (n = 16 or 32 values of a sub-block, or the 8 / 16 sub-block scales of a super-block)
and returns, for each block, the scale (and minimum) and the integer codes L it settles on.

Bit-exactness with the C code: it sums float32 values one after the other, so every sum here is a
sequential float32 loop over n (`seqsum`, vectorized over blocks and candidates; torch's own sum
and cumsum reorder or widen); every product and quotient is taken in the same order as the C
expression (`w*x*l` is (w*x)*l); `nearest_int` copies the C bit trick; a choice among candidate
scales is an argmin with the first minimum winning where C keeps the first strict improvement,
and a plain loop where C's comparison is not transitive (make_qx_quants); `sqrtf` is taken in
float64 and rounded (torch's float32 sqrt is not correctly rounded on every CPU), and a constant
over a tensor is divided as a tensor (torch's python-scalar / tensor path is not correctly rounded).
"""
from __future__ import annotations

import numpy as np
import torch

GROUP_MAX_EPS = 1e-15
F32 = torch.float32


def nearest_int(x: torch.Tensor) -> torch.Tensor:
    """ggml's nearest_int(x): add 1.5 * 2^23 in float32 and read the integer from the mantissa bits,
    i = (bits(x + 12582912) & 0x7fffff) - 0x400000. Round half to even for |x| < 2^22 (= torch.round),
    and the same garbage as C beyond. Returned as float32 (every result is exact in float32)."""
    bits = (x + 12582912.0).view(torch.int32)
    bits &= 0x7FFFFF
    bits -= 0x400000
    return bits.to(F32)


def sqrtf(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded float32 square root (via float64; double rounding is harmless for sqrt)."""
    return x.double().sqrt().to(F32)


def const(c: float, like: torch.Tensor) -> torch.Tensor:
    """The float32 constant c (a C `float` literal) as a tensor shaped like `like`."""
    return torch.full_like(like, c, dtype=F32)


def inv(t: torch.Tensor) -> torch.Tensor:
    """1 / t, correctly rounded (C's `1/iscale`)."""
    return const(1.0, t) / t


def seqsum(t: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Sum along `dim` as C's `for (i...) s += t[i]` does in float32: left to right, one rounding each."""
    t = t.movedim(dim, 0).contiguous()
    acc = t[0].clone()
    for i in range(1, t.shape[0]):
        acc += t[i]
    return acc


def first_absmax(x: torch.Tensor) -> torch.Tensor:
    """The signed value of each row's first element of largest |x| (C: `if (ax > amax) max = x[i]`)."""
    return x.gather(1, x.abs().argmax(dim=1, keepdim=True)).squeeze(1)


def make_qx_quants(x: torch.Tensor, nmax: int, rmse_type: int = 1, qw: torch.Tensor | None = None):
    """Symmetric codes l in [-nmax, nmax - 1] with x ~ scale * l, stored as L = l + nmax.

    With m the block's first value of largest |x|: iscale = -nmax / m (the extreme gets code -nmax),
    l = clamp(nearest_int(iscale * x)). Weights w = qw, else x^2 (rmse_type 1), 1 (2), |x| (3),
    sqrt|x| (4). The least-squares scale of the codes is sumlx / suml2 with sumlx = sum w x l,
    suml2 = sum w l^2; its error reduction is best = sumlx^2 / suml2. Then 18 more grids
    iscale = -(nmax + 0.1 is) / m, is = -9..9 without 0, each taken, in order, when
    sumlx^2 > best * suml2. rmse_type 0: plain rounding, scale 1 / iscale; rmse_type < 0: return
    the mean of the least-squares scale and 1 / iscale. Blocks with max|x| < 1e-15: scale 0, L = 0.
    Returns (scale (B,), L (B, n) float codes)."""
    B, n = x.shape
    m = first_absmax(x)
    zero = m.abs() < GROUP_MAX_EPS
    iscale = const(-nmax, m) / m
    if rmse_type == 0:
        L = nmax + nearest_int(iscale[:, None] * x).clamp(-nmax, nmax - 1)
        return _zero_out(inv(iscale), L, zero)
    early, rmse_type = rmse_type < 0, abs(rmse_type)
    w = qw if qw is not None else {1: x * x, 2: torch.ones_like(x), 3: x.abs(), 4: sqrtf(x.abs())}[rmse_type]
    steps = torch.tensor([i for i in range(-9, 10) if i != 0], dtype=F32, device=x.device)
    iscales = torch.cat([iscale[:, None], -(nmax + 0.1 * steps)[None, :] / m[:, None]], dim=1)  # (B, 19)
    ls = nearest_int(iscales[:, :, None] * x[:, None, :]).clamp_(-nmax, nmax - 1)  # (B, 19, n)
    wx = (w * x)[:, None, :]
    sumlx = seqsum(wx * ls)
    suml2 = seqsum(w[:, None, :] * ls * ls)
    lx0, l20 = sumlx[:, 0], suml2[:, 0]
    scale = torch.where(l20 != 0, lx0 / l20, torch.zeros_like(lx0))
    if early:
        s = torch.where(l20 > 0, 0.5 * (scale + inv(iscale)), inv(iscale))
        return _zero_out(s, ls[:, 0] + nmax, zero)
    best = scale * lx0
    pick = torch.zeros(B, dtype=torch.long, device=x.device)
    for c in range(1, 19):
        lx, l2 = sumlx[:, c], suml2[:, c]
        take = (l2 > 0) & (lx * lx > best * l2)
        pick = torch.where(take, c, pick)
        scale = torch.where(take, lx / l2, scale)
        best = torch.where(take, scale * lx, best)
    L = ls.gather(1, pick[:, None, None].expand(B, 1, n)).squeeze(1) + nmax
    return _zero_out(scale, L, zero)


def _zero_out(scale, L, zero):
    return torch.where(zero, 0.0, scale), torch.where(zero[:, None], 0.0, L)


def make_q3_quants(x: torch.Tensor, nmax: int, do_rmse: bool = True):
    """q3_K's symmetric codes l in [-nmax, nmax - 1], stored as L = l + nmax.

    Start from iscale = -nmax / m (m the first value of largest |x|), l = clamp(nearest_int(iscale x)).
    With do_rmse, weights w = x^2 and up to 5 passes of coordinate descent: for each i in turn, drop
    i from sumlx = sum w x l and suml2 = sum w l^2, re-round l_i = nearest_int(x_i suml2' / sumlx')
    (the best code for the others' least-squares scale) and keep it when it raises sumlx^2 / suml2
    (compared as slx^2 suml2 > sumlx^2 sl2). Scale = sumlx / suml2. Without: scale = 1 / iscale.
    Returns (scale (B,), L (B, n))."""
    m = first_absmax(x)
    zero = m.abs() < GROUP_MAX_EPS
    iscale = const(-nmax, m) / m
    L = nearest_int(iscale[:, None] * x).clamp_(-nmax, nmax - 1)
    if not do_rmse:
        return _zero_out(inv(iscale), L + nmax, zero)
    w = x * x
    wx = w * x
    sumlx, suml2 = seqsum(wx * L), seqsum(w * L * L)
    L = L.t().contiguous()  # (n, B): column i is contiguous
    wt, xt, wxt = w.t().contiguous(), x.t().contiguous(), wx.t().contiguous()
    for _ in range(5):
        changed = False
        for i in range(x.shape[1]):
            Li, wi, wxi = L[i], wt[i], wxt[i]
            slx = sumlx - wxi * Li
            sl2 = suml2 - wi * Li * Li
            new = nearest_int(xt[i] * sl2 / slx).clamp_(-nmax, nmax - 1)
            slx = slx + wxi * new
            sl2 = sl2 + wi * new * new
            take = (sumlx - wxi * Li > 0) & (new != Li) & (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            if take.any():
                changed = True
                L[i] = torch.where(take, new, Li)
                sumlx = torch.where(take, slx, sumlx)
                suml2 = torch.where(take, sl2, suml2)
        if not changed:  # a block without a change in a pass never changes again
            break
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(sumlx))
    return _zero_out(scale, L.t() + nmax, zero)


def make_qkx_quants(x: torch.Tensor, weights: torch.Tensor | None, nmax: int, rmin: float, rdelta: float,
                    nstep: int, use_mad: bool):
    """make_qkx2_quants / make_qkx3_quants (identical but for qkx3's default weights x^2 when
    `weights` is None): asymmetric codes L in [0, nmax] with x ~ scale * L + min, min <= 0.

    min = min(0, min x), iscale = nmax / (max - min), L = clamp(nearest_int(iscale (x - min))),
    error = sum w |scale L + min - x| (use_mad) or sum w (...)^2 with scale = 1 / iscale. Then for
    is = 0..nstep in order, the grid iscale = (rmin + rdelta is + nmax) / (max - min), min being the
    best so far (C updates it in the loop, so the steps depend on each other and run one after the
    other, each over all blocks): codes as above, and the weighted least-squares (scale, min) of x on
    them, D = sum_w sum_wl2 - sum_wl^2, scale = (sum_w sum_wxl - sum_wx sum_wl) / D,
    min = (sum_wl2 sum_wx - sum_wl sum_wxl) / D (if min > 0: min = 0, scale = sum_wxl / sum_wl2),
    taken when D > 0 and its error is strictly below the best so far.
    Blocks with max == min: scale 0, L = 0. Returns (scale (B,), the_min = -min (B,), L (B, n))."""
    w = weights if weights is not None else x * x
    lo = x.gather(1, x.argmin(dim=1, keepdim=True)).squeeze(1)  # the first minimum: C's sign of zero
    hi = x.amax(dim=1)
    xt, wt = x.t().contiguous(), w.t().contiguous()  # (n, B): sums run over rows
    buf = torch.empty((x.shape[1], 3, x.shape[0]), dtype=F32, device=x.device)  # (n, 3, B) summands
    torch.mul(wt, xt, out=buf[:, 1])
    sum_w, sum_x = seqsum(torch.stack([wt, buf[:, 1]], dim=1), dim=0)
    lo = torch.where(lo > 0, 0.0, lo)
    flat = hi <= lo

    def codes(num, mn):  # clamp(nearest_int(num / (max - min) * (x - min)), 0, nmax), (n, B)
        span = hi - mn
        return nearest_int((const(num, span) / span) * (xt - mn)).clamp_(0, nmax)

    def error(s, mn, L):  # sum over n of w * |s L + mn - x| (or its square), in order
        diff = s * L
        diff += mn
        diff -= xt
        diff = diff.abs_() if use_mad else diff.mul_(diff)
        return seqsum(diff.mul_(wt), dim=0)

    L = codes(float(nmax), lo)
    scale = inv(const(nmax, hi) / (hi - lo))
    best = error(scale, lo, L)
    for step in range(nstep + 1 if nstep >= 1 else 0):  # nstep < 1: the plain rounding
        num = np.float32(rmin) + np.float32(rdelta) * np.float32(step) + np.float32(nmax)  # C float math
        Laux = codes(float(num), lo)
        wl = torch.mul(wt, Laux, out=buf[:, 0])
        torch.mul(wl, Laux, out=buf[:, 1])
        torch.mul(wl, xt, out=buf[:, 2])
        sum_l, sum_l2, sum_xl = seqsum(buf, dim=0)
        D = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / D
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D
        pos = this_min > 0
        this_min = torch.where(pos, 0.0, this_min)
        this_scale = torch.where(pos, sum_xl / sum_l2, this_scale)
        cur = error(this_scale, this_min, Laux)
        take = (D > 0) & (cur < best) & ~flat
        L = torch.where(take, Laux, L)
        best = torch.where(take, cur, best)
        scale = torch.where(take, this_scale, scale)
        lo = torch.where(take, this_min, lo)
    return torch.where(flat, 0.0, scale), -lo, torch.where(flat[:, None], 0.0, L.t())


def make_qkx2_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad):
    """ggml's make_qkx2_quants: see make_qkx_quants (weights required)."""
    return make_qkx_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad)


def make_qkx3_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad):
    """ggml's make_qkx3_quants: see make_qkx_quants (weights x^2 when None)."""
    return make_qkx_quants(x, weights, nmax, rmin, rdelta, nstep, use_mad)


def make_qp_quants(x: torch.Tensor, nmax: int, qw: torch.Tensor):
    """Codes L in [0, nmax] for non-negative x (a super-block's sub-block scales or minimums) with
    x ~ scale * L, weighted by qw.

    max = max(0, max x); iscale = nmax / max, error sum qw (x - L / iscale)^2; then the grids
    iscale = (0.1 is + nmax) / max, is = -4..4 without 0, codes min(nmax, nearest_int(iscale x)),
    keeping the first strictly smaller error. With the chosen grid's codes, up to 5 passes of
    coordinate descent as in make_q3_quants (re-round L_i = nearest_int(x_i sl2 / slx), keep if
    sumlx^2 / suml2 grows). Scale = sumlx / suml2. Codes are kept as C's uint8 (wrapping
    negatives). Blocks with max < 1e-15: scale 0, L = 0. Returns (scale (B,), L (B, n))."""
    mx = x.amax(dim=1).clamp(min=0)
    zero = mx < GROUP_MAX_EPS
    iscale0 = const(nmax, mx) / mx
    L0 = torch.remainder(nearest_int(iscale0[:, None] * x), 256)
    s0 = inv(iscale0)
    d0 = x - s0[:, None] * L0
    best = seqsum(qw * d0 * d0)
    steps = torch.tensor([-4, -3, -2, -1, 1, 2, 3, 4], dtype=F32, device=x.device)
    iscales = (0.1 * steps + nmax)[None, :] / mx[:, None]  # (B, 8)
    ls = nearest_int(iscales[:, :, None] * x[:, None, :]).clamp_(max=nmax)
    diff = x[:, None, :] - inv(iscales)[:, :, None] * ls
    mse = seqsum(qw[:, None, :] * diff * diff)
    pick = torch.cat([best[:, None], mse], dim=1).argmin(dim=1)
    iscale = torch.cat([iscale0[:, None], iscales], dim=1).gather(1, pick[:, None]).squeeze(1)
    l = nearest_int(iscale[:, None] * x).clamp_(max=nmax)
    wx = qw * x
    sumlx, suml2 = seqsum(wx * l), seqsum(qw * l * l)
    L = torch.remainder(l, 256).t().contiguous()
    wt, xt, wxt = qw.t().contiguous(), x.t().contiguous(), wx.t().contiguous()
    for _ in range(5):
        changed = False
        for i in range(x.shape[1]):
            Li, wi, wxi = L[i], wt[i], wxt[i]
            slx = sumlx - wxi * Li
            sl2 = suml2 - wi * Li * Li
            ok = (slx > 0) & (sl2 > 0)
            new = nearest_int(xt[i] * sl2 / slx).clamp_(max=nmax)
            slx = slx + wxi * new
            sl2 = sl2 + wi * new * new
            take = ok & (new != Li) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            if take.any():
                changed = True
                L[i] = torch.where(take, torch.remainder(new, 256), Li)
                sumlx = torch.where(take, slx, sumlx)
                suml2 = torch.where(take, sl2, suml2)
        if not changed:
            break
    scale = torch.where(suml2 > 0, sumlx / suml2, torch.zeros_like(sumlx))
    return _zero_out(scale, L.t(), zero)
