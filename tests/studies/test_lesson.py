"""Inside a layer (engine.studies.inside_layer): the numbers each picture draws, checked against the layer as stored."""
import math

import pytest
import torch

from engine.recipe.recipe import Recipe
from engine.studies import inside_layer as lesson

LAYER = "encoder.layer.1.attention.self.value"  # 384 x 384


@pytest.fixture(scope="module")
def work(minilm_explorer):
    return minilm_explorer.workspace()


def _on(values, levels):
    v, lv = torch.tensor(values), torch.tensor(levels)
    return bool(((v[:, None] - lv[None]).abs().min(1).values == 0).all())


@pytest.mark.parametrize("recipe", [Recipe(bits=3, group_size=64), Recipe(bits=4, symmetric=False, granularity="channel"),
                                    Recipe(bits=2, group_size=32, sparsity=0.5), Recipe(rank_ratio=0.5, bits=4)],
                         ids=["int3 g64", "int4 channel asym", "int2 g32 50%", "rank 0.5 int4"])
def test_every_quantized_value_lies_on_a_drawn_level(work, recipe):
    work.apply(recipe)
    q = lesson.quantization(work, LAYER)
    assert q["applies"] and len(q["levels"]) == 2 ** recipe.bits
    assert _on(q["after"], q["levels"])
    assert q["scale"] == torch.tensor(q["scales"]).max().item()  # the default group: the largest scale
    assert q["max_error"] <= q["half_step_max"] * (1 + 1e-6)  # round to nearest: at most half a step
    assert sum(q["error"]["counts"]) == 384 * (384 if recipe.rank_ratio is None else 192) * (
        1 - (recipe.sparsity or 0))  # every stored (kept) value's error is drawn
    assert (q["zeros"] is None) == recipe.symmetric
    other = lesson.quantization(work, LAYER, group=0)  # any group the user picks: its own levels
    assert other["group"] == 0 and _on(other["after"], other["levels"])
    stored = work.stored[LAYER].matrices[-1]
    assert other["after"] == stored.values.flatten()[: len(other["after"])].tolist()  # row 0's first values


def test_low_rank_shows_the_stored_product_and_counts_its_parameters(work):
    work.apply(Recipe(rank_ratio=0.25))
    r = lesson.low_rank(work, LAYER)
    assert r["rank"] == 96 and r["factor_params"] == 96 * (384 + 384) and r["dense_params"] == 384 * 384
    w, approx = torch.tensor(r["original"]), torch.tensor(r["approx"])
    assert torch.allclose(w - approx, torch.tensor(r["difference"]))
    assert torch.allclose(approx, work.stored[LAYER].matrix()[:48, :48].float())
    s = torch.tensor(r["singular_values"], dtype=torch.float64)
    assert r["relative_error"] ** 2 == pytest.approx(1 - r["energy_kept"], rel=1e-3)  # the dropped energy
    assert r["energy_kept"] == pytest.approx((s[:96] ** 2).sum() / (s ** 2).sum())


@pytest.mark.parametrize("recipe", [Recipe(sparsity=0.5), Recipe(sparsity=0.5, pattern="2:4"),
                                    Recipe(sparsity=0.5, prune_method="wanda")], ids=["magnitude", "2:4", "wanda"])
def test_pruning_shows_the_mask_and_the_magnitudes_on_each_side(work, recipe):
    work.apply(recipe)
    p = lesson.pruning(work, LAYER)
    mask = torch.tensor(p["mask"])
    assert p["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert sum(p["kept"]["counts"]) == sum(p["removed"]["counts"]) == 384 * 384 // 2
    if recipe.pattern == "2:4":
        assert (mask.reshape(48, 12, 4).sum(-1) == 2).all()  # two of every four: the pattern shows
    if recipe.prune_method == "magnitude" and recipe.pattern == "unstructured":
        w = torch.tensor(p["values"]).abs()
        assert (w[mask.bool()] >= p["threshold"]).all()
        assert "differs_from_magnitude" not in p
    if recipe.prune_method == "wanda":
        assert 0 < p["differs_from_magnitude"] < 0.5  # Wanda keeps other weights than magnitude would


def test_sharing_and_entropy_count_the_stored_codes(work):
    work.apply(Recipe(bits=3, quant_method="kmeans"))
    s = lesson.sharing(work, LAYER)
    assert len(s["codebook"]) == 8 and sum(s["counts"]) == 384 * 384
    e = lesson.entropy(work, LAYER)
    assert sum(e["counts"]) == e["values"] == 384 * 384
    assert e["entropy"] <= e["huffman"] < e["entropy"] + 1 and e["huffman"] <= e["fixed"] == 3
    p = torch.tensor(e["counts"], dtype=torch.float64) / e["values"]
    kraft = sum(2.0 ** -length for length, c in zip(e["lengths"], e["counts"]) if c)
    assert kraft <= 1 + 1e-12 and e["entropy"] == pytest.approx(-(p[p > 0] * p[p > 0].log2()).sum().item())
    work.apply(Recipe(bits=4, group_size=64, sparsity=0.5))
    e = lesson.entropy(work, LAYER)
    assert e["values"] == 384 * 384 // 2 and e["entropy"] <= e["huffman"] <= 4  # the kept values only
    assert math.isclose(sum(c * length for c, length in zip(e["counts"], e["lengths"])) / e["values"], e["huffman"])


def test_a_transform_the_recipe_does_not_use_says_so(work):
    work.apply(Recipe(bits=4))
    assert lesson.pruning(work, LAYER) == {"applies": False, "why": f"{LAYER} is not pruned"}
    assert not lesson.low_rank(work, LAYER)["applies"] and not lesson.sharing(work, LAYER)["applies"]
    work.apply(Recipe(number_format="q4_0"))
    assert "llama.cpp" in lesson.quantization(work, LAYER)["why"]
    with pytest.raises(KeyError):
        lesson.quantization(work, "no.such.layer")
