"""Truncation-aware SVD on whitened calibration inputs (SVD-LLM, Wang et al. 2024).

H = X^T X / n (in, in), the mean outer product of the layer's inputs over the calibration
tokens (engine.models.calibrate). Truncating W S (S S^T = H) instead of W minimizes the
output error tr(D H D^T) = ||(W - W') X^T||^2 / n. Method `whitened` of engine.methods.
"""
from __future__ import annotations

import torch

from engine.methods import svd


def _damped(h: torch.Tensor, damp: float) -> torch.Tensor:
    """H + damp * mean(diag H) * I, with dead inputs (zero diagonal) given a unit diagonal."""
    h = h.clone()
    diag = h.diagonal()
    diag[diag <= 0] = 1.0
    diag += damp * diag.mean()
    return h


def inverse_factor(h: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor of H^-1 (H damped, see _damped): the rows GPTQ and SparseGPT
    spread each column's error along."""
    return torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)


def whitened_svd(w: torch.Tensor, h: torch.Tensor, damp: float = 1e-4):
    """Factors of W whose truncation minimizes the output error ||(W - W') X^T||, not ||W - W'||.

    With H = S S^T (Cholesky, S lower-triangular): SVD of W S = U diag(s) V^T; returns
    (U, s, V^T S^-1) so that low_rank_factors(U, s, V^T S^-1, r) gives W' = U_r diag(s_r) V_r^T S^-1,
    the best rank-r output approximation; at full rank it is W again (the whitening undone).
    """
    s_chol = torch.linalg.cholesky(_damped(h.double(), damp))
    u, s, vh = torch.linalg.svd(w.double() @ s_chol, full_matrices=False)
    # (k, in) @ S^-1: solve X S = V^T
    vh_unwhite = torch.linalg.solve_triangular(s_chol, vh, upper=False, left=False)
    return u.to(w.dtype), s.to(w.dtype), vh_unwhite.to(w.dtype)


def factors(w: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, s, V^T S^-1) of `w` whitened by its input statistics `h`; without them (an embedding,
    an expert no calibration token reached), the plain SVD."""
    return svd.svd(w) if h is None else whitened_svd(w, h)
