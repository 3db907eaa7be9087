"""The statistics of llama.cpp's `perplexity --kl-divergence`: a candidate against a reference, token by token.

For each scored token t, from the reference's logits a and the candidate's logits b over the
vocabulary (both predicting the same next token y_t):

    log p = a - logsumexp(a),  log q = b - logsumexp(b)         (the two next-token distributions)
    nll_t     = -log q(y_t)                                      (the candidate's; ref_nll_t: -log p(y_t))
    kl_t      = sum_i p_i (log p_i - log q_i)                    KL(reference || candidate), nats
    same_t    = [argmax_i q_i == argmax_i p_i]                   (the first index of the largest, both)
    delta_p_t = q(y_t) - p(y_t) = exp(-nll_t) - exp(-ref_nll_t)

and over the n scored tokens (`summarize`), as llama.cpp reports them:

    perplexity   exp(mean nll); its 95% interval exp(lo), exp(hi), (lo, hi) Student's t over the
                 windows' mean nll (engine.quality.stats.interval95, the text a sample of text)
    kl           mean; mean_stderr = sqrt((mean(kl^2) - mean(kl)^2) / (n - 1)) (llama.cpp's
                 `mean_and_uncertainty`: the sample standard deviation over sqrt(n)); median, p99,
                 p999 (the 99.9th percentile) and max
    same_top     mean of same_t
    delta_p      mean, p1, p5, p95 and p99

A percentile is llama.cpp's: of the sorted values v_0 <= ... <= v_(n-1), at fraction f the point
x = f (n - 1), interpolated between v_floor(x) and the next, v_floor(x) + (x - floor(x)) (v_next - v_floor(x))
(numpy's 'linear'); the median is the mean of the two middle values of an even count.

The reference's mass, exactly. llama.cpp keeps, per scored token, every one of the vocabulary's
log-probabilities as a uint16 over the 16 nats below the top (a scale and the minimum as two
floats) and sums the KL over the reference's entries above -16 nats. That is 2 bytes x the
vocabulary per token (a 256k vocabulary: 512 KiB a token, 2 GiB for 4,080 tokens), and a
top-K store cannot reproduce it, since every entry above e^-16 counts (possibly the whole
vocabulary). Here the KL is exact over the full vocabulary and computed in pieces: the
reference's logits are recomputed a few rows at a time (engine.quality.causal_reference keeps
the input of the reference's output head, one hidden-size vector per token, and applies the head
again), and `token_stats` holds at most `rows_per_piece(vocab)` rows of (rows, vocab) values
per temporary. Against llama.cpp's numbers on the same logits: it leaves out the reference's
tokens below e^-16 (at most e^-16 x vocab of probability) and rounds each log-probability to
steps of at most 16/65535 nats; nothing is left out or rounded here.

    >>> ref = torch.tensor([[0.0, 0.0]]); cand = torch.tensor([[0.0, -math.log(3.0)]])  # p = (1/2, 1/2), q = (3/4, 1/4)
    >>> s = token_stats(ref, cand, torch.tensor([1]))
    >>> round(s.kl.item(), 6), round(s.delta_p.item(), 6), s.same_top.item()  # KL = 1/2 ln(2/3) + 1/2 ln 2
    (0.143841, -0.25, True)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from engine.quality.stats import interval95

PIECE_VALUES = 1 << 23  # values of a (rows, vocab) temporary at most: 32 MiB in fp32


def rows_per_piece(vocab: int) -> int:
    """Rows of (rows, vocab) logits worked on at once, so that a temporary holds at most
    PIECE_VALUES values (a 256k vocabulary: 32 rows; 49,152: 170)."""
    return max(1, PIECE_VALUES // vocab)


@dataclass(frozen=True)
class TokenStats:
    """Per scored token, 1-D tensors of one length: the candidate's and the reference's negative
    log-likelihood of the target (nats), KL(reference || candidate) (nats), whether the two top
    tokens agree, and q(target) - p(target)."""

    nll: torch.Tensor
    ref_nll: torch.Tensor
    kl: torch.Tensor
    same_top: torch.Tensor
    delta_p: torch.Tensor

    @classmethod
    def cat(cls, parts: list["TokenStats"]) -> "TokenStats":
        """The tokens of `parts`, in order."""
        return cls(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def __len__(self) -> int:
        return self.kl.numel()


def token_stats(ref_logits: torch.Tensor, cand_logits: torch.Tensor, targets: torch.Tensor) -> TokenStats:
    """The per-token statistics (module docstring) of n scored tokens from the reference's and the
    candidate's logits, (n, vocab) each, and the targets (n,), worked on `rows_per_piece(vocab)`
    rows at a time in fp32 (whatever the logits' dtype), on the logits' device."""
    if ref_logits.shape != cand_logits.shape or ref_logits.dim() != 2 or targets.shape != ref_logits.shape[:1]:
        raise ValueError(f"token_stats: logits {tuple(ref_logits.shape)} and {tuple(cand_logits.shape)}, "
                         f"targets {tuple(targets.shape)}: expected (n, vocab), (n, vocab), (n,)")
    step, parts = rows_per_piece(ref_logits.shape[1]), []
    for first in range(0, ref_logits.shape[0], step):
        a, b = ref_logits[first:first + step], cand_logits[first:first + step]
        y = targets[first:first + step, None]
        logp, logq = a.float().log_softmax(-1), b.float().log_softmax(-1)
        kl = torch.sub(logp, logq).mul_(logp.exp()).sum(-1)  # sum_i p_i (log p_i - log q_i)
        nll, ref_nll = -logq.gather(-1, y).squeeze(-1), -logp.gather(-1, y).squeeze(-1)
        parts.append(TokenStats(nll, ref_nll, kl, b.argmax(-1) == a.argmax(-1), (-nll).exp() - (-ref_nll).exp()))
        del logp, logq
    return TokenStats.cat(parts)


def percentile(values: torch.Tensor, fraction: float) -> float:
    """llama.cpp's percentile of `values` at `fraction` in [0, 1] (module docstring).

    >>> percentile(torch.tensor([4.0, 1.0, 3.0, 2.0]), 0.5), percentile(torch.tensor([1.0, 2.0, 3.0, 5.0]), 0.9)
    (2.5, 4.4)
    """
    v = values.double().flatten().sort().values
    if fraction <= 0 or v.numel() == 1:
        return v[0].item()
    if fraction >= 1:
        return v[-1].item()
    x = fraction * (v.numel() - 1)
    i = int(x)
    return (v[i] + (x - i) * (v[min(i + 1, v.numel() - 1)] - v[i])).item()


def mean_stderr(values: torch.Tensor) -> tuple[float, float]:
    """(mean, its standard error) as llama.cpp's `mean_and_uncertainty`: sqrt((mean(x^2) -
    mean(x)^2) / (n - 1)); 0 for fewer than two values.

    >>> mean_stderr(torch.tensor([1.0, 2.0, 3.0, 4.0]))  # sqrt((7.5 - 6.25) / 3)
    (2.5, 0.6454972243679028)
    """
    x = values.double()
    mean = x.mean().item()
    if x.numel() < 2:
        return mean, 0.0
    var = max(x.square().mean().item() - mean * mean, 0.0)
    return mean, math.sqrt(var / (x.numel() - 1))


def perplexity(nll: torch.Tensor, windows: int = 1) -> dict:
    """{'perplexity', 'perplexity_low', 'perplexity_high'}: exp of the mean of `nll` (tokens in
    `windows` equal consecutive windows), and the exp of a 95% interval of it, Student's t over
    the windows' mean nll (one window: the interval is the figure itself)."""
    per_window = nll.double().reshape(windows, -1).mean(-1)
    lo, hi = interval95(per_window, math.inf)
    return {"perplexity": math.exp(nll.double().mean().item()), "perplexity_low": math.exp(lo),
            "perplexity_high": math.exp(hi)}


def summarize(stats: TokenStats, windows: int = 1) -> dict:
    """The summary llama.cpp prints, as plain data (module docstring): {'perplexity',
    'perplexity_low', 'perplexity_high', 'kl': {'mean', 'mean_stderr', 'median', 'p99', 'p999',
    'max'}, 'same_top', 'delta_p': {'mean', 'p1', 'p5', 'p95', 'p99'}}; `windows`: the equal
    consecutive windows the tokens come in (for the perplexity's interval)."""
    if len(stats) == 0:
        raise ValueError("summarize: no scored token")
    kl_mean, kl_stderr = mean_stderr(stats.kl)
    dp = stats.delta_p
    return {
        **perplexity(stats.nll, windows),
        "kl": {"mean": kl_mean, "mean_stderr": kl_stderr, "median": percentile(stats.kl, 0.5),
               "p99": percentile(stats.kl, 0.99), "p999": percentile(stats.kl, 0.999), "max": stats.kl.max().item()},
        "same_top": stats.same_top.double().mean().item(),
        "delta_p": {"mean": dp.double().mean().item(), "p1": percentile(dp, 0.01), "p5": percentile(dp, 0.05),
                    "p95": percentile(dp, 0.95), "p99": percentile(dp, 0.99)},
    }
