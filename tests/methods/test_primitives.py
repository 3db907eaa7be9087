import math

import pytest
import torch

from engine.formats.grid import error_stats, fake_quantize, quant_params
from engine.methods.magnitude import kth_smallest, magnitude_mask, nm_mask
from engine.methods.svd import break_even_rank, effective_rank, energy_kept, low_rank_factors, svd


def test_symmetric_per_tensor_exact_values():
    w = torch.tensor([[-1.0, 0.3, 0.5, 1.0], [0.26, -0.74, 0.0, 0.1]])
    # 2 bits symmetric: scale = max|w| / 1 = 1, codes round(w) in [-2, 1]; 0.5 rounds to even (0)
    assert fake_quantize(w, 2, "tensor").tolist() == [[-1.0, 0.0, 0.0, 1.0], [0.0, -1.0, 0.0, 0.0]]
    # 3 bits: scale = 1/3, codes round(3w)
    q = fake_quantize(w, 3, "tensor")
    expected = torch.tensor([[-3, 1, 2, 3], [1, -2, 0, 0]]) * torch.tensor(1 / 3).half().float()
    torch.testing.assert_close(q, expected)


def test_per_channel_and_group_scales():
    w = torch.tensor([[1.0, 0.5, 4.0, -3.0]])
    # per group of 2 at 2 bits: scales 1 and 4
    assert fake_quantize(w, 2, "group", group_size=2).tolist() == [[1.0, 0.0, 4.0, -4.0]]
    w2 = torch.tensor([[7.0, 3.0], [0.7, -0.3]])
    # per channel, 4 bits: scale = row max / 7 -> rows are coded independently
    q = fake_quantize(w2, 4, "channel")
    torch.testing.assert_close(q[0], torch.tensor([7.0, 3.0]))
    s = torch.tensor(0.1).half().float()
    torch.testing.assert_close(q[1], torch.tensor([7.0, -3.0]) * s)


def test_group_not_dividing_row_uses_a_short_last_group():
    w = torch.tensor([[1.0, 2.0, 3.0, 8.0, 0.5]])
    q = fake_quantize(w, 2, "group", group_size=2)
    # groups [1,2] scale 2, [3,8] scale 8, [0.5] scale 0.5
    assert q.tolist() == [[0.0, 2.0, 0.0, 8.0, 0.5]]


def test_asymmetric_keeps_zero_exact_and_uses_full_range():
    w = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    scale, zero = quant_params(w, 2, symmetric=False)
    assert scale.item() == 1.0 and zero.item() == 0.0
    assert fake_quantize(w, 2, "tensor", symmetric=False).tolist() == [[0.0, 1.0, 2.0, 3.0]]
    w = torch.tensor([[-1.0, 0.0, 2.0]])  # 4 levels over [-1, 2]: step 1, zero code 1
    assert fake_quantize(w, 2, "tensor", symmetric=False).tolist() == [[-1.0, 0.0, 2.0]]


@pytest.mark.parametrize("granularity", ["tensor", "channel", "group"])
@pytest.mark.parametrize("symmetric", [True, False])
def test_error_falls_as_bits_rise(granularity, symmetric):
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(0))
    errors = [error_stats(w, fake_quantize(w, b, granularity, 64, symmetric))[0] for b in range(2, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert fake_quantize(w, 16).equal(w)


def test_svd_error_falls_with_rank_and_full_rank_is_exact():
    w = torch.randn(48, 32, generator=torch.Generator().manual_seed(1))
    u, s, vh = svd(w)
    errs = []
    for r in (1, 4, 8, 16, 24, 32):
        a, b = low_rank_factors(u, s, vh, r)
        assert a.shape == (48, r) and b.shape == (r, 32)
        rel, _ = error_stats(w, a @ b)
        # Eckart-Young: the error is exactly the discarded singular values
        assert rel == pytest.approx(math.sqrt(1 - energy_kept(s, r)), abs=1e-5)
        errs.append(rel)
    assert all(x > y for x, y in zip(errs, errs[1:]))
    assert errs[-1] < 1e-5


def test_magnitude_mask_is_exact_even_with_ties():
    w = torch.tensor([1.0, -1.0, 1.0, 2.0, -3.0, 1.0])  # four ties at |1|
    keep = magnitude_mask(w, 0.5)
    assert int((~keep).sum()) == 3 and keep[3] and keep[4]
    big = (torch.randint(-8, 8, (300, 700), generator=torch.Generator().manual_seed(2)) / 8.0)
    for s in (0.1, 0.37, 0.5, 0.9, 0.999):
        keep = magnitude_mask(big, s)
        assert int((~keep).sum()) == round(s * big.numel())
        assert big.abs()[~keep].max() <= big.abs()[keep].min()


def test_kth_smallest_matches_kthvalue():
    g = torch.Generator().manual_seed(3)
    for x in (torch.randn(200_000, generator=g), torch.rand(100_003, generator=g) ** 8,
              torch.randint(0, 5, (150_000,), generator=g).float()):
        for k in (1, 17, x.numel() // 3, x.numel() - 1, x.numel()):
            assert kth_smallest(x, k).item() == x.kthvalue(k).values.item()


def test_nm_pattern_holds():
    w = torch.randn(16, 24, generator=torch.Generator().manual_seed(4))
    keep = nm_mask(w, 2, 4)
    groups = keep.view(16, 6, 4)
    assert (groups.sum(-1) == 2).all()
    # kept are the two largest of each group
    a = w.abs().view(16, 6, 4)
    assert (a[groups].view(16, 6, 2).min(-1).values >= a.masked_fill(groups, -1).max(-1).values).all()
    # a short last group keeps at most N
    g = torch.Generator().manual_seed(1)
    keep = nm_mask(torch.randn(3, 6, generator=g), 2, 4)
    assert keep[:, :4].sum(1).eq(2).all() and keep[:, 4:].sum(1).eq(2).all()
    keep = nm_mask(torch.randn(3, 5, generator=g), 2, 4)
    assert keep[:, 4].all()


def test_effective_rank_and_break_even():
    assert effective_rank(torch.ones(4)) == pytest.approx(4.0)
    assert break_even_rank(100, 300) == 75.0
    assert error_stats(torch.ones(4), torch.ones(4)) == (0.0, math.inf)
    rel, sqnr = error_stats(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 3.5]))
    assert rel == pytest.approx(0.1) and sqnr == pytest.approx(20.0)
