"""The statistics of every quality protocol: intervals, and the per-token scores of a window.
"""
from __future__ import annotations

import math

import numpy as np

import torch

FULL_WINDOWS = 16


QUICK_WINDOWS = 4  # the first estimate: this many of the full windows, evenly spaced


BATCH = 4


INTERVAL_NOTE = ("with a 95% interval for the full figure (`<metric>_low`, `<metric>_high`): Student's t over "
                 "the estimate's items, with the finite-population correction, the items taken as if drawn at random")


def interval95(sample: torch.Tensor, population: int) -> tuple[float, float]:
    """A 95% interval for the mean over `population` items from `sample`, k of them (each item's
    value: a window's mean log-likelihood, a sentence's cosine). Student's t with k - 1 degrees
    of freedom, and the finite-population correction 1 - k/N, since the sample is part of the
    items the full figure averages. The sample is taken as if drawn at random (the first
    estimate's items are evenly spaced over the text)."""
    from scipy.stats import t

    k = sample.numel()
    mean = sample.float().mean().item()
    if k < 2 or k >= population:
        return mean, mean
    half = t.ppf(0.975, k - 1) * sample.float().std().item() * math.sqrt((1 - k / population) / k)
    return mean - half, mean + half


def ratio_interval(log_ratio: torch.Tensor, base_ppl: float, windows: int) -> dict:
    """The first estimate's perplexity interval: the full figure is base_ppl x exp(the mean over
    all windows of each window's log-likelihood change), estimated from `log_ratio`, the change
    on the estimate's windows."""
    lo, hi = interval95(log_ratio, windows)
    return bounds("perplexity", base_ppl * math.exp(lo), base_ppl * math.exp(hi))


def bounds(metric: str, lo: float, hi: float) -> dict:
    """A first estimate's 95% interval, as two flat fields (a sweep writes them as columns)."""
    return {f"{metric}_low": lo, f"{metric}_high": hi}


def token_scores(logp, ref_logp, ref_top1, targets):
    """Per scored token of next-token predictions: (negative log-likelihood of the target,
    KL(original || compressed) in nats, whether both models' most likely token agree), each
    (batch, positions), from log-probabilities (batch, positions, vocab) of the compressed
    model `logp` and the original `ref_logp`, the original's top tokens and the targets."""
    nll = -logp.gather(-1, targets[..., None]).squeeze(-1)
    kl = (ref_logp.exp() * (ref_logp - logp)).sum(-1)
    return nll, kl, logp.argmax(-1) == ref_top1


def _spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def classification_scores(truth, predicted) -> dict:
    """Accuracy, and precision, recall and F1 macro-averaged over the classes that occur in
    either: each class's own, then their plain mean (a class with no prediction, or no item,
    scores 0 where its ratio is undefined), as scikit-learn's `average="macro"` does.

    >>> classification_scores([0, 0, 1, 1], [0, 1, 1, 1])
    {'accuracy': 0.75, 'precision': 0.8333333333333333, 'recall': 0.75, 'f1': 0.7333333333333334}
    """
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    precision, recall, f1 = [], [], []
    for c in np.union1d(truth, predicted):
        hit = int(((predicted == c) & (truth == c)).sum())
        said, there = int((predicted == c).sum()), int((truth == c).sum())
        p, r = hit / said if said else 0.0, hit / there if there else 0.0
        precision.append(p)
        recall.append(r)
        f1.append(2 * p * r / (p + r) if p + r else 0.0)
    return {"accuracy": float((truth == predicted).mean()), "precision": float(np.mean(precision)),
            "recall": float(np.mean(recall)), "f1": float(np.mean(f1))}
