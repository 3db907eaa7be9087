"""Mixture-of-experts models: every expert of a 3-D experts parameter is a compressible layer,
counted, compressed by each method on the tokens its router sends it, exported, reloaded and
offloaded; routers stay at 16 bits unless asked for."""
import math

import pytest
import torch
import torch.nn.functional as F

from engine.drivers import footprint, offload
from engine.quality import make_evaluator
from engine.recipe.recipe import Recipe
from engine.storage import explorer_format as export

E, H, I_MIX, I_QWEN, BLOCKS = 4, 32, 64, 32, 2  # the tiny models of conftest.tiny_models


def _codes_and_scales(out, inp, bits, group):
    """Symmetric round-to-nearest in groups: out x in codes of `bits`, one fp16 scale per group."""
    return out * inp * bits // 8 + 2 * out * math.ceil(inp / group)


@pytest.mark.parametrize("name, inter", [("mixtral", I_MIX), ("qwen-moe", I_QWEN)])
def test_experts_are_layers_with_out_in_shapes_and_routers_are_left_alone(tiny_explorers, name, inter):
    ex = tiny_explorers[name]
    experts = [i for i in ex.layers if i.group == "experts"]
    assert len(experts) == BLOCKS * 2 * E
    by_name = {i.name: i for i in experts}
    assert by_name["model.layers.1.mlp.experts.gate_up_proj.3"].shape == (2 * inter, H)
    assert by_name["model.layers.0.mlp.experts.down_proj.0"].shape == (H, inter)
    assert sum(i.params for i in experts) == sum(p.numel() for n, p in ex.loaded.model.named_parameters()
                                                 if ".experts." in n)
    routers = [i for i in ex.layers if i.group == "router"]
    expected = {"model.layers.0.mlp.gate", "model.layers.1.mlp.gate"}
    if name == "qwen-moe":  # its shared expert's gate, an nn.Linear (32 -> 1) beside the experts
        expected |= {"model.layers.0.mlp.shared_expert_gate", "model.layers.1.mlp.shared_expert_gate"}
        assert {i.group for i in ex.layers if ".shared_expert." in i.name} == {"mlp"}
    assert {i.name for i in routers} == expected
    selected = {i.name for i in ex.selected(Recipe(bits=4))}
    assert set(by_name) <= selected and not selected & expected  # the routers stay at 16 bits...
    assert {i.name for i in ex.selected(Recipe(bits=4, group="router"))} == expected  # ...unless asked
    assert {i.name for i in ex.selected(Recipe(bits=4, group="experts"))} == set(by_name)


def test_mixtral_at_4_bits_compresses_its_experts_to_the_bytes_a_hand_count_gives(tiny_explorers):
    ex = tiny_explorers["mixtral"]
    work = ex.workspace()
    mem = work.apply(Recipe(bits=4, group_size=16)).memory
    rows = {r.info.name: r for r in mem.layers}
    gate_up, down = rows["model.layers.0.mlp.experts.gate_up_proj.2"], rows["model.layers.0.mlp.experts.down_proj.2"]
    assert gate_up.compressed and gate_up.bytes.compressed_bytes == _codes_and_scales(2 * I_MIX, H, 4, 16) == 2560
    assert down.bytes.compressed_bytes == _codes_and_scales(H, I_MIX, 4, 16) == 1280
    assert not rows["model.layers.0.mlp.gate"].compressed
    # the whole model: attention and experts at 4 bits, every other parameter at fp16
    attention = [(H, H), (16, H), (16, H), (H, H)]
    experts = [(2 * I_MIX, H), (H, I_MIX)] * E
    compressed = BLOCKS * sum(_codes_and_scales(o, i, 4, 16) for o, i in attention + experts)
    block_params = BLOCKS * sum(o * i for o, i in attention + experts)
    assert mem.compressed_bytes == 2 * (ex.total_params - block_params) + compressed
    # the workspace computes with them: when the model runs, the experts module holds the stored values
    work.evaluate(quick=True)
    stacked = work.model.get_submodule("model.layers.0.mlp.experts").gate_up_proj
    assert torch.equal(stacked[2], work.stored["model.layers.0.mlp.experts.gate_up_proj.2"].matrix())
    assert ex.loaded.model.model.layers[0].mlp.experts.gate_up_proj.dtype == torch.float32  # the original untouched


@pytest.mark.parametrize("name", ["mixtral", "qwen-moe"])
def test_quality_falls_as_bits_fall_and_16_bits_is_the_fp16_model(tiny_explorers, name):
    ex = tiny_explorers[name]
    work = ex.workspace()
    work.apply(Recipe())
    assert work.evaluate(quick=True)["kl_to_original"] < 1e-4  # fp16 storage only
    kl = {}
    for bits in (8, 4, 2):
        work.apply(Recipe(bits=bits, group_size=16, group="experts"))
        kl[bits] = work.evaluate(quick=True)["kl_to_original"]
    assert kl[8] < kl[4] < kl[2]


def test_each_expert_is_calibrated_on_the_tokens_routed_to_it(tiny_models):
    """The statistics of every expert, against the inputs recorded independently: every
    F.linear call of the experts' eager forward whose weight is one expert's slice."""
    from engine.drivers.explorer import Explorer

    ex = Explorer.open(tiny_models["mixtral"], device="cpu")
    ex.loaded.model.set_experts_implementation("eager")  # one F.linear per expert (the default groups them)
    experts = ex.loaded.model.model.layers[1].mlp.experts
    seen = {}
    plain = F.linear

    def recording(x, w, bias=None):
        for pname in ("gate_up_proj", "down_proj"):
            stack = getattr(experts, pname)
            for e in range(E):
                if w.data_ptr() == stack[e].data_ptr() and w.shape == stack[e].shape:
                    x2 = x.reshape(-1, x.shape[-1]).double()
                    seen[f"{pname}.{e}"] = seen.get(f"{pname}.{e}", 0) + x2.T @ x2
                    seen[f"n.{pname}.{e}"] = seen.get(f"n.{pname}.{e}", 0) + x2.shape[0]
        return plain(x, w, bias)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(F, "linear", recording)
        hessians = ex.calibration().hessians
    assert sum(seen[f"n.gate_up_proj.{e}"] for e in range(E)) == 2 * ex.calibration().tokens  # two experts a token
    for pname in ("gate_up_proj", "down_proj"):
        for e in range(E):
            expected = seen[f"{pname}.{e}"] / seen[f"n.{pname}.{e}"]
            got = hessians[f"model.layers.1.mlp.experts.{pname}.{e}"].double()
            assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6), (pname, e)


def test_an_expert_no_token_reached_falls_back_to_the_plain_method_and_is_reported(tiny_explorers, monkeypatch):
    from engine.drivers import run_report as report

    ex = tiny_explorers["mixtral"]
    missing = "model.layers.0.mlp.experts.down_proj.1"
    monkeypatch.delitem(ex.calibration().hessians, missing)  # as if its router never chose it
    gptq = Recipe(bits=3, group_size=16, quant_method="gptq", group="experts")
    assert ex.uncalibrated(gptq) == [missing]
    work = ex.workspace()
    work.apply(gptq)
    rtn = ex.workspace()
    rtn.apply(Recipe(bits=3, group_size=16, group="experts"))
    assert torch.equal(work.stored[missing].matrix(), rtn.stored[missing].matrix())
    other = "model.layers.0.mlp.experts.down_proj.0"
    assert not torch.equal(work.stored[other].matrix(), rtn.stored[other].matrix())
    out = report.in_memory(ex, gptq, "tiny-mixtral", quick=True)
    assert out["calibration"]["plain_fallback"] == [missing]


def test_export_reloads_and_offload_matches_the_workspace(tiny_models, tiny_explorers, tmp_path):
    ex = tiny_explorers["qwen-moe"]
    recipe = Recipe(rank_ratio=0.5, bits=4, group_size=16, sparsity=0.25)
    work = ex.workspace()
    work.apply(recipe)
    before = work.evaluate(quick=True)
    manifest = export.write(work, tmp_path / "out")
    assert manifest["tensor_bytes"] == work.applied.memory.compressed_bytes
    again = ex.workspace()
    export.load_into(again, tmp_path / "out")
    assert again.evaluate(quick=True) == pytest.approx(before, rel=1e-6)
    for name in work.stored:
        assert torch.equal(again.holders[name].matrix(), work.holders[name].matrix()), name
    # every weight on disk, compressed layer by layer, each 3-D experts parameter written back whole
    off = offload.load(tiny_models["qwen-moe"], {"cpu": "1MB"}, str(tmp_path / "off"))
    out = offload.run(off, recipe, make_evaluator(off.loaded), quick=True)
    assert out["memory"]["compressed_bytes"] == work.applied.memory.compressed_bytes
    assert out["metrics"] == pytest.approx(before, rel=1e-4)


def test_fit_counts_the_published_mixtral_and_its_experts():
    sk = footprint.open_skeleton("mixtral-8x7b")
    experts = [i for i in sk.layers if i.group == "experts"]
    assert len(experts) == 32 * 2 * 8 and {i.shape for i in experts} == {(2 * 14336, 4096), (4096, 14336)}
    assert sum(i.params for i in experts) / sk.total_params > 0.96  # the experts are most of the model
    mem = footprint.predict(sk, Recipe(bits=4))
    assert mem.ratio < 0.27  # int4 g128 on attention and experts; embeddings, head and routers at fp16


def test_distillation_trains_the_experts_on_their_grids(tiny_explorers):
    ex = tiny_explorers["mixtral"]
    work = ex.workspace()
    recipe = Recipe(bits=4, group_size=16, group="experts")
    work.apply(recipe)
    name = "model.layers.1.mlp.experts.down_proj.0"
    before = work.stored[name].matrix().clone()
    work.distill(2, 1e-3)
    after = work.stored[name]
    assert not torch.equal(after.matrix(), before)  # gradients reach the experts through their stacked parameter
    m = after.matrices[0]
    assert torch.equal(m.grid.snap(m.values, recipe), m.values)  # still on the 4-bit grid: the same bytes


def test_cli_runs_a_mixtral_folder_and_says_what_stays_at_16_bits(tiny_models, tiny_explorers):
    from cli_harness import main

    code, out, err = main("run", tiny_models["mixtral"], "--bits", "4", "--group-size", "16", "--quick")
    assert code == 0, err
    assert "model.layers.1.mlp.experts.down_proj.3" in out
    total = tiny_explorers["mixtral"].total_params
    blocks = BLOCKS * (2 * H * H + 2 * 16 * H + E * 3 * H * I_MIX)  # attention and experts: compressed
    embeddings = 30522 * H
    assert f"left at 16 bits: {(total - blocks) / total:.1%} of the parameters" in out
    assert f"embeddings {embeddings / total:.1%}" in out and f"head {embeddings / total:.1%}" in out
    assert f"routers {BLOCKS * E * H / total:.1%}" in out
