"""Models loaded across devices by accelerate (here: the CPU and the disk), compressed and
evaluated layer by layer: the same bytes and metrics as the in-memory workspace."""
import hashlib
import json

import pytest
import torch

from engine import cli
from engine.drivers import offload
from engine.errors import UserError
from engine.layers.find import select
from engine.models.loading import minilm_path
from engine.quality import make_evaluator
from engine.recipe.recipe import Recipe


def test_max_memory_is_parsed_and_bad_specs_are_one_line():
    assert offload.parse_max_memory("cpu=200MiB") == {"cpu": "200MiB"}
    assert offload.parse_max_memory(" cpu = 2GB , ") == {"cpu": "2GB"}
    for bad, says in [("cpu", "not DEVICE=SIZE"), ("gpu=1GB,cpu=1GB", "not DEVICE=SIZE"), ("cpu=lots", "not a size"),
                      ("cpu=0MB", "not a size"), ("disk=1GB", "give the CPU's share"),
                      (f"{torch.cuda.device_count()}=1GB,cpu=1GB", "this machine has")]:
        with pytest.raises(UserError, match=says):
            offload.parse_max_memory(bad)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_model_on_disk_compresses_like_the_workspace(tiny_models, tiny_explorers, tmp_path, name="gpt2"):
    # every weight offloaded (1 MB of CPU): GPT-2's Conv1D and its tied head read from and written to disk
    # (the tiny Llama goes through the same path in the calibrated tests below)
    recipe = Recipe(rank_ratio=0.5, bits=4, group_size=16, sparsity=0.5, include_embeddings=True)
    off = offload.load(tiny_models[name], {"cpu": "1MB"}, str(tmp_path))
    assert set(offload.device_map(off.loaded.model).values()) == {"disk"}
    evaluator = make_evaluator(off.loaded)
    out = offload.run(off, recipe, evaluator)
    work = tiny_explorers[name].workspace()
    work.apply(recipe)
    assert out["memory"]["compressed_bytes"] == work.applied.memory.compressed_bytes
    assert out["metrics"] == pytest.approx(work.evaluate(), rel=1e-4)
    errors = {e["name"]: e["relative_error"] for e in work.layer_errors()}
    for layer in out["memory"]["layers"]:
        assert layer["relative_error"] == pytest.approx(errors.get(layer["tied_to"] or layer["name"]), rel=1e-4)


def test_cli_run_with_max_memory_offloads_minilm_and_scores_as_in_memory(tmp_path, capsys, minilm_explorer):
    checkpoint = minilm_path() / "model.safetensors"
    before = _sha(checkpoint)
    argv = ["run", "minilm", "--bits", "4", "--sparsity", "0.5", "--include-embeddings", "--quick", "--json"]
    assert cli.main([*argv, "--max-memory", "cpu=60MB", "--offload-folder", str(tmp_path / "off")]) == 0
    out = json.loads(capsys.readouterr().out)
    placed = out["offload"]["placement_bytes"]
    assert set(placed) == {"cpu", "disk"} and placed["disk"] > 30 * 2**20  # the encoder was on disk
    assert sum(placed.values()) == 4 * 22_713_216  # every parameter, fp32
    assert list((tmp_path / "off").iterdir()) == []  # the offloaded copies are gone
    assert _sha(checkpoint) == before  # and the model's own files never written
    work = minilm_explorer.workspace()
    work.apply(Recipe(bits=4, sparsity=0.5, include_embeddings=True))
    assert out["memory"]["compressed_bytes"] == work.applied.memory.compressed_bytes
    assert out["metrics"]["cosine_to_original"] == pytest.approx(work.evaluate(quick=True)["cosine_to_original"],
                                                                  rel=1e-4)
    assert out["peak_memory"]["peak_bytes"] > 0 and out["offload"]["peak_memory_compress"]["peak_bytes"] > 0


CALIBRATED = Recipe(rank_ratio=0.5, lowrank_method="whitened", sparsity=0.5, prune_method="wanda", bits=4,
                   group_size=16, quant_method="gptq", act_order=True)


@pytest.fixture(scope="module")
def calibrated_workspace(tiny_explorers):
    work = tiny_explorers["llama"].workspace()
    work.apply(CALIBRATED)
    return work


def test_calibrated_methods_in_one_pass_equal_the_workspace(tiny_models, tmp_path, calibrated_workspace):
    work = calibrated_workspace
    off = offload.load(tiny_models["llama"], {"cpu": "1MB"}, str(tmp_path))
    out = offload.run(off, CALIBRATED, make_evaluator(off.loaded))
    assert out["calibration"]["passes"] == 1 and out["calibration"]["layers"] == 14
    assert out["memory"]["compressed_bytes"] == work.applied.memory.compressed_bytes
    assert out["calibration"]["tokens"] == work.explorer.calibration().tokens
    # the same statistics give the same stored values: read back from the disk, layer by layer
    weights = offload._Weights(off.loaded.model)
    for info in off.layers:
        p = off.loaded.model.get_parameter(f"{info.name}.weight")
        assert torch.allclose(weights.get(f"{info.name}.weight", p), work.holders[info.name].matrix(),
                              rtol=1e-4, atol=1e-6), info.name
    # a random tiny model's next-token scores nearly tie, so top-1 agreement flips with rounding
    # (the low-rank product computed once here, as two matrices in the workspace)
    assert out["metrics"] == pytest.approx(work.evaluate(), rel=2e-3)


def test_statistics_over_the_budget_are_collected_in_passes(tiny_models, tmp_path, calibrated_workspace):
    # tiny Llama: q, k, v, o, gate, up take 32 inputs (H: 4 x 32^2 = 4,096 bytes), down 64 (16,384 bytes);
    # at most 20,000 bytes: [q k v o] [gate up] [down], per block
    off = offload.load(tiny_models["llama"], {"cpu": "1MB"}, str(tmp_path))
    names = [i.name.split(".")[-1] for i in off.layers]
    assert names[1:8] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    runs = offload.passes(select(off.layers, CALIBRATED), 20_000)
    assert [[i.name.split(".")[-1] for i in r] for r in runs[:3]] == [
        ["q_proj", "k_proj", "v_proj", "o_proj"], ["gate_proj", "up_proj"], ["down_proj"]]
    out = offload.run(off, CALIBRATED, make_evaluator(off.loaded), quick=True, stats_budget=20_000)
    assert out["calibration"]["passes"] == 6 and out["calibration"]["stats_budget_bytes"] == 20_000
    assert out["memory"]["compressed_bytes"] == calibrated_workspace.applied.memory.compressed_bytes
    # the first pass saw the original model, as the workspace's calibration did; later passes
    # saw a model whose earlier layers were compressed: the same first layer, other later ones
    single = {e["name"]: e["relative_error"] for e in calibrated_workspace.layer_errors()}
    layers = {layer["name"]: layer["relative_error"] for layer in out["memory"]["layers"] if layer["compressed"]}
    assert set(layers) == set(single)
    first, last = "model.layers.0.self_attn.q_proj", "model.layers.1.mlp.down_proj"
    assert layers[first] == pytest.approx(single[first], rel=1e-5)
    assert layers[last] != pytest.approx(single[last], rel=1e-3)


def test_offload_refuses_what_it_cannot_do(capsys):
    for extra, says in [(["--distill-steps", "2"], "distillation"), (["--device", "cpu"], "drop --device"),
                        (["--max-memory", "cpu=1GB,x=2GB"], "not DEVICE=SIZE")]:
        argv = ["run", "minilm", "--bits", "4", *(["--max-memory", "cpu=60MB"] if "--max-memory" not in extra else []),
                *extra]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert says in err and err.count("\n") == 1, err
    for flag in ("--offload-folder", "--calibration-memory"):
        assert cli.main(["run", "minilm", flag, "x"]) == 2
        assert "needs --max-memory" in capsys.readouterr().err
    assert cli.main(["run", "minilm", "--max-memory", "cpu=1GB", "--calibration-memory", "much"]) == 2
    assert "--calibration-memory: 'much' is not a size" in capsys.readouterr().err
