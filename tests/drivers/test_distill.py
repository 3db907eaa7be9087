"""Knowledge distillation: values stay on their grid and mask, bytes do not change, quality recovers."""
import pytest
import torch

from cli_harness import run_json
from engine.drivers.distill import _quantized, _start
from engine.formats.grid import Grid, fake_quantize, quant_grid
from engine.methods.gptq import gptq_quantize
from engine.recipe.recipe import Recipe


def test_straight_through_rounds_forward_and_passes_gradients_within_the_mask():
    recipe = Recipe(bits=2, granularity="tensor")
    p = torch.tensor([[-1.0, 0.3, 0.5, 0.9]], requires_grad=True)
    keep = torch.tensor([[True, True, False, True]])
    grid = Grid(*quant_grid(p.detach(), 2, "tensor"))
    q = _quantized(p, grid, keep, recipe)
    # scale = 1/1 (max |p| = 1 over 2^(2-1) - 1): codes -1, 0, (0 pruned), 1
    assert q.tolist() == [[-1.0, 0.0, 0.0, 1.0]]
    (q * torch.tensor([[1.0, 2.0, 3.0, 4.0]])).sum().backward()
    assert p.grad.tolist() == [[1.0, 2.0, 0.0, 4.0]]


def test_training_starts_exactly_at_the_compressed_values():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 64, generator=g)
    x = torch.randn(200, 64, generator=g) @ torch.randn(64, 64, generator=g)
    recipe = Recipe(bits=3, group_size=32, quant_method="gptq")
    q, (scale, zero) = gptq_quantize(w, x.T @ x / 200, 3, "group", 32, return_grid=True)
    grid = Grid(scale, zero)
    start = _start(q, w, grid, recipe)
    assert torch.equal(grid.snap(start, recipe), q)  # the first forward pass is the GPTQ model
    moved = ~torch.isclose(start, q)
    assert moved.any() and torch.equal(start[moved], w[moved])  # elsewhere at the unrounded weight
    rtn = fake_quantize(w, 3, "group", 32)
    assert torch.equal(_start(rtn, w, Grid(*quant_grid(w, 3, "group", 32)), recipe), w)


@pytest.fixture(scope="module")
def minilm(minilm_explorer):
    return minilm_explorer, minilm_explorer.workspace()


def test_distillation_keeps_bytes_masks_and_grids_and_recovers_quality_on_minilm(minilm):
    ex, work = minilm
    recipe = Recipe(bits=3, sparsity=0.5)
    before = work.apply(recipe)
    cos_before = work.evaluate()["cosine_to_original"]
    values_before = {n: work.holders[n].matrix().clone() for n in work.stored}
    steps = []
    after = work.distill(8, 1e-4, progress=lambda k, n, loss: steps.append((k, n)))
    assert steps == [(k, 8) for k in range(1, 9)]
    assert after.recipe == Recipe(bits=3, sparsity=0.5, distill_steps=8)
    assert after.memory == before.memory  # same formats, same bytes
    d = after.distillation
    assert len(d.loss) == 8 and d.tokens_per_step[0] >= 4 * 64 and d.seconds > 0
    changed = 0
    for name, stored in work.stored.items():
        w = work.holders[name].matrix()
        assert torch.equal(stored.matrix(), w)  # the stored layers hold the trained values
        ((grid, keep),) = [(m.grid, m.keep) for m in stored.matrices]
        assert not w[~keep].any() and int(keep.sum()) == keep.numel() // 2  # pruned stay pruned
        assert torch.equal(grid.snap(w, recipe) * keep, w)  # on the layer's 3-bit grid
        changed += int((w != values_before[name]).sum())
    assert changed > 0
    assert work.evaluate()["cosine_to_original"] > cos_before + 0.01  # held-out text, not the training text


def test_distillation_trains_low_rank_factors_and_codebooks(minilm):
    _, work = minilm
    applied = work.apply(Recipe(rank_ratio=0.5, bits=3, quant_method="kmeans", distill_steps=2))
    assert applied.distillation is not None and applied.recipe.distill_steps == 2
    name = "encoder.layer.0.attention.self.query"
    h = work.holders[name]
    assert h.a.shape == (384, 192) and h.b.shape == (192, 384)
    for m, grid in zip((h.a, h.b), (s.grid for s in work.stored[name].matrices)):
        assert m.unique().numel() <= 8 and set(m.unique().tolist()) <= set(grid.codebook.tolist())


def test_cli_reports_quality_before_and_after_distillation():
    out = run_json("minilm", "--bits", "3", "--distill-steps", "2", "--quick")
    d = out["distillation"]
    assert d["steps"] == 2 and len(d["loss"]) == 2 and "cosine" in d["objective"] and "Wikipedia" in d["text"]
    assert d["metrics_before"]["cosine_to_original"] != out["metrics"]["cosine_to_original"]
    assert out["seconds"]["distill"] == d["seconds"] > 0
    assert out["recipe"]["distill_steps"] == 2


def test_cli_distils_a_language_model_on_its_kl_to_the_original(tiny_models):
    # a causal LM's objective: KL of the next-token distributions (a tiny Llama: one step of the same code
    # that runs on smollm2)
    out = run_json(tiny_models["llama"], "--rank-ratio", "0.5", "--bits", "4", "--distill-steps", "1", "--quick")
    d = out["distillation"]
    assert d["objective"].startswith("KL") and d["loss_first"] > 0 and len(d["loss"]) == 1
    assert out["metrics"]["perplexity"] != d["metrics_before"]["perplexity"]
    assert d["metrics_before"]["kl_to_original"] > 0
