"""The better-than-naive methods against direct reference computations on small tensors."""
import pytest
import torch

from engine.formats.bytes import tensor_bytes
from engine.formats.grid import fake_quantize, quant_params
from engine.methods.gptq import gptq_quantize
from engine.methods.kmeans import kmeans_quantize
from engine.methods.magnitude import magnitude_mask
from engine.methods.svd import low_rank_factors, svd
from engine.methods.wanda import row_mask, wanda_scores
from engine.methods.whitened import whitened_svd
from engine.pipeline.compress import compress as compress_matrix
from engine.recipe.recipe import Recipe, RecipeError


def _inputs(n=400, cols=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cols, generator=g) * torch.linspace(0.05, 3.0, cols)  # uneven input energy
    return x, x.T @ x / n


def _out_err(w, w_hat, x):
    return ((w - w_hat) @ x.T).norm().item()


def test_whitening_is_undone_exactly_at_full_rank():
    x, h = _inputs()
    w = torch.randn(32, 48, generator=torch.Generator().manual_seed(1))
    u, s, vh = whitened_svd(w, h)
    a, b = low_rank_factors(u, s, vh, 32)
    assert torch.allclose(a @ b, w, atol=1e-4)


@pytest.mark.parametrize("rank", [4, 12, 24])
def test_whitened_truncation_has_lower_output_error_than_plain_svd(rank):
    x, h = _inputs()
    w = torch.randn(32, 48, generator=torch.Generator().manual_seed(2))
    aw, bw = low_rank_factors(*whitened_svd(w, h), rank)
    ap, bp = low_rank_factors(*svd(w), rank)
    assert _out_err(w, aw @ bw, x) < _out_err(w, ap @ bp, x)
    assert (w - aw @ bw).norm() >= (w - ap @ bp).norm() - 1e-4  # plain SVD is best on the weights


def test_wanda_scores_and_row_masks_by_hand():
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5], [4.0, 1.0, -1.0, 2.0]])
    h_diag = torch.tensor([4.0, 1.0, 0.25, 9.0])  # input norms 2, 1, 0.5, 3
    score = wanda_scores(w, h_diag)
    assert torch.equal(score, torch.tensor([[2.0, 2.0, 1.5, 1.5], [8.0, 1.0, 0.5, 6.0]]))
    keep = row_mask(score, 0.5)
    assert keep.sum(1).tolist() == [2, 2]  # compared within each output row
    assert keep[1].tolist() == [True, False, False, True]
    # magnitude alone would keep |3| in row 0; its input is small, so Wanda drops it
    assert not keep[0, 2] and magnitude_mask(w, 0.5)[0, 2]


def test_gptq_on_two_columns_by_hand():
    # H = [[1, c], [c, 1]]: after rounding column 0 with error e, column 1 moves by -c e
    # (the OBS update: delta_1 = -e H01 / H00 ... through the Cholesky factor of H^-1).
    c = 0.5
    h = torch.tensor([[1.0, c], [c, 1.0]])
    w = torch.tensor([[0.3, 0.0]])  # per-tensor 2-bit symmetric grid: scale = 0.3 / 1
    q = gptq_quantize(w, h, bits=2, granularity="tensor", damp=0.0)
    scale = quant_params(w.reshape(1, -1), 2, True)[0].item()
    q0 = round(0.3 / scale) * scale
    e = 0.3 - q0
    w1 = 0.0 - c * e  # updated second column before rounding
    q1 = max(-2, min(1, round(w1 / scale))) * scale
    assert q[0, 0].item() == pytest.approx(q0) and q[0, 1].item() == pytest.approx(q1)


def test_gptq_uses_the_rtn_grid_and_lowers_output_error():
    x, h = _inputs(cols=64)
    w = torch.randn(48, 64, generator=torch.Generator().manual_seed(3))
    for bits in (3, 4):
        rtn = fake_quantize(w, bits, "group", 32)
        for act_order in (False, True):
            q = gptq_quantize(w, h, bits, "group", 32, act_order=act_order)
            assert _out_err(w, q, x) < _out_err(w, rtn, x)
            # every value is a code times its group's fp16 scale: at most 2^b values per group
            for g in range(2):
                assert q[:, 32 * g:32 * (g + 1)].unique().numel() <= 48 * 2**bits


def test_gptq_keeps_pruned_entries_zero():
    x, h = _inputs(cols=32)
    w = torch.randn(16, 32, generator=torch.Generator().manual_seed(4))
    keep = magnitude_mask(w, 0.5)
    q = gptq_quantize(w * keep, h, 4, "channel", keep=keep)
    assert torch.equal(q[~keep], torch.zeros(int((~keep).sum())))


def test_kmeans_codebook_size_and_lloyd_fixed_point():
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(5))
    for bits in (2, 3, 4):
        q = kmeans_quantize(w, bits)
        centers = q.unique()
        assert centers.numel() <= 2**bits
        assert torch.equal(centers.half().float(), centers)  # stored at fp16
        # each value went to its nearest center, and each center is (up to fp16) its cluster mean
        nearest = centers[(w.flatten()[:, None] - centers[None, :]).abs().argmin(1)]
        assert torch.equal(nearest, q.flatten())
        for c in centers:
            assert w.flatten()[q.flatten() == c].mean().item() == pytest.approx(c.item(), abs=2e-3)
    errs = [(w - kmeans_quantize(w, b)).norm().item() for b in (2, 3, 4, 5)]
    assert errs == sorted(errs, reverse=True)


def test_kmeans_bytes_and_pruned_zeros():
    w = torch.randn(8, 16, generator=torch.Generator().manual_seed(6))
    keep = magnitude_mask(w, 0.5)
    q = kmeans_quantize(w * keep, 3, keep)
    assert torch.equal(q[~keep], torch.zeros(64)) and q[keep].unique().numel() <= 8
    # 3-bit indices for 128 values + 8 fp16 codebook entries; pruned: bitmask, never dense
    assert tensor_bytes(8, 16, 128, 3, codebook=True).total == 48 + 16
    tb = tensor_bytes(8, 16, 64, 3, codebook=True)
    assert tb.format == "bitmask" and tb.values == 24 and tb.scales == 16 and tb.index == 16


def test_factored_gptq_and_wanda_through_compress_matrix():
    x, h = _inputs(cols=48)
    w = torch.randn(40, 48, generator=torch.Generator().manual_seed(7))
    factors = lambda: svd(w)  # noqa: E731
    plain = compress_matrix("l", w, Recipe(rank=16, bits=4, group_size=16, sparsity=0.3), factors)
    aware = compress_matrix("l", w, Recipe(rank=16, bits=4, group_size=16, sparsity=0.3, quant_method="gptq",
                                           prune_method="wanda"), factors, hessian=h)
    assert plain.bytes == aware.bytes  # same rank, same counts, same grid: same bytes
    a, b = aware.tensors()
    assert (a == 0).sum() >= round(0.3 * 640) and (b == 0).sum() >= round(0.3 * 768)  # pruned stay zero
    dense = Recipe(bits=4, group_size=16, sparsity=0.5)
    aware_dense = Recipe(bits=4, group_size=16, sparsity=0.5, quant_method="gptq", prune_method="wanda")
    (p,) = compress_matrix("l", w, dense, factors).tensors()
    (q,) = compress_matrix("l", w, aware_dense, factors, hessian=h).tensors()
    assert _out_err(w, q, x) < 0.8 * _out_err(w, p, x)


def test_recipe_methods_validate_and_round_trip():
    r = Recipe(rank_ratio=0.5, bits=4, sparsity=0.5, lowrank_method="whitened", prune_method="wanda",
               quant_method="gptq", act_order=True)
    assert Recipe.from_json(r.to_json()) == r and r.calibrated
    assert "whitened" in r.describe() and "GPTQ act-order" in r.describe() and "Wanda" in r.describe()
    assert not Recipe(bits=4, quant_method="kmeans").calibrated
    assert not Recipe(prune_method="wanda").calibrated  # nothing pruned: nothing to calibrate
    with pytest.raises(RecipeError, match="act_order: only with quant_method gptq"):
        Recipe(bits=4, act_order=True)
    with pytest.raises(RecipeError, match="quant_method: must be one of rtn, gptq, kmeans"):
        Recipe(quant_method="smoothquant")


