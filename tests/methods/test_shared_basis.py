"""Cross-layer basis sharing (engine.methods.shared, methods.shared_whitened_svd): the math on small
tensors, the groups and bytes by hand, and one run of the command line on minilm."""
import json
from types import SimpleNamespace

import pytest
import torch

from cli_harness import main
from engine.drivers import footprint, offload
from engine.errors import UserError
from engine.formats.bytes import tensor_bytes
from engine.methods import shared as sharing
from engine.methods.shared import shared_whitened_svd
from engine.methods.svd import low_rank_factors
from engine.methods.whitened import whitened_svd
from engine.pipeline.compress import compress, predict
from engine.recipe.recipe import Recipe, RecipeError
from engine.speed import runtime
from engine.storage import explorer_format as export_format


def _x(n=300, cols=24, seed=0, even=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, cols, generator=g) * (1.0 if even else torch.linspace(0.2, 2.0, cols))  # uneven input energy
    return x, x.T @ x / n


def _out_err(ws, approx, x):
    return sum(((w - a) @ x.T).norm().item() ** 2 for w, a in zip(ws, approx))


def test_exact_at_full_rank_and_one_basis_for_the_group():
    x, h = _x()
    g = torch.Generator().manual_seed(1)
    ws = [torch.randn(10, 24, generator=g) for _ in range(3)]
    factors = shared_whitened_svd(ws, [h, h, h])
    bases = []
    for w, f in zip(ws, factors):
        a, b = low_rank_factors(*f, 24)  # the stacked (30, 24) matrix has rank 24
        assert torch.allclose(a @ b, w, atol=1e-4)
        bases.append(low_rank_factors(*f, 7)[1])
    assert all(torch.equal(bases[0], b) for b in bases[1:])  # every layer computes with the same B


def _pair(common: bool, seed=2):
    g = torch.Generator().manual_seed(seed)
    if common:  # rows in one 10-dimensional space shared by both layers, plus a little noise
        space = torch.randn(10, 24, generator=g)
        return [torch.randn(24, 10, generator=g) @ space + 0.01 * torch.randn(24, 24, generator=g) for _ in range(2)]
    return [torch.randn(24, 24, generator=g) for _ in range(2)]


@pytest.mark.parametrize("common", [True, False])
def test_shared_basis_against_per_layer_whitened_svd_at_equal_values(common):
    """With a common row space the stacked SVD wins; without one (independent layers, inputs of
    even energy) two bases of rank 8 beat one of rank 10. With uneven input energy the whitened
    layers share the inputs' strong directions even when their weights are independent, and the
    result goes either way (not asserted)."""
    x, h = _x(even=not common)
    ws, r = _pair(common), 8
    k = sharing.shared_rank(2, r, 24, 24)
    assert k == 10 and k * 24 + 2 * 24 * k <= 2 * r * (24 + 24)  # 720 <= 768 values
    per_layer = [low_rank_factors(*whitened_svd(w, h), r) for w in ws]
    shared = [low_rank_factors(*f, k) for f in shared_whitened_svd(ws, [h, h])]
    err_layer = _out_err(ws, [a @ b for a, b in per_layer], x)
    err_shared = _out_err(ws, [a @ b for a, b in shared], x)
    if common:  # one 10-dimensional basis holds both layers: sharing wins by far
        assert err_shared < 0.01 * err_layer
    else:  # unrelated layers: the basis must serve both, and a rank 10 basis loses to two of rank 8
        assert err_shared > 1.05 * err_layer


def _info(name, shape=(24, 24)):
    return SimpleNamespace(name=name, shape=shape, tied_to=None, full_rank=min(shape), params=shape[0] * shape[1])


def test_groups_by_kind_and_neighbouring_blocks():
    infos = [_info(f"enc.layer.{b}.q") for b in range(5)] + [_info(f"enc.layer.{b}.up", (48, 24)) for b in range(2)]
    infos.append(_info("pooler"))
    shares = sharing.groups(infos, Recipe(rank=8, lowrank_method="shared", share_blocks=2))
    assert shares["enc.layer.0.q"] == shares["enc.layer.1.q"] == sharing.Share(("enc.layer.0.q", "enc.layer.1.q"), 10)
    assert shares["enc.layer.4.q"] == sharing.Share(("enc.layer.4.q",), 8)  # a last group of one: rank r
    assert shares["enc.layer.0.up"].group == ("enc.layer.0.up", "enc.layer.1.up")
    assert shares["enc.layer.0.up"].rank == 2 * 8 * 72 // (24 + 96) == 9
    assert shares["pooler"].group == ("pooler",)
    three = sharing.groups(infos, Recipe(rank=8, lowrank_method="shared", share_blocks=3))
    assert three["enc.layer.2.q"].group == ("enc.layer.0.q", "enc.layer.1.q", "enc.layer.2.q")
    assert three["enc.layer.4.q"].group == ("enc.layer.3.q", "enc.layer.4.q")
    assert sharing.groups(infos, Recipe(rank=8, lowrank_method="whitened")) == {}
    rows = sharing.table(infos, Recipe(rank=8, lowrank_method="shared"))
    assert [r["blocks"] for r in rows] == [[0, 1], [2, 3], [0, 1]]
    assert rows[0]["per_layer_values"] - rows[0]["shared_values"] == 768 - 720


@pytest.mark.parametrize("recipe", [Recipe(rank=8, lowrank_method="shared"),
                                    Recipe(rank=8, lowrank_method="shared", bits=4, group_size=8),
                                    Recipe(rank=8, lowrank_method="shared", bits=3, quant_method="kmeans",
                                           sparsity=0.25)])
def test_basis_counted_once_by_hand_and_from_shapes(recipe):
    x, h = _x()
    ws = _pair(True)
    share = sharing.Share(("l.0.q", "l.1.q"), 10)
    factors = shared_whitened_svd(ws, [h, h])
    stored = [compress(name, w, recipe, lambda f=f: f, hessian=h, share=share)
              for name, w, f in zip(share.group, ws, factors)]
    assert torch.equal(stored[0].matrices[1].values, stored[1].matrices[1].values)  # B quantized once, alike
    kept = [m.kept for m in stored[0].matrices]
    codebook = recipe.quant_method == "kmeans"
    a, b = (tensor_bytes(r, c, n, recipe.bits, recipe.granularity, recipe.group_size, codebook=codebook)
            for (r, c), n in zip([(24, 10), (10, 24)], kept))
    assert stored[0].bytes.compressed_bytes == a.total + b.total
    assert stored[1].bytes.compressed_bytes == a.total and stored[1].bytes.parts[1] == sharing.SHARED
    if recipe.bits == 16 and recipe.sparsity == 0:
        assert a.total + b.total + a.total == 2 * (24 * 10 + 10 * 24 + 24 * 10)  # 720 fp16 values for the group
    for s in stored:
        assert predict(_info(s.name), recipe, share).bytes == s.bytes


@pytest.mark.parametrize("fields, message", [
    ({"lowrank_method": "whitened", "share_blocks": 3}, "share_blocks: only with lowrank_method shared"),
    ({"lowrank_method": "shared", "share_blocks": 1}, "share_blocks: must be an integer in \\[2, 64\\]"),
    ({"lowrank_method": "shared", "rank_ratio": 0.5, "bits": 4, "quant_method": "gptq"}, "quant_method: gptq"),
    ({"lowrank_method": "shared", "rank_ratio": 0.5, "sparsity": 0.5, "prune_method": "wanda"}, "prune_method: wanda"),
    ({"lowrank_method": "shared", "rank_ratio": 0.5, "distill_steps": 4}, "distill_steps: distillation"),
])
def test_what_a_shared_basis_cannot_hold_is_refused_naming_the_field(fields, message):
    with pytest.raises(RecipeError, match=message):
        Recipe(**fields)
    assert Recipe(lowrank_method="shared", share_blocks=3).updated(lowrank_method="svd").share_blocks == 2
    with pytest.raises(UserError, match="--max-memory: a shared basis"):
        offload.check(Recipe(rank_ratio=0.5, lowrank_method="shared"))


def test_run_minilm_shared_basis_end_to_end(minilm_explorer, tmp_path, capsys):
    code, out, err = main("run", "minilm", "--rank-ratio", "0.5", "--lowrank-method", "shared", "--share-blocks", "2",
                          "--json")
    assert code == 0, err
    mem = json.loads(out)["memory"]
    by_name = {layer["name"]: layer for layer in mem["layers"]}
    owner, other = by_name["encoder.layer.0.attention.self.query"], by_name["encoder.layer.1.attention.self.query"]
    assert owner["rank"] == other["rank"] == 256  # 2 x 192 x 768 / (384 + 768)
    assert owner["compressed_bytes"] == 2 * 256 * 768 and other["compressed_bytes"] == 2 * 256 * 384
    assert "shared" in other["format"] and by_name["pooler.dense"]["rank"] == 192  # no partner: per-layer
    recipe = Recipe(rank_ratio=0.5, lowrank_method="shared")
    work = minilm_explorer.workspace()
    applied = work.apply(recipe)
    assert applied.memory.compressed_bytes == mem["compressed_bytes"]
    sk = footprint.skeleton_of(minilm_explorer.loaded.model.config, "minilm", "test")
    assert footprint.predict(sk, recipe).compressed_bytes == mem["compressed_bytes"]  # from the shapes alone
    with pytest.raises(RecipeError, match="distill_steps: distillation trains each layer apart"):
        work.distill(1, 1e-4)  # refused before any step
    rt = runtime.build(work)  # the speed runtime holds the basis once too
    q0, q1 = (rt.model.get_submodule(f"encoder.layer.{b}.attention.self.query") for b in (0, 1))
    assert q0.mats[1] is q1.mats[1] and q0.mats[0] is not q1.mats[0]
    manifest = export_format.write(work, tmp_path / "shared")
    assert manifest["tensor_bytes"] == manifest["predicted_bytes"] == mem["compressed_bytes"]  # the basis once
    back = minilm_explorer.workspace()
    export_format.load_into(back, tmp_path / "shared")
    for name in ("encoder.layer.0.attention.self.query", "encoder.layer.1.attention.self.query"):
        assert torch.equal(back.holders[name].matrix(), work.holders[name].matrix())
    assert back.applied.memory.compressed_bytes == mem["compressed_bytes"]
    code, _, err = main("export", "minilm", "--rank-ratio", "0.5", "--lowrank-method", "shared", "--format",
                        "compressed-tensors", "--out", str(tmp_path / "ct"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "low rank" in err, err
    code, _, err = main("run", "minilm", "--share-blocks", "3")
    assert code == 2 and err.strip() == "error: share_blocks: only with lowrank_method shared", err


def test_spectra_page_shows_which_layers_share_a_basis():
    from app_harness import ok, start

    at = ok(start("pages/spectra.py", rank=0.5, lowrank="shared", share=2))
    table = at.dataframe[0].value
    assert list(table["blocks"]) == ["0, 1"] * 6 + ["2, 3"] * 6 + ["4, 5"] * 6  # 6 kinds of layer, 3 groups each
    assert set(table["basis rank k"]) == {213, 256, 320}
    assert list(table["bytes saved at 16 bits"])[0] == 2 * (2 * 192 * 768 - 256 * 384 * 3)
    assert len(at.get("plotly_chart")) == 3  # the layer's spectrum, its group's stacked one, the heatmap
    assert any("shares one basis of rank 256 with encoder.layer.1.attention.self.query" in c.value for c in at.caption)
    assert {m.label: m.value for m in at.metric}["Current rank (shared basis)"] == "256 of 384"  # k, not r
    shown = {m.label: m.value for m in at.metric}
    stacked = at.dataframe[0].value["energy kept at k (stacked)"][0]  # the group's row, as the table gives it
    assert shown["Energy kept (stacked)"] == stacked
