"""Plain low rank: the truncated SVD of a weight matrix, and what its spectrum says.

W (out, in) ~= A @ B with A = U_r sqrt(S_r) (out, r) and B = sqrt(S_r) Vh_r (r, in): the best
rank-r approximation in the Frobenius norm (Eckart-Young). Method `svd` of engine.methods.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import torch

_THREADS = threading.Lock()


@contextmanager
def one_thread(device: torch.device):
    """torch on one thread meanwhile, on the CPU (one at a time: the count is the process's)."""
    if device.type != "cpu":
        yield
        return
    with _THREADS:
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(n)


def svd(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of an (out, in) matrix: U (out, k), S (k,), Vh (k, in), k = min(out, in).
    On the CPU on one thread: LAPACK's factors change in their last bits with the number of
    threads, so this keeps them the same in a process of any size (a cluster's workers of one
    thread each, engine.cluster, give the figures this process gives)."""
    with one_thread(w.device):
        return torch.linalg.svd(w.float(), full_matrices=False)


def low_rank_factors(
    u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, rank: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Factors of the best rank-r approximation, W ~= A @ B, with A (out, r) and B (r, in).

    The singular values are split evenly, A = U_r sqrt(S_r) and B = sqrt(S_r) Vh_r, so that
    both factors have the same scale (which suits quantizing them).
    """
    root = s[:rank].sqrt()
    return u[:, :rank] * root, root[:, None] * vh[:rank]


def energy_kept(s: torch.Tensor, rank: int) -> float:
    """Fraction of the squared Frobenius norm kept by the top `rank` singular values."""
    e = s.double().square()
    total = e.sum().item()
    return 1.0 if total == 0 else e[:rank].sum().item() / total


def effective_rank(s: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank: exp of the entropy of the normalized singular values.

    >>> effective_rank(torch.tensor([1.0, 1.0, 0.0]))  # two equal values
    2.0
    """
    p = s.double() / s.double().sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def break_even_rank(out_features: int, in_features: int) -> float:
    """The rank at which factors A and B hold as many values as W: r (m + n) = m n."""
    return out_features * in_features / (out_features + in_features)


def factors(w: torch.Tensor, h: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, Vh) of `w`, the plain SVD (`h`, the input statistics, is not used)."""
    return svd(w)
