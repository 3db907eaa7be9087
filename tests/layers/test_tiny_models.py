import copy

import pytest
import torch
from transformers.pytorch_utils import Conv1D

from engine.drivers.explorer import Explorer
from engine.layers.kinds import weight_matrix
from engine.methods.magnitude import magnitude_mask
from engine.recipe.recipe import Recipe

KINDS = {"gpt2": "causal-lm", "llama": "causal-lm", "bert": "encoder", "bert-classifier": "classifier"}


@pytest.fixture
def explorers(tiny_explorers):
    return tiny_explorers


def as_stored(ex):
    """Metrics of the original model with every parameter rounded to fp16 (its uncompressed storage)."""
    model = copy.deepcopy(ex.loaded.model)
    for p in model.parameters():
        p.data = p.data.half().float()
    return ex.evaluator()(model)


@pytest.mark.parametrize("name", list(KINDS))
def test_kind_layers_and_identity(explorers, name):
    ex = explorers[name]
    assert ex.kind == KINDS[name]
    roles = {i.role for i in ex.layers}
    assert ("conv1d" in roles) == (name == "gpt2")
    work = ex.workspace()
    applied = work.apply(Recipe())
    mem = applied.memory
    assert mem.original_bytes == 2 * sum(p.numel() for p in ex.loaded.model.parameters())
    assert mem.compressed_bytes == mem.original_bytes and mem.ratio == 1.0
    metrics = work.evaluate()
    for k, v in as_stored(ex).items():  # the workspace computes with the fp16 values it would store
        assert metrics[k] == pytest.approx(v, abs=1e-6), k


@pytest.mark.parametrize("name", list(KINDS))
def test_compression_changes_output_never_the_original(explorers, name):
    ex = explorers[name]
    before = {k: v.clone() for k, v in ex.loaded.model.state_dict().items()}
    work = ex.workspace()
    applied = work.apply(Recipe(rank_ratio=0.5, bits=4, group_size=16, sparsity=0.5))
    assert applied.memory.compressed_bytes < applied.memory.original_bytes
    metrics = work.evaluate()
    primary = ex.evaluator().primary
    base = ex.evaluator().baseline()
    assert any(metrics[k] != pytest.approx(base[k], abs=1e-6) for k in base)  # a random classifier may keep its labels
    after = ex.loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    errors = work.layer_errors()
    assert len(errors) == len(ex.selected(applied.recipe)) and all(0 < e["relative_error"] < 1.5 for e in errors)
    # a second workspace starts from the original, not from the first one's state
    fresh = ex.workspace()
    fresh.apply(Recipe())
    assert fresh.evaluate()[primary] == pytest.approx(as_stored(ex)[primary], abs=1e-6)


def test_gpt2_conv1d_is_handled_the_right_way_round(explorers):
    ex = explorers["gpt2"]
    conv = ex.loaded.model.transformer.h[0].attn.c_attn
    assert isinstance(conv, Conv1D)
    info = ex.layer("transformer.h.0.attn.c_attn")
    assert info.shape == (3 * 32, 32)  # (out, in), though Conv1D stores (in, out)
    assert torch.equal(weight_matrix(conv), conv.weight.t())
    work = ex.workspace()
    work.apply(Recipe(pattern="2:4"))
    new = work.model.transformer.h[0].attn.c_attn
    w_hat = work.holders[info.name].matrix()
    # the 2:4 groups run along the input dimension of the (out, in) matrix
    assert (w_hat.view(96, 8, 4) != 0).sum(-1).eq(2).all()
    x = torch.randn(3, 5, 32, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(new(x), x @ w_hat.t() + conv.bias.half().float())
    kept = w_hat != 0
    assert torch.equal(w_hat[kept], conv.weight.t()[kept].half().float())  # kept at fp16, as stored


def test_tied_head_follows_its_embedding(explorers):
    ex = explorers["gpt2"]
    head = next(i for i in ex.layers if i.role == "head")
    assert head.tied_to == "transformer.wte"
    work = ex.workspace()
    plain = work.apply(Recipe(bits=8)).memory
    assert all(not r.compressed for r in plain.layers if r.info.role in ("embedding", "head"))
    with_emb = work.apply(Recipe(bits=8, include_embeddings=True)).memory
    emb = next(r for r in with_emb.layers if r.info.role == "embedding")
    assert emb.compressed and emb.bytes.parts[0].values == 30522 * 32  # 8-bit codes, counted once
    assert with_emb.compressed_bytes < plain.compressed_bytes
    # the head really uses the compressed embedding
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        logits = work.model(ids).logits
        hidden = work.model.transformer(ids).last_hidden_state
    torch.testing.assert_close(logits, hidden @ work.holders["transformer.wte"].matrix().t())


def test_untied_llama_head_and_layer_filter(explorers):
    ex = explorers["llama"]
    head = next(i for i in ex.layers if i.role == "head")
    assert head.tied_to is None
    names = [i.name for i in ex.selected(Recipe(layers=r"mlp\.(gate|up)_proj"))]
    assert names == [f"model.layers.{k}.mlp.{p}_proj" for k in range(2) for p in ("gate", "up")]
    mem = ex.workspace().apply(Recipe(bits=4, layers="q_proj")).memory
    assert [r.info.name for r in mem.layers if r.compressed] == ["model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    # only q_proj shrinks: 2 layers of 32x32 go from 2048 to 512 + 32*2 bytes of scales... per layer
    per_layer = 32 * 32 // 2 + 2 * 32 * 1
    assert mem.original_bytes - mem.compressed_bytes == 2 * (2 * 32 * 32 - per_layer)


def test_exact_sparsity_on_every_layer(explorers):
    ex = explorers["bert"]
    mem = ex.workspace().apply(Recipe(sparsity=0.3, rank_ratio=0.5)).memory
    for r in mem.layers:
        if r.compressed:
            stored = r.bytes.rank * sum(r.info.shape) if r.bytes.rank else r.info.params
            assert r.sparsity == pytest.approx(round(0.3 * stored) / stored, abs=2 / stored)


EXPECTED_GROUPS = {
    "gpt2": {"attention": ["attn.c_attn", "attn.c_proj"], "mlp": ["mlp.c_fc", "mlp.c_proj"]},
    "llama": {"attention": ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"],
              "mlp": ["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]},
    "bert": {"attention": ["attention.self.query", "attention.self.key", "attention.self.value",
                           "attention.output.dense"], "mlp": ["intermediate.dense", "output.dense"]},
}


@pytest.mark.parametrize("name", list(EXPECTED_GROUPS))
def test_attention_and_mlp_groups_found_by_module_type(explorers, name):
    ex = explorers[name]
    for group, suffixes in EXPECTED_GROUPS[name].items():
        chosen = [i.name for i in ex.selected(Recipe(group=group))]
        assert len(chosen) == 2 * len(suffixes)  # two blocks
        for block in range(2):
            assert [n.split(f".{block}.", 1)[1] for n in chosen if f".{block}." in n] == suffixes
    everything = {i.name for i in ex.selected(Recipe())}
    both = {i.name for g in ("attention", "mlp") for i in ex.selected(Recipe(group=g))}
    assert both <= everything and everything - both <= {"pooler.dense"}


def test_group_and_name_filter_combine(explorers):
    ex = explorers["llama"]
    assert [i.name for i in ex.selected(Recipe(group="mlp", layers=r"layers\.1\."))] == [
        f"model.layers.1.mlp.{p}_proj" for p in ("gate", "up", "down")]
    assert ex.selected(Recipe(group="attention", layers="mlp")) == []


def test_cached_magnitudes_give_the_same_mask(explorers):
    ex = explorers["bert"]
    work = ex.workspace()
    for s in (0.2, 0.5, 0.9):
        work.apply(Recipe(sparsity=s))
        for info in ex.selected(Recipe()):
            w = ex.weight(info.name)
            got = work.holders[info.name].matrix() != 0
            assert torch.equal(got, magnitude_mask(w, s) & (w != 0))


def test_masks_are_the_same_while_magnitudes_are_built_in_the_background(tiny_models):
    ex = Explorer.open(tiny_models["llama"], device="cpu")
    work = ex.workspace()
    with ex._lock:  # the builder cannot store anything yet: every threshold comes from a selection
        thread = ex.prepare_in_background()
        work.apply(Recipe(sparsity=0.5))
        assert thread.is_alive() and not ex._sorted_abs
        during = [work.holders[i.name].matrix().clone() for i in ex.selected(Recipe())]
    thread.join()
    assert all(ex.sorted_abs(i.name) is not None for i in ex.selected(Recipe()))
    work.apply(Recipe(sparsity=0.5))
    for info, before in zip(ex.selected(Recipe()), during):
        assert torch.equal(before != 0, work.holders[info.name].matrix() != 0)


def test_report_carries_each_layers_error(explorers):
    ex = explorers["gpt2"]
    work = ex.workspace()
    work.apply(Recipe(bits=4))
    report = work.report()
    errors = {e["name"]: e for e in work.layer_errors()}
    for layer in report["layers"]:
        if layer["name"] in errors:
            assert layer["relative_error"] == errors[layer["name"]]["relative_error"] > 0
            assert layer["sqnr_db"] == pytest.approx(-20 * torch.log10(torch.tensor(layer["relative_error"])).item())
        else:
            assert layer["relative_error"] is None and not layer["compressed"]
    assert report["compressed_bytes"] == work.applied.memory.compressed_bytes and report["apply_s"] > 0


def test_spectrum_energy_curve_matches_energy_kept(explorers):
    ex = explorers["bert"]
    name = ex.selected(Recipe())[0].name
    spec = ex.spectrum(name, rank=3)
    s = torch.tensor(spec["singular_values"], dtype=torch.float64)
    assert spec["energy"][-1] == pytest.approx(1.0)
    assert spec["energy"][2] == pytest.approx(spec["energy_kept"]) == pytest.approx((s[:3] ** 2).sum() / (s**2).sum())
    assert all(a <= b for a, b in zip(spec["energy"], spec["energy"][1:]))
    assert ex.spectrum(name)["energy_kept"] is None


@pytest.mark.parametrize("first", [Recipe(rank_ratio=0.5, sparsity=0.5, bits=8), Recipe(pattern="2:4", bits=4)])
def test_a_quantization_change_reuses_the_shape_and_matches_a_fresh_apply(explorers, first):
    ex = explorers["gpt2"]
    work, fresh = ex.workspace(), ex.workspace()
    work.apply(first)
    then = Recipe.from_dict({**first.to_dict(), "bits": 3, "symmetric": False, "group_size": 32})
    assert then.structure_key() == first.structure_key()
    got, want = work.apply(then), fresh.apply(then)
    assert got.memory.compressed_bytes == want.memory.compressed_bytes
    for info in ex.selected(then):
        assert torch.equal(work.holders[info.name].matrix(), fresh.holders[info.name].matrix())
    changed = Recipe.from_dict({**then.to_dict(), "rank_ratio": 0.25})  # a new structure: shaped again
    work.apply(changed)
    fresh.apply(changed)
    for info in ex.selected(changed):
        assert torch.equal(work.holders[info.name].matrix(), fresh.holders[info.name].matrix())
