"""The first estimate says how sure it is: a 95% interval for the full figure (engine.quality.evaluate)."""
import math

import pytest
import torch
from scipy.stats import t

from engine import Recipe
from engine.quality.stats import interval95


def test_interval_by_hand():
    lo, hi = interval95(torch.tensor([1.0, 2.0, 3.0, 4.0]), population=16)
    sd = math.sqrt(sum((x - 2.5) ** 2 for x in (1, 2, 3, 4)) / 3)
    half = t.ppf(0.975, 3) * sd * math.sqrt((1 - 4 / 16) / 4)  # t(3) = 3.182; finite-population correction 3/4
    assert (lo, hi) == pytest.approx((2.5 - half, 2.5 + half), rel=1e-6)
    assert interval95(torch.tensor([1.0, 2.0]), population=2) == (1.5, 1.5)  # the sample is everything: exact


def test_causal_lm_estimate_interval_holds_the_full_figure(tiny_explorers):
    work = tiny_explorers["llama"].workspace()
    work.apply(Recipe(bits=2, group_size=32))
    quick, full = work.evaluate(quick=True), work.evaluate()
    lo, hi = quick["perplexity_low"], quick["perplexity_high"]
    assert lo < quick["perplexity"] < hi
    assert math.sqrt(lo * hi) == pytest.approx(quick["perplexity"], rel=1e-6)  # symmetric in log perplexity
    assert lo <= full["perplexity"] <= hi
    assert "perplexity_low" not in full


def test_encoder_estimate_interval(minilm_explorer):
    work = minilm_explorer.workspace()
    work.apply(Recipe(bits=3))
    quick, full = work.evaluate(quick=True), work.evaluate()
    lo, hi = quick["cosine_to_original_low"], quick["cosine_to_original_high"]
    assert lo < quick["cosine_to_original"] < hi <= 1
    assert lo <= full["cosine_to_original"] <= hi
