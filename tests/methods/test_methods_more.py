"""HQQ, AWQ and SparseGPT on small tensors: what each is meant to lower, lowered, at the bytes of
its plain counterpart; their layers through the packed codec; the command line on minilm."""
import pytest
import torch

from cli_harness import run_json
from engine.formats.bytes import tensor_bytes
from engine.formats.grid import fake_quantize, on_grid
from engine.methods.awq import awq_channel_scales, awq_quantize, output_error
from engine.methods.hqq import hqq_quantize, shrink_lp
from engine.methods.magnitude import magnitude_mask, nm_mask
from engine.methods.sparsegpt import sparsegpt_prune
from engine.methods.svd import svd
from engine.methods.wanda import row_mask, wanda_scores
from engine.pipeline.compress import compress
from engine.recipe.recipe import Recipe, RecipeError
from engine.storage.codec import decode_layer, encode_layer, nbytes


def _heavy(rows=32, cols=256, seed=0):
    """Heavy-tailed weights (Student t, 3 degrees of freedom), as a trained layer's are."""
    torch.manual_seed(seed)
    return torch.distributions.StudentT(3.0).sample((rows, cols)) * 0.02


def _correlated(cols=128, n=600, seed=0):
    """Inputs whose channels are mixed (off-diagonal H) and of uneven energy, in no order."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(cols) + 0.6 * torch.randn(cols, cols, generator=g) / cols ** 0.5
    x = torch.randn(n, cols, generator=g) @ mix * (torch.rand(cols, generator=g) * 3 + 0.1)
    return x.T @ x / n


def _lp(w, v, p=0.7):
    return (w - v).abs().pow(p)


# ---------------------------------------------------------------------------------------- HQQ


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("symmetric", [False, True])
def test_hqq_lowers_the_lp_error_of_round_to_nearest_on_its_own_grid(bits, symmetric):
    w = _heavy()
    rtn = fake_quantize(w, bits, "group", 64, symmetric)
    hqq, (scale, zero) = hqq_quantize(w, bits, "group", 64, symmetric)
    per_group = lambda v: _lp(w, v).reshape(-1, 64).sum(1)  # noqa: E731
    assert (per_group(hqq) <= per_group(rtn) + 1e-6).all()  # no group worse: RTN's grid is step 0
    assert _lp(w, hqq).sum() < 0.97 * _lp(w, rtn).sum()
    # a grid as round to nearest stores it: fp16 scales, integer zero-points in [0, 2^b - 1] (0 symmetric)
    assert torch.equal(scale, scale.half().float()) and (scale > 0).all()
    assert torch.equal(zero, zero.round()) and zero.min() >= 0 and zero.max() <= 2**bits - 1
    assert symmetric is False or not zero.any()
    assert torch.equal(on_grid(hqq, scale, zero, bits, "group", 64, symmetric), hqq)


def test_hqq_stores_round_to_nearest_bytes_and_keeps_pruned_entries_zero():
    w = _heavy(24, 96)
    hqq = compress("m", w, Recipe(bits=3, symmetric=False, group_size=32, sparsity=0.5, quant_method="hqq"),
                   lambda: svd(w))
    rtn = compress("m", w, Recipe(bits=3, symmetric=False, group_size=32, sparsity=0.5), lambda: svd(w))
    assert hqq.bytes == rtn.bytes
    (m,) = hqq.matrices
    assert torch.equal(m.keep, rtn.matrices[0].keep) and not m.values[~m.keep].any()
    assert torch.equal(m.grid.snap(m.values, hqq.recipe), m.values)


def test_shrink_lp_by_hand():
    # p = 1 is soft thresholding at 1 / beta
    x = torch.tensor([0.05, -0.3, 2.0])
    assert torch.allclose(shrink_lp(x, 10.0, 1.0), torch.tensor([0.0, -0.2, 1.9]))


# ---------------------------------------------------------------------------------------- AWQ


def test_awq_alpha_zero_is_round_to_nearest_and_never_worse():
    w = _heavy(32, 128)
    assert torch.equal(awq_channel_scales(torch.rand(128) + 0.1, 0.0), torch.ones(128))
    # equal input energy: every alpha gives s = 1 after normalization, so AWQ is round to nearest
    values, (scale, zero, s), alpha = awq_quantize(w, torch.eye(128) * 2.0, 4, "group", 64)
    assert torch.equal(values, fake_quantize(w, 4, "group", 64)) and torch.equal(s, torch.ones(128))


@pytest.mark.parametrize("bits, symmetric", [(3, True), (4, True), (4, False)])
def test_awq_lowers_the_output_error_with_uneven_input_energy(bits, symmetric):
    w, h = _heavy(32, 128), _correlated()
    values, (scale, zero, s), alpha = awq_quantize(w, h, bits, "group", 64, symmetric)
    rtn = fake_quantize(w, bits, "group", 64, symmetric)
    assert output_error(w - values, h) < output_error(w - rtn, h)
    assert 0 < alpha <= 1 and torch.equal(s, s.half().float())
    # the values are the grid of W diag(s), divided by s
    assert torch.equal(values, on_grid(w * s, scale, zero, bits, "group", 64, symmetric) / s)


def test_awq_stores_an_fp16_scale_per_input_column_beside_the_grid():
    assert tensor_bytes(8, 40, 320, 4, channel_scales=True).scales == tensor_bytes(8, 40, 320, 4).scales + 80
    w, h = _heavy(24, 128), _correlated()
    awq = compress("m", w, Recipe(bits=4, group_size=32, quant_method="awq"), lambda: svd(w), hessian=h)
    rtn = compress("m", w, Recipe(bits=4, group_size=32), lambda: svd(w), hessian=h)
    assert awq.bytes.compressed_bytes == rtn.bytes.compressed_bytes + 2 * 128
    # no statistics (an embedding): alpha 0, the scales all 1, round to nearest's values, the same bytes
    plain = compress("m", w, Recipe(bits=4, group_size=32, quant_method="awq"), lambda: svd(w))
    assert torch.equal(plain.matrices[0].values, rtn.matrices[0].values)
    assert plain.bytes == awq.bytes and torch.equal(plain.matrices[0].grid.channel, torch.ones(128))


# ------------------------------------------------------------------------------------ SparseGPT


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.77])
def test_sparsegpt_keeps_magnitudes_count_and_beats_magnitude_and_wanda(sparsity):
    w, h = torch.randn(48, 128, generator=torch.Generator().manual_seed(1)), _correlated()
    values, keep = sparsegpt_prune(w, h, sparsity, block=32)
    assert int((~keep).sum()) == round(sparsity * w.numel()) and not values[~keep].any()
    magnitude = w * magnitude_mask(w, sparsity)
    wanda = w * row_mask(wanda_scores(w, h.diagonal()), sparsity)
    assert output_error(w - values, h) < min(output_error(w - magnitude, h), output_error(w - wanda, h))


@pytest.mark.parametrize("n, m", [(2, 4), (1, 4), (4, 8)])
def test_sparsegpt_n_m_is_valid_and_beats_magnitude_and_wanda(n, m):
    cols = 130  # a short last group of 2 (and of 2 of 8)
    w, h = torch.randn(32, cols, generator=torch.Generator().manual_seed(2)), _correlated(cols)
    values, keep = sparsegpt_prune(w, h, 1 - n / m, (n, m))
    assert torch.equal(keep.sum(), nm_mask(w, n, m).sum())  # the counts nm_mask keeps
    padded = torch.nn.functional.pad(keep, (0, -cols % m)).view(32, -1, m).sum(-1)
    assert padded.max() <= n and (padded[:, :-1] == n).all()
    magnitude = w * nm_mask(w, n, m)
    wanda = w * nm_mask(wanda_scores(w, h.diagonal()), n, m)
    assert output_error(w - values, h) < min(output_error(w - magnitude, h), output_error(w - wanda, h))


def test_sparsegpt_through_the_pipeline_pruned_entries_stay_zero_after_quantization():
    w, h = torch.randn(40, 128, generator=torch.Generator().manual_seed(3)), _correlated()
    for recipe in (Recipe(bits=4, group_size=32, sparsity=0.5, prune_method="sparsegpt"),
                   Recipe(bits=3, pattern="2:4", prune_method="sparsegpt", quant_method="gptq"),
                   Recipe(rank=16, bits=4, group_size=16, sparsity=0.4, prune_method="sparsegpt")):
        stored = compress("m", w, recipe, lambda: svd(w), hessian=h)
        plain = compress("m", w, recipe.updated(prune_method="magnitude"), lambda: svd(w), hessian=h)
        assert stored.bytes == plain.bytes  # the same kept counts, so the same bytes
        for m in stored.matrices:
            assert not m.values[~m.keep].any() and m.values[m.keep].count_nonzero() > 0.5 * m.kept


# ----------------------------------------------------------------------------- recipe and codec


def test_recipes_of_the_new_methods():
    r = Recipe(bits=4, symmetric=False, quant_method="hqq", sparsity=0.5, prune_method="sparsegpt")
    assert r.describe() == "int4 g128 asym HQQ · 50% sparse SparseGPT" and r.calibrated
    assert not Recipe(bits=4, quant_method="hqq").calibrated and Recipe(bits=3, quant_method="awq").calibrated
    assert Recipe.from_json(r.to_json()) == r
    for method in ("hqq", "awq"):
        with pytest.raises(RecipeError, match=f"quant_method: {method} does not run on q4_0 \\(it runs only on the explorer's own grid"):
            Recipe(number_format="q4_0", quant_method=method)
        assert Recipe(bits=4, quant_method=method).updated(number_format="q4_k").quant_method == "rtn"
    with pytest.raises(RecipeError, match="number_format: q4_0 stores every value"):
        Recipe(number_format="q4_0", sparsity=0.5, prune_method="sparsegpt")


@pytest.mark.parametrize("recipe", [
    Recipe(bits=3, symmetric=False, group_size=32, quant_method="hqq"),
    Recipe(bits=4, group_size=32, sparsity=0.5, quant_method="awq"),
    Recipe(bits=4, symmetric=False, pattern="2:4", prune_method="sparsegpt"),
], ids=lambda r: r.describe())
def test_the_packed_codec_round_trips_each_method(recipe):
    w, h = _heavy(24, 128), _correlated()
    stored = compress("m", w, recipe, lambda: svd(w), hessian=h)
    tensors, parts = encode_layer(stored)
    assert nbytes(tensors) == stored.bytes.compressed_bytes  # written exactly as counted
    back = decode_layer("m", stored.shape, recipe, stored.rank, parts, tensors)
    for a, b in zip(stored.matrices, back.matrices):
        assert torch.equal(a.values, b.values)
        assert torch.equal(b.grid.snap(b.values, recipe), b.values)
    assert recipe.quant_method != "awq" or torch.equal(back.matrices[0].grid.channel, stored.matrices[0].grid.channel)


ONE = r"layer\.0\.attention\.self\.query"  # one layer: the methods' cost, not the model's


def test_command_line_runs_each_method_on_minilm():
    out = run_json("minilm", "--bits", "4", "--quant-method", "awq", "--sparsity", "0.5", "--prune-method",
                   "sparsegpt", "--layers", ONE, "--quick")
    assert out["recipe"]["quant_method"] == "awq" and out["recipe"]["prune_method"] == "sparsegpt"
    assert out["calibration"]["samples"] == 32 and 0.5 < out["metrics"]["cosine_to_original"] < 1
    hqq = run_json("minilm", "--bits", "3", "--asymmetric", "--quant-method", "hqq", "--layers", ONE, "--quick")
    assert hqq["calibration"] is None and 0.5 < hqq["metrics"]["cosine_to_original"] < 1
    rtn = run_json("minilm", "--bits", "3", "--asymmetric", "--layers", ONE, "--quick")
    assert hqq["memory"]["compressed_bytes"] == rtn["memory"]["compressed_bytes"]
